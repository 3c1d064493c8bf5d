"""Boxes and masks: the one box type, IoU, mask -> box, and the lost-target policy.

Coordinates are continuous pixels: pixel ``i`` covers ``[i, i + 1)``. A TREK-150 box ``x,y,w,h`` covers
``[x, x + w) x [y, y + h)``, so the tight box of a mask whose extreme pixel indices are ``x0..x1`` is
``[x0, y0, x1 - x0 + 1, y1 - y0 + 1]`` (docs/boxes.md#tight-box-rule).

A user's box enters as a :class:`Box` (valid by construction: four finite numbers, positive size) and is
checked against the frame once, by :meth:`Box.in_frame`; everything downstream takes that box as it is.

Numpy only (no torch), so that the CLI starts fast.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Literal

import cv2
import numpy as np

from trek_tracker.errors import InputError

__all__ = [
    "Box",
    "iou",
    "mask_to_box",
    "box_to_mask",
    "kept_components_box",
    "remove_small_components",
    "BoxConfig",
    "BoxFromMask",
]

_EPS = np.finfo(float).eps  # the TREK-150 toolkit's IoU epsilon (docs/boxes.md#iou)


def _as_boxes(boxes: np.ndarray | list | tuple, width: int = 4) -> np.ndarray:
    arr = np.asarray(boxes, dtype=np.float64)
    if arr.shape[-1:] != (width,):
        raise ValueError(f"expected boxes of shape (..., {width}), got {arr.shape}")
    return arr


def iou(a: np.ndarray | list | tuple, b: np.ndarray | list | tuple) -> np.ndarray | float:
    """IoU of ``x,y,w,h`` boxes exactly as the TREK-150 toolkit computes it (docs/boxes.md#iou).

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
_BOX_HINT = "give the box as x,y,w,h in pixels, e.g. --box 313,88,342,194"


@dataclass(frozen=True)
class Box:
    """An ``x,y,w,h`` box in pixels (top-left corner, width, height): four finite numbers, positive size.

    ``frame`` is the ``(h, w)`` frame the box was checked against by :meth:`in_frame` (None until then); it
    does not take part in equality.
    """

    x: float
    y: float
    w: float
    h: float
    frame: tuple[int, int] | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        values = (self.x, self.y, self.w, self.h)
        if not all(math.isfinite(v) for v in values):
            raise InputError(f"box {_fmt(values)} has a NaN or infinite value; {_BOX_HINT}")
        if self.w <= 0 or self.h <= 0:
            raise InputError(f"box {_fmt(values)} has zero or negative width or height; {_BOX_HINT}")

    @classmethod
    def parse(cls, text: str) -> Box:
        """``"x,y,w,h"`` (commas and/or spaces) -> Box; anything else is one :class:`InputError` line."""
        parts = [p for p in _BOX_SPLIT.split(str(text).strip()) if p]
        if len(parts) != 4:
            raise InputError(f"box {text!r} must be four numbers x,y,w,h, got {len(parts)}; {_BOX_HINT}")
        try:
            values = [float(p) for p in parts]
        except ValueError:
            raise InputError(f"box {text!r} is not four numbers x,y,w,h; {_BOX_HINT}") from None
        return cls(*values)

    @classmethod
    def of(cls, value: Box | Sequence[float] | np.ndarray) -> Box:
        """A :class:`Box` as it is, or one made from four numbers ``[x, y, w, h]`` (or their text, as
        :meth:`parse` reads it)."""
        if isinstance(value, Box):
            return value
        if isinstance(value, str):
            return cls.parse(value)
        try:
            arr = np.asarray(value, dtype=np.float64).reshape(-1)
        except (TypeError, ValueError):  # a string, None among the numbers, a ragged list
            raise InputError(f"a box is four numbers x,y,w,h, got {value!r}; {_BOX_HINT}") from None
        if arr.size != 4:
            raise InputError(f"a box is four numbers x,y,w,h, got {arr.size}; {_BOX_HINT}")
        return cls(*(float(v) for v in arr))

    def in_frame(self, size: tuple[int, int]) -> Box:
        """This box checked against a frame of ``size = (h, w)``: clipped to it when it overlaps it partly
        (compare with ``self`` to tell the user), an :class:`InputError` when it lies wholly outside."""
        size = (int(size[0]), int(size[1]))
        if self.frame == size:
            return self
        h, w = size
        if self.x >= w or self.y >= h or self.x + self.w <= 0 or self.y + self.h <= 0:
            raise InputError(f"box {self} (x,y,w,h) lies wholly outside the {w}x{h} frame; "
                             "check the box and that it is in pixels of this video")
        # A side inside the frame keeps its numbers: (x + w) - x is not always w in floating point, and a box
        # that changed by rounding would be reported as clipped.
        bw = self.w if 0 <= self.x and self.x + self.w <= w else min(self.x + self.w, float(w)) - max(self.x, 0.0)
        bh = self.h if 0 <= self.y and self.y + self.h <= h else min(self.y + self.h, float(h)) - max(self.y, 0.0)
        return Box(max(self.x, 0.0), max(self.y, 0.0), bw, bh, frame=size)

    def __iter__(self) -> Iterator[float]:
        return iter((self.x, self.y, self.w, self.h))

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        return np.array([self.x, self.y, self.w, self.h], dtype=dtype or np.float64)

    def __str__(self) -> str:
        return _fmt(tuple(self))


def _fmt(values) -> str:
    return ",".join(f"{v:g}" for v in np.asarray(values, dtype=np.float64).ravel())


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


def box_to_mask(box: np.ndarray | list | tuple, size: tuple[int, int]) -> np.ndarray:
    """Filled rectangle of an ``x,y,w,h`` box as a bool mask of ``size = (h, w)``, clipped to the frame.

    A pixel is inside when its centre ``i + 0.5`` lies in ``[x, x + w)``, so integer boxes round-trip
    through :func:`mask_to_box`. Along an axis where the box's part inside the frame is too thin to hold a
    pixel centre, it still marks the pixels under that part's centre line (a 0.3 x 20 box is a 1 x 20
    column), so a box that overlaps the frame never gives an empty init mask. The box is clipped first: its
    mask is that of its :meth:`Box.in_frame` box.
    """
    b = _as_boxes(box)
    h, w = size
    mask = np.zeros((h, w), dtype=bool)
    if not np.all(np.isfinite(b)) or b[2] <= 0 or b[3] <= 0:
        return mask
    spans = []
    for start, length, limit in ((b[0], b[2], w), (b[1], b[3], h)):
        first, last = max(start, 0.0), min(start + length, float(limit))  # the part inside the frame
        if last <= first:
            return mask
        lo, hi = math.ceil(first - 0.5), math.ceil(last - 0.5)
        if hi <= lo:  # no pixel centre inside along this axis: the line of pixels under the part's centre
            lo = min(int((first + last) / 2), limit - 1)
            hi = lo + 1
        spans.append((lo, hi))
    (c0, c1), (r0, r1) = spans
    mask[r0:r1, c0:c1] = True
    return mask


def _kept_components(mask: np.ndarray, min_px: int, keep: Literal["all", "largest"]
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One 8-connected labelling of a non-empty bool ``mask``: (labels, per-component stats, the ids of the
    components MB2 keeps). The one home of the rule: the largest one, or every one of at least ``min_px``
    pixels, and never none (all are kept when every one is small)."""
    m = np.ascontiguousarray(mask).view(np.uint8)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(m, connectivity=8)
    areas = stats[1:, cv2.CC_STAT_AREA]
    if keep == "largest":
        return labels, stats, np.array([1 + int(np.argmax(areas))])
    big = np.flatnonzero(areas >= min_px) + 1
    return labels, stats, big if big.size else np.arange(1, n)


def remove_small_components(
    mask: np.ndarray, min_px: int, keep: Literal["all", "largest"] = "all"
) -> np.ndarray:
    """Drop 8-connected components smaller than ``min_px`` (MB2), unless that would drop everything.

    ``keep="largest"`` keeps only the largest component. Returns a bool mask; the input is not modified.
    """
    m = _check_mask(mask) != 0
    if (min_px <= 1 and keep == "all") or not m.any():
        return m
    labels, stats, kept = _kept_components(m, min_px, keep)
    if kept.size == len(stats) - 1:
        return m
    return labels == kept[0] if kept.size == 1 else np.isin(labels, kept)


@dataclass
class BoxConfig:
    """How a mask becomes the reported box (docs/boxes.md#mask-to-box-settings).

    min_component_px: components smaller than this are speckles and ignored (100 as in Alpha-Refine; 0
        disables). Never removes everything.
    components: ``"all"`` keeps every large-enough component (an object split by a hand keeps both parts);
        ``"largest"`` keeps only the largest one.
    """

    min_component_px: int = 100
    components: Literal["all", "largest"] = "all"

    def __post_init__(self) -> None:
        if self.components not in ("all", "largest"):
            raise InputError(f"box components must be 'all' or 'largest', got {self.components!r}")
        if self.min_component_px < 0:
            raise InputError(f"min_component_px must be >= 0, got {self.min_component_px}")


def kept_components_box(mask: np.ndarray, min_px: int, keep: Literal["all", "largest"] = "all") -> np.ndarray | None:
    """``mask_to_box(remove_small_components(mask, min_px, keep))`` from one labelling pass: the box of the
    kept components is the union of their boxes, which the labelling already reports, so no pixel of the
    kept mask is built (MB2 on every tracked frame, docs/boxes.md#mask-to-box-settings)."""
    m = _check_mask(mask)
    if min_px <= 1 and keep == "all":
        return mask_to_box(m)
    m = m != 0
    if not m.any():
        return None
    _, stats, kept = _kept_components(m, min_px, keep)
    stats = stats[kept]
    x0, y0 = stats[:, cv2.CC_STAT_LEFT].min(), stats[:, cv2.CC_STAT_TOP].min()
    x1 = (stats[:, cv2.CC_STAT_LEFT] + stats[:, cv2.CC_STAT_WIDTH]).max()
    y1 = (stats[:, cv2.CC_STAT_TOP] + stats[:, cv2.CC_STAT_HEIGHT]).max()
    return np.array([x0, y0, x1 - x0, y1 - y0], dtype=np.float64)


class BoxFromMask:
    """Lost-target policy: per frame, the box of the mask, or the last box when the mask is empty.

    Never emits zeros, NaN or -1 (docs/boxes.md#lost-target-policy): an empty mask holds the last box and
    reports the frame as lost.

    >>> policy = BoxFromMask(init_box)          # the box the tracker started from, on frame 0
    >>> box, lost = policy.update(mask)         # every later frame
    """

    def __init__(self, init_box: Box | Sequence[float] | np.ndarray, config: BoxConfig | None = None) -> None:
        self.config = config or BoxConfig()
        self._last = np.asarray(Box.of(init_box), dtype=np.float64)

    @property
    def last_box(self) -> np.ndarray:
        """The last box returned (a copy)."""
        return self._last.copy()

    @property
    def needs_pixels(self) -> bool:
        """Whether the box depends on more than the mask's extent (speck removal needs its components)."""
        return self.config.min_component_px > 1 or self.config.components == "largest"

    def update(self, mask: np.ndarray | None, origin: tuple[int, int] = (0, 0)) -> tuple[np.ndarray, bool]:
        """Box of ``mask`` and whether the target is lost on this frame (then the box is the held one).

        ``mask`` may be the crop of the frame's mask at ``origin = (x, y)`` that holds all of the object (its
        tight box: every component lies inside it, so speck removal gives the same result as on the frame);
        None is an empty mask.
        """
        box = None
        if mask is not None:
            box = kept_components_box(mask, self.config.min_component_px, self.config.components)
            if box is not None:
                box[:2] += origin
        return self.take(box)

    def take(self, box: np.ndarray | None) -> tuple[np.ndarray, bool]:
        """The policy itself: ``box`` when there is one, else the last box, held, and the frame is lost."""
        if box is None:
            return self._last.copy(), True
        self._last = np.asarray(box, dtype=np.float64)
        return self._last.copy(), False
