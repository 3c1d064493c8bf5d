"""The fusion rule on synthetic masks whose winner is known."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from trek_tracker.geometry import box_to_mask, mask_to_box
from trek_tracker.init.fusion import Candidate, FusionConfig, combined_candidates, fuse

SHAPE = (80, 100)
BOX = np.array([20.0, 10.0, 50.0, 40.0])  # x 20..70, y 10..50


def _ellipse(cx: float, cy: float, rx: float, ry: float) -> np.ndarray:
    yy, xx = np.mgrid[0 : SHAPE[0], 0 : SHAPE[1]]
    return ((xx + 0.5 - cx) / rx) ** 2 + ((yy + 0.5 - cy) / ry) ** 2 <= 1


GOOD = _ellipse(45, 30, 25, 20)  # touches all four box sides: rect IoU ~ 1
HALF = _ellipse(32.5, 30, 12.5, 20)  # left half of the box: rect IoU ~ 0.5
BLEED = _ellipse(45, 30, 45, 35)  # mostly outside the box
SLIVER = _ellipse(45, 30, 2, 2)  # 2% of the box


def test_the_box_filling_candidate_wins_and_bad_ones_are_rejected() -> None:
    cands = [
        Candidate("half", HALF, 0.99, "sam"),
        Candidate("good", GOOD, 0.6, "sam"),
        Candidate("bleed", BLEED, 0.99, "sam"),
        Candidate("sliver", SLIVER, 0.99, "ar"),
    ]
    res = fuse(cands, BOX, SHAPE, FusionConfig())
    assert res.winner == "good" and res.fallback is None and res.source == "sam"
    by_name = {s.name: s for s in res.scores}
    assert by_name["good"].rect_iou > 0.9 and 0.4 < by_name["half"].rect_iou < 0.6
    assert by_name["bleed"].rejected.startswith("outside") and by_name["sliver"].rejected.startswith("fill")
    assert np.array_equal(res.mask, GOOD & box_to_mask(BOX, SHAPE))
    assert by_name["good"].score == round(by_name["good"].rect_iou + 0.15 * 0.6, 6)


def test_confidence_breaks_ties_between_equal_shapes() -> None:
    cands = [Candidate("low", GOOD, 0.2, "sam"), Candidate("high", GOOD.copy(), 0.9, "ar")]
    assert fuse(cands, BOX, SHAPE, FusionConfig()).winner == "high"
    assert fuse(cands, BOX, SHAPE, FusionConfig(fusion_lambda=-1.0)).winner == "low"


def test_specks_are_dropped() -> None:
    blob = GOOD.copy()
    speck = _ellipse(66, 14, 2, 2) & ~GOOD
    res = fuse([Candidate("two_parts", blob | speck, 0.5, "sam")], BOX, SHAPE, FusionConfig())
    assert res.mask[speck].sum() == 0 and res.mask.sum() == (GOOD & box_to_mask(BOX, SHAPE)).sum()


def test_an_object_split_by_a_hand_keeps_both_parts() -> None:
    """An occluder across the object (a hand, in egocentric video) splits its mask in two: the first-frame
    mask keeps both parts, as the reported boxes do (spec MB2), not only the larger one."""
    hand = np.zeros(SHAPE, bool)
    hand[:, 42:48] = True
    split = GOOD & ~hand
    res = fuse([Candidate("sam_1", split, 0.9, "sam")], BOX, SHAPE, FusionConfig())
    assert res.winner == "sam_1" and res.fallback is None
    assert np.array_equal(res.mask, split & box_to_mask(BOX, SHAPE)) and res.scores[0].rect_iou > 0.9


def test_a_many_part_object_beats_a_mask_leaking_into_the_background(davis: Path) -> None:
    """DAVIS bmx-trees: rider and bike are several components in the ground truth. The exact mask must win
    over one that leaks 20 px into the background all round (clipped to the box, that one looks box-like)."""
    gt = cv2.imread(str(davis / "Annotations" / "480p" / "bmx-trees" / "00000.png"), cv2.IMREAD_GRAYSCALE) > 0
    box = mask_to_box(gt)
    leak = cv2.dilate(gt.astype(np.uint8), np.ones((41, 41), np.uint8)) > 0
    res = fuse([Candidate("sam_1", leak, 0.95, "sam"), Candidate("sam_2", gt, 0.9, "sam")], box, gt.shape,
               FusionConfig())
    assert res.winner == "sam_2"
    assert (res.mask & gt).sum() / (res.mask | gt).sum() > 0.95


def test_fallbacks_ar_then_filled_box() -> None:
    empty = np.zeros(SHAPE, bool)
    res = fuse([Candidate("sam_0", empty, 0.9, "sam")], BOX, SHAPE, FusionConfig())
    assert res.winner == "box" and res.source == "box" and "no usable candidate" in res.fallback
    assert np.array_equal(res.mask, box_to_mask(BOX, SHAPE))
    # SAM's best is the half mask (rect IoU < 0.8); AR bleeds (rejected) but its clipped rect matches.
    cands = [Candidate("sam_1", HALF, 0.9, "sam"), Candidate("ar_seg384", BLEED, 0.9, "ar")]
    res = fuse(cands, BOX, SHAPE, FusionConfig(min_rect_iou=0.8))
    assert res.winner == "ar_seg384" and res.source == "ar" and "used the AR mask" in res.fallback


def test_tiny_boxes_use_the_filled_box() -> None:
    res = fuse([Candidate("good", GOOD, 1.0, "sam")], [10, 10, 5, 30], SHAPE, FusionConfig())
    assert res.winner == "box" and res.mask.sum() == 5 * 30
    assert res.fallback == "box smaller than 8 px: used the filled box"  # what was done, as every fallback says


def test_combined_candidates() -> None:
    logits = np.where(GOOD, 4.0, -4.0)
    ar = np.where(HALF, 0.9, 0.05)
    by_name = {c.name: c for c in combined_candidates(logits, 0.8, ar, 0.6)}
    assert np.array_equal(by_name["intersection"].mask, GOOD & HALF)
    assert np.array_equal(by_name["union"].mask, GOOD | HALF)
    # Soft vote: in GOOD only, (0.982 + 0.05) / 2 > 0.5; in HALF only, (0.018 + 0.9) / 2 < 0.5.
    assert np.array_equal(by_name["vote"].mask, GOOD)
    assert by_name["vote"].confidence == 0.7


def _rect(x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    """Pixels with columns x0..x1-1 and rows y0..y1-1."""
    m = np.zeros(SHAPE, bool)
    m[y0:y1, x0:x1] = True
    return m


def test_a_mask_overhanging_the_box_keeps_only_the_tolerated_margin() -> None:
    # 4 columns (70..73) past the box's right side x = 70, 4 rows (50..53) past its bottom y = 50
    spill = GOOD | _rect(60, 25, 74, 35) | _rect(40, 40, 50, 54)
    for margin in (0, 1, 2):
        res = fuse([Candidate("sam_1", spill, 0.9, "sam")], BOX, SHAPE, FusionConfig(clip_margin_px=margin))
        assert res.winner == "sam_1"
        rows, cols = np.flatnonzero(res.mask.any(1)), np.flatnonzero(res.mask.any(0))
        assert cols[-1] == 69 + margin and rows[-1] == 49 + margin  # the box's last column 69, last row 49
        inner = box_to_mask(BOX, SHAPE)
        assert np.array_equal(res.mask & inner, spill & inner)


def test_the_documented_thresholds_are_inclusive() -> None:
    """A candidate is rejected only when ``fill < min_fill`` or ``outside > max_outside`` (docs/init.md), and
    a box whose shorter side is exactly ``min_box_px`` is scored, not filled."""
    inside = _rect(20, 10, 55, 50)  # 35 x 40 = 1400 px inside the box
    outside = _rect(75, 52, 100, 76)  # 25 x 24 = 600 px beyond the 1 px margin: 600 / 2000 = 0.3
    res = fuse([Candidate("at_limit", inside | outside, 0.9, "sam")], BOX, SHAPE, FusionConfig())
    # rect IoU 0.7 clears min_rect_iou = 0.5
    assert res.scores[0].outside == 0.3 and res.scores[0].rejected is None and res.winner == "at_limit"
    assert np.array_equal(res.mask, inside)  # the outside part is clipped away
    res = fuse([Candidate("at_limit", inside | outside, 0.9, "sam")], BOX, SHAPE, FusionConfig(min_rect_iou=0.7))
    assert res.scores[0].rect_iou == 0.7 and res.winner == "at_limit"  # rect IoU >= min_rect_iou is accepted
    over = outside | _rect(75, 76, 76, 77)  # one pixel more outside
    res = fuse([Candidate("over", inside | over, 0.9, "sam")], BOX, SHAPE, FusionConfig())
    assert res.scores[0].rejected.startswith("outside") and res.winner == "box"

    part = _rect(60, 10, 70, 20)  # a separate part of exactly min_component_px = 100 px stays
    res = fuse([Candidate("two_parts", inside | part, 0.9, "sam")], BOX, SHAPE, FusionConfig())
    assert np.array_equal(res.mask, inside | part) and res.scores[0].rect_iou == 1.0
    res = fuse([Candidate("two_parts", inside | (part & ~_rect(69, 19, 70, 20)), 0.9, "sam")], BOX, SHAPE,
               FusionConfig())
    assert np.array_equal(res.mask, inside)  # 99 px: a speckle

    corner = _rect(20, 10, 30, 20)  # 10 x 10 = 100 px of the 2000 px box: fill 0.05
    res = fuse([Candidate("fill", corner, 0.9, "sam")], BOX, SHAPE, FusionConfig(min_rect_iou=0.0))
    assert res.scores[0].fill == 0.05 and res.scores[0].rejected is None and res.winner == "fill"
    res = fuse([Candidate("fill", corner & ~_rect(20, 10, 21, 11), 0.9, "sam")], BOX, SHAPE,
               FusionConfig(min_rect_iou=0.0))
    assert res.scores[0].rejected.startswith("fill") and res.winner == "box"

    narrow = np.array([20.0, 10.0, 8.0, 40.0])
    bar = _rect(20, 10, 26, 50)  # 6 of the 8 columns
    res = fuse([Candidate("bar", bar, 0.9, "sam")], narrow, SHAPE, FusionConfig())
    assert res.winner == "bar" and np.array_equal(res.mask, bar)
    res = fuse([Candidate("bar", bar, 0.9, "sam")], narrow, SHAPE, FusionConfig(min_box_px=8.5))
    assert res.winner == "box" and res.scores == []
    flat = np.array([20.0, 10.0, 50.0, 7.0])  # the shorter side is the height
    res = fuse([Candidate("flat", _rect(20, 10, 70, 17), 0.9, "sam")], flat, SHAPE, FusionConfig())
    assert res.winner == "box" and res.fallback.startswith("box smaller than 8 px")


def test_an_exact_tie_goes_to_the_earlier_candidate() -> None:
    first, second = Candidate("sam_1", GOOD, 0.7, "sam"), Candidate("ar_secm", GOOD.copy(), 0.7, "ar")
    assert fuse([first, second], BOX, SHAPE, FusionConfig()).winner == "sam_1"
    assert fuse([second, first], BOX, SHAPE, FusionConfig()).winner == "ar_secm"


def test_the_ar_fallback_needs_a_non_empty_box_like_ar_mask() -> None:
    # SAM's best (HALF, rect IoU ~0.5) fails min_rect_iou = 0.8, and so does the AR sliver: the filled box.
    cands = [Candidate("sam_1", HALF, 0.9, "sam"), Candidate("ar_secm", SLIVER, 0.9, "ar")]
    res = fuse(cands, BOX, SHAPE, FusionConfig(min_rect_iou=0.8))
    assert res.winner == "box" and res.source == "box" and res.fallback.endswith("used the filled box")
    assert np.array_equal(res.mask, box_to_mask(BOX, SHAPE))
    # With every rect IoU acceptable, an empty AR mask (rect IoU 0) still never becomes the reference.
    empty = np.zeros(SHAPE, bool)
    res = fuse([Candidate("sam_1", empty, 0.9, "sam"), Candidate("ar_secm", empty, 0.9, "ar")], BOX, SHAPE,
               FusionConfig(min_rect_iou=0.0))
    assert res.winner == "box" and res.mask.sum() == 50 * 40
    assert all(s.rejected == "empty" and s.outside == 0.0 and s.rect_iou == 0.0 for s in res.scores)
    # An AR mask rejected for bleeding out of the box is still the fallback when its rect IoU is exactly the limit.
    bleeding = _rect(20, 10, 55, 50) | _rect(75, 52, 100, 77)  # rect IoU 0.7 once clipped, outside > 0.3
    res = fuse([Candidate("sam_1", HALF, 0.9, "sam"), Candidate("ar_secm", bleeding, 0.9, "ar")], BOX, SHAPE,
               FusionConfig(min_rect_iou=0.7))
    assert res.scores[1].rejected.startswith("outside") and res.scores[1].rect_iou == 0.7
    assert res.winner == "ar_secm" and res.source == "ar" and np.array_equal(res.mask, _rect(20, 10, 55, 50))


def test_the_combined_masks_threshold_strictly_with_the_logistic_sigmoid() -> None:
    """vote: (sigmoid(L) + P) / 2 > 0.5, intersection and union of L > 0 and P > 0.5 (docs/init.md#candidates),
    on logits and probabilities around and at the thresholds."""
    logits = np.array([-4.0, -1.0, -0.3, 0.0, 0.3, 1.0, 4.0])
    probs = np.array([0.0, 0.2, 0.25, 0.3, 0.45, 0.5, 0.55, 0.7, 0.75, 0.8, 1.0])
    L, P = np.meshgrid(logits, probs)
    by_name = {c.name: c for c in combined_candidates(L, 0.4, P, 0.6)}
    np.testing.assert_array_equal(by_name["vote"].mask, (1 / (1 + np.exp(-L)) + P) / 2 > 0.5)
    assert not by_name["vote"].mask[(L == 0) & (P == 0.5)].any()  # exactly 0.5: not in the mask
    np.testing.assert_array_equal(by_name["intersection"].mask, (L > 0) & (P > 0.5))
    np.testing.assert_array_equal(by_name["union"].mask, (L > 0) | (P > 0.5))
    assert {c.source for c in by_name.values()} == {"fused"} and by_name["union"].confidence == 0.5


def test_the_rule_decides_on_the_numbers_run_json_records() -> None:
    """fill and rect IoU of 500 / 900 = 0.5555...6 are recorded as 0.555556; thresholds at that value accept."""
    box = np.array([20.0, 10.0, 30.0, 30.0])
    mask = _rect(20, 10, 40, 35)  # 20 x 25 = 500 px, its own tight box
    assert 500 / 900 < 0.555556  # the exact values are below the thresholds used here
    res = fuse([Candidate("m", mask, 0.9, "sam")], box, SHAPE, FusionConfig(min_fill=0.555556, min_rect_iou=0.555556))
    recorded = res.to_dict()["candidates"][0]
    assert recorded["fill"] == recorded["rect_iou"] == 0.555556 and recorded["rejected"] is None
    assert res.winner == "m" and res.fallback is None
    res = fuse([Candidate("m", mask, 0.9, "sam")], box, SHAPE, FusionConfig(min_fill=0.555557, min_rect_iou=0.0))
    assert res.scores[0].rejected == "fill 0.556 < 0.555557" and res.winner == "box"
