"""Combining several predictions of one frame: probability averaging and weighted mask voting.

Used three ways (spec deaot.md §2.4, §5.4.5):

* test-time augmentation (``tta.py``): the views of one model, averaged;
* lock-step ensembles: several models track together, each with its own engine and memory
  (:class:`EnsembleEngine`); the combined label is produced per frame;
* post-hoc ensembles: runs save per-frame probabilities (:func:`save_probs`, uint8-quantised) or label maps,
  and :func:`combine_runs` (``trek-track ensemble``) merges them later, as the VISOR entry did.

The combiners (weights default to equal, since the reports do not give them):

* ``mean``: weighted mean of the members' probabilities, then arg-max;
* ``vote``: each member votes for its own arg-max label with its weight; a pixel takes the label with the
  largest summed weight; a tie goes to the label of the highest-weighted member among those voting for a
  tied label (the first listed member when weights are equal).
"""

from __future__ import annotations

import io
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from trek_tracker.errors import InputError
from trek_tracker.inference.engine import FrameOutput, channel_argmax

MODES = ("mean", "vote")

# On-disk layout of saved per-frame outputs inside a run folder.
PROBS_DIR = "probs"
MASKS_DIR = "masks"


class Member(Protocol):
    """What an ensemble member must do: a :class:`~trek_tracker.inference.engine.VOSEngine`, a TTA engine or a
    nested ensemble."""

    def add_reference(self, frame: np.ndarray, labels: np.ndarray | torch.Tensor) -> None: ...

    def predict(self, frame: np.ndarray) -> FrameOutput: ...

    def commit(self, labels: torch.Tensor) -> None: ...


def check_weights(weights: Sequence[float] | None, n: int) -> list[float]:
    """``n`` positive finite weights (all 1 when None); an :class:`InputError` otherwise."""
    if weights is None:
        return [1.0] * n
    w = [float(x) for x in weights]
    if len(w) != n:
        raise InputError(f"got {len(w)} ensemble weights for {n} members; give one weight per member")
    if not all(np.isfinite(x) and x > 0 for x in w):
        raise InputError(f"ensemble weights must be positive numbers, got {w}")
    return w


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise InputError(f"unknown ensemble mode {mode!r}; choose one of: {', '.join(MODES)}")
    return mode


def average_probs(probs: Sequence[torch.Tensor], weights: Sequence[float] | None = None) -> torch.Tensor:
    """Weighted mean of probability maps (C, H, W) that share one shape."""
    if not probs:
        raise InputError("nothing to combine: no member outputs")
    w = check_weights(weights, len(probs))
    shape = tuple(probs[0].shape)
    for p in probs[1:]:
        if tuple(p.shape) != shape:
            raise InputError(f"member outputs differ in shape: {shape} and {tuple(p.shape)} (same video and "
                             "same objects are needed)")
    total = sum(w)
    out = probs[0].float() * (w[0] / total)
    for p, wi in zip(probs[1:], w[1:], strict=True):
        out = out + p.float() * (wi / total)
    return out


def vote_scores(labels: Sequence[torch.Tensor], weights: Sequence[float] | None = None,
                num_labels: int | None = None) -> torch.Tensor:
    """Per-label summed vote weight (L, H, W), normalised to sum to 1 at every pixel."""
    if not labels:
        raise InputError("nothing to combine: no member outputs")
    w = check_weights(weights, len(labels))
    shape = tuple(labels[0].shape)
    for lab in labels[1:]:
        if tuple(lab.shape) != shape:
            raise InputError(f"member label maps differ in size: {shape} and {tuple(lab.shape)}")
    n = num_labels if num_labels is not None else int(max(int(lab.max()) for lab in labels)) + 1
    scores = torch.zeros((n, *shape), dtype=torch.float64, device=labels[0].device)
    for lab, wi in zip(labels, w, strict=True):
        scores.scatter_add_(0, lab.long()[None], torch.full((1, *shape), wi, dtype=torch.float64,
                                                              device=lab.device))
    return (scores / sum(w)).float()


def vote(labels: Sequence[torch.Tensor], weights: Sequence[float] | None = None,
         num_labels: int | None = None) -> torch.Tensor:
    """Weighted per-pixel majority of label maps (H, W); ties as described in the module docstring."""
    w = check_weights(weights, len(labels))
    scores = vote_scores(labels, w, num_labels).double()
    best = scores.max(dim=0).values
    tied = scores >= best[None] - 1e-9  # (L, H, W) labels with the top score
    out = torch.full(tuple(labels[0].shape), -1, dtype=torch.int64, device=labels[0].device)
    # Members by decreasing weight (stable: equal weights keep the given order).
    for i in sorted(range(len(labels)), key=lambda i: -w[i]):
        lab = labels[i].long()
        ok = (out < 0) & tied.gather(0, lab[None])[0]
        out = torch.where(ok, lab, out)
    return out


def combine_outputs(outputs: Sequence[FrameOutput], mode: str = "mean",
                    weights: Sequence[float] | None = None) -> FrameOutput:
    """One frame's member outputs -> the combined output. For ``vote``, ``probs`` are the vote shares."""
    check_mode(mode)
    if mode == "mean":
        probs = average_probs([o.probs for o in outputs], weights)
        return FrameOutput(labels=channel_argmax(probs), probs=probs, logits=[])
    n = max(o.probs.shape[0] for o in outputs)
    labels = [o.labels for o in outputs]
    return FrameOutput(labels=vote(labels, weights, n), probs=vote_scores(labels, weights, n), logits=[])


@dataclass
class EnsembleEngine:
    """Several members tracking one video in lock-step, each with its own memory.

    ``memory_label='own'`` (the official TTA semantics) feeds each member its own prediction;
    ``'ensemble'`` feeds every member the combined label.
    """

    members: list[Member]
    mode: str = "mean"
    weights: list[float] | None = None
    memory_label: str = "own"
    _last: list[FrameOutput] = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        if not self.members:
            raise InputError("an ensemble needs at least one member")
        check_mode(self.mode)
        self.weights = check_weights(self.weights, len(self.members))
        if self.memory_label not in ("own", "ensemble"):
            raise InputError(f"memory_label must be 'own' or 'ensemble', got {self.memory_label!r}")

    def add_reference(self, frame: np.ndarray, labels: np.ndarray | torch.Tensor) -> None:
        for m in self.members:
            m.add_reference(frame, labels)

    def predict(self, frame: np.ndarray) -> FrameOutput:
        self._last = [m.predict(frame) for m in self.members]
        return combine_outputs(self._last, self.mode, self.weights)

    def commit(self, labels: torch.Tensor) -> None:
        if not self._last:
            raise RuntimeError("commit() must follow predict()")
        for m, out in zip(self.members, self._last, strict=True):
            m.commit(out.labels if self.memory_label == "own" else labels)
        self._last = []

    def step(self, frame: np.ndarray) -> FrameOutput:
        out = self.predict(frame)
        self.commit(out.labels)
        return out

    @property
    def member_outputs(self) -> list[FrameOutput]:
        """The members' own outputs for the last predicted frame (until :meth:`commit`)."""
        return list(self._last)


# --------------------------------------------------------------------------- saved per-frame outputs
def quantise(probs: torch.Tensor | np.ndarray) -> np.ndarray:
    """Probabilities in [0, 1] -> uint8 ``round(255 p)`` (error at most 1/510 per value)."""
    p = probs.detach().cpu().numpy() if isinstance(probs, torch.Tensor) else np.asarray(probs)
    return np.clip(np.rint(p.astype(np.float32) * 255.0), 0, 255).astype(np.uint8)


def dequantise(q: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(q.astype(np.float32) / 255.0)


def save_probs(path: str | os.PathLike, probs: torch.Tensor | np.ndarray) -> None:
    """Write one frame's probabilities (1 + N, H, W) as a compressed ``.npz`` of uint8, atomically.

    Disk cost: at most (1 + N)·H·W bytes per frame before compression (4.1 MB for one object at 1920x1080),
    typically 5-20x less after it, since most of a frame is confidently background. A label-map PNG (what
    ``vote`` needs) costs H·W bytes before compression and is usually 10-50 kB at 1080p.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    np.savez_compressed(buf, probs=quantise(probs))
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(buf.getvalue())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_probs(path: str | os.PathLike) -> torch.Tensor:
    """Read what :func:`save_probs` wrote, as float32 probabilities."""
    try:
        with np.load(path) as data:
            return dequantise(data["probs"])
    except FileNotFoundError:
        raise InputError(f"probability file not found: {path}") from None
    except (OSError, KeyError, ValueError) as err:
        raise InputError(f"cannot read probability file {path}: {err}") from None


# --------------------------------------------------------------------------- combining saved runs
@dataclass
class _SavedRun:
    path: Path
    record: dict
    frames: list[str]  # file stems, in frame order
    values: list[int]  # object values (engine id k -> values[k - 1])


def _read_run(path: Path, mode: str) -> _SavedRun:
    from trek_tracker.files import read_json

    if not (path / "run.json").is_file():
        raise InputError(f"{path} is not a run folder (no run.json); give folders written by `trek-track run`")
    record = read_json(path / "run.json")
    if record.get("status") != "complete":
        raise InputError(f"run {path} did not complete (status {record.get('status')!r}); re-run it first")
    if mode == "mean":
        folder, ext, hint = path / PROBS_DIR, ".npz", "run it with --save-probs"
    else:
        folder, ext, hint = path / MASKS_DIR, ".png", "run it with --save-masks"
    frames = sorted(p.stem for p in folder.glob(f"*{ext}")) if folder.is_dir() else []
    if not frames:
        raise InputError(f"run {path} has no {folder.name}/*{ext} files, which --mode {mode} needs: {hint}")
    if mode == "mean":
        meta = read_json(folder / "objects.json") if (folder / "objects.json").is_file() else {"values": [255]}
        values = [int(v) for v in meta["values"]]
    else:
        ids = (record.get("start") or {}).get("init_mask_ids")
        values = [int(v) for v in ids] if ids else [255]
    return _SavedRun(path, record, frames, values)


def _first_boxes(run: _SavedRun) -> dict[int, Path]:
    if len(run.values) == 1:
        return {run.values[0]: run.path / "boxes.txt"}
    return {v: run.path / f"boxes_{v}.txt" for v in run.values}


@dataclass
class CombinedRun:
    """What :func:`combine_runs` wrote."""

    frames: int
    files: list[str]
    lost: dict[str, list[int]]


def combine_runs(run_dirs: Sequence[str | os.PathLike], out_dir: str | os.PathLike, *, mode: str = "mean",
                 weights: Sequence[float] | None = None, save_probs_out: bool = False) -> CombinedRun:
    """Merge saved runs of one video into the outputs ``trek-track run`` writes.

    ``mean`` reads each run's ``probs/`` (written with ``--save-probs``), ``vote`` its ``masks/``
    (``--save-masks``). Writes ``masks/``, the box file(s) (line 0: the first run's given box; later lines
    the tight box of the combined mask, or the held box when it is empty), ``times.txt`` (the members'
    times added, when every run has them) and ``run.json``; ``probs/`` too with ``save_probs_out``.
    """
    from trek_tracker.files import write_json
    from trek_tracker.geometry import BoxFromMask, BoxFromMaskConfig
    from trek_tracker.results import (
        ObjectIds,
        read_boxes,
        read_label_png,
        read_times,
        write_boxes,
        write_label_png,
        write_times,
    )

    check_mode(mode)
    if len(run_dirs) < 2:
        raise InputError("an ensemble needs at least two run folders")
    w = check_weights(weights, len(run_dirs))
    runs = [_read_run(Path(p), mode) for p in run_dirs]
    first = runs[0]
    for run in runs[1:]:
        if run.frames != first.frames:
            raise InputError(f"runs {first.path} and {run.path} hold different frames ({len(first.frames)} and "
                             f"{len(run.frames)} files); combine runs of the same video")
        if run.values != first.values:
            raise InputError(f"runs {first.path} and {run.path} track different objects ({first.values} and "
                             f"{run.values})")
    out = Path(out_dir)
    if any(out.resolve() == r.path.resolve() for r in runs):
        raise InputError(f"--out {out} is one of the input runs; choose a new folder")
    (out / MASKS_DIR).mkdir(parents=True, exist_ok=True)
    for stale in (out / MASKS_DIR).glob("*.png"):
        stale.unlink()
    palette = None
    first_mask = first.path / MASKS_DIR / f"{first.frames[0]}.png"
    if first_mask.is_file():
        palette = read_label_png(first_mask)[1]
    ids = ObjectIds(tuple(first.values))
    settings = (first.record.get("tracker") or {}).get("settings") or {}
    if settings.get("box_output", "tight") != "tight":
        raise InputError("combining runs supports tight x,y,w,h boxes only (the runs used --box-output "
                         f"{settings.get('box_output')})")
    policy_cfg = BoxFromMaskConfig(min_component_px=int(settings.get("min_component_px", 100)))
    box_files = _first_boxes(first)
    for path in box_files.values():
        if not path.is_file():
            raise InputError(f"run {first.path} has no {path.name}; it is needed for the first frame's box")
    policies = {v: BoxFromMask(read_boxes(p, rows=None)[0], policy_cfg) for v, p in box_files.items()}
    boxes: dict[int, list[np.ndarray]] = {v: [] for v in policies}
    lost: dict[str, list[int]] = {str(v): [] for v in policies}

    for index, stem in enumerate(first.frames):
        if mode == "mean":
            probs = average_probs([load_probs(r.path / PROBS_DIR / f"{stem}.npz") for r in runs], w)
            labels = ids.to_original(channel_argmax(probs).numpy())
            if save_probs_out:
                save_probs(out / PROBS_DIR / f"{stem}.npz", probs)
        else:
            maps = [torch.from_numpy(read_label_png(r.path / MASKS_DIR / f"{stem}.png")[0].astype(np.int64))
                    for r in runs]
            labels = vote(maps, w, num_labels=256).numpy().astype(np.uint8)
        write_label_png(out / MASKS_DIR / f"{stem}.png", labels, palette)
        for v, policy in policies.items():
            if index == 0:
                box, is_lost = policy.last_box, False
            else:
                box, is_lost = policy.update(labels == v)
            boxes[v].append(box)
            if is_lost:
                lost[str(v)].append(index)

    files = [f"{MASKS_DIR}/"]
    for v, path in box_files.items():
        write_boxes(out / path.name, np.stack(boxes[v]))
        files.append(path.name)
    if all((r.path / "times.txt").is_file() for r in runs):
        times = [read_times(r.path / "times.txt") for r in runs]
        if all(len(t) == len(first.frames) for t in times):
            write_times(out / "times.txt", np.sum(times, axis=0))
            files.append("times.txt")
    if mode == "mean" and save_probs_out:
        write_json(out / PROBS_DIR / "objects.json", {"values": first.values})
        files.append(f"{PROBS_DIR}/")
    record = {
        "status": "complete",
        "video": first.record.get("video"),
        "start": first.record.get("start"),
        "ensemble": {"mode": mode, "weights": w, "runs": [str(r.path) for r in runs],
                     "members": [r.record.get("tracker") for r in runs]},
        "lost_frames": lost,
        "files": files + ["run.json"],
    }
    write_json(out / "run.json", record)
    return CombinedRun(frames=len(first.frames), files=record["files"], lost=lost)
