"""Boxes and masks: conversions, IoU, mask → box, and the lost-target policy.

Coordinates are continuous pixels: pixel ``i`` covers ``[i, i + 1)``. A TREK-150 box ``x,y,w,h`` covers
``[x, x + w) × [y, y + h)``, so the tight box of a mask whose extreme pixel indices are ``x0..x1`` is
``[x0, y0, x1 - x0 + 1, y1 - y0 + 1]`` (``alpha_refine_sam.md`` §10, MB1). Two ``xyxy`` forms exist and
every function says which one it uses:

* **corners** (default): ``(x0, y0, x0 + w, y0 + h)``, the continuous rectangle; IoU lives here.
* **inclusive**: ``(x0, y0, x0 + w - 1, y0 + h - 1)``, the indices of the first and last covered pixels
  (SAM's ``batched_mask_to_box`` convention).

Numpy only (no torch), so that the CLI starts fast.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Literal, NamedTuple

import cv2
import numpy as np

from trek_tracker.errors import InputError

__all__ = [
    "xywh_to_xyxy",
    "xyxy_to_xywh",
    "iou",
    "parse_box",
    "ClippedBox",
    "clip_box",
    "check_box_in_frame",
    "mask_to_box",
    "RotatedBox",
    "mask_to_rotated_box",
    "polygon_to_box",
    "box_to_mask",
    "remove_small_components",
    "BoxFromMaskConfig",
    "BoxFromMask",
]

_EPS = np.finfo(float).eps  # the TREK-150 toolkit's IoU epsilon (trek150.md §4.3)


def _as_boxes(boxes: np.ndarray | list | tuple, width: int = 4) -> np.ndarray:
    arr = np.asarray(boxes, dtype=np.float64)
    if arr.shape[-1:] != (width,):
        raise ValueError(f"expected boxes of shape (..., {width}), got {arr.shape}")
    return arr


def xywh_to_xyxy(boxes: np.ndarray | list | tuple, *, inclusive: bool = False) -> np.ndarray:
    """``x,y,w,h`` → ``x0,y0,x1,y1`` for one box (4,) or many (..., 4).

    ``inclusive=False`` (default) gives the continuous corners ``x1 = x + w``; ``inclusive=True`` gives the
    last covered pixel index ``x1 = x + w - 1`` (the inverse of the tight-box rule).
    """
    b = _as_boxes(boxes)
    out = b.copy()
    off = 1.0 if inclusive else 0.0
    out[..., 2] = b[..., 0] + b[..., 2] - off
    out[..., 3] = b[..., 1] + b[..., 3] - off
    return out


def xyxy_to_xywh(boxes: np.ndarray | list | tuple, *, inclusive: bool = False) -> np.ndarray:
    """``x0,y0,x1,y1`` → ``x,y,w,h``; the inverse of :func:`xywh_to_xyxy` with the same ``inclusive`` flag.

    ``inclusive=True`` reads ``x1`` as the last covered pixel index, so ``w = x1 - x0 + 1`` (TREK-150 tight
    boxes over pixel indices); ``inclusive=False`` reads continuous corners, ``w = x1 - x0``.
    """
    b = _as_boxes(boxes)
    out = b.copy()
    off = 1.0 if inclusive else 0.0
    out[..., 2] = b[..., 2] - b[..., 0] + off
    out[..., 3] = b[..., 3] - b[..., 1] + off
    return out


def iou(a: np.ndarray | list | tuple, b: np.ndarray | list | tuple) -> np.ndarray | float:
    """IoU of ``x,y,w,h`` boxes exactly as the TREK-150 toolkit computes it (trek150.md §4.3).

    Continuous pixels, no +1, no image bounds, ``eps`` in the denominator, clipped to [0, 1]; a box with
    zero or negative width/height scores 0 and NaN input gives NaN. Shapes broadcast: (4,) vs (4,) gives a
    float, (N, 4) vs (N, 4) or (N, 4) vs (4,) gives (N,).
    """
    a = _as_boxes(a)
    b = _as_boxes(b)
    ax0, ay0, aw, ah = np.moveaxis(a, -1, 0)
    bx0, by0, bw, bh = np.moveaxis(b, -1, 0)
    iw = np.maximum(np.minimum(ax0 + aw, bx0 + bw) - np.maximum(ax0, bx0), 0.0)
    ih = np.maximum(np.minimum(ay0 + ah, by0 + bh) - np.maximum(ay0, by0), 0.0)
    inter = iw * ih
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.clip(inter / (aw * ah + bw * bh - inter + _EPS), 0.0, 1.0)
    return float(out) if out.ndim == 0 else out


_BOX_SPLIT = re.compile(r"[\s,;]+")


def parse_box(text: str) -> np.ndarray:
    """Parse ``"x,y,w,h"`` (commas and/or spaces) into a float64 array (4,).

    Raises :class:`InputError` (one line, with an example) for anything that is not four finite numbers
    with positive width and height.
    """
    parts = [p for p in _BOX_SPLIT.split(str(text).strip()) if p]
    hint = "give the box as x,y,w,h in pixels, e.g. --box 313,88,342,194"
    if len(parts) != 4:
        raise InputError(f"box {text!r} must be four numbers x,y,w,h, got {len(parts)}; {hint}")
    try:
        box = np.array([float(p) for p in parts], dtype=np.float64)
    except ValueError:
        raise InputError(f"box {text!r} is not four numbers x,y,w,h; {hint}") from None
    if not np.all(np.isfinite(box)):
        raise InputError(f"box {text!r} has a NaN or infinite value; {hint}")
    if box[2] <= 0 or box[3] <= 0:
        raise InputError(f"box {text!r} has zero or negative width or height; {hint}")
    return box


class ClippedBox(NamedTuple):
    """A box clipped to the frame, and whether clipping changed it (so the caller can warn)."""

    box: np.ndarray
    clipped: bool


def clip_box(box: np.ndarray | list | tuple, size: tuple[int, int]) -> ClippedBox:
    """Clip an ``x,y,w,h`` box to a frame of ``size = (h, w)`` (continuous corners ``[0, w) × [0, h)``)."""
    b = _as_boxes(box)
    h, w = size
    x0, y0 = max(b[0], 0.0), max(b[1], 0.0)
    x1, y1 = min(b[0] + b[2], float(w)), min(b[1] + b[3], float(h))
    out = np.array([x0, y0, max(x1 - x0, 0.0), max(y1 - y0, 0.0)])
    return ClippedBox(out, bool(not np.array_equal(out, b)))


def check_box_in_frame(box: np.ndarray | list | tuple, size: tuple[int, int]) -> ClippedBox:
    """Check a user's init box against a frame of ``size = (h, w)``.

    A box wholly outside the frame is an :class:`InputError`; a box that overlaps the frame partly is
    clipped, and :attr:`ClippedBox.clipped` tells the caller to say so (not an error: boxes that touch the
    border by a pixel are common in annotations).
    """
    b = _as_boxes(box)
    h, w = size
    if not np.all(np.isfinite(b)) or b[2] <= 0 or b[3] <= 0:
        raise InputError(f"box {_fmt(b)} must have finite values and positive width/height")
    if b[0] >= w or b[1] >= h or b[0] + b[2] <= 0 or b[1] + b[3] <= 0:
        raise InputError(
            f"box {_fmt(b)} (x,y,w,h) lies wholly outside the {w}x{h} frame; "
            "check the box and that it is in pixels of this video"
        )
    return clip_box(b, size)


def _fmt(box: np.ndarray) -> str:
    return ",".join(f"{v:g}" for v in np.asarray(box).ravel())


def _check_mask(mask: np.ndarray) -> np.ndarray:
    m = np.asarray(mask)
    if m.ndim != 2:
        raise InputError(f"a mask must be a 2-D array (H, W), got shape {m.shape}")
    return m


def mask_to_box(mask: np.ndarray) -> np.ndarray | None:
    """Tight ``x,y,w,h`` box of the non-zero pixels: ``[x0, y0, x1 - x0 + 1, y1 - y0 + 1]`` (MB1).

    Returns a float64 array (4,), or None for an empty mask (the caller's lost-target policy decides).
    """
    m = _check_mask(mask)
    cols = np.flatnonzero(m.any(axis=0))
    if cols.size == 0:
        return None
    rows = np.flatnonzero(m.any(axis=1))
    x0, x1, y0, y1 = cols[0], cols[-1], rows[0], rows[-1]
    return np.array([x0, y0, x1 - x0 + 1, y1 - y0 + 1], dtype=np.float64)


@dataclass(frozen=True)
class RotatedBox:
    """Minimum-area rectangle of a mask.

    ``polygon``: 8 floats ``x1,y1,...,x4,y4`` (VOT polygon order as ``cv2.boxPoints`` gives it), in
    continuous coordinates that cover whole pixels, so an upright rectangle mask gives exactly its tight box.
    ``box``: the axis-aligned ``x,y,w,h`` bounding box of that polygon. ``center``, ``size`` (w, h) and
    ``angle`` (degrees) are cv2's description of the rectangle.
    """

    polygon: np.ndarray
    box: np.ndarray
    center: tuple[float, float]
    size: tuple[float, float]
    angle: float


def mask_to_rotated_box(mask: np.ndarray) -> RotatedBox | None:
    """Minimum-area rotated rectangle (``cv2.minAreaRect``) of the non-zero pixels; None when empty.

    The rectangle is fitted to the pixel centres and then grown by half a pixel on every side, so each
    pixel is covered whole, consistent with :func:`mask_to_box`. Only the outer contours are used (their
    convex hull equals that of all pixels), which keeps 1080p masks cheap.
    """
    m = _check_mask(mask)
    if not m.any():
        return None
    contours, _ = cv2.findContours((m != 0).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    pts = np.concatenate([c.reshape(-1, 2) for c in contours]).astype(np.float32) + 0.5
    (cx, cy), (rw, rh), angle = cv2.minAreaRect(pts)
    rect = ((cx, cy), (rw + 1.0, rh + 1.0), angle)
    polygon = cv2.boxPoints(rect).astype(np.float64).reshape(-1)
    return RotatedBox(
        polygon=polygon,
        box=polygon_to_box(polygon),
        center=(float(cx), float(cy)),
        size=(float(rw + 1.0), float(rh + 1.0)),
        angle=float(angle),
    )


def polygon_to_box(polygon: np.ndarray | list | tuple) -> np.ndarray:
    """Axis-aligned ``x,y,w,h`` box (continuous corners) of ``x1,y1,...,xk,yk`` polygons, shape (..., 2k)."""
    p = np.asarray(polygon, dtype=np.float64)
    xs, ys = p[..., 0::2], p[..., 1::2]
    x0, y0 = xs.min(axis=-1), ys.min(axis=-1)
    return np.stack([x0, y0, xs.max(axis=-1) - x0, ys.max(axis=-1) - y0], axis=-1)


def box_to_mask(box: np.ndarray | list | tuple, size: tuple[int, int]) -> np.ndarray:
    """Filled rectangle of an ``x,y,w,h`` box as a bool mask of ``size = (h, w)``, clipped to the frame.

    A pixel is inside when its centre ``i + 0.5`` lies in ``[x, x + w)``, so integer boxes round-trip
    through :func:`mask_to_box`. A box inside the frame but too thin to hold a pixel centre still marks
    the pixel under its centre, so a valid box never gives an empty init mask.
    """
    b = _as_boxes(box)
    h, w = size
    mask = np.zeros((h, w), dtype=bool)
    if not np.all(np.isfinite(b)) or b[2] <= 0 or b[3] <= 0:
        return mask
    c0 = max(math.ceil(b[0] - 0.5), 0)
    c1 = min(math.ceil(b[0] + b[2] - 0.5), w)
    r0 = max(math.ceil(b[1] - 0.5), 0)
    r1 = min(math.ceil(b[1] + b[3] - 0.5), h)
    if c1 > c0 and r1 > r0:
        mask[r0:r1, c0:c1] = True
        return mask
    cx, cy = b[0] + b[2] / 2, b[1] + b[3] / 2
    if 0 <= cx < w and 0 <= cy < h:
        mask[int(cy), int(cx)] = True
    return mask


def remove_small_components(
    mask: np.ndarray, min_px: int, keep: Literal["all", "largest"] = "all"
) -> np.ndarray:
    """Drop 8-connected components smaller than ``min_px`` (MB2), unless that would drop everything.

    ``keep="largest"`` keeps only the largest component. Returns a bool mask; the input is not modified.
    """
    m = _check_mask(mask) != 0
    if (min_px <= 1 and keep == "all") or not m.any():
        return m
    n, labels, stats, _ = cv2.connectedComponentsWithStats(m.astype(np.uint8), connectivity=8)
    areas = stats[1:, cv2.CC_STAT_AREA]
    if keep == "largest":
        return labels == 1 + int(np.argmax(areas))
    big = np.flatnonzero(areas >= min_px) + 1
    if big.size == 0 or big.size == n - 1:
        return m
    return np.isin(labels, big)


@dataclass
class BoxFromMaskConfig:
    """How a mask becomes the reported box (``alpha_refine_sam.md`` §10.2).

    output: ``"tight"`` gives ``x,y,w,h`` (TREK-150); ``"rotated"`` gives the 8-value min-area polygon
        (VOT style; rotated rectangles do not apply to TREK-150's upright ground truth).
    min_component_px: components smaller than this are speckles and ignored (MB2; 100 as in Alpha-Refine,
        0 disables). Never removes everything.
    components: ``"all"`` keeps every large-enough component (an object split by a hand keeps both parts);
        ``"largest"`` keeps only the largest one.
    extrapolate_frames: on lost frames, shift the held box by the last velocity for at most this many
        consecutive frames, then hold it (MB3; 0 = always hold).
    """

    output: Literal["tight", "rotated"] = "tight"
    min_component_px: int = 100
    components: Literal["all", "largest"] = "all"
    extrapolate_frames: int = 0

    def __post_init__(self) -> None:
        if self.output not in ("tight", "rotated"):
            raise InputError(f"box output must be 'tight' or 'rotated', got {self.output!r}")
        if self.components not in ("all", "largest"):
            raise InputError(f"components must be 'all' or 'largest', got {self.components!r}")
        if self.min_component_px < 0 or self.extrapolate_frames < 0:
            raise InputError("min_component_px and extrapolate_frames must be >= 0")


class BoxFromMask:
    """Lost-target policy: per frame, the box of the mask, or the last valid box when the mask is empty.

    Never emits zeros, NaN or -1 (trek150.md T2): an empty mask holds the last valid box (optionally
    moved by the last velocity, see :class:`BoxFromMaskConfig`) and reports the frame as lost.

    >>> policy = BoxFromMask(init_box)          # the user's box on frame 0
    >>> box, lost = policy.update(mask)         # every later frame
    """

    def __init__(self, init_box: np.ndarray | list | tuple, config: BoxFromMaskConfig | None = None) -> None:
        self.config = config or BoxFromMaskConfig()
        self.reset(init_box)

    def reset(self, init_box: np.ndarray | list | tuple) -> None:
        """Start over from a known box: ``x,y,w,h``, or an 8-value polygon in ``"rotated"`` mode."""
        width = 8 if self.config.output == "rotated" else 4
        b = np.asarray(init_box, dtype=np.float64).reshape(-1)
        if b.size == 4 and width == 8:
            x, y, w, h = b
            b = np.array([x, y, x + w, y, x + w, y + h, x, y + h])
        if b.size != width or not np.all(np.isfinite(b)):
            raise InputError(f"init box must be {width} finite numbers, got {_fmt(b)}")
        self._last = b
        self._velocity = np.zeros_like(b)
        self._lost_run = 0

    @property
    def last_box(self) -> np.ndarray:
        """The last box returned (a copy)."""
        return self._last.copy()

    def update(self, mask: np.ndarray) -> tuple[np.ndarray, bool]:
        """Box of ``mask`` and whether the target is lost on this frame (then the box is the held one)."""
        cfg = self.config
        m = _check_mask(mask) != 0
        if cfg.min_component_px > 1 or cfg.components == "largest":
            m = remove_small_components(m, cfg.min_component_px, cfg.components)
        if cfg.output == "rotated":
            rot = mask_to_rotated_box(m)
            box = None if rot is None else rot.polygon
        else:
            box = mask_to_box(m)
        if box is None:
            self._lost_run += 1
            if self._lost_run <= cfg.extrapolate_frames:
                self._last = self._last + self._velocity
            return self._last.copy(), True
        if self._lost_run == 0:
            self._velocity = self._velocity_of(self._last, box)
        else:
            self._velocity = np.zeros_like(box)
        self._lost_run = 0
        self._last = box
        return box.copy(), False

    def _velocity_of(self, prev: np.ndarray, cur: np.ndarray) -> np.ndarray:
        """Shift of the box's position between two frames (x and y only; the size is kept)."""
        v = np.zeros_like(cur)
        if cur.size == 4:
            v[:2] = cur[:2] - prev[:2]
        else:
            d = polygon_to_box(cur)[:2] - polygon_to_box(prev)[:2]
            v[0::2], v[1::2] = d[0], d[1]
        return v
