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
