"""Alpha-Refine crop geometry and paste-back."""

from __future__ import annotations

import numpy as np
import pytest

from trek_tracker.errors import InputError
from trek_tracker.init.alpha_refine.crop import (
    box_in_crop,
    corner_box_to_frame,
    crop_geometry,
    crop_image,
    paste_back,
)


def test_geometry_of_the_car_shadow_box() -> None:
    geo = crop_geometry([313, 88, 342, 194], (480, 854), 2.0, 384)
    assert (geo.ws, geo.hs, geo.x1, geo.y1) == (684, 388, 142, -9)
    assert (geo.pad_left, geo.pad_top, geo.pad_right, geo.pad_bottom) == (0, 9, 0, 0)
    np.testing.assert_allclose(box_in_crop([313, 88, 342, 194], geo).numpy(), [95.5, 95.5, 192, 192])


def test_origin_rounds_half_to_even_and_tiny_boxes_fail() -> None:
    assert crop_geometry([4, 4, 3, 3], (50, 50), 2.0, 64).x1 == 2  # 4 + 1.5 - 3 = 2.5 -> 2
    assert crop_geometry([5, 5, 3, 3], (50, 50), 2.0, 64).x1 == 4  # 3.5 -> 4
    with pytest.raises(InputError):
        crop_geometry([5, 5, 0, 3], (50, 50))


def test_right_border_drops_the_last_column() -> None:
    image = np.full((40, 60, 3), 200, np.uint8)
    geo = crop_geometry([40, 10, 20, 20], (40, 60), 2.0, 40)  # crop x 30..70, y 0..40 (= image height)
    assert geo.pad_right == 70 - 60 + 1 and geo.pad_bottom == 1
    crop = crop_image(image, geo)
    # ws = hs = S = 40, so crop pixels map 1:1: image columns 30..58 are kept and column 59 is replaced
    # by padding; likewise the last image row 39.
    assert (crop[:39, :29] == 200).all()
    assert (crop[:, 29:] == 0).all() and (crop[39] == 0).all()


def test_crop_and_paste_round_trip() -> None:
    h, w = 120, 160
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    ramp = (0.3 * xx + 0.7 * yy) / (0.3 * w + 0.7 * h)  # linear: bilinear resampling keeps it
    box = [50.0, 30.0, 40.0, 36.0]
    geo = crop_geometry(box, (h, w), 2.0, 256)
    crop = crop_image(ramp, geo)[..., 0]
    back = paste_back(crop, geo, (h, w))
    x2, y2 = geo.x1 + geo.ws, geo.y1 + geo.hs
    inside = np.zeros((h, w), bool)
    inside[geo.y1 + 1 : y2 - 1, geo.x1 + 1 : x2 - 1] = True
    assert np.abs(back[inside] - ramp[inside]).max() < 2e-3
    assert (back[~_crop_area(geo, h, w)] == 0).all()


def _crop_area(geo, h: int, w: int) -> np.ndarray:
    area = np.zeros((h, w), bool)
    area[max(geo.y1, 0) : geo.y1 + geo.hs, max(geo.x1, 0) : geo.x1 + geo.ws] = True
    return area


def test_paste_back_at_the_border_keeps_the_frame_shape() -> None:
    geo = crop_geometry([0, 0, 30, 20], (50, 40), 2.0, 64)
    back = paste_back(np.ones((64, 64), np.float32), geo, (50, 40))
    assert back.shape == (50, 40)
    assert back[:30, :45].min() == 1.0 and back[35:, :].max() == 0.0


def test_corner_box_back_uses_the_unrounded_origin() -> None:
    box = [313.0, 88.0, 342.0, 194.0]
    geo = crop_geometry(box, (480, 854), 2.0, 256)
    out = corner_box_to_frame([0, 32, 240, 176], box, geo)
    np.testing.assert_allclose(out, [142.0, 39.5, 641.25, 218.25])  # the official bbox_back values
