"""DAVIS J and F: hand-computed cases, the benchmark's conventions, and an independent dilation."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage

from trek_tracker.eval.vos_metrics import (
    boundary_measure,
    region_similarity,
    score_sequence,
    seg2bmap,
    statistics,
    summarise,
)


def square(h=100, w=100, y=20, x=30, s=40):
    m = np.zeros((h, w), bool)
    m[y:y + s, x:x + s] = True
    return m


def test_region_similarity_by_hand():
    a, b = square(s=40), square(x=50, s=40)  # overlap 40 x 20
    assert region_similarity(a, b) == pytest.approx(800 / (1600 + 1600 - 800))
    assert region_similarity(np.zeros((5, 5)), np.zeros((5, 5))) == 1.0
    assert region_similarity(a, np.zeros_like(a)) == 0.0
    void = np.zeros_like(a)
    void[:, 70:] = True  # hides b's non-overlapping part
    assert region_similarity(a, b, void) == pytest.approx(800 / 1600)


def test_seg2bmap_square_boundary():
    b = seg2bmap(square(s=10))
    # Inside pixels that differ from a right, lower or lower-right neighbour: the last row and column of
    # the square, plus the outside pixels just above-left of it (row 19 / col 29 diagonal neighbours).
    assert b[29, 30:40].all() and b[20:30, 39].all()
    assert b.sum() == 10 + 10 - 1 + 10 + 10 + 1
    assert not seg2bmap(np.zeros((8, 8))).any()


def test_boundary_measure_tolerance():
    h = w = 100
    tol = math.ceil(0.008 * math.hypot(h, w))  # 2 px
    a = square()
    assert boundary_measure(a, a) == 1.0
    assert boundary_measure(a, square(x=30 + tol)) == 1.0  # shifted within the tolerance disk
    assert boundary_measure(a, square(x=30 + 3 * tol + 1, y=20 + 3 * tol + 1)) < 0.5
    far = square(y=0, x=0, s=10)
    assert boundary_measure(square(y=80, x=80, s=10), far) == 0.0


def test_boundary_measure_empty_conventions():
    z, a = np.zeros((50, 50), bool), square(50, 50, 10, 10, 20)
    assert boundary_measure(z, z) == 1.0
    assert boundary_measure(z, a) == 0.0  # P = 1, R = 0
    assert boundary_measure(a, z) == 0.0  # P = 0, R = 1


def test_boundary_measure_matches_scipy_dilation():
    rng = np.random.default_rng(0)
    for _ in range(5):
        gt = ndimage.gaussian_filter(rng.random((60, 80)), 3) > 0.5
        pred = ndimage.gaussian_filter(rng.random((60, 80)), 3) > 0.5
        assert 0 < gt.sum() < gt.size and 0 < pred.sum() < pred.size
        r = math.ceil(0.008 * math.hypot(60, 80))
        y, x = np.mgrid[-r:r + 1, -r:r + 1]
        disk = x * x + y * y <= r * r
        pb, gb = seg2bmap(pred), seg2bmap(gt)
        p = (pb & ndimage.binary_dilation(gb, disk)).sum() / pb.sum()
        rc = (gb & ndimage.binary_dilation(pb, disk)).sum() / gb.sum()
        assert boundary_measure(pred, gt) == pytest.approx(2 * p * rc / (p + rc))


def test_statistics_by_hand():
    v = np.array([1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3])
    mean, recall, decay = statistics(v)
    assert mean == pytest.approx(v.mean())
    assert recall == pytest.approx(5 / 8)
    # Bins over 8 frames: linspace(1, 8, 5) = [1, 2.75, 4.5, 6.25, 8] rounds (ties up, +1e-10) to
    # [1, 3, 5, 6, 8]; minus 1: bins [0..2], [2..4], [4..5], [5..7] (ends inclusive).
    assert decay == pytest.approx(np.mean(v[0:3]) - np.mean(v[5:8]))


def test_sequence_skips_first_and_last_and_averages_objects():
    gt = [np.zeros((20, 20), np.int64) for _ in range(4)]
    for g in gt:
        g[2:8, 2:8] = 1
        g[10:18, 10:18] = 2
    pred = [g.copy() for g in gt]
    pred[0][:] = 0  # frame 0 and the last frame are not scored
    pred[3][:] = 0
    pred[1][10:18, 10:18] = 0  # object 2 lost on frame 1
    scores = score_sequence("s", pred, gt)
    assert [s.object_id for s in scores] == [1, 2]
    assert scores[0].j == [1.0, 1.0] and scores[1].j == [0.0, 1.0]
    res = summarise(scores)
    assert res["J_mean"] == pytest.approx((1.0 + 0.5) / 2)
    assert res["J&F"] == pytest.approx((res["J_mean"] + res["F_mean"]) / 2)
    assert len(res["objects"]) == 2
