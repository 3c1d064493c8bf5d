"""Alpha-Refine crop geometry and paste-back."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

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
    in_crop = box_in_crop(np.array([313, 88, 342, 194], np.float64), geo)  # the refiner's float64 box
    assert in_crop.dtype == torch.float32  # the official float32 arithmetic (the PrRoIPool RoI)
    np.testing.assert_allclose(in_crop.numpy(), [95.5, 95.5, 192, 192])


def test_box_in_crop_is_centred_and_clamped_to_the_crop() -> None:
    # factor 1: the crop is the box, whose S-pixel extent centred on (S - 1) / 2 spans [-0.5, S - 0.5]
    geo = crop_geometry([10, 20, 32, 16], (100, 100), 1.0, 64)
    np.testing.assert_allclose(box_in_crop([10, 20, 32, 16], geo).numpy(), [0, 0, 63.5, 63.5])
    # factor 0.5: the box is twice the crop, [-32.5, 95.5] on both axes
    geo = crop_geometry([10, 20, 32, 16], (100, 100), 0.5, 64)
    np.testing.assert_allclose(box_in_crop([10, 20, 32, 16], geo).numpy(), [0, 0, 64, 64])


def test_origin_rounds_half_to_even_and_tiny_boxes_fail() -> None:
    assert crop_geometry([4, 4, 3, 3], (50, 50), 2.0, 64).x1 == 2  # 4 + 1.5 - 3 = 2.5 -> 2
    assert crop_geometry([5, 5, 3, 3], (50, 50), 2.0, 64).x1 == 4  # 3.5 -> 4
    for box in ([5, 5, 0, 3], [5, 5, 3, 0], [5, 5, -1, 3], [5, 5, 3, -2]):
        with pytest.raises(InputError, match="too small for Alpha-Refine"):
            crop_geometry(box, (50, 50))


def test_a_sub_pixel_box_gets_a_one_pixel_crop() -> None:
    geo = crop_geometry([5.2, 7.1, 0.4, 0.5], (50, 50), 2.0, 16)  # ceil(0.8) = ceil(1.0) = 1
    assert (geo.ws, geo.hs, geo.x1, geo.y1) == (1, 1, 5, 7)
    image = np.zeros((50, 50, 3), np.uint8)
    image[7, 5] = (10, 20, 30)
    crop = crop_image(image, geo)
    assert crop.shape == (16, 16, 3) and (crop == (10, 20, 30)).all()  # that one pixel, magnified


def test_the_default_crop_is_twice_the_box_resized_to_384() -> None:
    geo = crop_geometry([100, 50, 30, 41], (480, 854))
    assert (geo.ws, geo.hs, geo.out_size) == (60, 82, 384)


def test_right_border_drops_the_last_column() -> None:
    image = np.full((40, 60, 3), 200, np.uint8)
    geo = crop_geometry([40, 10, 20, 20], (40, 60), 2.0, 40)  # crop x 30..70, y 0..40 (= image height)
    assert geo.pad_right == 70 - 60 + 1 and geo.pad_bottom == 1
    crop = crop_image(image, geo)
    # ws = hs = S = 40, so crop pixels map 1:1: image columns 30..58 are kept and column 59 is replaced
    # by padding; likewise the last image row 39.
    assert (crop[:39, :29] == 200).all()
    assert (crop[:, 29:] == 0).all() and (crop[39] == 0).all()


@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
@pytest.mark.parametrize(
    "box",
    [[-6, 4, 14, 14], [8, -9, 14, 14], [-3.5, -2.5, 9, 9], [5, 6, 10, 10], [30, 20, 12, 12], [-1, 23, 11, 11]],
)
def test_crop_pixels_are_the_image_shifted_with_zeros_outside(box: list[float], dtype) -> None:
    rng = np.random.default_rng(1)
    image = rng.integers(1, 255, (30, 40, 3)).astype(dtype)  # no zeros: padding is recognisable
    geo = crop_geometry(box, (30, 40), 2.0, math.ceil(2 * box[2]))  # square box, S = ws = hs: no resampling
    rows, cols = geo.y1 + np.arange(geo.hs), geo.x1 + np.arange(geo.ws)
    # image pixel (r, c) when 0 <= r < H - 1 and 0 <= c < W - 1 (the last row/column are never used), else 0
    valid = ((rows >= 0) & (rows < 29))[:, None] & ((cols >= 0) & (cols < 39))[None, :]
    expected = np.where(valid[..., None], image[rows.clip(0, 29)][:, cols.clip(0, 39)], 0)
    crop = crop_image(image, geo)
    assert crop.dtype == dtype and valid.any()
    np.testing.assert_array_equal(crop, expected)


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


def test_paste_back_interpolates_a_binary_mask_as_probabilities() -> None:
    geo = crop_geometry([20, 10, 15, 12], (50, 60), 2.0, 16)
    binary = np.zeros((16, 16), bool)
    binary[4:12, 5:11] = True
    back = paste_back(binary, geo, (50, 60))
    np.testing.assert_array_equal(back, paste_back(binary.astype(np.float32), geo, (50, 60)))
    assert 0 < back[(back > 0) & (back < 1)].size  # edges interpolated, not rounded to 0/1


def test_a_crop_starting_at_the_first_row_and_column_pastes_into_them() -> None:
    geo = crop_geometry([5, 10, 10, 20], (50, 30), 2.0, 20)  # crop x 0..20, y 0..40: taller than the image is wide
    assert (geo.x1, geo.y1, geo.pad_left, geo.pad_top, geo.pad_right, geo.pad_bottom) == (0, 0, 0, 0, 0, 0)
    back = paste_back(np.ones((20, 20), np.float32), geo, (50, 30))
    assert back[:40, :20].min() == 1.0 and back[40:].max() == 0.0 and back[:, 20:].max() == 0.0


def test_the_box_at_its_place_in_the_crop_maps_back_to_itself() -> None:
    box = [313.0, 88.0, 342.0, 194.0]
    geo = crop_geometry(box, (480, 854), 2.0, 256)
    # unrounded origin (142, -9); scales 256/684 and 256/388: the box spans crop pixels 64..192 on both axes
    np.testing.assert_allclose(corner_box_to_frame([64, 64, 192, 192], box, geo), box, atol=1e-9)


def test_corner_box_back_uses_the_unrounded_origin() -> None:
    box = [313.0, 88.0, 342.0, 194.0]
    geo = crop_geometry(box, (480, 854), 2.0, 256)
    out = corner_box_to_frame([0, 32, 240, 176], box, geo)
    np.testing.assert_allclose(out, [142.0, 39.5, 641.25, 218.25])  # the official bbox_back values


@pytest.mark.parametrize(
    "box",
    [
        [100, 10, 20, 20],  # right of the image: rows overlap, no column does
        [10, 90, 20, 20],  # below
        [-300, 10, 20, 20],  # far left
        [10, -40, 10, 10],  # above, the crop ending inside the negative range (y 0..-25 would wrap)
        [-40, -40, 10, 10],  # top-left diagonal
        [200, 200, 20, 20],  # bottom-right diagonal
    ],
)
def test_a_box_outside_the_image_gives_a_black_crop_and_an_empty_mask(box: list[int]) -> None:
    image = np.full((40, 60, 3), 200, np.uint8)
    geo = crop_geometry(box, (40, 60), 2.0, 32)
    crop = crop_image(image, geo)
    assert crop.shape == (32, 32, 3) and crop.dtype == np.uint8 and not crop.any()
    back = paste_back(np.ones((32, 32), np.float32), geo, (40, 60))
    assert back.shape == (40, 60) and not back.any()


def test_a_crop_overlapping_the_image_by_one_pixel_keeps_it() -> None:
    image = np.zeros((40, 60, 3), np.uint8)
    image[:, 58] = 50  # the last column (59) is dropped by the border quirk; 58 is the crop's only one
    geo = crop_geometry([63, 10, 10, 10], (40, 60), 2.0, 20)  # crop x 58..78, 1:1 scale
    assert geo.x1 == 58
    crop = crop_image(image, geo)
    assert (crop[:, 0] == 50).all() and not crop[:, 1:].any()
    image[0] = 90  # the first row, alone in a crop from y -19
    geo = crop_geometry([20, -14, 10, 10], (40, 60), 2.0, 20)
    assert geo.y1 == -19
    crop = crop_image(image, geo)
    assert (crop[19] == 90).all() and not crop[:19].any()
