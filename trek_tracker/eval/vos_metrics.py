"""Video object segmentation metrics as the DAVIS benchmark computes them (davis2017-evaluation).

* J, region similarity: IoU of the predicted and true masks; 1 when both are empty.
* F, boundary measure: boundaries are one-pixel maps (``seg2bmap``); a boundary pixel matches when the
  other boundary lies within ``ceil(0.008 * image diagonal)`` pixels (a disk); F = 2PR / (P + R), with the
  benchmark's conventions for empty boundaries.
* Per object: mean (M), recall (fraction of frames above 0.5, O) and decay (D, first quarter minus last
  quarter of the frames). Semi-supervised evaluation skips the first and last frame of every sequence (the
  first is the given annotation: it is never scored, even in a sequence of one or two annotated frames).
* Dataset J&F = mean over all objects of all sequences of (J-mean + F-mean) / 2.

Void pixels are ignored when a void mask is given. The official DAVIS 2017 evaluation gives none: it
reads palette index 255 as background (``davis2017/davis.py``) and its void test compares the objects'
boolean masks with 255, which never holds; ``train/validate.py`` scores as it does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from trek_tracker.errors import InputError

BOUND_TH = 0.008


def region_similarity(pred: np.ndarray, gt: np.ndarray, void: np.ndarray | None = None) -> float:
    """J of two boolean masks (H, W)."""
    pred, gt = pred.astype(bool), gt.astype(bool)
    if void is not None:
        keep = ~void.astype(bool)
        pred, gt = pred & keep, gt & keep
    union = np.count_nonzero(pred | gt)
    if union == 0:
        return 1.0
    return np.count_nonzero(pred & gt) / union


def seg2bmap(seg: np.ndarray) -> np.ndarray:
    """One-pixel-wide boundary map of a boolean mask (the benchmark's ``_seg2bmap`` at full size)."""
    seg = seg.astype(bool)
    e = np.zeros_like(seg)
    s = np.zeros_like(seg)
    se = np.zeros_like(seg)
    e[:, :-1] = seg[:, 1:]
    s[:-1, :] = seg[1:, :]
    se[:-1, :-1] = seg[1:, 1:]
    b = seg ^ e | seg ^ s | seg ^ se
    b[-1, :] = seg[-1, :] ^ e[-1, :]
    b[:, -1] = seg[:, -1] ^ s[:, -1]
    b[-1, -1] = False
    return b


def _disk(radius: int) -> np.ndarray:
    y, x = np.mgrid[-radius:radius + 1, -radius:radius + 1]
    return (x * x + y * y <= radius * radius).astype(np.uint8)


def boundary_measure(pred: np.ndarray, gt: np.ndarray, void: np.ndarray | None = None,
                     bound_th: float = BOUND_TH) -> float:
    """F of two boolean masks (H, W)."""
    pred, gt = pred.astype(bool), gt.astype(bool)
    if void is not None:
        keep = ~void.astype(bool)
        pred, gt = pred & keep, gt & keep
    h, w = gt.shape
    bound_pix = bound_th if bound_th >= 1 else math.ceil(bound_th * math.hypot(h, w))
    pb, gb = seg2bmap(pred), seg2bmap(gt)
    kernel = _disk(int(bound_pix))
    p_dil = cv2.dilate(pb.astype(np.uint8), kernel).astype(bool)
    g_dil = cv2.dilate(gb.astype(np.uint8), kernel).astype(bool)
    n_p, n_g = np.count_nonzero(pb), np.count_nonzero(gb)
    if n_p == 0 and n_g == 0:
        precision = recall = 1.0
    elif n_p == 0:
        precision, recall = 1.0, 0.0
    elif n_g == 0:
        precision, recall = 0.0, 1.0
    else:
        precision = np.count_nonzero(pb & g_dil) / n_p
        recall = np.count_nonzero(gb & p_dil) / n_g
    if precision + recall == 0:
        return 0.0
    return 2 * precision * recall / (precision + recall)


def statistics(per_frame: np.ndarray, n_bins: int = 4) -> tuple[float, float, float]:
    """(mean, recall, decay) of one object's per-frame values, as the benchmark's ``db_statistics``, except
    that its bin edges are cast to ``uint8`` there: they wrap for a sequence of more than 256 scored frames,
    whose decay is then of the wrong frames (or NaN). Ours are whole numbers of any size; mean and recall,
    and every DAVIS sequence, are the same."""
    v = np.asarray(per_frame, dtype=np.float64)
    if v.size == 0:
        return math.nan, math.nan, math.nan
    ids = np.round(np.linspace(1, len(v), n_bins + 1) + 1e-10) - 1
    bins = [v[int(ids[i]):int(ids[i + 1]) + 1] for i in range(n_bins)]
    decay = float(np.nanmean(bins[0]) - np.nanmean(bins[-1])) if all(b.size for b in bins) else math.nan
    return float(np.nanmean(v)), float(np.nanmean(v > 0.5)), decay


@dataclass
class ObjectScore:
    sequence: str
    object_id: int
    j: list[float]
    f: list[float]

    def summary(self) -> dict:
        jm, jr, jd = statistics(np.array(self.j))
        fm, fr, fd = statistics(np.array(self.f))
        return {"sequence": self.sequence, "object": self.object_id, "J_mean": jm, "J_recall": jr,
                "J_decay": jd, "F_mean": fm, "F_recall": fr, "F_decay": fd, "frames": len(self.j)}


def score_sequence(name: str, preds: list[np.ndarray], gts: list[np.ndarray],
                   voids: list[np.ndarray] | None = None, *, skip_first_last: bool = True
                   ) -> list[ObjectScore]:
    """Per-object J and F of a sequence; ``preds`` and ``gts`` are id maps (H, W), frame by frame.

    Objects are ``1..`` the largest id of the first annotation, as the official evaluation numbers them: an
    id that appears only later is not scored (the tracker was not given it), an id missing in between is
    (an empty object). A prediction whose size is not its annotation's is an :class:`InputError`.
    """
    if len(preds) != len(gts):
        raise ValueError(f"{name}: {len(preds)} predicted frames for {len(gts)} annotated frames")
    for k, (p, g) in enumerate(zip(preds, gts, strict=True)):
        if p.shape != g.shape:
            raise InputError(f"{name}: annotation {k + 1} of {len(gts)} is {g.shape[1]}x{g.shape[0]} but its "
                             f"prediction is {p.shape[1]}x{p.shape[0]}; annotations must have the frames' size")
    if skip_first_last:  # the first frame is the given annotation; the last is kept when nothing else is left
        frames = range(1, len(gts) - 1) if len(gts) > 2 else range(1, len(gts))
    else:
        frames = range(len(gts))
    ids = range(1, int(gts[0].max()) + 1) if gts else range(0)
    scores = []
    for obj in ids:
        j, f = [], []
        for i in frames:
            p, g = preds[i] == obj, gts[i] == obj
            v = None if voids is None else voids[i]
            j.append(region_similarity(p, g, v))
            f.append(boundary_measure(p, g, v))
        scores.append(ObjectScore(name, int(obj), j, f))
    return scores


def summarise(scores: list[ObjectScore]) -> dict:
    """Dataset-level J&F, J and F means/recalls/decays over all objects, and the per-object table."""
    return summarise_rows([s.summary() for s in scores])


def summarise_rows(rows: list[dict]) -> dict:
    """:func:`summarise` of per-object rows (:meth:`ObjectScore.summary`); every key is there, NaN without
    rows (or where every object is NaN)."""
    keys = ("J_mean", "J_recall", "J_decay", "F_mean", "F_recall", "F_decay")
    out = {}
    for k in keys:
        values = np.array([r[k] for r in rows], dtype=np.float64)
        out[k] = float(np.nanmean(values)) if np.isfinite(values).any() else math.nan
    out["J&F"] = (out["J_mean"] + out["F_mean"]) / 2
    out["objects"] = rows
    return out
