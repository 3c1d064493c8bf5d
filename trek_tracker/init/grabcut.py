"""GrabCut box -> mask: the weight-free init (OpenCV only).

Runs on a region around the box (1.5x its size), downscaled to at most ``max_side`` pixels, so the cost
does not grow with the frame or the object (GrabCut's graph cut is slow on large regions); the box seeds
the probable foreground and the result is clipped to it.
"""

from __future__ import annotations

import cv2
import numpy as np

from trek_tracker.geometry import box_to_mask


def grabcut_mask(
    image: np.ndarray, box, iterations: int = 5, context: float = 0.25, max_side: int = 320, seed: int = 0
) -> np.ndarray:
    """Bool (H, W) mask of the object in ``box`` ``[x, y, w, h]``; empty when GrabCut finds nothing."""
    h, w = image.shape[:2]
    box = np.asarray(box, dtype=np.float64).reshape(4)
    inside = box_to_mask(box, (h, w))
    rows, cols = np.flatnonzero(inside.any(1)), np.flatnonzero(inside.any(0))
    if rows.size == 0 or rows.size < 3 or cols.size < 3:
        return inside  # too small for a colour model: the box itself
    pad_y, pad_x = int(np.ceil(context * rows.size)) + 1, int(np.ceil(context * cols.size)) + 1
    r0, r1 = max(rows[0] - pad_y, 0), min(rows[-1] + 1 + pad_y, h)
    c0, c1 = max(cols[0] - pad_x, 0), min(cols[-1] + 1 + pad_x, w)
    region = np.ascontiguousarray(image[r0:r1, c0:c1, :3])
    scale = min(1.0, max_side / max(region.shape[:2]))
    if scale < 1.0:
        size = (max(int(round(region.shape[1] * scale)), 1), max(int(round(region.shape[0] * scale)), 1))
        region = cv2.resize(region, size, interpolation=cv2.INTER_AREA)
    sx, sy = region.shape[1] / (c1 - c0), region.shape[0] / (r1 - r0)
    x0, y0 = int(np.floor((cols[0] - c0) * sx)), int(np.floor((rows[0] - r0) * sy))
    rect = (x0, y0, max(int(np.ceil(cols.size * sx)), 1), max(int(np.ceil(rows.size * sy)), 1))
    if rect[2] >= region.shape[1] and rect[3] >= region.shape[0]:
        # The box covers the whole region: no background sample; GrabCut cannot separate anything.
        return inside
    labels = np.zeros(region.shape[:2], np.uint8)
    bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
    cv2.setRNGSeed(seed)
    cv2.grabCut(region, labels, rect, bgd, fgd, iterations, cv2.GC_INIT_WITH_RECT)
    fg = ((labels == cv2.GC_FGD) | (labels == cv2.GC_PR_FGD)).astype(np.uint8)
    if scale < 1.0:
        fg = cv2.resize(fg, (c1 - c0, r1 - r0), interpolation=cv2.INTER_NEAREST)
    out = np.zeros((h, w), dtype=bool)
    out[r0:r1, c0:c1] = fg > 0
    return out & inside
