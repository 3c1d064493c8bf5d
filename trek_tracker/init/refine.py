"""HQTrack's mask refinement: each tracked object's mask is re-segmented by HQ-SAM from its box.

What HQTrack does after VMOS on every frame (``MSAOTTracker.track`` in ``VOTS23_workspace/run_tracker_vot.py``
and ``demo/demo.py``; docs/init.md#hq-sam-refiner):

1. For each object id present in the label map, take its mask and its box: the min and max column and row
   of its pixels, ``[x0, y0, x1, y1]`` (inclusive pixel indices, no margin).
2. Prompt HQ-SAM with the box alone, ``multimask_output=True`` (so the mask is SAM's best multimask token,
   by predicted IoU, plus the HQ token), and threshold at 0.
3. Keep the refined mask only if its IoU with the tracker's mask is at least ``iou_threshold`` (HQTrack:
   0.1); otherwise keep the tracker's mask.
4. Merge the objects: a pixel covered by exactly one object's mask gets that id, by several the lowest of
   them, by none the background.

The refined map is only the output: the tracker's memory keeps its own labels (HQTrack feeds VMOS its own
prediction before refining). HQTrack re-encodes the frame for every object; the embedding depends only on
the frame, so it is computed once here.

One deviation, on purpose: for overlaps HQTrack takes the arg-max over a stack indexed by the *position* of
each id among the ids present (background first), which equals the id only when ids ``1..k`` are all present
and the background is too. We use the id itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from trek_tracker.errors import InputError


@dataclass
class RefineConfig:
    """Refining every propagated frame's masks with HQ-SAM, as HQTrack does: off without a ``checkpoint``."""

    checkpoint: str | None = None  # HQ-SAM weights (path or registry name; HQTrack uses sam_hq_vit_h)
    min_iou: float = 0.1  # a refined mask is kept when its IoU with the tracker's is at least this

    def __post_init__(self) -> None:
        if not 0.0 <= self.min_iou <= 1.0:
            raise InputError(f"the HQ-SAM refinement IoU threshold must lie in [0, 1], got {self.min_iou}")


@dataclass
class RefineResult:
    """A refined label map and, per object id, whether HQ-SAM's mask was kept and its IoU with the input."""

    labels: np.ndarray  # (H, W) same dtype as the input labels
    kept: dict[int, bool] = field(default_factory=dict)
    iou: dict[int, float] = field(default_factory=dict)


def mask_box(mask: np.ndarray) -> np.ndarray | None:
    """HQTrack's ``get_box``: ``[x_min, y_min, x_max, y_max]`` of the mask's pixels (inclusive indices,
    float), or None for an empty mask."""
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return None
    return np.array([xs.min(), ys.min(), xs.max(), ys.max()], dtype=np.float64)


def mask_iou(a: np.ndarray, b: np.ndarray, eps: float = 1e-6) -> float:
    """``(|a & b| + eps) / (|a | b| + eps)``, HQTrack's ``pytorch_iou`` for one object."""
    inter = float(np.logical_and(a, b).sum())
    union = float(np.logical_or(a, b).sum())
    return (inter + eps) / (union + eps)


class HQSamRefiner:
    """Refines propagated label maps with HQ-SAM, as HQTrack does (see the module docstring).

    ``predictor`` is an :class:`~trek_tracker.init.hqsam.HQSamBoxPredictor` (or an HQ-SAM model, wrapped in
    one). ``iou_threshold`` is HQTrack's ``sam_refine_iou`` (0.1).
    """

    def __init__(self, predictor, iou_threshold: float = 0.1, device: str | None = None) -> None:
        from trek_tracker.init.hqsam import HQSamBoxPredictor

        if not 0.0 <= iou_threshold <= 1.0:
            raise InputError(f"the HQ-SAM refinement IoU threshold must lie in [0, 1], got {iou_threshold}")
        if not isinstance(predictor, HQSamBoxPredictor):
            predictor = HQSamBoxPredictor(predictor, device)
        self.predictor = predictor
        self.iou_threshold = iou_threshold

    @classmethod
    def from_checkpoint(cls, checkpoint, model: str | None = None, device: str = "cpu",
                        iou_threshold: float = 0.1) -> HQSamRefiner:
        """Load HQ-SAM from a checkpoint file (or registry name, e.g. ``sam_hq_vit_h``)."""
        from trek_tracker.init.hqsam import load_hqsam
        from trek_tracker.weights import resolve_checkpoint

        return cls(load_hqsam(resolve_checkpoint(checkpoint, kind="hqsam"), model, device),
                   iou_threshold=iou_threshold)

    def __call__(self, frame: np.ndarray, labels: np.ndarray) -> RefineResult:
        """Refine ``labels`` (H, W) integer ids, 0 = background, of the RGB uint8 ``frame`` (H, W, 3)."""
        labels = np.asarray(labels)
        if frame.shape[:2] != labels.shape or frame.ndim != 3 or frame.dtype != np.uint8:
            raise InputError(f"HQ-SAM refinement needs an RGB uint8 frame and a label map of its size, got "
                             f"{frame.dtype} {frame.shape} and {labels.shape}")
        ids = [int(i) for i in np.unique(labels) if i != 0]
        result = RefineResult(labels=np.zeros_like(labels))
        if not ids:
            return result
        self.predictor.set_image(frame)
        count = np.zeros(labels.shape, np.int32)
        first = np.zeros_like(labels)  # lowest id covering each pixel
        for i in ids:  # increasing
            mask = labels == i
            box = mask_box(mask)
            logits, _ = self.predictor.predict_box_hq(box).combined(multimask=True)
            refined = logits > 0
            iou = mask_iou(refined, mask)
            keep = iou >= self.iou_threshold
            out = refined if keep else mask
            result.kept[i], result.iou[i] = bool(keep), round(iou, 6)
            first = np.where(out & (count == 0), i, first)
            count += out
        result.labels = np.where(count > 0, first, 0).astype(labels.dtype)
        return result
