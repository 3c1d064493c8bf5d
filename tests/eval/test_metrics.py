"""Metric primitives against the spec's test vectors (TV1, TV4, TV5) and the toolkit's quirks."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from trek_tracker.eval import metrics as M

A = [-1, -1, -1, -1]
TV1_GT = np.array([[100, 100, 50, 50]] * 2 + [A] + [[100, 100, 50, 50]] * 3, float)
TV1_PRED = np.array([[100, 100, 50, 50], [110, 100, 50, 50], [0, 0, 0, 0], [130, 100, 50, 50],
                     [400, 400, 50, 50], [100, 100, 50, 50]], float)


def test_thresholds_are_linspace() -> None:
    assert len(M.THR_IOU) == 21 and M.THR_IOU[-1] == 1.0 and M.THR_IOU[5] == np.linspace(0, 1, 21)[5]
    assert len(M.THR_NCE) == 51 and M.THR_NCE[-1] == 0.5
    assert np.array_equal(M.THR_GSR, np.linspace(0, 0.5, 51))


def test_tv1_primitives() -> None:
    ious, nces = M.frame_metrics(TV1_PRED, TV1_GT)
    np.testing.assert_allclose(ious, [1, 2 / 3, 0.25, 0, 1], atol=1e-12)
    np.testing.assert_allclose(nces, [0, 0.2, 0.6, np.sqrt(72), 0], atol=1e-12)
    sc = M.score_run(TV1_PRED, TV1_GT)
    assert sc.success_score == pytest.approx(59 / 105, abs=1e-12)
    assert sc.normalized_precision_score == pytest.approx(133 / 255, abs=1e-12)
    assert sc.robustness_score == pytest.approx(127 / 255, abs=1e-12)
    th = M.THR_GSR
    np.testing.assert_array_equal(sc.robustness_curve, np.where(th < 0.25, 0.6, 0.4))
    assert sc.recall_score == pytest.approx(0.6, abs=1e-7)
    assert sc.length == 6 and sc.visible == 5


def test_first_frame_is_forced_and_scored() -> None:
    gt = np.array([[10, 10, 20, 20]] * 3, float)
    pred = np.array([[500, 500, 1, 1], [10, 10, 20, 20], [10, 10, 20, 20]], float)
    sc = M.score_run(pred, gt)
    assert sc.success_score == pytest.approx(20 / 21, abs=1e-15)  # last bin (IoU > 1) is always empty
    assert sc.normalized_precision_score == 1.0 and sc.robustness_score == 1.0
    assert pred[0, 0] == 500  # the caller's array is not modified


def test_absent_needs_all_four_negative() -> None:
    gt = np.array([[-1, -1, -1, -1], [-5, 3, 10, 10], [-1, -1, -1, 0]], float)
    assert M.absent_mask(gt).tolist() == [True, False, False]


def test_iou_quirks() -> None:
    # eps in the denominator and clipping: identical boxes give exactly 1 (clipped), zero-area gives 0
    assert M.iou([[0, 0, 10, 10]], [[0, 0, 10, 10]])[0] == 1.0
    assert M.iou([[0, 0, 0, 0]], [[0, 0, 10, 10]])[0] == 0.0
    # negative predicted size: IoU 0, not negative
    assert M.iou([[5, 5, -3, 4]], [[0, 0, 10, 10]])[0] == 0.0
    # no +1: touching boxes do not overlap
    assert M.iou([[10, 0, 10, 10]], [[0, 0, 10, 10]])[0] == 0.0


def test_nce_is_normalised_by_gt_with_floor_of_one() -> None:
    # GT 0.5 px wide: normalised by max(1, 0.5) = 1
    assert M.normalized_center_error([[3, 0, 0.5, 10]], [[0, 0, 0.5, 10]])[0] == pytest.approx(3.0)
    assert M.normalized_center_error([[3, 0, 7, 10]], [[0, 0, 10, 10]])[0] == pytest.approx(0.15)


def test_strict_success_and_non_strict_precision_at_ties() -> None:
    # IoU exactly 0.25 is not a success at threshold 0.25 but is a GSR failure at 0.25
    assert M.success_curve(np.array([0.25]))[5] == 0.0
    assert M.success_curve(np.array([0.25]))[4] == 1.0
    assert M.robustness_curve(np.array([1.0, 0.25]))[25] == 0.5
    assert M.robustness_curve(np.array([1.0, 0.25]))[24] == 1.0
    assert M.normalized_precision_curve(np.array([0.2]))[20] == 1.0


def test_tv4_nan_prediction() -> None:
    gt = np.array([[0, 0, 10, 10]] * 3, float)
    pred = np.array([[0, 0, 10, 10], [np.nan] * 4, [0, 0, 10, 10]])
    sc = M.score_run(pred, gt)
    assert sc.success_score == pytest.approx(0.6349206349, abs=1e-9)
    assert sc.normalized_precision_score == pytest.approx(0.6666666667, abs=1e-9)
    assert sc.robustness_score == 1.0  # NaN is never a robustness failure
    assert sc.recall_score == pytest.approx(2 / 3, abs=1e-7)


def test_all_frames_absent_gives_nan_scores_and_full_robustness() -> None:
    gt = np.array([[-1, -1, -1, -1]] * 2, float)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # NaN quietly, as the toolkit's report: no "mean of empty slice"
        sc = M.score_run(np.zeros((2, 4)), gt)
    assert np.isnan(sc.success_score) and np.isnan(sc.normalized_precision_score)
    assert sc.robustness_score == 1.0 and sc.visible == 0


def test_tv5_speed() -> None:
    assert M.speed_fps(np.array([0.5, 0.02, 0.025, 0.0])) == pytest.approx(30.6666666667, abs=1e-9)
    assert M.speed_fps(None) == 0.0
    assert M.speed_fps(np.array([0.0, 0.0])) == 0.0


def test_length_mismatch_is_an_error() -> None:
    with pytest.raises(ValueError, match="2 predicted boxes for 3"):
        M.score_run(np.zeros((2, 4)), np.zeros((3, 4)))


def test_iou_by_hand_on_boxes_whose_axes_differ() -> None:
    """x, y, width and height all differ, so a swapped coordinate or axis changes the value."""
    # x overlap [5, 10] = 5, y overlap [10, 12] = 2: 10 / (40 + 240 - 10)
    assert M.iou([[0, 10, 10, 4]], [[5, 0, 20, 12]])[0] == pytest.approx(1 / 27, abs=1e-15)
    assert M.iou([[5, 0, 20, 12]], [[0, 10, 10, 4]])[0] == pytest.approx(1 / 27, abs=1e-15)
    # touching vertically (x overlaps fully, y not at all): no overlap
    assert M.iou([[0, 10, 10, 10]], [[0, 0, 10, 10]])[0] == 0.0
    # the union uses each box's own width x height: 8x2 inside 8x4 is 16 / 32
    assert M.iou([[1, 3, 8, 2]], [[1, 3, 8, 4]])[0] == pytest.approx(0.5, abs=1e-15)


def test_iou_and_nce_agree_with_exact_arithmetic_on_random_boxes() -> None:
    """Against the spec's formulas in exact fractions (tests/eval/helpers.py), on boxes in quarter pixels,
    ground-truth sizes down to 0.25 px (the max(1, .) floor on both axes)."""
    from fractions import Fraction

    from tests.eval.helpers import f_iou, f_nce2

    rng = np.random.default_rng(7)
    xy = rng.integers(0, 200, (400, 2, 2)) / 4
    wh = rng.integers(1, 120, (400, 2, 2)) / 4
    pred = np.concatenate([xy[:, 0], wh[:, 0]], axis=1)
    gt = np.concatenate([xy[:, 1], wh[:, 1]], axis=1)
    ious = M.iou(pred, gt)
    nces = M.normalized_center_error(pred, gt)
    assert 0.2 < np.mean(ious > 0) < 0.9  # both overlapping and disjoint pairs
    for p, g, v, e in zip(pred, gt, ious, nces, strict=True):
        assert v == pytest.approx(float(f_iou(p, g)), abs=1e-12)
        assert e == pytest.approx(float(np.sqrt(float(f_nce2(p, g)))), abs=1e-12)
        assert f_iou(p, g) <= 1 and Fraction(float(e)) >= 0


def test_iou_has_eps_in_the_denominator() -> None:
    """``inter / (union + eps)``: two identical boxes of 1e-8 px sides do not score 1."""
    box = [[0, 0, 1e-8, 1e-8]]
    area = 1e-8 * 1e-8
    assert M.iou(box, box)[0] == pytest.approx(area / (area + 2.220446049250313e-16), rel=1e-12)


def test_nce_floor_of_one_on_the_height_too() -> None:
    # GT 0.5 px high: the vertical offset is divided by max(1, 0.5) = 1
    assert M.normalized_center_error([[0, 3, 10, 0.5]], [[0, 0, 10, 0.5]])[0] == pytest.approx(3.0)
    assert M.normalized_center_error([[0, 3, 10, 4]], [[0, 0, 10, 4]])[0] == pytest.approx(0.75)


def test_recall_counts_iou_exactly_one_half() -> None:
    """HOI recall is ``IoU >= 0.5`` (non-strict), unlike the success curve's ``>``."""
    gt = np.array([[0, 0, 10, 10]] * 2, float)
    pred = np.array([[0, 0, 10, 10], [0, 0, 10, 5]], float)  # IoU 50 / 100 = 0.5 exactly
    sc = M.score_run(pred, gt)
    assert M.frame_metrics(pred, gt)[0].tolist() == [1.0, 0.5]
    assert sc.recall_score == 1.0
    assert sc.success_curve[10] == 0.5  # threshold 0.5: strict


def test_lists_are_accepted_like_arrays() -> None:
    """The primitives take any L x 4 sequence of numbers, not only arrays."""
    gt, pred = TV1_GT.tolist(), TV1_PRED.tolist()
    assert M.absent_mask(gt).tolist() == [False, False, True, False, False, False]
    assert M.score_run(pred, gt).success_score == pytest.approx(59 / 105, abs=1e-12)
    assert M.robustness_curve([1.0, 0.25]).tolist() == np.where(M.THR_GSR < 0.25, 1.0, 0.5).tolist()


def test_a_run_without_frames_is_an_error() -> None:
    with pytest.raises(ValueError, match="a run has no frames"):
        M.score_run(np.zeros((0, 4)), np.zeros((0, 4)))


def test_the_first_frame_is_forced_to_fractional_ground_truth_when_predictions_are_integers() -> None:
    gt = np.array([[10.5, 10.5, 20.25, 20.25]] * 2)
    ious, nces = M.frame_metrics(np.array([[0, 0, 1, 1], [10, 10, 20, 20]]), gt)
    assert ious[0] == 1.0 and nces[0] == 0.0


def test_iou_and_nce_of_float32_boxes_are_computed_in_float64() -> None:
    rng = np.random.default_rng(3)
    pred, gt = (np.concatenate([rng.uniform(0, 100, (200, 2)), rng.uniform(1, 60, (200, 2))], axis=1)
                .astype(np.float32) for _ in range(2))
    wide = pred.astype(np.float64), gt.astype(np.float64)
    assert np.array_equal(M.iou(pred, gt), M.iou(*wide))
    assert np.array_equal(M.normalized_center_error(pred, gt), M.normalized_center_error(*wide))
