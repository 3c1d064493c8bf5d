"""``trek-track ensemble``: combine saved runs of one video into a new run, through the one loop.

Each member is read back through its manifest (:meth:`RunFolder.open`), and the runs must agree on what
they tracked: the same video (name, size, and the content it recorded), the same frames of it (start frame
and count), the same start (box or init mask) and the same objects. :class:`SavedRunsTracker` then plays
the tracker: at frame ``i`` it reads every run's probabilities (``mean``) or masks (``vote``), combines
them (:mod:`trek_tracker.inference.ensemble`, docs/inference.md#ensembles) in the engine's object ids, so
that a vote costs memory in proportion to the objects, and takes each object's box through the same
lost-target policy as a live run. The new run is written by the same sinks as ``trek-track run``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from trek_tracker.errors import InputError, UserError
from trek_tracker.geometry import Box, BoxConfig
from trek_tracker.inference.ensemble import average_probs, check_mode, check_weights, vote
from trek_tracker.loop import LoopResult, Start, track_video
from trek_tracker.pipeline import FrameResult, ObjectBoxes, one_hot
from trek_tracker.run_folder import PROBS, Outputs, RunFolder


def _check_same(runs: list[RunFolder], mode: str) -> None:
    first = runs[0]
    needed = f"{PROBS}/" if mode == "mean" else "masks/"
    hint = "--save-probs" if mode == "mean" else "--save-masks"
    for run in runs:
        if not run.has(needed):
            raise InputError(f"run {run.path} has no {needed} files, which --mode {mode} needs: run it with {hint}")
        if not run.has("times.txt"):
            raise InputError(f"run {run.path} has no times.txt; run it again")
    for run in runs[1:]:
        a, b = first.manifest["video"], run.manifest["video"]
        if run.frames != first.frames:
            raise InputError(f"runs {first.path} and {run.path} hold different frames ({first.frames} and "
                             f"{run.frames}); combine runs of the same video")
        if a.get("name") != b.get("name") or a.get("size") != b.get("size"):
            raise InputError(f"runs {first.path} and {run.path} are of different videos ({a.get('name')} "
                             f"{a.get('size')} and {b.get('name')} {b.get('size')})")
        if a.get("start_frame", 0) != b.get("start_frame", 0):  # runs written before --start-frame began at 0
            raise InputError(f"runs {first.path} and {run.path} start at different frames of {a.get('name')} "
                             f"({a.get('start_frame', 0)} and {b.get('start_frame', 0)}); combine runs of the same "
                             "frames")
        if run.ids != first.ids:
            raise InputError(f"runs {first.path} and {run.path} track different objects ({list(first.ids.values)} "
                             f"and {list(run.ids.values)})")
        _check_same_video(first, run)
        _check_same_start(first, run, mode)


def _check_same_video(first: RunFolder, run: RunFolder) -> None:
    """The same frames, not only a video of the same name and size (every TREK-150 sequence's frames are in
    a folder named ``img``): the content each run recorded (bytes, first and last frame names), or, for runs
    that recorded none, the same place."""
    a, b = first.manifest["video"], run.manifest["video"]
    if a.get("content") is not None and b.get("content") is not None:
        if a["content"] != b["content"]:
            raise InputError(f"runs {first.path} and {run.path} are of different videos ({a.get('path')} and "
                             f"{b.get('path')} differ in content); combine runs of the same video")
    elif Path(a.get("path", "")).resolve() != Path(b.get("path", "")).resolve():
        raise InputError(f"runs {first.path} and {run.path} are of videos at different places ({a.get('path')} and "
                         f"{b.get('path')}), and one of them records no content to compare (an older run): "
                         "combine runs of the same video, run again from one place")


def _check_same_start(first: RunFolder, run: RunFolder, mode: str) -> None:
    """The same first box, or the same init mask: runs of one video from different starts follow different
    objects, whatever ids they give them."""
    a, b = first.manifest.get("start") or {}, run.manifest.get("start") or {}
    if a.get("box") is not None or b.get("box") is not None:
        if a.get("box") != b.get("box"):
            raise InputError(f"runs {first.path} and {run.path} start from different boxes ({a.get('box')} and "
                             f"{b.get('box')}); combine runs of the same start")
        return
    read = ((lambda r: r.read_mask(0)[0]) if mode == "vote" else
            (lambda r: r.read_probs(0).argmax(dim=0).numpy()))  # frame 0 is the init mask, in either output
    if not np.array_equal(read(first), read(run)):
        raise InputError(f"runs {first.path} and {run.path} start from different init masks; combine runs of the "
                         "same start")


class SavedRunsTracker:
    """The loop's tracker over saved runs: frame ``i`` (an index) -> the runs' combined result."""

    def __init__(self, runs: list[RunFolder], mode: str, weights: list[float], box: BoxConfig) -> None:
        self.runs, self.mode, self.weights, self.box_config = runs, mode, weights, box
        self.ids = runs[0].ids
        self.times = np.sum([run.read_times() for run in runs], axis=0)
        self.first_boxes = {k + 1: runs[0].read_boxes(v)[0] for k, v in enumerate(self.ids.values)}
        self._boxes: ObjectBoxes | None = None

    def _combine(self, index: int) -> tuple[np.ndarray, object]:
        if self.mode == "mean":
            probs = average_probs([run.read_probs(index) for run in self.runs], self.weights)
            return probs.max(dim=0).indices.numpy().astype(np.uint8), probs
        import torch

        maps = [torch.from_numpy(self.ids.to_engine(run.read_mask(index)[0]).astype(np.int64)) for run in self.runs]
        return vote(maps, self.weights, num_labels=len(self.ids) + 1).numpy().astype(np.uint8), None

    def init(self, index: int, box: Box | None = None, *, mask: np.ndarray | None = None,
             keep_probs: bool = False, keep_labels: bool = True) -> FrameResult:
        labels, probs = self._combine(0)
        self._boxes = ObjectBoxes(self.first_boxes, self.box_config)
        if keep_probs and probs is None:
            probs = one_hot(labels)
        return FrameResult(self._boxes.last(), {k: False for k in self.first_boxes}, labels if keep_labels else None,
                           float(self.times[0]), probs if keep_probs else None)

    def step(self, index: int, *, keep_probs: bool = False, keep_labels: bool = True) -> FrameResult:
        labels, probs = self._combine(index)
        boxes, lost = self._boxes.update(labels)
        return FrameResult(boxes, lost, labels if keep_labels else None, float(self.times[index]),
                           probs if keep_probs else None)


def combine_runs(run_dirs: Sequence[str | Path], out: str | Path, *, mode: str = "mean",
                 weights: Sequence[float] | None = None, save_probs: bool = False,
                 overwrite: bool = False, progress: bool | str = False) -> LoopResult:
    """Merge saved runs of one video into a new run folder ``out`` (boxes, times as the members' sum,
    masks, run.json; probabilities too with ``save_probs``, mean only). ``progress``: a bar on stderr, as
    :func:`~trek_tracker.loop.track_video` draws it."""
    check_mode(mode)
    if len(run_dirs) < 2:
        raise InputError("an ensemble needs at least two run folders")
    w = check_weights(weights, len(run_dirs))
    if save_probs and mode != "mean":
        raise UserError("--save-probs writes combined probabilities, which only --mode mean has")
    runs = [RunFolder.open(p) for p in run_dirs]
    seen: dict[Path, Path] = {}
    for run in runs:
        where = run.path.resolve()
        if where in seen:
            raise InputError(f"run {run.path} is given twice (also as {seen[where]}); give each run once (use "
                             "--weights to count one more)")
        seen[where] = run.path
    _check_same(runs, mode)
    target = Path(out).resolve()
    if any(target == r.path.resolve() for r in runs):
        raise InputError(f"--out {out} is one of the input runs; choose a new folder")
    inside = next((r for r in runs if r.path.resolve() in target.parents), None)
    if inside is not None:  # the ensemble would be written among that run's own files
        raise InputError(f"--out {out} is inside the input run {inside.path}; choose a folder outside the runs")
    settings = (runs[0].manifest.get("tracker") or {}).get("settings") or {}
    box_config = BoxConfig(**(settings.get("box") or {}))
    tracker = SavedRunsTracker(runs, mode, w, box_config)
    palette = runs[0].read_mask(0)[1] if runs[0].has("masks/") else None
    folder = RunFolder.create(out, overwrite=overwrite)
    first = runs[0].manifest
    record = {"video": {k: v for k, v in first["video"].items() if k != "frames"}, "start": first.get("start"),
              "ensemble": {"mode": mode, "weights": w, "runs": [str(r.path) for r in runs],
                           "members": [r.manifest.get("tracker") for r in runs]},
              "tracker": {"settings": {"box": settings.get("box") or {}}}}
    sinks = folder.sinks(Outputs(masks=True, probs=save_probs), ids=tracker.ids, palette=palette, record=record,
                         fps=first["video"].get("fps"), size=tuple(first["video"]["size"]))
    start = Start(box=Box.of(tracker.first_boxes[1]))
    return track_video(tracker, range(runs[0].frames), start, sinks, prefetch_depth=0, total=runs[0].frames,
                       progress=progress)
