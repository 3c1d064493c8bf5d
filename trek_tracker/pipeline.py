"""The tracker: first-frame box (or mask) -> mask -> propagation -> box per frame.

:class:`Tracker` is what ``trek-track run``, ``trek-track eval``, VOS validation and the Python API all use.
It follows the got10k / TREK-150 toolkit interface (``init(image, box)``, ``update(image) -> [x, y, w, h]``)
and gives the whole per-frame result (boxes of every object, lost flags, label map, optionally the
probabilities) through :meth:`Tracker.step`. Walking a whole video, and writing what it produces, is
:mod:`trek_tracker.loop`'s job.

>>> tracker = Tracker(TrackerConfig(model="r50_deaotl", checkpoint="r50_deaotl"))
>>> tracker.init(first_frame, [313, 88, 342, 194])
>>> box = tracker.update(next_frame)          # np.ndarray [x, y, w, h]
>>> mask = tracker.mask                       # bool (H, W) for a single object
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import MISSING, Field, asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from trek_tracker.errors import CheckpointError, InputError
from trek_tracker.files import sha256_of
from trek_tracker.geometry import Box, BoxConfig, BoxFromMask, box_to_mask, mask_to_box
from trek_tracker.inference.ensemble import EnsembleConfig, ModelSpec
from trek_tracker.inference.memory import MemoryConfig
from trek_tracker.inference.preprocess import Frame
from trek_tracker.inference.tta import TTAConfig
from trek_tracker.init.api import InitConfig
from trek_tracker.init.refine import RefineConfig
from trek_tracker.sections import dataclass_from

if TYPE_CHECKING:
    from trek_tracker.device import Readback

DEFAULT_MODEL = "r50_deaotl"


@dataclass
class TrackerConfig:
    """Everything that decides what a tracker computes; recorded in ``run.json`` under ``settings`` with
    the same names (docs/config.md)."""

    model: str | None = None  # variant name; None = the checkpoint's own (our files), else r50_deaotl
    checkpoint: str | None = None  # path or registry name; None = the registry entry named like the model
    random_weights: bool = False  # smoke tests only: the output is meaningless
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: str = "auto"  # auto (bf16 on a GPU, fp32 on the CPU) | fp32 (the parity mode) | bf16 | fp16
    max_long_edge: int = 1040  # network input long edge (official default 1040)
    compile: bool = False  # torch.compile the model's per-frame calls (a GPU speed-up; minutes of warm-up)
    init: InitConfig = field(default_factory=InitConfig)
    memory: MemoryConfig = field(default_factory=MemoryConfig)
    tta: TTAConfig = field(default_factory=TTAConfig)
    ensemble: EnsembleConfig = field(default_factory=EnsembleConfig)
    box: BoxConfig = field(default_factory=BoxConfig)
    refine: RefineConfig = field(default_factory=RefineConfig)
    name: str | None = None  # tracker name for result folders; default derived from the model

    def __post_init__(self) -> None:
        # A section given as a mapping (``TrackerConfig(**run["tracker"]["settings"])``, the names run.json
        # records) becomes its config, instead of a dict that fails on first use.
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, dict) and f.default_factory is not MISSING:
                setattr(self, f.name, _section(type(f.default_factory()), value, f.name))

    def tracker_name(self) -> str:
        return self.name or f"trek-track-{self.model or DEFAULT_MODEL}"

    def models(self) -> list[ModelSpec]:
        """Every model that tracks: the first one, then the ensemble's further members."""
        return [ModelSpec(self.model, self.checkpoint), *self.ensemble.members]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _section(cls: type, values: dict[str, Any], where: str) -> Any:
    """The settings section ``cls`` from a mapping of its field names (nested sections too)."""
    def convert(f: Field, value: Any) -> Any:
        if isinstance(value, dict) and f.default_factory is not MISSING:
            return _section(type(f.default_factory()), value, f"{where}.{f.name}")
        return value

    return dataclass_from(cls, values, convert=convert, unknown=lambda names, _: InputError(
        f"unknown setting(s) {', '.join(f'{where}.{k}' for k in names)}; see docs/config.md"))


class FrameResult:
    """One frame's output. ``boxes`` maps object index (1..N) to its box; ``box`` is object 1's; ``lost``
    whether each object was lost; ``labels`` the (H, W) uint8 ids 0..N (None unless asked for, or for
    box-only trackers); ``probs`` the (1 + N, H, W) float tensor when asked for (``keep_probs``);
    ``seconds`` the tracker's own time for the frame (decoding and writing excluded).

    A tracker may hand the result over before it is computed (:meth:`deferred`): the boxes from what
    :meth:`ObjectBoxes.read` took, the label map and probabilities still on their way from the GPU
    (a :class:`~trek_tracker.device.Readback`). Whoever first reads them waits for them: the loop's writer
    thread, so that the GPU works on the next frame meanwhile and speck removal's labelling runs beside it.
    The boxes' own time is part of ``seconds``.
    """

    def __init__(self, boxes: dict[int, np.ndarray], lost: dict[int, bool], labels: np.ndarray | None,
                 seconds: float, probs: Any = None) -> None:
        self._boxes, self._lost = boxes, lost
        self._step_seconds, self._box_seconds = seconds, 0.0
        self._pending: PendingBoxes | None = None
        self._readback: Readback | None = None
        self._keep_labels = False
        self._labels, self._probs = labels, probs

    @classmethod
    def deferred(cls, pending: PendingBoxes, seconds: float, readback: Readback | None = None, *,
                 keep_labels: bool = False) -> FrameResult:
        """A result whose boxes ``pending`` computes when first asked for, and whose ``probs`` (and ``labels``
        with ``keep_labels``) are ``readback``'s. ``seconds`` is the host's time for the frame, replaced by the
        device's (:attr:`Readback.seconds`) when the readback measured it."""
        result = cls({}, {}, None, seconds)
        result._pending, result._readback, result._keep_labels = pending, readback, keep_labels
        return result

    def _resolve(self) -> None:
        pending = self._pending
        if pending is not None:
            self._boxes, self._lost = pending.result()
            self._box_seconds = pending.seconds
            self._pending = None

    def _received(self) -> None:
        readback = self._readback
        if readback is not None:
            values = readback.get()
            if self._keep_labels:
                self._labels = values["labels"].numpy()
            self._probs = values.get("probs")
            if readback.seconds is not None:
                self._step_seconds = readback.seconds
            self._readback = None

    @property
    def boxes(self) -> dict[int, np.ndarray]:
        self._resolve()
        return self._boxes

    @property
    def lost(self) -> dict[int, bool]:
        self._resolve()
        return self._lost

    @property
    def labels(self) -> np.ndarray | None:
        self._received()
        return self._labels

    @property
    def probs(self) -> Any:
        self._received()
        return self._probs

    @property
    def seconds(self) -> float:
        self._resolve()
        self._received()
        return self._step_seconds + self._box_seconds

    @property
    def box(self) -> np.ndarray:
        return self.boxes[1]


@dataclass
class LoadedModel:
    """A model ready for inference, with where its weights came from."""

    model: Any
    name: str
    checkpoint: Path | None
    checkpoint_sha256: str | None
    device: Any  # torch.device
    notes: list[str] = field(default_factory=list)
    partial_init: dict | None = None  # what a parent-family (e.g. DeAOT -> MSDeAOT) initialisation left

    def describe(self) -> dict[str, Any]:
        return {"model": self.name, "checkpoint": None if self.checkpoint is None else str(self.checkpoint),
                "checkpoint_sha256": self.checkpoint_sha256, "partial_init": self.partial_init, "notes": self.notes}


def prepare_model(spec: ModelSpec, device: Any, *, random_weights: bool = False, seed: int = 0) -> LoadedModel:
    """Build ``spec``'s model on ``device`` and load its weights strictly (or draw them at random from
    ``seed``: the same command then tracks with the same network, so a smoke run is reproducible and a
    ``--resume`` of one continues with the network it began with; the caller's random state is untouched)."""
    import torch

    from trek_tracker.modeling.checkpoints import load_model
    from trek_tracker.modeling.registry import build_model

    notes: list[str] = []
    path, sha, partial = None, None, None
    if random_weights:
        if spec.checkpoint:
            raise InputError("--random-weights and --checkpoint exclude each other")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = build_model(spec.model or DEFAULT_MODEL)
        notes.append("random weights: the output is meaningless (smoke test only)")
    else:
        path = _resolve_model_checkpoint(spec)
        model, report = load_model(path, spec.model, default_model=DEFAULT_MODEL)
        if report is not None:
            partial = report.to_dict()
            notes.append(f"{model.config.name} initialised from a {model.parent_family} checkpoint: new "
                         f"(untrained) parts {', '.join(partial['new'])}")
        sha = sha256_of(path)
    model = model.to(device).eval()
    return LoadedModel(model, model.config.name, path, sha, device, notes, partial)


def _resolve_model_checkpoint(spec: ModelSpec) -> Path:
    from trek_tracker.weights import registry_entry, resolve_checkpoint

    value = spec.checkpoint
    if value is None:
        from trek_tracker.modeling.registry import canonical_name, model_config

        name = spec.model or DEFAULT_MODEL
        model_config(name)  # an unknown model name is reported as such
        try:
            registry_entry(canonical_name(name))
        except Exception:
            raise CheckpointError(f"model {name!r} has no official checkpoint: pass --checkpoint PATH "
                                  "(or --random-weights for a smoke test)") from None
        value = canonical_name(name)  # the registry entry named like the model
    return resolve_checkpoint(value, kind="deaot")


def tracker_identity(config: TrackerConfig, device_kind: str) -> dict[str, Any]:
    """What decides a tracker's results, to tell two configurations apart: every setting but the device,
    ``compile`` (how fast, not what: a run may be resumed with or without it) and the name; the precision
    it resolves to on ``device_kind`` (cpu or cuda); and the sha256 of every checkpoint it loads (so that a
    renamed file is the same tracker and a changed file is not)."""
    import torch

    from trek_tracker.inference.preprocess import resolve_precision
    from trek_tracker.weights import resolve_checkpoint

    settings = config.to_dict()
    for key in ("device", "compile", "name"):
        settings.pop(key)
    files = [] if config.random_weights else [_resolve_model_checkpoint(spec) for spec in config.models()]
    if config.init.method not in ("box", "grabcut"):
        files += [resolve_checkpoint(v, kind=k) for v, k in ((config.init.sam_checkpoint, "sam"),
                                                             (config.init.hqsam_checkpoint, "hqsam"),
                                                             (config.init.ar_checkpoint, "alpha_refine")) if v]
    if config.refine.checkpoint:
        files.append(resolve_checkpoint(config.refine.checkpoint, kind="hqsam"))
    return {"tracker": "trek-track", "settings": settings,
            "precision": resolve_precision(config.precision, torch.device(device_kind)),
            "checkpoint_sha256": [sha256_of(f) for f in files]}


def as_rgb(image: Any) -> np.ndarray:
    """PIL image or (H, W, 3) uint8 RGB array -> contiguous uint8 array (checked once, here). PIL images of
    other modes are converted as the frame readers convert them (16-bit scaled to 8, not clipped white)."""
    if hasattr(image, "convert"):
        from trek_tracker.video import pil_to_rgb

        image = pil_to_rgb(image)
    arr = np.asarray(image)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
        raise InputError(f"images must be RGB uint8 (H, W, 3) arrays or PIL images, got {arr.dtype} {arr.shape}")
    return np.ascontiguousarray(arr)


def one_hot(labels: np.ndarray) -> np.ndarray:
    """A label map with ids 0..N as (1 + N, H, W) float32 probabilities (the reference frame's)."""
    n = int(labels.max())
    return (labels[None] == np.arange(n + 1).reshape(-1, 1, 1)).astype(np.float32)


class ObjectBoxes:
    """The lost-target policy of every object: one :class:`BoxFromMask` per object id 1..N.

    Label maps still on the device are reduced there to each object's extent (:meth:`wanted`); those
    extents, and the map itself only when a box depends on its pixels (speck removal), travel to the host
    without the caller waiting (:meth:`read`). The boxes are computed later, always in frame order, since a
    lost object holds the box of the frame before.
    """

    PENDING = 16  # frames whose boxes may wait (the loop's writer is at most 5 behind): a caller that never
    # reads them (masks only) does not accumulate frames

    def __init__(self, boxes: dict[int, np.ndarray], config: BoxConfig) -> None:
        self.policies = {i: BoxFromMask(b, config) for i, b in boxes.items()}
        self._queue: deque[PendingBoxes] = deque()
        self._lock = threading.Lock()

    @property
    def needs_pixels(self) -> bool:
        """Whether some object's box depends on more than its extent (speck removal)."""
        return any(policy.needs_pixels for policy in self.policies.values())

    def update(self, labels: Any) -> tuple[dict[int, np.ndarray], dict[int, bool]]:
        """Boxes and lost flags from a label map: a numpy array, or a tensor on any device."""
        return self.measure(labels).result()

    def measure(self, labels: Any) -> PendingBoxes:
        """The boxes of ``labels`` (a numpy array, or a tensor on any device), computed by
        :meth:`PendingBoxes.result`; a tensor is read by :meth:`wanted` and :meth:`read`."""
        from trek_tracker.device import Readback

        if isinstance(labels, np.ndarray):
            return self._queued(PendingBoxes(self, labels=labels))
        return self.read(Readback(self.wanted(labels)))

    def wanted(self, labels: Any) -> dict[str, Any]:
        """What the boxes of a label tensor need on the host, computed where the tensor is: the objects'
        extents (``"extents"``), and the map (``"labels"``) when speck removal labels the objects' pixels."""
        wanted = {"extents": object_extents(labels, max(self.policies))}
        if self.needs_pixels:
            wanted["labels"] = labels
        return wanted

    def read(self, readback: Readback) -> PendingBoxes:
        """The boxes of the frame whose :meth:`wanted` tensors ``readback`` carries."""
        return self._queued(PendingBoxes(self, readback=readback))

    def _queued(self, pending: PendingBoxes) -> PendingBoxes:
        with self._lock:
            self._queue.append(pending)
            while len(self._queue) > self.PENDING:
                self._queue.popleft()._compute(self.policies)
        return pending

    def _compute_until(self, pending: PendingBoxes) -> None:
        pending.receive()  # outside the lock: the tracking thread queues the next frame meanwhile
        with self._lock:
            while pending.done is None:
                self._queue.popleft()._compute(self.policies)

    def last(self) -> dict[int, np.ndarray]:
        return {i: p.last_box for i, p in self.policies.items()}

    def settle(self) -> dict[int, np.ndarray]:
        """Compute every measured frame's boxes now; the last box of each object (the policies' state)."""
        with self._lock:
            while self._queue:
                self._queue.popleft()._compute(self.policies)
        return self.last()


class PendingBoxes:
    """One frame's boxes, to be computed from its label map on the host (``labels``), or from what
    :meth:`ObjectBoxes.wanted` sent on its way (``readback``): each object's extent, and the map when speck
    removal needs the object's crop."""

    def __init__(self, owner: ObjectBoxes, *, labels: np.ndarray | None = None,
                 readback: Readback | None = None) -> None:
        self._owner, self._labels, self._readback = owner, labels, readback
        self.done: tuple[dict[int, np.ndarray], dict[int, bool]] | None = None
        self.seconds = 0.0  # the time computing them took (waiting for the device excluded)

    def result(self) -> tuple[dict[int, np.ndarray], dict[int, bool]]:
        """The boxes and lost flags, computed now if need be (with every earlier frame's, first)."""
        if self.done is None:
            self._owner._compute_until(self)
        return self.done

    def receive(self) -> None:
        """Wait until what the boxes need is on the host."""
        readback = self._readback
        if readback is not None:
            readback.get()

    def _compute(self, policies: dict[int, BoxFromMask]) -> None:
        self.receive()
        start = time.perf_counter()
        boxes, lost = {}, {}
        if self._readback is None:
            for i, policy in policies.items():
                boxes[i], lost[i] = policy.update(self._labels == i)
        else:
            values = self._readback.get()
            extents = values["extents"].numpy()
            labels = values["labels"].numpy() if "labels" in values else None
            for i, policy in policies.items():
                x0, y0, x1, y1 = (int(v) for v in extents[i - 1])
                if x0 < 0:
                    boxes[i], lost[i] = policy.take(None)
                elif policy.needs_pixels:
                    boxes[i], lost[i] = policy.update(labels[y0:y1 + 1, x0:x1 + 1] == i, origin=(x0, y0))
                else:
                    boxes[i], lost[i] = policy.take(np.array([x0, y0, x1 - x0 + 1, y1 - y0 + 1], dtype=np.float64))
        self._labels = self._readback = None
        self.seconds = time.perf_counter() - start
        self.done = boxes, lost


def object_extents(labels: Any, n: int) -> Any:
    """(n, 4) inclusive pixel extents ``x0, y0, x1, y1`` of objects 1..n in a label tensor, as a tensor where
    the label tensor is; -1 for an absent object. One small download instead of the whole map."""
    import torch

    h, w = labels.shape
    ids = torch.arange(1, n + 1, device=labels.device, dtype=labels.dtype).view(n, 1, 1)
    mask = labels[None] == ids
    rows, cols = mask.any(dim=2).to(torch.uint8), mask.any(dim=1).to(torch.uint8)
    out = torch.stack([cols.argmax(1), rows.argmax(1), w - 1 - cols.flip(1).argmax(1),
                       h - 1 - rows.flip(1).argmax(1)], dim=1)
    return out.masked_fill((rows.amax(1) == 0)[:, None], -1)  # not out[mask] = -1: that counts the mask (a sync)


class Tracker:
    """Box-initialised tracker: SAM/Alpha-Refine (or weight-free) init, DeAOT-family propagation.

    Everything that can fail on the user's input or files (models, checkpoints, the init networks) is
    opened here, before any frame is seen, so a caller can check a run completely before writing anything.
    ``loaded`` passes an already-built model (VOS validation during training).

    Frames are RGB ``uint8`` (H, W, 3) arrays (BGR from ``cv2.imread`` is not detected: convert it) or PIL
    images; boxes are ``[x, y, w, h]`` in pixels (list, tuple, array or tensor). A tracker follows one video:
    :meth:`init` starts a new one (nothing of the previous video is kept), and a failed :meth:`init` leaves
    none. It is not thread-safe: drive each tracker from one thread at a time. Separate trackers may run in
    separate threads, all of one precision (the GPU kernel flags that precision sets are process-wide).
    """

    def __init__(self, config: TrackerConfig | None = None, *, loaded: LoadedModel | None = None) -> None:
        from trek_tracker.device import select_device
        from trek_tracker.inference.preprocess import Uploader, autocast_dtype, resolve_precision

        self.config = config = config or TrackerConfig()
        self.name = config.tracker_name()
        device = loaded.device if loaded is not None else select_device(config.device)
        self.precision = resolve_precision(config.precision, device)
        specs = ([] if loaded is not None else config.models()[:1]) + list(config.ensemble.members)
        owned = [prepare_model(spec, device, random_weights=config.random_weights, seed=i)  # members differ
                 for i, spec in enumerate(specs)]
        if self.precision != "fp32":  # models built here run only under this autocast: store their weights in it
            for member in owned:
                member.model.store_for_autocast(autocast_dtype(self.precision))
                member.notes.append(f"convolution and linear weights stored in {self.precision} for autocast")
        self.members = ([loaded] if loaded is not None else []) + owned
        self.loaded = self.members[0]
        self.device = device
        if config.compile:
            for member in self.members:
                member.model.compile_inference()
        self._use_kernels()
        self._uploader = Uploader(device)
        self.engine = None
        self.init_info: dict[str, Any] = {}
        self._boxes: ObjectBoxes | None = None
        self._labels: np.ndarray | None = None
        self._labels_device = None
        self._box_to_mask = None
        if config.init.method != "box":
            from trek_tracker.init.api import BoxToMask

            self._box_to_mask = BoxToMask(config.init, str(device)).load()
        self._refiner = None
        if config.refine.checkpoint is not None:
            from trek_tracker.init.refine import HQSamRefiner

            self._refiner = HQSamRefiner.from_checkpoint(config.refine.checkpoint, device=str(device),
                                                         iou_threshold=config.refine.min_iou)

    def _use_kernels(self) -> None:
        """Set the process's GPU kernel flags for this tracker's precision (fp32 is the parity mode: no TF32, no
        autotuning). They are process-wide, so each start and frame sets them again: a tracker of another
        precision built in the same process in between must not change what this one computes."""
        from trek_tracker.device import set_fast_kernels

        set_fast_kernels(self.device, self.precision != "fp32")

    def _build_engine(self):
        """One engine per (member, TTA view); a plain VOSEngine without TTA or ensemble."""
        from trek_tracker.inference.engine import EngineConfig
        from trek_tracker.inference.ensemble import EnsembleEngine
        from trek_tracker.inference.tta import tta_engine

        cfg = self.config
        base = EngineConfig(max_long_edge=cfg.max_long_edge, memory=cfg.memory, precision=self.precision)
        engines = [tta_engine(lm.model, base, cfg.tta) for lm in self.members]
        if len(engines) == 1:
            return engines[0]
        weights = list(cfg.ensemble.weights or [1.0] * len(engines))
        return EnsembleEngine(engines, mode=cfg.ensemble.mode, weights=weights)

    def _first_view(self):
        """The first plain engine (for sizes and the memory schedule in ``run.json``)."""
        engine = self.engine
        while hasattr(engine, "members"):
            engine = engine.members[0]
        return engine

    # ------------------------------------------------------------------ init
    def initial_mask(self, image: np.ndarray, box: Box) -> np.ndarray:
        """The first-frame mask for ``box`` by ``config.init``; details go to :attr:`init_info`."""
        if self._box_to_mask is None:
            self.init_info = {"requested": "box", "method": "box"}
            return box_to_mask(box, image.shape[:2])
        result = self._box_to_mask(image, box)
        self.init_info = {"message": result.message, **result.details, "method": result.method}
        return result.mask

    def init(self, image: Any, box: Box | Any = None, *, mask: np.ndarray | None = None,
             keep_probs: bool = False, keep_labels: bool = True) -> FrameResult:
        """Start on ``image`` from a box ``[x, y, w, h]`` (object 1) or a label ``mask`` (ids 1..N).

        A box is checked against the frame here (clipped when it overlaps the frame partly); the result's
        box of object 1 is the box the tracker started from.
        """
        import torch

        from trek_tracker.device import synchronize

        start = time.perf_counter()
        self._forget()  # a start that fails leaves no video to continue, least of all the previous one
        self._use_kernels()
        frame = as_rgb(image)
        size = frame.shape[:2]
        if box is not None and mask is not None:  # which one to start from is the caller's to say
            raise InputError("init takes a box [x, y, w, h] or a mask, not both")
        if mask is None:
            if box is None:
                raise InputError("init needs a box [x, y, w, h] or a mask")
            box = Box.of(box).in_frame(size)
            labels = self.initial_mask(frame, box).astype(np.uint8)
            if not labels.any():  # an init method returned nothing: fall back to the box itself
                labels = box_to_mask(box, size).astype(np.uint8)
                self.init_info["fallback"] = "empty init mask: used the filled box"
            boxes = {1: np.asarray(box, dtype=np.float64)}
        else:
            labels = check_label_map(mask, size)
            boxes = {}
            for i in range(1, int(labels.max()) + 1):
                b = mask_to_box(labels == i)
                if b is None:
                    raise InputError(f"the init mask has ids 1..{int(labels.max())} but object {i} has no "
                                     "pixels; object ids must be consecutive")
                boxes[i] = b
            self.init_info = {"requested": "mask", "method": "mask"}
        engine = self._build_engine()
        engine.add_reference(Frame(frame, self._uploader), labels)
        synchronize(self.device)  # the reference frame's time is its own, not the first step's
        self.engine, self._boxes = engine, ObjectBoxes(boxes, self.config.box)
        self._labels = labels
        probs = torch.from_numpy(one_hot(labels)) if keep_probs else None  # a tensor, as every later frame's
        return FrameResult(self._boxes.last(), {i: False for i in boxes}, labels if keep_labels else None,
                           time.perf_counter() - start, probs)

    # ------------------------------------------------------------------ propagation
    def step(self, image: Any, *, keep_probs: bool = False, keep_labels: bool = True) -> FrameResult:
        """Track one more frame: boxes, lost flags, the label map (``keep_labels``) and the time it took.

        On a GPU the call returns once the frame's work is queued, without waiting for it: the label map
        stays on the device, reduced there to what the boxes need, and that (with the map when asked for)
        comes back to the host while the caller queues the next frame. The result's values are waited for
        when first read (:meth:`FrameResult.deferred`); ``update`` reads the box at once.
        """
        import torch

        from trek_tracker.device import Readback, device_clock

        if self.engine is None:
            raise RuntimeError("Tracker.init() must be called (and succeed) before step()/update()")
        start = time.perf_counter()
        self._use_kernels()
        began = device_clock(self.device)
        frame = as_rgb(image)
        out = self.engine.step(Frame(frame, self._uploader))
        labels = out.labels.to(torch.uint8)
        if self._refiner is not None:  # HQTrack: the output is refined, the memory keeps its own labels
            labels = torch.from_numpy(self._refiner(frame, labels.cpu().numpy()).labels)
        wanted = self._boxes.wanted(labels)
        if keep_labels:
            wanted["labels"] = labels
        if keep_probs:
            wanted["probs"] = out.probs
        readback = Readback(wanted, since=began)
        self._labels_device, self._labels = labels, None
        return FrameResult.deferred(self._boxes.read(readback), time.perf_counter() - start, readback,
                                    keep_labels=keep_labels)

    # ------------------------------------------------------------------ saving and restoring
    def state(self) -> dict[str, Any]:
        """Everything the tracker carries from one frame to the next (each engine's memory, each object's
        last box, the init details), as plain values and CPU tensors: :meth:`restore` on a tracker with the
        same settings continues exactly where this one stands. Called between frames."""
        if self.engine is None:
            raise RuntimeError("Tracker.init() must be called (and succeed) before state()")
        from trek_tracker.files import plain

        last = self._boxes.settle()
        return {"engine": self.engine.state(), "boxes": {int(i): [float(v) for v in b] for i, b in last.items()},
                "init_info": plain(self.init_info)}

    def restore(self, state: dict[str, Any]) -> None:
        """Continue from what :meth:`state` saved: the next :meth:`step` predicts the frame after it."""
        self._forget()
        engine = self._build_engine()
        engine.load_state(state["engine"])
        boxes = ObjectBoxes({int(i): np.asarray(b, dtype=np.float64) for i, b in state["boxes"].items()},
                            self.config.box)
        self.engine, self._boxes, self.init_info = engine, boxes, dict(state["init_info"])

    def _forget(self) -> None:
        """Drop the video being tracked: until a start succeeds, :meth:`step` refuses and :meth:`describe`
        reports no input size (a half-built engine would continue nothing, or fail on its missing sizes) and
        no init details (those of the video before are not this one's)."""
        self.engine = self._boxes = None
        self._labels = self._labels_device = None
        self.init_info = {}

    def update(self, image: Any) -> np.ndarray:
        """The toolkit interface: the next frame's box ``[x, y, w, h]`` (object 1)."""
        return self.step(image).box

    @property
    def labels(self) -> np.ndarray | None:
        """The last label map (H, W) uint8 with ids 0..N (downloaded from the device when first asked for)."""
        if self._labels is None and self._labels_device is not None:
            self._labels = self._labels_device.cpu().numpy()
        return self._labels

    @property
    def mask(self) -> np.ndarray | None:
        """The last mask of object 1, bool (H, W)."""
        labels = self.labels
        return None if labels is None else labels == 1

    def describe(self) -> dict[str, Any]:
        """What ``run.json`` records about this tracker."""
        lm = self.loaded
        info: dict[str, Any] = {
            "name": self.name,
            **lm.describe(),
            "model_config": lm.model.config.to_dict(),
            "random_weights": self.config.random_weights,
            "device": str(self.device),
            "precision": self.precision,
            "settings": self.config.to_dict(),
            "init": self.init_info,
        }
        if len(self.members) > 1:
            info["ensemble"] = {"mode": self.config.ensemble.mode,
                                "weights": list(self.config.ensemble.weights or [1.0] * len(self.members)),
                                "members": [m.describe() for m in self.members]}
        if self.config.tta.active:
            info["tta"] = {"views": [{"scale": s, "flip": f} for s, f in self.config.tta.views()],
                           "combine": "mean", "memory_label": "own"}
        if self.engine is not None:
            view = self._first_view()
            info["network_input_size"] = list(view.input_size)
            info["memory"] = view.schedule.to_dict()
        return info


def check_label_map(mask: Any, size: tuple[int, int]) -> np.ndarray:
    """A label map with ids 0..N for a frame of ``size``, as uint8 (checked once, here)."""
    arr = np.asarray(mask)
    if arr.ndim != 2 or arr.shape != tuple(size):
        raise InputError(f"init mask is {_size(arr.shape)} but the frame is {size[1]}x{size[0]}; give a mask of "
                         "the frame's size")
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    if not np.issubdtype(arr.dtype, np.integer):
        raise InputError(f"init mask must hold integer object ids, got {arr.dtype}")
    if arr.size and (int(arr.min()) < 0 or int(arr.max()) > 255):
        raise InputError(f"init mask ids must be in 0..255, got {int(arr.min())}..{int(arr.max())}")
    if not arr.any():
        raise InputError("the init mask is empty: it must mark at least one object")
    return arr.astype(np.uint8)


def _size(shape: tuple[int, ...]) -> str:
    return f"{shape[1]}x{shape[0]}" if len(shape) >= 2 else str(shape)
