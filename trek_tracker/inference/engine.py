"""Per-video inference state for DeAOT-family models: object groups, memories, resizing.

The official evaluator's procedure (docs/inference.md), made explicit:

* the first frame's mask becomes the reference: every layer attends to the frame itself and the frame
  enters both memories;
* each later frame is encoded once, propagated against the memory of each group of at most 10 objects,
  decoded, upsampled to the original resolution, merged over groups, and its arg-max label is fed back:
  nearest-resized to the network input, embedded, and fused into this frame's memory entries (no second
  network pass);
* what enters the memory, when, and what leaves it is :mod:`trek_tracker.inference.memory`'s business.

The official evaluator runs object groups one after another, and each TTA view as its own engine. Here the
groups, and the plain and mirrored views of one scale (``EngineConfig.flips``), are one batch: batch item
``v * G + g`` is view ``v``'s group ``g``, the encoder runs once per view, and one :class:`Memory` holds
every item (they always store the same frames). Each item computes what it would alone.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from trek_tracker.device import constant_tensors
from trek_tracker.errors import InputError
from trek_tracker.inference.memory import Memory, MemoryConfig, MemorySchedule
from trek_tracker.inference.preprocess import (
    Frame,
    autocast,
    check_frame,
    device_network_input,
    input_size,
    resize_labels,
    to_network_input,
)
from trek_tracker.modeling.base import LayerLayout, VOSModel


@dataclass
class EngineConfig:
    """How frames are fed to the network: resolution caps, TTA scale, the views of that scale (``flips``:
    False = plain, True = mirrored; several are tracked as one batch), memory settings, and the compute
    precision (``fp32``: the official CPU preprocessing and float32 everywhere, the parity mode;
    ``bf16``/``fp16``: preprocessing on the device and autocast; docs/inference.md#precision)."""

    max_long_edge: float | None = 1040
    max_short_edge: float | None = None
    scale: float = 1.0
    flips: tuple[bool, ...] = (False,)
    memory: MemoryConfig = field(default_factory=MemoryConfig)
    precision: str = "fp32"

    def __post_init__(self) -> None:
        self.flips = tuple(bool(f) for f in self.flips)
        if not self.flips or len(set(self.flips)) != len(self.flips):
            raise InputError(f"an engine's views must be distinct flips, e.g. (False, True); got {self.flips}")


@dataclass
class FrameOutput:
    """What the engine predicts for one frame, at the frame's original resolution."""

    labels: torch.Tensor  # (H, W) int64 engine ids 0..N
    probs: torch.Tensor  # (1 + N, H, W) float32: background, then objects 1..N
    logits: list[torch.Tensor]  # raw logits per group (1, 1 + max_objects, h, w) at the model's output
    # stride (4x for DeAOT, 8x for MSDeAOT), before masking, in the view's own (possibly mirrored) frame


class VOSEngine:
    """Tracks the objects of one video. Create one per video (and per TTA scale).

    ``add_reference(frame, labels)`` starts the video from a label map with ids ``0..N`` (0 = background);
    ``step(frame)`` predicts the next frame and updates the memory with its own prediction. An engine with
    several views answers :meth:`predict_views` (one output per view) and :meth:`commit_views`.
    """

    def __init__(self, model: VOSModel, config: EngineConfig | None = None) -> None:
        if model.training:  # dropout and drop-path would make tracking random, silently
            raise ValueError("a VOSEngine tracks with a model in eval mode: call model.eval() first")
        self.model = model
        self.device: torch.device = next(model.parameters()).device  # read once: asked for several times a frame
        self.config = config or EngineConfig()
        self.schedule: MemorySchedule = self.config.memory.resolve(model.config)
        self.max_objects = model.config.max_objects
        self.memory: Memory | None = None  # batch item v * G + g: view v, object group g
        self.group_sizes: list[int] = []  # objects in each group (at most max_objects)
        self.num_objects = 0
        self.frame_size: tuple[int, int] | None = None
        self.input_size: tuple[int, int] | None = None
        self.token_grid: tuple[int, int] | None = None
        self.layout = []  # per GPM layer: grid and long-term subsampling (MSDeAOT layers differ in stride)
        self.frame_step = 0
        self._pending: list | None = None  # the last predicted frame's memory entries, until committed
        # Variant-specific preprocessing (VMOS resizes the uint8 frame and enlarges small frames).

    # ------------------------------------------------------------------ inputs
    @property
    def views(self) -> int:
        return len(self.config.flips)

    def _network_input(self, frame: Frame) -> torch.Tensor:
        """(V, 3, h, w): the frame once per view. A mirrored view is the plain input flipped, which is what
        flipping inside the preprocessing computes (the flip follows the resize; the rest is per pixel)."""
        if self.frame_size is None:
            raise RuntimeError("add_reference() must be called before step()")
        if tuple(frame.shape[:2]) != self.frame_size:
            raise InputError(f"frame size {frame.shape[1]}x{frame.shape[0]} differs from the first frame's "
                             f"{self.frame_size[1]}x{self.frame_size[0]}: a video's frames all have one size (start a "
                             "new video with init())")
        if self.config.precision == "fp32":
            x = to_network_input(frame.host, self.input_size, resize=self.model.config.input_resize)
            x = x.to(self.device, non_blocking=True)
        else:
            x = device_network_input(frame.tensor().to(self.device), self.input_size,
                                     resize=self.model.config.input_resize)
        return torch.cat([x.flip(-1) if f else x for f in self.config.flips])

    def _autocast(self):
        return autocast(self.device, self.config.precision)

    def _per_item(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        """Per-view features (V, ...) -> per batch item (V·G, ...): each view's repeated for its groups."""
        groups = len(self.group_sizes)
        return feats if groups == 1 else [f.repeat_interleave(groups, dim=0) for f in feats]

    def _one_hot(self, labels: Sequence[torch.Tensor]) -> torch.Tensor:
        """Each view's original-resolution labels -> one-hot (V·G, 1 + max_objects, h, w) at network input
        size, flipped like the view's image, each group's objects renumbered 1..10."""
        ids = torch.stack([resize_labels(lab.to(self.device), self.input_size, flip=f)
                           for lab, f in zip(labels, self.config.flips, strict=True)])[:, None].float()  # (V, 1, h, w)
        groups = len(self.group_sizes)
        start = torch.arange(groups, device=ids.device, dtype=ids.dtype).repeat(self.views) * self.max_objects
        ids = ids.repeat_interleave(groups, dim=0) - start.view(-1, 1, 1, 1)
        ids = torch.where((ids >= 1) & (ids <= self.max_objects), ids, torch.zeros_like(ids))
        classes = torch.arange(self.max_objects + 1, device=ids.device, dtype=ids.dtype).view(1, -1, 1, 1)
        return (ids == classes).float()

    # ------------------------------------------------------------------ reference
    @torch.inference_mode()
    def add_reference(self, frame: np.ndarray | Frame, labels: np.ndarray | torch.Tensor) -> None:
        """Start (or re-anchor) tracking from ``labels`` (H, W) with ids 0..N on ``frame`` (H, W, 3 RGB).

        A later reference is either the frame just predicted (its labels corrected, as the official
        evaluator adds new objects: the reference takes that frame's place in the memory, instead of a
        commit) or the next frame of the video, not predicted (it counts as a frame of its own).
        """
        frame = frame if isinstance(frame, Frame) else Frame(frame)
        check_frame(frame.host)  # before the mask: a 0-sized frame must not reach the mask's max
        labels = np.asarray(labels)
        if labels.ndim != 2 or tuple(labels.shape) != tuple(frame.shape[:2]):
            raise InputError(f"mask size {tuple(labels.shape[::-1])} differs from the frame size "
                             f"{tuple(frame.shape[1::-1])}")
        if labels.dtype.kind == "f" and not np.isfinite(labels).all():
            raise InputError("the initial mask holds NaN or infinite values: it must hold object ids 0..N")
        num_objects = int(labels.max())  # on the host, where the map is
        if num_objects < 1:
            raise InputError("the initial mask is empty: it must mark at least one object")
        if self.frame_size is None:
            self.frame_size = tuple(frame.shape[:2])
            h, w = self.frame_size
            self.input_size = input_size(h, w, max_long_edge=self.config.max_long_edge,
                                         max_short_edge=self.config.max_short_edge, scale=self.config.scale,
                                         align_corners=self.model.align_corners,
                                         min_short_edge=self.model.config.min_short_edge)
        elif num_objects > self.num_objects and math.ceil(num_objects / self.max_objects) > len(self.group_sizes):
            raise InputError("a later reference frame may not add object groups (at most "
                             f"{len(self.group_sizes) * self.max_objects} objects in this video)")
        with self._autocast():
            feats = self.model.encode(self._network_input(frame))
        self.token_grid = tuple(feats[-1].shape[-2:])
        self.layout = self.model.memory_layout(feats)
        self.num_objects = max(self.num_objects, num_objects)
        groups = math.ceil(self.num_objects / self.max_objects)
        self.group_sizes = [min(self.max_objects, self.num_objects - g * self.max_objects) for g in range(groups)]
        if self.memory is None:
            self.memory = Memory(self.layout, self.schedule)
        labels_t = torch.as_tensor(np.ascontiguousarray(labels), dtype=torch.int64,  # a rotated or flipped view
                                   device=self.device)  # (negative strides) cannot be wrapped as it is
        with self._autocast():
            id_emb = self.model.id_embedding(self._one_hot([labels_t] * self.views))
            _, entries = self.model.propagate(self._per_item(feats), None, id_emb)
        if self._pending is not None:  # the frame just predicted: the reference replaces its commit
            self._pending = None
        elif self.memory.frames:  # a frame not predicted: the next one
            self.frame_step += 1
        self.memory.remember(self.frame_step, entries, [e.id_value for e in entries], reference=True)

    # ------------------------------------------------------------------ propagation
    @torch.inference_mode()
    def step(self, frame: np.ndarray | Frame) -> FrameOutput:
        """Predict ``frame`` and update the memory with the prediction (a single-view engine)."""
        out = self.predict(frame)
        self.commit(out.labels)
        return out

    @torch.inference_mode()
    def predict(self, frame: np.ndarray | Frame) -> FrameOutput:
        """Predict ``frame`` without touching the memory (call :meth:`commit` with the final labels).

        Split from :meth:`step` so that test-time augmentation and ensembles can decide the labels the
        engine remembers. A single-view engine; see :meth:`predict_views` for several.
        """
        if self.views != 1:
            raise RuntimeError(f"this engine tracks {self.views} views: use predict_views()")
        return self.predict_views(frame)[0]

    @torch.inference_mode()
    def predict_views(self, frame: np.ndarray | Frame) -> list[FrameOutput]:
        """Each view's prediction of ``frame`` at the frame's resolution (un-mirrored), memory untouched."""
        if self.memory is None:
            raise RuntimeError("add_reference() must be called before step()")
        frame = frame if isinstance(frame, Frame) else Frame(frame)
        with self._autocast():
            feats = self.model.encode(self._network_input(frame))
            tokens, entries = self.model.propagate(self._per_item(feats), self.memory.attend())
            raw = self.model.decode(tokens, self._per_item(feats))
        self.frame_step += 1  # counted once predicted: a frame refused (wrong size) leaves the schedule as it was
        self._pending = entries
        # Upsampling, softmax and arg-max in float32 whatever the compute precision: half-precision
        # probabilities would quantise the labels at object boundaries.
        upsampled = self._upsample(raw.float())
        groups = len(self.group_sizes)
        outputs = []
        for v in range(self.views):
            items = range(v * groups, (v + 1) * groups)
            probs = self.merge_groups([upsampled[i:i + 1] for i in items])
            outputs.append(FrameOutput(labels=channel_argmax(probs), probs=probs[: self.num_objects + 1],
                                       logits=[raw[i:i + 1] for i in items]))
        return outputs

    def _upsample(self, raw: torch.Tensor) -> torch.Tensor:
        """Mask each group's unused ids, resize the logits to the original frame, undo the mirroring:
        (V·G, 1 + max_objects, H, W).

        With one group only its ``1 + N`` live channels are resized, (V, 1 + N, H, W): a masked id's softmax
        weight is exactly 0, so the probabilities are the same, for a fraction of the work at 1080p (a
        single object: 2 channels instead of 11). Several groups keep every channel, which the official
        merge counts.
        """
        if len(self.group_sizes) == 1:
            return self._resize_and_unmirror(raw[:, : self.num_objects + 1])
        unused = _unused_channels(tuple(self.group_sizes * self.views), raw.shape[1], raw.device)
        return self._resize_and_unmirror(raw.masked_fill(unused, -1e10))

    def _resize_and_unmirror(self, logits: torch.Tensor) -> torch.Tensor:
        logits = F.interpolate(logits, size=self.frame_size, mode="bilinear",
                               align_corners=self.model.align_corners)
        groups = len(self.group_sizes)
        for v, mirrored in enumerate(self.config.flips):
            if mirrored:
                logits[v * groups:(v + 1) * groups] = logits[v * groups:(v + 1) * groups].flip(-1)
        return logits

    def merge_groups(self, logits: list[torch.Tensor]) -> torch.Tensor:
        """Per-group logits -> probabilities: one group's live channels (1 + N, H, W) by a plain softmax,
        several groups' (1 + 10·G, H, W) merged.

        Several groups are merged as the official ``soft_logit_aggregation``: background = product of the
        groups' background probabilities, objects = each group's own, clamped to [1e-5, 1-1e-5], back to
        logits, softmax.
        """
        if len(logits) == 1:
            return torch.softmax(logits[0], dim=1)[0]
        return torch.softmax(merged_group_logits(logits, self.max_objects), dim=1)[0]

    @torch.inference_mode()
    def commit(self, labels: torch.Tensor) -> None:
        """Fuse the final ``labels`` (H, W) of the last predicted frame into every view's memory entries."""
        self.commit_views([labels] * self.views)

    @torch.inference_mode()
    def commit_views(self, labels: Sequence[torch.Tensor]) -> None:
        """Fuse each view's final labels (H, W), in view order, into its memory entries."""
        if self._pending is None:
            raise RuntimeError("commit() must follow predict()")
        if len(labels) != self.views:
            raise ValueError(f"{len(labels)} label maps for {self.views} views")
        with self._autocast():
            id_emb = self.model.id_embedding(self._one_hot([lab.to(self.device) for lab in labels]))
            id_values = [self.model.fuse_id(i, e, id_emb) for i, e in enumerate(self._pending)]
        self.memory.remember(self.frame_step, self._pending, id_values)
        self._pending = None

    # ------------------------------------------------------------------ saving and restoring
    def state(self) -> dict:
        """The engine between two frames (sizes, object groups, frame count, memory) as plain values and CPU
        tensors; :meth:`load_state` continues from it exactly."""
        if self.memory is None or self._pending is not None:
            raise RuntimeError("an engine's state is saved between frames, after add_reference()")
        return {"frame_size": self.frame_size, "input_size": self.input_size, "token_grid": self.token_grid,
                "layout": [(tuple(layer.grid), layer.long_term_dilation) for layer in self.layout],
                "frame_step": self.frame_step, "num_objects": self.num_objects, "group_sizes": list(self.group_sizes),
                "memory": self.memory.state()}

    def load_state(self, state: dict) -> None:
        """Continue from what :meth:`state` saved (on this engine's device, in its precision)."""
        self.frame_size, self.input_size = tuple(state["frame_size"]), tuple(state["input_size"])
        self.token_grid = tuple(state["token_grid"])
        self.layout = [LayerLayout(tuple(grid), int(d)) for grid, d in state["layout"]]
        self.frame_step, self.num_objects = int(state["frame_step"]), int(state["num_objects"])
        self.group_sizes = [int(n) for n in state["group_sizes"]]
        self.memory = Memory(self.layout, self.schedule)
        self.memory.load_state(state["memory"], self.device)
        self._pending = None

    def long_term_tokens(self) -> int:
        """Tokens in the long-term memory of one batch item, first layer."""
        return self.memory.long_term_tokens()


def merged_group_logits(logits: list[torch.Tensor], max_objects: int) -> torch.Tensor:
    """The official soft aggregation of several groups' logits, returned as logits (1, 1 + 10·G, H, W)."""
    bg, fg = [], []
    for lg in logits:
        p = torch.softmax(lg, dim=1)
        bg.append(p[:, :1])
        fg.append(p[:, 1:1 + max_objects])
    bg_prob = torch.prod(torch.cat(bg, dim=1), dim=1, keepdim=True)
    return torch.logit(torch.cat([bg_prob] + fg, dim=1).clamp(1e-5, 1 - 1e-5))


def channel_argmax(probs: torch.Tensor) -> torch.Tensor:
    """Arg-max over the channel axis of (C, H, W): the first maximal channel, like ``argmax(dim=0)``.

    ``max(0).indices`` computes the same labels 5-40x faster on CPU than ``argmax(dim=0)``, whose strided
    reduction dominated a tiny model's frame time at 480p.
    """
    return probs.max(dim=0).indices


@constant_tensors
def _unused_channels(sizes: tuple[int, ...], channels: int, device: torch.device) -> torch.Tensor:
    """(len(sizes), channels, 1, 1) bool: each batch item's channels above its object count (unused ids)."""
    return (torch.arange(channels)[None, :] > torch.tensor(sizes)[:, None]).to(device)[:, :, None, None]
