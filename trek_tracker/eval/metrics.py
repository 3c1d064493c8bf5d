"""TREK-150 metrics, computed exactly as the official toolkit computes them.

Every operation here mirrors the toolkit's arithmetic (same formulas, same operation order, float64,
``np.linspace`` thresholds) so that scores agree to the last bit, quirks included:

- the first frame of every run is forced to the ground truth *and* scored (IoU 1, NCE 0);
- frames whose ground truth has all four values < 0 are dropped (absent target);
- IoU has ``eps`` in the denominator, no +1, no image bounds, and is clipped to [0, 1];
- the success curve uses a strict ``>``, normalised precision and robustness failures ``<=``,
  HOI recall ``>= 0.5``;
- a NaN prediction is a miss for success, precision and recall but never a robustness failure.

This module is deliberately separate from :mod:`trek_tracker.geometry`: the leaderboard's IoU is not
the general-purpose one.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

NBINS_IOU = 21
NBINS_NCE = 51
NBINS_GSR = 51

#: Thresholds of the success curve (0, 0.05, ..., 1).
THR_IOU = np.linspace(0, 1, NBINS_IOU)
#: Thresholds of the normalised precision curve (0, 0.01, ..., 0.5).
THR_NCE = np.linspace(0, 0.5, NBINS_NCE)
#: Thresholds of the generalised success robustness curve (0, 0.01, ..., 0.5).
THR_GSR = np.linspace(0, 0.5, NBINS_GSR)

_EPS = np.finfo(float).eps


def absent_mask(gt: np.ndarray) -> np.ndarray:
    """True where the target is absent: all four ground-truth values are negative.

    A row with only some negative values (a box partly outside the image) is visible.
    """
    gt = np.asarray(gt, dtype=np.float64).reshape(-1, 4)
    return np.all(gt < 0, axis=1)


def iou(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """Row-wise IoU of ``[x, y, w, h]`` boxes, toolkit-exact (continuous pixels, ``eps``, clipped)."""
    a = np.asarray(pred, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(gt, dtype=np.float64).reshape(-1, 4)
    x1 = np.maximum(a[:, 0], b[:, 0])
    y1 = np.maximum(a[:, 1], b[:, 1])
    x2 = np.minimum(a[:, 0] + a[:, 2], b[:, 0] + b[:, 2])
    y2 = np.minimum(a[:, 1] + a[:, 3], b[:, 1] + b[:, 3])
    inter = np.maximum(x2 - x1, 0) * np.maximum(y2 - y1, 0)
    union = a[:, 2] * a[:, 3] + b[:, 2] * b[:, 3] - inter
    return np.clip(inter / (union + _EPS), 0.0, 1.0)


def normalized_center_error(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """Row-wise centre distance, each axis divided by ``max(1, ground-truth size)``."""
    a = np.asarray(pred, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(gt, dtype=np.float64).reshape(-1, 4)
    ca = a[:, :2] + (a[:, 2:] - 1) / 2
    cb = b[:, :2] + (b[:, 2:] - 1) / 2
    d = (ca - cb) / np.maximum(np.array([[1.0, 1.0]]), b[:, 2:])
    return np.sqrt(np.sum(np.power(d, 2), axis=-1))


def success_curve(ious: np.ndarray) -> np.ndarray:
    """Fraction of frames with IoU strictly above each of the 21 thresholds."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # empty input gives NaN, as in the toolkit
        return np.mean(np.greater(np.asarray(ious, float)[:, None], THR_IOU[None, :]), axis=0)


def normalized_precision_curve(nces: np.ndarray) -> np.ndarray:
    """Fraction of frames with normalised centre error at most each of the 51 thresholds."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.mean(np.less_equal(np.asarray(nces, float)[:, None], THR_NCE[None, :]), axis=0)


def robustness_curve(ious: np.ndarray) -> np.ndarray:
    """Generalised success robustness: for each threshold, the position of the first frame with
    ``IoU <= th`` divided by the number of frames, or 1 when there is no such frame.

    Positions count visible frames only, in tracking order (the order of ``ious``).
    """
    ious = np.asarray(ious, dtype=np.float64).reshape(-1)
    n = ious.shape[0]
    curve = np.ones(NBINS_GSR)
    if n == 0:
        return curve
    fails = ious[:, None] <= THR_GSR[None, :]  # NaN never fails
    has = fails.any(axis=0)
    first = np.argmax(fails, axis=0)
    curve[has] = [float(j) / n for j in first[has]]
    return curve


@dataclass(frozen=True)
class RunScore:
    """Scores of one run (one OPE sequence, one MSE anchor or one HOI interval)."""

    success_curve: np.ndarray
    normalized_precision_curve: np.ndarray
    robustness_curve: np.ndarray
    success_score: float
    normalized_precision_score: float
    robustness_score: float
    #: HOI recall, ``mean(IoU >= 0.5)``; the toolkit averages it in float32.
    recall_score: float
    #: Full run length (absent frames and the first frame included): the weight in MSE and HOI.
    length: int
    #: Number of scored (visible) frames.
    visible: int


def frame_metrics(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """IoU and normalised centre error on the visible frames of a run, first frame forced to GT.

    ``pred`` and ``gt`` are L x 4 in tracking order; ``pred`` is not modified.
    """
    pred = np.array(pred, dtype=np.float64).reshape(-1, 4)
    gt = np.asarray(gt, dtype=np.float64).reshape(-1, 4)
    if pred.shape != gt.shape:
        raise ValueError(f"{len(pred)} predicted boxes for {len(gt)} ground-truth rows")
    if len(pred) == 0:
        raise ValueError("a run has no frames")
    pred[0] = gt[0]
    keep = ~absent_mask(gt)
    return iou(pred[keep], gt[keep]), normalized_center_error(pred[keep], gt[keep])


def score_run(pred: np.ndarray, gt: np.ndarray) -> RunScore:
    """All TREK-150 scores of one run. ``pred`` should be the values read back from the result file
    (3 decimals), since that is what the official report scores."""
    ious, nces = frame_metrics(pred, gt)
    succ = success_curve(ious)
    prec = normalized_precision_curve(nces)
    rob = robustness_curve(ious)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        recall = float(np.mean((ious >= 0.5).astype(np.float32)))
        return RunScore(
            success_curve=succ,
            normalized_precision_curve=prec,
            robustness_curve=rob,
            success_score=float(np.mean(succ)),
            normalized_precision_score=float(np.mean(prec)),
            robustness_score=float(np.mean(rob)),
            recall_score=recall,
            length=int(len(gt)),
            visible=int(len(ious)),
        )


def speed_fps(times: np.ndarray | None) -> float:
    """Mean of per-frame rates ``1/t`` over positive times (init frame included); 0 when unavailable.

    (The toolkit averages rates, not frames over total time.)
    """
    if times is None:
        return 0.0
    t = np.asarray(times, dtype=np.float64).reshape(-1)
    t = t[t > 0]
    if len(t) == 0:
        return 0.0
    return float(np.mean(1.0 / t))
