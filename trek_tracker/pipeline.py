"""The one tracking pipeline: first-frame box (or mask) -> mask -> propagation -> box per frame.

:class:`Tracker` is what ``trek-track run``, ``trek-track eval`` and the Python API all use. It follows the
got10k / TREK-150 toolkit interface (``init(image, box)``, ``update(image) -> [x, y, w, h]``) and also
exposes the full per-frame result (mask, probabilities, lost flag) through :meth:`Tracker.step`.

>>> tracker = Tracker(TrackerConfig(model="r50_deaotl", checkpoint="r50_deaotl"))
>>> tracker.init(first_frame, [313, 88, 342, 194])
>>> box = tracker.update(next_frame)          # np.ndarray [x, y, w, h]
>>> mask = tracker.mask                       # bool (H, W) for a single object
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from trek_tracker.errors import CheckpointError, InputError, UserError
from trek_tracker.files import sha256_of
from trek_tracker.geometry import BoxFromMask, BoxFromMaskConfig, box_to_mask, check_box_in_frame, mask_to_box

DEFAULT_MODEL = "r50_deaotl"


@dataclass
class TrackerConfig:
    """Everything that decides what a tracker computes. Recorded in ``run.json``."""

    model: str | None = None  # variant name; None = the checkpoint's own (our files), else r50_deaotl
    checkpoint: str | None = None  # path or registry name; None = the registry entry named like the model
    random_weights: bool = False  # smoke tests only: the output is meaningless
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    max_long_edge: int = 1040  # network input long edge (official default 1040)
    init: str = "auto"  # box -> first mask: auto (fused if SAM+AR checkpoints, else what exists, else grabcut),
    #                     fused | sam | ar | grabcut | box (the filled rectangle)
    sam_checkpoint: str | None = None
    ar_checkpoint: str | None = None
    long_term_gap: int | None = None  # None = the model's official gap
    max_long_term: int | None = None  # long-term memory cap in frames; None = unbounded (official)
    box_output: str = "tight"  # tight (TREK-150 x,y,w,h) | rotated (8-value polygon)
    min_component_px: int = 100  # mask specks smaller than this do not count for the box
    name: str | None = None  # tracker name for result folders; default derived from the model
    tta_scales: tuple[float, ...] | None = None  # test-time scales, e.g. (1.2, 1.3, 1.4); None = (1.0,)
    tta_flip: bool = False  # add a horizontally flipped view of every scale
    ensemble_members: tuple[tuple[str | None, str | None], ...] = ()  # more (model, checkpoint) pairs
    ensemble: str = "mean"  # how members combine: mean (probabilities) | vote (weighted mask vote)
    ensemble_weights: tuple[float, ...] | None = None  # one per member (first model first); None = equal

    def tracker_name(self) -> str:
        return self.name or f"trek-track-{self.model or DEFAULT_MODEL}"


@dataclass
class TrackResult:
    """One frame's output. ``boxes`` maps object index (1..N) to its box; ``box`` is object 1's."""

    boxes: dict[int, np.ndarray]
    lost: dict[int, bool]
    labels: np.ndarray  # (H, W) uint8, engine ids 0..N
    seconds: float
    probs: Any = None  # torch tensor (1 + N, H, W) when kept

    @property
    def box(self) -> np.ndarray:
        return self.boxes[1]


def select_device(requested: str) -> str:
    """``auto`` picks CUDA when present; asking for CUDA without one is a user error."""
    import torch

    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cpu":
        return "cpu"
    if requested.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError(f"--device {requested} was asked for but no CUDA GPU is available to PyTorch; "
                            "use --device cpu (or auto)")
        return requested
    raise UserError(f"unknown device {requested!r}; use auto, cpu, cuda or cuda:N")


@dataclass
class LoadedModel:
    """A model ready for inference, with where its weights came from."""

    model: Any
    name: str
    checkpoint: Path | None
    checkpoint_sha256: str | None
    device: str
    notes: list[str] = field(default_factory=list)
    partial_init: dict | None = None  # what a DeAOT -> MSDeAOT initialisation left new / unused


def load_model(config: TrackerConfig) -> LoadedModel:
    """Build the model on its device and load its weights strictly (or seed them at random)."""
    import torch

    from trek_tracker.modeling import checkpoints
    from trek_tracker.modeling.registry import build_model

    device = select_device(config.device)
    notes: list[str] = []
    path, sha, partial = None, None, None
    if config.random_weights:
        if config.checkpoint:
            raise UserError("--random-weights and --checkpoint exclude each other")
        model = build_model(config.model or DEFAULT_MODEL)
        notes.append("random weights: the output is meaningless (smoke test only)")
    else:
        path = _resolve_model_checkpoint(config)
        model, report = checkpoints.load_model(path, config.model, default_model=DEFAULT_MODEL)
        if report is not None:
            partial = report.to_dict()
            notes.append(f"{model.config.name} initialised from a DeAOT checkpoint: new (untrained) parts "
                         f"{', '.join(partial['new'])}")
        sha = sha256_of(path)
    model = model.to(torch.device(device)).eval()
    return LoadedModel(model, model.config.name, path, sha, device, notes, partial)


def _resolve_model_checkpoint(config: TrackerConfig) -> Path:
    from trek_tracker.weights import registry_entry, resolve_checkpoint

    value = config.checkpoint
    if value is None:
        from trek_tracker.modeling.registry import model_config

        name = config.model or DEFAULT_MODEL
        model_config(name)  # an unknown model name is reported as such
        try:
            registry_entry(name)
        except Exception:
            raise CheckpointError(f"model {name!r} has no official checkpoint: pass --checkpoint PATH "
                                  "(or --random-weights for a smoke test)") from None
        value = name  # the registry entry named like the model
    return resolve_checkpoint(value, kind="deaot")


def _as_rgb(image: Any) -> np.ndarray:
    """PIL image or (H, W, 3) uint8 RGB array -> contiguous uint8 array."""
    arr = np.asarray(image.convert("RGB")) if hasattr(image, "convert") else np.asarray(image)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
        raise InputError(f"images must be RGB uint8 (H, W, 3) arrays or PIL images, got {arr.dtype} {arr.shape}")
    return np.ascontiguousarray(arr)


class Tracker:
    """Box-initialised tracker: SAM/Alpha-Refine (or weight-free) init, DeAOT-family propagation."""

    def __init__(self, config: TrackerConfig | None = None, *, loaded: LoadedModel | None = None,
                 **overrides: Any) -> None:
        config = config or TrackerConfig()
        if overrides:
            config = TrackerConfig(**{**asdict(config), **overrides})
        self.config = config
        self.name = config.tracker_name()
        self.loaded = loaded or load_model(config)
        # Ensemble members beyond the first model, each with its own weights (spec deaot.md §5.4.5).
        self.members = [self.loaded] + [
            load_model(replace(config, model=m, checkpoint=c, ensemble_members=()))
            for m, c in config.ensemble_members
        ]
        self._check_combination()
        self.engine = None
        self.probs_sink: Callable[[int, Any], None] | None = None  # called with (frame index, probs)
        self._frame_index = 0
        self.init_info: dict[str, Any] = {}
        self._policies: dict[int, BoxFromMask] = {}
        self._labels: np.ndarray | None = None
        self._box_to_mask = None
        if config.init != "box":  # check init checkpoints now, before any output is written
            from trek_tracker.init.api import BoxToMask, InitConfig, resolve_checkpoint

            resolve_checkpoint(config.sam_checkpoint, kind="sam")
            resolve_checkpoint(config.ar_checkpoint, kind="alpha_refine")
            self._box_to_mask = BoxToMask(InitConfig(method=config.init, sam_checkpoint=config.sam_checkpoint,
                                                     ar_checkpoint=config.ar_checkpoint, device=self.loaded.device))

    def _check_combination(self) -> None:
        from trek_tracker.inference.ensemble import check_mode, check_weights
        from trek_tracker.inference.tta import parse_scales

        cfg = self.config
        check_mode(cfg.ensemble)
        check_weights(cfg.ensemble_weights, len(self.members))
        parse_scales(cfg.tta_scales)

    def _build_engine(self):
        """One engine per (member, TTA view); a plain VOSEngine without TTA or ensemble."""
        from trek_tracker.inference.engine import EngineConfig
        from trek_tracker.inference.ensemble import EnsembleEngine
        from trek_tracker.inference.memory import MemoryConfig
        from trek_tracker.inference.tta import tta_engine

        cfg = self.config
        memory = MemoryConfig(gap=cfg.long_term_gap, cap=cfg.max_long_term)
        base = EngineConfig(max_long_edge=cfg.max_long_edge, memory=memory)
        engines = [tta_engine(lm.model, base, cfg.tta_scales or (1.0,), cfg.tta_flip) for lm in self.members]
        if len(engines) == 1:
            return engines[0]
        return EnsembleEngine(engines, mode=cfg.ensemble, weights=list(cfg.ensemble_weights or [1.0] * len(engines)))

    def _first_view(self):
        """The first plain engine (for sizes and gaps in ``run.json``)."""
        engine = self.engine
        while hasattr(engine, "members"):
            engine = engine.members[0]
        return engine

    # ------------------------------------------------------------------ init
    def initial_mask(self, image: np.ndarray, box: np.ndarray) -> np.ndarray:
        """The first-frame mask for ``box`` by ``config.init``; details go to :attr:`init_info`."""
        method = self.config.init
        if method == "box":
            self.init_info = {"requested": "box", "method": "box"}
            return box_to_mask(box, image.shape[:2])
        result = self._box_to_mask(image, box)
        self.init_info = {"message": result.message, **result.details, "method": result.method}
        return result.mask

    def init(self, image: Any, box: Any = None, *, mask: np.ndarray | None = None) -> TrackResult:
        """Start on ``image`` from a box ``[x, y, w, h]`` (object 1) or a label ``mask`` (ids 1..N)."""
        start = time.perf_counter()
        frame = _as_rgb(image)
        if mask is None:
            if box is None:
                raise InputError("init needs a box [x, y, w, h] or a mask")
            box = check_box_in_frame(np.asarray(box, dtype=np.float64).reshape(-1), frame.shape[:2]).box
            labels = self.initial_mask(frame, box).astype(np.uint8)
            if not labels.any():  # an init method returned nothing: fall back to the box itself
                labels = box_to_mask(box, frame.shape[:2]).astype(np.uint8)
                self.init_info["fallback"] = "empty init mask: used the filled box"
            boxes = {1: np.asarray(box, dtype=np.float64)}
        else:
            labels = np.asarray(mask).astype(np.uint8)
            if labels.shape != frame.shape[:2]:
                raise InputError(f"init mask is {labels.shape[1]}x{labels.shape[0]} but the frame is "
                                 f"{frame.shape[1]}x{frame.shape[0]}; give a mask of the frame's size")
            n = int(labels.max())
            if n == 0:
                raise InputError("the init mask is empty: it must mark at least one object")
            boxes = {}
            for i in range(1, n + 1):
                b = mask_to_box(labels == i)
                if b is None:
                    raise InputError(f"the init mask has ids 1..{n} but object {i} has no pixels; "
                                     "object ids must be consecutive")
                boxes[i] = b
            self.init_info = {"requested": "mask", "method": "mask"}
        self.engine = self._build_engine()
        self.engine.add_reference(frame, labels)
        self._frame_index = 0
        if self.probs_sink is not None:  # frame 0: the reference itself, as one-hot probabilities
            n = int(labels.max())
            self.probs_sink(0, (labels[None] == np.arange(n + 1).reshape(-1, 1, 1)).astype(np.float32))
        policy_cfg = BoxFromMaskConfig(output=self.config.box_output,
                                       min_component_px=self.config.min_component_px)
        self._policies = {i: BoxFromMask(b, policy_cfg) for i, b in boxes.items()}
        self._labels = labels
        out_boxes = {i: p.last_box for i, p in self._policies.items()}
        return TrackResult(out_boxes, {i: False for i in boxes}, labels, time.perf_counter() - start)

    # ------------------------------------------------------------------ propagation
    def step(self, image: Any, *, keep_probs: bool = False) -> TrackResult:
        """Track one more frame: boxes, lost flags, the label map and the time it took."""
        if self.engine is None:
            raise RuntimeError("Tracker.init() must be called before step()/update()")
        start = time.perf_counter()
        out = self.engine.step(_as_rgb(image))
        labels = out.labels.to("cpu").numpy().astype(np.uint8)
        boxes, lost = {}, {}
        for i, policy in self._policies.items():
            boxes[i], lost[i] = policy.update(labels == i)
        if self.loaded.device.startswith("cuda"):
            import torch

            torch.cuda.synchronize()
        self._labels = labels
        self._frame_index += 1
        if self.probs_sink is not None:
            self.probs_sink(self._frame_index, out.probs)
        probs = out.probs.to("cpu") if keep_probs else None
        return TrackResult(boxes, lost, labels, time.perf_counter() - start, probs)

    def update(self, image: Any) -> np.ndarray:
        """The toolkit interface: the next frame's box ``[x, y, w, h]`` (object 1)."""
        return self.step(image).box

    @property
    def labels(self) -> np.ndarray | None:
        """The last label map (H, W) uint8 with ids 0..N."""
        return self._labels

    @property
    def mask(self) -> np.ndarray | None:
        """The last mask of object 1, bool (H, W)."""
        return None if self._labels is None else self._labels == 1

    def describe(self) -> dict[str, Any]:
        """What ``run.json`` records about this tracker."""
        lm = self.loaded
        info: dict[str, Any] = {
            "name": self.name,
            "model": lm.name,
            "model_config": lm.model.config.to_dict(),
            "checkpoint": None if lm.checkpoint is None else str(lm.checkpoint),
            "checkpoint_sha256": lm.checkpoint_sha256,
            "random_weights": self.config.random_weights,
            "device": lm.device,
            "settings": asdict(self.config),
            "init": self.init_info,
            "notes": lm.notes,
            "partial_init": lm.partial_init,
        }
        if len(self.members) > 1:
            info["ensemble"] = {
                "mode": self.config.ensemble,
                "weights": list(self.config.ensemble_weights or [1.0] * len(self.members)),
                "members": [{"model": m.name, "checkpoint": None if m.checkpoint is None else str(m.checkpoint),
                             "checkpoint_sha256": m.checkpoint_sha256, "partial_init": m.partial_init,
                             "notes": m.notes} for m in self.members],
            }
        if self.config.tta_scales or self.config.tta_flip:
            from trek_tracker.inference.tta import parse_scales, tta_views

            views = tta_views(parse_scales(self.config.tta_scales), self.config.tta_flip)
            info["tta"] = {"views": [{"scale": s, "flip": f} for s, f in views], "combine": "mean",
                           "memory_label": "own"}
        if self.engine is not None:
            view = self._first_view()
            info["network_input_size"] = list(view.input_size)
            info["long_term_gap"] = view.schedule.gap
        return info
