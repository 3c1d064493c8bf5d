"""Boxes, IoU, mask → box and the lost-target policy (trek_tracker.geometry)."""

from __future__ import annotations

import numpy as np
import pytest

from trek_tracker.errors import InputError
from trek_tracker.geometry import (
    Box,
    BoxConfig,
    BoxFromMask,
    box_to_mask,
    iou,
    kept_components_box,
    mask_to_box,
    remove_small_components,
)

# ------------------------------------------------------------------------------------------------- IoU


def test_iou_hand_computed() -> None:
    # overlap 5x5 = 25, union 100 + 100 - 25 = 175
    assert iou([0, 0, 10, 10], [5, 5, 10, 10]) == pytest.approx(25 / 175)
    # contained: 4x4 inside 8x8
    assert iou([0, 0, 8, 8], [2, 2, 4, 4]) == pytest.approx(16 / 64)
    # touching edges: continuous pixels, no +1, so no overlap
    assert iou([0, 0, 10, 10], [10, 0, 10, 10]) == 0.0
    assert iou([3, 4, 5, 6], [3, 4, 5, 6]) == pytest.approx(1.0)


def test_iou_degenerate_and_nan() -> None:
    assert iou([0, 0, 0, 0], [0, 0, 10, 10]) == 0.0
    assert iou([0, 0, -5, 10], [0, 0, 10, 10]) == 0.0
    assert np.isnan(iou([np.nan] * 4, [0, 0, 10, 10]))


def test_iou_adds_the_toolkit_epsilon_to_the_union() -> None:
    """The toolkit divides by ``union + eps`` (eps = 2.22e-16): visible only for boxes whose area is near eps,
    where two identical boxes of area 1e-16 score 1e-16 / (1e-16 + eps), not 1 and not 0."""
    side = 1e-8  # area 1e-16
    assert iou([0, 0, side, side], [0, 0, side, side]) == pytest.approx(1e-16 / (1e-16 + 2.220446049250313e-16))


def test_iou_vectorised_matches_scalar() -> None:
    rng = np.random.default_rng(1)
    a = np.concatenate([rng.uniform(0, 50, (20, 2)), rng.uniform(1, 40, (20, 2))], axis=1)
    b = np.concatenate([rng.uniform(0, 50, (20, 2)), rng.uniform(1, 40, (20, 2))], axis=1)
    vec = iou(a, b)
    assert vec.shape == (20,)
    np.testing.assert_allclose(vec, [iou(x, y) for x, y in zip(a, b, strict=True)])
    np.testing.assert_allclose(iou(a, a[3]), [iou(x, a[3]) for x in a])
    assert np.all((vec >= 0) & (vec <= 1))


def test_iou_of_two_boxes_is_a_python_float() -> None:
    value = iou([0, 0, 10, 10], [5, 0, 10, 10])
    assert type(value) is float and value == pytest.approx(50 / 150)


def test_iou_rejects_boxes_that_are_not_four_numbers() -> None:
    with pytest.raises(ValueError, match="shape"):
        iou([0, 0, 10], [0, 0, 10, 10])
    with pytest.raises(ValueError, match="shape"):
        iou([[0, 0, 10, 10]], [[0, 0, 10, 10, 1]])


def test_iou_of_a_box_with_itself_is_one_even_when_its_far_edge_rounds_up() -> None:
    """(x + w) - x is not always w in floating point: here the overlap comes out a hair larger than the box's
    own area, so the raw ratio is above 1, and IoU is clipped to 1."""
    box = [318.5, 134.9, 13.3, 5.9]
    overlap = ((318.5 + 13.3) - 318.5) * ((134.9 + 5.9) - 134.9)
    assert overlap > 13.3 * 5.9
    assert overlap / (2 * 13.3 * 5.9 - overlap + np.finfo(float).eps) > 1
    assert iou(box, box) == 1.0
    assert iou(np.array([box, box]), box).tolist() == [1.0, 1.0]


# ----------------------------------------------------------------------------------- parsing, checking


@pytest.mark.parametrize(
    "text", ["313,88,342,194", "313 88 342 194", " 313, 88,342 ,194 ", "313.0,88,342,194"]
)
def test_parse_box_accepts(text: str) -> None:
    np.testing.assert_array_equal(Box.parse(text), [313, 88, 342, 194])


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("1,2,3", "four numbers"),
        ("1,2,3,4,5", "four numbers"),
        ("a,b,c,d", "not four numbers"),
        ("", "four numbers"),
        ("1,2,nan,4", "NaN or infinite"),
        ("1,2,inf,4", "NaN or infinite"),
        ("1,2,0,4", "zero or negative"),
        ("1,2,3,-4", "zero or negative"),
        ("1,2,3,0", "zero or negative"),
        ("1,2,3,-0.5", "zero or negative"),
    ],
)
def test_parse_box_rejects_with_one_line(text: str, reason: str) -> None:
    with pytest.raises(InputError) as info:
        Box.parse(text)
    message = str(info.value)
    assert reason in message and "\n" not in message and "x,y,w,h" in message


def test_box_in_frame() -> None:
    inside = Box(10, 10, 20, 20)
    assert inside.in_frame((100, 200)) == inside
    given = Box(-5, 90, 20, 20)
    box = given.in_frame((100, 200))
    assert box != given
    np.testing.assert_array_equal(box, [0, 90, 15, 10])
    assert box.frame == (100, 200) and box.in_frame((100, 200)) is box  # checked once
    # a box that ends exactly at the frame's left or top edge covers [x, 0): no pixel of the frame
    for outside in ([200, 10, 5, 5], [10, 100, 5, 5], [-5, 10, 5, 5], [10, -30, 5, 29.5], [10, -30, 5, 30]):
        with pytest.raises(InputError, match="outside"):
            Box.of(outside).in_frame((100, 200))
    for fractional in ([330.1, 130.7, 250.3, 170.9], [0.2, 0.3, 0.5, 0.5]):  # (x + w) - x != w in floats
        assert list(Box.of(fractional).in_frame((480, 854))) == fractional  # so not "clipped" to itself
    assert list(Box.of([-0.5, 130.7, 250.3, 170.9]).in_frame((480, 854))) == [0, 130.7, 249.8, 170.9]
    # touching the right or bottom edge is inside: the box keeps its numbers ((x + w) - x is 341.79999999999995)
    for touching in ([512.2, 10, 341.8, 20], [10, 256.1, 20, 223.9], [0.2, 0.1, 0.5, 0.2]):
        assert list(Box.of(touching).in_frame((480, 854))) == touching
    # past the right or bottom edge: clipped there
    assert list(Box.of([840, 10, 30, 5]).in_frame((480, 854))) == [840, 10, 14, 5]
    assert list(Box.of([10, 470, 5, 30]).in_frame((480, 854))) == [10, 470, 5, 10]


def test_a_box_is_taken_as_it_is_with_the_frame_it_was_checked_against() -> None:
    checked = Box(-5, 10, 20, 20).in_frame((100, 200))
    assert Box.of(checked) is checked and Box.of(checked).frame == (100, 200)
    assert Box.of(np.array([1, 2, 3, 4])) == Box(1.0, 2.0, 3.0, 4.0)
    for wrong in ([1, 2, 3], [1, 2, 3, 4, 5], np.arange(8).reshape(2, 4)):
        with pytest.raises(InputError, match="four numbers"):
            Box.of(wrong)
    array = np.asarray(Box(1, 2, 3, 4))
    assert array.dtype == np.float64 and array.tolist() == [1, 2, 3, 4]
    assert np.asarray(Box(1, 2, 3, 4), dtype=np.float32).dtype == np.float32


def test_a_frame_size_given_as_any_pair_of_integers_is_the_same_frame() -> None:
    given = Box(-5, 10, 20, 20)
    checked = given.in_frame((100, 200))
    for size in ([100, 200], np.array([100, 200]), (np.int64(100), np.int64(200)), (100.0, 200.0)):
        box = given.in_frame(size)
        assert box == checked and box.frame == (100, 200) and type(box.frame[0]) is int
        assert box.in_frame(size) is box


# ----------------------------------------------------------------------------------------- mask → box


def test_mask_to_box_known_masks() -> None:
    mask = np.zeros((40, 50), np.uint8)
    mask[7, 9] = 1  # one pixel
    np.testing.assert_array_equal(mask_to_box(mask), [9, 7, 1, 1])
    mask[0, 0] = 255  # two far-apart pixels
    np.testing.assert_array_equal(mask_to_box(mask), [0, 0, 10, 8])
    full = np.ones((40, 50), bool)
    np.testing.assert_array_equal(mask_to_box(full), [0, 0, 50, 40])
    corner = np.zeros((40, 50), bool)
    corner[-1, -1] = True
    np.testing.assert_array_equal(mask_to_box(corner), [49, 39, 1, 1])
    assert mask_to_box(np.zeros((40, 50), bool)) is None


def test_mask_to_box_car_shadow(davis) -> None:
    from PIL import Image

    mask = np.asarray(Image.open(davis / "Annotations/480p/car-shadow/00000.png"))
    np.testing.assert_array_equal(mask_to_box(mask > 0), [313, 88, 342, 194])


def test_mask_to_box_rejects_non_2d() -> None:
    with pytest.raises(InputError, match="2-D"):
        mask_to_box(np.zeros((4, 4, 3)))


def test_box_to_mask_round_trip_and_clip() -> None:
    for box in ([3, 4, 10, 6], [0, 0, 1, 1], [49, 29, 1, 1]):
        mask = box_to_mask(box, (30, 50))
        assert mask.dtype == bool and mask.sum() == box[2] * box[3]
        np.testing.assert_array_equal(mask_to_box(mask), box)
    clipped = box_to_mask([40, 25, 20, 20], (30, 50))
    np.testing.assert_array_equal(mask_to_box(clipped), [40, 25, 10, 5])
    thin = box_to_mask([10.6, 5.6, 0.3, 0.3], (30, 50))  # holds no pixel centre
    np.testing.assert_array_equal(mask_to_box(thin), [10, 5, 1, 1])
    column = box_to_mask([10.6, 5, 0.3, 20], (30, 50))  # too thin across only: a column, not one pixel
    np.testing.assert_array_equal(mask_to_box(column), [10, 5, 1, 20])
    assert column.sum() == 20
    edge = box_to_mask([0, 3, 0.3, 20], (30, 50))  # [-9.7, 3, 10, 20] clipped to the frame (Box.in_frame)
    np.testing.assert_array_equal(mask_to_box(edge), [0, 3, 1, 20])
    assert not box_to_mask([-9.7, 5, 9.6, 20], (30, 50)).any()  # wholly outside
    assert not box_to_mask([60, 0, 5, 5], (30, 50)).any()


def test_box_to_mask_of_no_box_in_the_frame_is_empty() -> None:
    """A box with a NaN or no positive size, or one that only touches the frame's edge from outside (it covers
    [10, 15) of a frame [0, 10)), marks no pixel, rather than the edge's line of pixels or an error."""
    for box in ([np.nan, 0, 5, 5], [0, 0, np.inf, 5], [2, 2, 0, 5], [2, 2, 5, -1], [10, 2, 5, 5], [2, -5, 5, 5]):
        mask = box_to_mask(box, (10, 10))
        assert mask.shape == (10, 10) and mask.dtype == bool and not mask.any(), box


def test_box_to_mask_of_a_box_partly_outside_is_that_of_its_clipped_box() -> None:
    """The mask is clipped to the frame: a box that overlaps it only partly gives the mask of its
    :meth:`Box.in_frame` box, so a part too thin to hold a pixel centre still marks a line, never nothing."""
    size = (30, 50)
    sliver = box_to_mask([-9.7, 3, 10, 20], size)  # 0.3 px of it inside the frame, at its left edge
    np.testing.assert_array_equal(mask_to_box(sliver), [0, 3, 1, 20])
    corner = box_to_mask([49.8, 29.9, 0.5, 3], size)  # 0.2 x 0.1 px inside, at the bottom-right corner
    np.testing.assert_array_equal(mask_to_box(corner), [49, 29, 1, 1])
    rng = np.random.default_rng(0)
    for _ in range(2000):
        x, y = rng.uniform(-20, 60), rng.uniform(-20, 40)
        w, h = rng.choice([rng.uniform(0.01, 1.5), rng.uniform(0.01, 40)], 2)
        try:
            clipped = Box(x, y, w, h).in_frame(size)
        except InputError:  # wholly outside the frame
            assert not box_to_mask([x, y, w, h], size).any()
            continue
        mask = box_to_mask([x, y, w, h], size)
        assert mask.any(), (x, y, w, h)
        np.testing.assert_array_equal(mask, box_to_mask(clipped, size), err_msg=str((x, y, w, h)))


def test_remove_small_components() -> None:
    mask = np.zeros((50, 50), bool)
    mask[10:30, 10:30] = True  # 400 px
    mask[45, 45] = True  # speckle
    mask[0:5, 40:50] = True  # 50 px
    kept = remove_small_components(mask, 100)
    np.testing.assert_array_equal(kept, mask & (np.arange(50)[:, None] < 40) & (np.arange(50)[:, None] >= 10))
    np.testing.assert_array_equal(mask_to_box(remove_small_components(mask, 40)), [10, 0, 40, 30])
    tiny = np.zeros((50, 50), bool)
    tiny[3:5, 3:5] = True
    np.testing.assert_array_equal(remove_small_components(tiny, 100), tiny)  # never removes everything
    np.testing.assert_array_equal(mask_to_box(remove_small_components(mask, 0, "largest")), [10, 10, 20, 20])
    # "smaller than min_px" is removed (docs/boxes.md#speck-removal): a component of exactly min_px pixels stays
    np.testing.assert_array_equal(remove_small_components(mask, 50), mask & ~(np.arange(50)[:, None] == 45))
    np.testing.assert_array_equal(kept_components_box(mask, 50), [10, 0, 40, 30])


@pytest.mark.parametrize("keep", ["all", "largest"])
@pytest.mark.parametrize("min_px", [0, 1, 5, 40, 100])
def test_kept_components_box_is_the_box_of_the_kept_mask(min_px: int, keep: str) -> None:
    """The box read off the labelling's statistics equals the box of the mask with specks removed, on
    random blob masks (several components, ties, empty masks, non-contiguous and uint8 inputs)."""
    rng = np.random.default_rng(min_px + (keep == "largest"))
    for trial in range(60):
        mask = rng.random((37, 53)) < rng.choice([0.0, 0.02, 0.1, 0.4])
        for _ in range(rng.integers(0, 3)):
            y, x, h, w = rng.integers(0, 30), rng.integers(0, 45), rng.integers(1, 12), rng.integers(1, 12)
            mask[y:y + h, x:x + w] = True
        view = mask[:, ::-1] if trial % 3 == 0 else mask
        view = view.astype(np.uint8) * 255 if trial % 4 == 0 else view
        expected = mask_to_box(remove_small_components(view, min_px, keep))
        got = kept_components_box(view, min_px, keep)
        if expected is None:
            assert got is None
        else:
            np.testing.assert_array_equal(got, expected)


def test_a_mask_box_is_float64_for_any_mask_dtype() -> None:
    for dtype in (bool, np.uint8, np.int64):
        mask = np.zeros((10, 12), dtype)
        mask[2:5, 3:9] = 1
        for box in (mask_to_box(mask), kept_components_box(mask, 5), kept_components_box(mask, 0, "largest")):
            assert box.dtype == np.float64
            np.testing.assert_array_equal(box, [3, 2, 6, 3])


@pytest.mark.parametrize("keep", ["all", "largest"])
@pytest.mark.parametrize("min_px", [0, 1, 2, 100])
def test_an_empty_mask_has_no_components_and_no_box_in_every_setting(min_px: int, keep: str) -> None:
    empty = np.zeros((12, 15), np.uint8)
    kept = remove_small_components(empty, min_px, keep)
    assert kept.dtype == bool and kept.shape == empty.shape and not kept.any()
    assert kept_components_box(empty, min_px, keep) is None
    box, lost = BoxFromMask([1, 2, 3, 4], BoxConfig(min_component_px=min_px, components=keep)).update(empty)
    assert lost
    np.testing.assert_array_equal(box, [1, 2, 3, 4])


# ---------------------------------------------------------------------------------- lost-target policy


def test_box_from_mask_holds_last_box_when_empty() -> None:
    policy = BoxFromMask([1, 2, 3, 4], BoxConfig(min_component_px=0))
    empty = np.zeros((40, 40), bool)
    box, lost = policy.update(empty)  # lost before any mask: the init box is held
    assert lost
    np.testing.assert_array_equal(box, [1, 2, 3, 4])
    mask = np.zeros((40, 40), bool)
    mask[10:20, 5:8] = True
    box, lost = policy.update(mask)
    assert not lost
    np.testing.assert_array_equal(box, [5, 10, 3, 10])
    for _ in range(3):
        box, lost = policy.update(empty)
        assert lost
        np.testing.assert_array_equal(box, [5, 10, 3, 10])
    box[:] = -1  # the caller owns the returned array
    np.testing.assert_array_equal(policy.last_box, [5, 10, 3, 10])


def test_box_from_mask_ignores_speckles_by_default() -> None:
    policy = BoxFromMask([0, 0, 10, 10])
    mask = np.zeros((100, 100), bool)
    mask[20:40, 20:40] = True
    mask[90, 90] = True
    box, lost = policy.update(mask)
    np.testing.assert_array_equal(box, [20, 20, 20, 20])
    assert not lost
    mask[80:90, 0:10] = True  # 100 px: the default threshold (Alpha-Refine's) keeps it
    np.testing.assert_array_equal(policy.update(mask)[0], [0, 20, 40, 70])
    mask[80, 0] = False  # 99 px: a speck
    np.testing.assert_array_equal(policy.update(mask)[0], [20, 20, 20, 20])


def test_kept_components_box_takes_any_non_zero_pixel_as_foreground() -> None:
    """A label map (int64 ids, or 0/255) gives the box its non-zero pixels give as a bool mask."""
    mask = np.zeros((20, 20), np.int64)
    mask[5:10, 5:10] = 1
    mask[15, 15] = 1
    for values in (mask, mask * 255, mask.astype(np.uint8) * 255):
        np.testing.assert_array_equal(kept_components_box(values, 2), [5, 5, 5, 5])
        np.testing.assert_array_equal(remove_small_components(values, 2), (mask != 0) & (np.arange(20) < 12)[:, None])


def test_a_threshold_of_two_pixels_removes_single_pixel_specks() -> None:
    """Only 0 and 1 disable speck removal (docs/boxes.md#speck-removal)."""
    mask = np.zeros((20, 20), bool)
    mask[5:10, 5:10] = True
    mask[15, 15] = True
    np.testing.assert_array_equal(mask_to_box(remove_small_components(mask, 2)), [5, 5, 5, 5])
    np.testing.assert_array_equal(kept_components_box(mask, 2), [5, 5, 5, 5])
    for off in (0, 1):
        np.testing.assert_array_equal(kept_components_box(mask, off), [5, 5, 11, 11])


def test_box_from_mask_config_validation() -> None:
    with pytest.raises(InputError):
        BoxConfig(components="square")
    with pytest.raises(InputError):
        BoxFromMask([0, 0, np.nan, 1])


def test_a_box_of_text_is_parsed_and_anything_but_four_numbers_is_an_input_error() -> None:
    assert Box.of("20,30,40,25") == Box(20, 30, 40, 25)
    for value, message in (([20, None, 40, 25], "NaN"), ([[1, 2], [3]], "four numbers"), ("20,30", "four numbers"),
                           ({"x": 1}, "four numbers")):
        with pytest.raises(InputError, match=message):
            Box.of(value)


def test_no_mask_is_an_empty_one_and_holds_the_last_box_as_float64() -> None:
    policy = BoxFromMask([4, 5, 6, 7])
    box, lost = policy.update(None)
    assert lost
    np.testing.assert_array_equal(box, [4, 5, 6, 7])
    box, lost = policy.take(np.array([1, 2, 3, 4]))  # an integer box is reported, and held, as float64
    assert not lost and box.dtype == np.float64 and policy.last_box.dtype == np.float64
    np.testing.assert_array_equal(policy.update(None)[0], [1, 2, 3, 4])


def test_a_box_from_a_crop_at_its_origin_is_the_box_on_the_whole_frame() -> None:
    """The pipeline hands the policy the crop of the frame's mask that holds the object (its tight box) and
    that crop's top-left corner; the box (speck removal included) is the one of the whole frame."""
    frame = np.zeros((60, 80), bool)
    frame[20:35, 30:50] = True  # 300 px
    frame[40:43, 55:58] = True  # 9 px: a speck at the default threshold
    frame[12:22, 60:72] = True  # 120 px
    for config in (BoxConfig(), BoxConfig(min_component_px=0), BoxConfig(components="largest"),
                   BoxConfig(min_component_px=5)):
        whole = BoxFromMask([0, 0, 1, 1], config).update(frame)
        x0, y0, w, h = mask_to_box(frame).astype(int)
        crop = frame[y0:y0 + h, x0:x0 + w]
        cropped = BoxFromMask([0, 0, 1, 1], config).update(crop, origin=(x0, y0))
        assert not whole[1] and not cropped[1]
        np.testing.assert_array_equal(cropped[0], whole[0])
        expected = mask_to_box(remove_small_components(frame, config.min_component_px, config.components))
        np.testing.assert_array_equal(whole[0], expected)


@pytest.mark.parametrize(("min_px", "keep", "needs"), [
    (0, "all", False), (1, "all", False), (2, "all", True), (100, "all", True),
    (0, "largest", True), (1, "largest", True), (100, "largest", True),
])
def test_a_policy_needs_the_pixels_exactly_when_speck_removal_can_change_the_box(min_px, keep, needs) -> None:
    """When it does not need them, the pipeline takes the mask's extent as the box: that must be the box
    the policy would give from the pixels, on every mask."""
    policy = BoxFromMask([0, 0, 1, 1], BoxConfig(min_component_px=min_px, components=keep))
    assert policy.needs_pixels is needs
    mask = np.zeros((20, 20), bool)
    mask[2:12, 2:12] = True
    mask[17, 17] = True  # a one-pixel component: removed by any threshold above 1 and by "largest"
    changes = not np.array_equal(policy.update(mask)[0], mask_to_box(mask))
    assert changes is needs


def test_a_negative_speck_threshold_is_an_input_error() -> None:
    with pytest.raises(InputError, match="min_component_px"):
        BoxConfig(min_component_px=-1)
    assert BoxConfig(min_component_px=0).min_component_px == 0
