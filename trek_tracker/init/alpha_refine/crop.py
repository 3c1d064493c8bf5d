"""Alpha-Refine's crop and paste-back geometry (docs/init.md#crop-geometry, #paste-back).

The crop is ``2w x 2h`` around the box (not square), rounded with Python's ``round`` and padded with
zeros in raw pixel space, then resized to ``S x S``. Parity with the published weights needs the exact
rounding and the right/bottom border quirk (the last image column/row is replaced by padding whenever
the crop reaches it), so both are reproduced here and the paste-back recomputes the same geometry.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
import torch

from trek_tracker.errors import InputError

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406]).reshape(1, 1, 3)
IMAGENET_STD = np.array([0.229, 0.224, 0.225]).reshape(1, 1, 3)


@dataclass(frozen=True)
class CropGeometry:
    """Where an AR crop sits in the frame: origin, size and the zero padding on each side."""

    x1: int
    y1: int
    ws: int
    hs: int
    pad_left: int
    pad_top: int
    pad_right: int
    pad_bottom: int
    out_size: int

    @property
    def scale_x(self) -> float:
        return self.out_size / self.ws

    @property
    def scale_y(self) -> float:
        return self.out_size / self.hs


def crop_geometry(box_xywh, image_hw: tuple[int, int], factor: float = 2.0, out_size: int = 384) -> CropGeometry:
    """The official crop geometry for ``box_xywh`` in an image of size ``image_hw`` (H, W)."""
    x, y, w, h = (float(v) for v in box_xywh)
    ws, hs = math.ceil(factor * w), math.ceil(factor * h)
    if ws < 1 or hs < 1:
        raise InputError(f"box {list(box_xywh)} is too small for Alpha-Refine (width and height must be > 0)")
    x1 = round(x + 0.5 * w - ws * 0.5)
    y1 = round(y + 0.5 * h - hs * 0.5)
    height, width = image_hw
    return CropGeometry(
        x1=x1,
        y1=y1,
        ws=ws,
        hs=hs,
        pad_left=max(0, -x1),
        pad_top=max(0, -y1),
        pad_right=max(x1 + ws - width + 1, 0),
        pad_bottom=max(y1 + hs - height + 1, 0),
        out_size=out_size,
    )


def crop_image(image: np.ndarray, geo: CropGeometry) -> np.ndarray:
    """Cut, zero-pad and resize (cv2 bilinear) the crop; uint8 (S, S, 3) when ``image`` is uint8."""
    x2, y2 = geo.x1 + geo.ws, geo.y1 + geo.hs
    region = image[geo.y1 + geo.pad_top : y2 - geo.pad_bottom, geo.x1 + geo.pad_left : x2 - geo.pad_right]
    if region.shape[0] > 0 and region.shape[1] > 0:
        padded = cv2.copyMakeBorder(
            np.ascontiguousarray(region),
            geo.pad_top,
            geo.pad_bottom,
            geo.pad_left,
            geo.pad_right,
            cv2.BORDER_CONSTANT,
            value=0,
        )
    else:
        padded = None
    if padded is None or padded.shape[:2] != (geo.hs, geo.ws):
        # The box lies (almost) entirely outside the image: the official code would crash; a black crop is
        # the honest equivalent (no image content to look at).
        padded = np.zeros((geo.hs, geo.ws) + image.shape[2:], dtype=image.dtype)
    out = cv2.resize(padded, (geo.out_size, geo.out_size))
    return out[..., None] if out.ndim == 2 else out


def paste_back(mask: np.ndarray, geo: CropGeometry, image_hw: tuple[int, int]) -> np.ndarray:
    """Map an ``S x S`` crop mask back to a float (H, W) frame mask, zero outside the crop."""
    height, width = image_hw
    canvas = np.zeros((height + geo.pad_top + geo.pad_bottom, width + geo.pad_left + geo.pad_right))
    resized = cv2.resize(np.asarray(mask, dtype=np.float32), (geo.ws, geo.hs))
    r0, c0 = geo.y1 + geo.pad_top, geo.x1 + geo.pad_left
    # Clip to the canvas (only matters for boxes far outside the image).
    rr0, cc0 = max(r0, 0), max(c0, 0)
    rr1, cc1 = min(r0 + geo.hs, canvas.shape[0]), min(c0 + geo.ws, canvas.shape[1])
    if rr1 > rr0 and cc1 > cc0:
        canvas[rr0:rr1, cc0:cc1] = resized[rr0 - r0 : rr1 - r0, cc0 - c0 : cc1 - c0]
    return canvas[geo.pad_top : geo.pad_top + height, geo.pad_left : geo.pad_left + width]


def normalise(crop_uint8: np.ndarray) -> torch.Tensor:
    """ImageNet normalisation in float64, then float32, shape (1, 3, S, S) (official ``img_preprocess``)."""
    norm = ((crop_uint8 / 255.0) - IMAGENET_MEAN) / IMAGENET_STD
    return torch.from_numpy(norm.astype(np.float32)).permute(2, 0, 1).unsqueeze(0).contiguous()


def box_in_crop(box_xywh, geo: CropGeometry) -> torch.Tensor:
    """The crop-pixel ``[x, y, w, h]`` of the box the crop was extracted around (centred, clamped to [0, S]).

    Float32 arithmetic as in the official ``transform_image_to_crop_SE`` (the template RoI of CorrNL).
    """
    box = torch.as_tensor(np.asarray(box_xywh, dtype=np.float32))
    size = torch.tensor(float(geo.out_size))
    cx = (size - 1) / 2  # the box is its own extraction box, so the centre offset is 0
    w, h = box[2] * geo.scale_x, box[3] * geo.scale_y
    x1 = torch.clamp(cx - 0.5 * w, 0, geo.out_size)
    y1 = torch.clamp(cx - 0.5 * h, 0, geo.out_size)
    x2 = torch.clamp(cx + 0.5 * w, 0, geo.out_size)
    y2 = torch.clamp(cx + 0.5 * h, 0, geo.out_size)
    return torch.stack((x1, y1, x2 - x1, y2 - y1))


def corner_box_to_frame(corner_xyxy, box_xywh, geo: CropGeometry, factor: float = 2.0) -> np.ndarray:
    """Map a crop-pixel corner box back to a frame ``[x, y, w, h]`` (official ``bbox_back``).

    The origin is recomputed without rounding, as the official code does (it differs slightly from the
    rounded crop origin; kept for parity).
    """
    cx1, cy1, cx2, cy2 = (float(v) for v in corner_xyxy)
    x, y, w, h = (float(v) for v in box_xywh)
    ox, oy = x - (factor - 1) / 2 * w, y - (factor - 1) / 2 * h
    return np.array(
        [ox + cx1 / geo.scale_x, oy + cy1 / geo.scale_y, (cx2 - cx1) / geo.scale_x, (cy2 - cy1) / geo.scale_y]
    )
