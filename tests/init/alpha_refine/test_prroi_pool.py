"""Closed-form PrRoIPool against brute-force integration of its definition."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from trek_tracker.init.alpha_refine.prroi_pool import prroi_pool2d, tent_cdf


def _interpolant(feat: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Bilinear interpolant of samples at integer positions, zero outside the map; y, x broadcastable."""
    c, h, w = feat.shape
    out = np.zeros((c,) + np.broadcast(y, x).shape)
    for i in range(h):
        wy = np.maximum(0.0, 1.0 - np.abs(y - i))
        for j in range(w):
            wx = np.maximum(0.0, 1.0 - np.abs(x - j))
            out += feat[:, i, j][:, None, None] * (wy * wx)[None]
    return out


def _brute_force(feat: np.ndarray, roi: np.ndarray, pool: int, scale: float, n: int = 240) -> np.ndarray:
    x1, y1, x2, y2 = roi * scale
    bw, bh = max(x2 - x1, 0) / pool, max(y2 - y1, 0) / pool
    out = np.zeros((feat.shape[0], pool, pool))
    if bw * bh == 0:
        return out
    for p in range(pool):
        ys = y1 + bh * (p + (np.arange(n) + 0.5) / n)
        for q in range(pool):
            xs = x1 + bw * (q + (np.arange(n) + 0.5) / n)
            out[:, p, q] = _interpolant(feat, ys[:, None], xs[None, :]).mean(axis=(1, 2))
    return out


def test_tent_cdf_is_the_integral_of_the_tent() -> None:
    t = torch.linspace(-1.5, 1.5, 31, dtype=torch.float64)
    grid = np.linspace(-1, 1, 20001)
    tent = np.maximum(0, 1 - np.abs(grid))
    cumulative = np.concatenate([[0.0], np.cumsum(0.5 * (tent[1:] + tent[:-1]) * np.diff(grid))])
    numeric = np.interp(t.numpy(), grid, cumulative)
    np.testing.assert_allclose(tent_cdf(t).numpy(), numeric, atol=1e-6)


@pytest.mark.parametrize(
    "roi",
    [
        [16.0, 16.0, 96.0, 80.0],  # inside
        [-30.0, -20.0, 40.0, 50.0],  # partly outside, top-left
        [120.0, 100.0, 200.0, 180.0],  # partly outside, bottom-right
        [33.3, 7.7, 101.9, 64.2],  # fractional
    ],
)
def test_matches_brute_force_integration(roi: list[float]) -> None:
    rng = np.random.default_rng(0)
    feat = rng.standard_normal((3, 9, 11))
    pool, scale = 4, 1 / 16
    expected = _brute_force(feat, np.array(roi), pool, scale)
    rois = torch.tensor([[0.0] + roi], dtype=torch.float64)
    got = prroi_pool2d(torch.from_numpy(feat)[None], rois, pool, pool, scale)[0].numpy()
    # The midpoint rule with 240 samples per bin side is accurate to ~2e-5 on these maps.
    np.testing.assert_allclose(got, expected, atol=5e-5)
    assert np.abs(expected).max() > 0.05  # the RoI does see the features


def test_empty_roi_gives_zero_and_batch_index_is_used() -> None:
    feat = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    rois = torch.tensor([[0, 10.0, 10.0, 10.0, 60.0], [1, 8.0, 8.0, 100.0, 100.0], [0, 8.0, 8.0, 100.0, 100.0],
                         [0, 90.0, 80.0, 20.0, 10.0]])  # the last one inverted on both axes: empty, not negative
    out = prroi_pool2d(feat, rois.double(), 2, 2, 1 / 16)
    assert torch.count_nonzero(out[0]) == 0 and torch.count_nonzero(out[3]) == 0
    assert not torch.allclose(out[1], out[2])  # different images of the batch


def test_constant_map_pools_to_the_constant_inside() -> None:
    feat = torch.full((1, 1, 10, 10), 2.5, dtype=torch.float64)
    out = prroi_pool2d(feat, torch.tensor([[0, 16.0, 16.0, 112.0, 128.0]], dtype=torch.float64), 3, 3, 1 / 16)
    np.testing.assert_allclose(out.numpy(), 2.5, atol=1e-12)


def test_float32_rois_pool_float64_features_like_float64_rois() -> None:
    feat = torch.randn(1, 2, 6, 6, dtype=torch.float64)
    roi = [[0, 8.25, 4.5, 70.0, 50.75]]
    out32 = prroi_pool2d(feat, torch.tensor(roi, dtype=torch.float32), 2, 2, 1 / 16)
    assert out32.dtype == torch.float64
    torch.testing.assert_close(out32, prroi_pool2d(feat, torch.tensor(roi, dtype=torch.float64), 2, 2, 1 / 16))


@pytest.mark.parametrize(
    ("features", "rois"),
    [((2, 8, 8), (1, 5)), ((1, 2, 8, 8), (5,)), ((1, 2, 8, 8), (1, 4)), ((1, 1, 2, 8, 8), (1, 5))],
)
def test_wrong_shapes_are_refused(features: tuple[int, ...], rois: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match=r"features must be \(N, C, H, W\) and rois \(K, 5\)"):
        prroi_pool2d(torch.zeros(features), torch.zeros(rois), 2, 2, 1.0)
