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
    summarise_rows,
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


def test_seg2bmap_at_the_image_border_by_hand():
    """The benchmark's ``_seg2bmap`` on an object touching the bottom and right edges: the last row compares
    only with its right neighbour, the last column only with the pixel below, and the corner is never a
    boundary, so the object's sides along the border are not boundary pixels."""
    m = np.zeros((6, 6), bool)
    m[4:6, 2:6] = True
    expected = np.zeros((6, 6), bool)
    expected[3, 1:6] = True  # above the object, and above-left of it (the diagonal neighbour)
    expected[4:6, 1] = True  # left of the object
    np.testing.assert_array_equal(seg2bmap(m), expected)
    np.testing.assert_array_equal(seg2bmap(m.T), expected.T)


def test_bound_th_of_one_or_more_is_a_pixel_count():
    """As the benchmark: ``bound_th >= 1`` is the tolerance in pixels, below 1 a fraction of the diagonal."""
    a = square()
    assert boundary_measure(a, square(x=31), bound_th=1) == 1.0
    assert boundary_measure(a, square(x=32), bound_th=1) < 1.0
    assert boundary_measure(a, square(x=32), bound_th=2) == 1.0


def test_statistics_ignore_nan_and_round_bin_edges_half_up():
    v = np.array([np.nan, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, np.nan])  # bins [0..2] and [5..7]
    mean, recall, decay = statistics(v)
    assert mean == pytest.approx(3 / 6) and recall == pytest.approx(3 / 8) and decay == pytest.approx(1.0)
    # 7 frames: linspace(1, 7, 5) = [1, 2.5, 4, 5.5, 7] rounds half up to [1, 3, 4, 6, 7] (np.round alone
    # would give 2 and 6): first bin v[0:3], last bin v[5:7]
    w = np.array([1.0, 0.2, 0.9, 0.3, 0.8, 0.1, 0.7])
    assert statistics(w)[2] == pytest.approx(np.mean(w[0:3]) - np.mean(w[5:7]))  # 0.7 - 0.4
    assert statistics(np.array([0.7])) == (0.7, 1.0, 0.0)  # one frame: every bin is that frame


def test_three_frames_score_only_the_middle_one():
    """The first (given) and last frames are skipped, as the benchmark's ``[1:-1]``."""
    gt = [square(20, 20, 5, 5, 10)] * 3
    pred = [gt[0], gt[1], np.zeros((20, 20), bool)]
    (score,) = score_sequence("s", [p.astype(np.uint8) for p in pred], [g.astype(np.uint8) for g in gt])
    assert score.j == [1.0] and score.f == [1.0]


def test_no_frames_no_objects():
    assert score_sequence("s", [], []) == []


def test_summary_skips_objects_without_a_value():
    """An object with no scored frame (NaN) does not make the dataset's means NaN; all NaN gives NaN."""
    rows = [{"J_mean": 0.5, "J_recall": 1.0, "J_decay": 0.1, "F_mean": 0.7, "F_recall": 1.0, "F_decay": 0.2},
            {k: math.nan for k in ("J_mean", "J_recall", "J_decay", "F_mean", "F_recall", "F_decay")}]
    res = summarise_rows(rows)
    assert res["J_mean"] == 0.5 and res["F_decay"] == 0.2 and res["J&F"] == pytest.approx(0.6)
    assert math.isnan(summarise_rows(rows[1:])["J_mean"])


def test_boundary_measure_ignores_void_pixels():
    a = square()
    b = a.copy()
    b[80:90, 80:90] = True  # a second blob, far from a, inside the void region
    void = np.zeros_like(a)
    void[75:, 75:] = True
    assert boundary_measure(a, b) < 0.9
    assert boundary_measure(a, b, void) == 1.0
    assert boundary_measure(b, a, void) == 1.0


def test_without_skipping_every_frame_is_scored():
    gt = [square(20, 20, 5, 5, 10).astype(np.uint8)] * 3
    pred = [np.zeros((20, 20), np.uint8), gt[1], gt[2]]
    (score,) = score_sequence("s", pred, gt, skip_first_last=False)
    assert score.j == [0.0, 1.0, 1.0]


def test_seg2bmap_matches_the_rule_pixel_by_pixel():
    """Random masks (touching every edge) against the benchmark's rule written per pixel: a pixel is a
    boundary when it differs from its right, lower or lower-right neighbour; on the last row only the right
    one counts, on the last column only the lower one, and the bottom-right corner never is."""
    rng = np.random.default_rng(3)
    for _ in range(5):
        m = rng.random((7, 9)) < 0.5
        h, w = m.shape
        ref = np.zeros_like(m)
        for i in range(h):
            for j in range(w):
                if i < h - 1 and j < w - 1:
                    ref[i, j] = m[i, j] != m[i, j + 1] or m[i, j] != m[i + 1, j] or m[i, j] != m[i + 1, j + 1]
                elif i == h - 1 and j < w - 1:
                    ref[i, j] = m[i, j] != m[i, j + 1]
                elif j == w - 1 and i < h - 1:
                    ref[i, j] = m[i, j] != m[i + 1, j]
        np.testing.assert_array_equal(seg2bmap(m), ref)


def test_decay_of_a_sequence_longer_than_256_frames_is_of_its_quarters():
    """The benchmark's uint8 bin edges wrap past 255 (docstring of ``statistics``); ours are the quarters."""
    v = np.r_[np.ones(100), np.full(200, 0.5), np.zeros(100)]  # 400 frames
    # edges round(linspace(1, 400, 5)) - 1 = [0, 100, 200, 299, 399]: bins v[0:101] and v[299:400], each
    # holding one frame of 0.5 (uint8 edges would be [0, 100, 200, 43, 143]: a last bin of ones and halves)
    assert statistics(v)[2] == pytest.approx(100.5 / 101 - 0.5 / 101)
