"""Metric primitives against the spec's test vectors (TV1, TV4, TV5) and the toolkit's quirks."""

from __future__ import annotations

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
