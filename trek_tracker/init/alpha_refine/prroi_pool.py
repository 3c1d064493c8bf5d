"""Precise RoI pooling in closed form (no compiled extension).

Alpha-Refine's CorrNL neck pools the template features with PrRoIPool: every output bin is the exact
integral of the bilinear interpolant of the feature map over the bin rectangle, divided by the bin area.
The interpolant of samples at integer positions is a sum of tent kernels, so the integral separates into
row weights and column weights (differences of the tent kernel's CDF at the bin edges) and one bin grid
becomes two small matrix products. See docs/init.md#precise-roi-pooling.
"""

from __future__ import annotations

import torch


def tent_cdf(t: torch.Tensor) -> torch.Tensor:
    """CDF of the tent kernel ``max(0, 1 - |t|)``: 0 below -1, 1 above 1, piecewise quadratic between."""
    t = t.clamp(-1.0, 1.0)
    left = 0.5 * (t + 1.0) ** 2
    right = 1.0 - 0.5 * (1.0 - t) ** 2
    return torch.where(t <= 0, left, right)


def _axis_weights(start: torch.Tensor, end: torch.Tensor, pool: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(pool, size) integration weights of one axis and the bin length."""
    length = (end - start).clamp(min=0) / pool
    edges = start + length * torch.arange(pool + 1, dtype=start.dtype, device=start.device)
    grid = torch.arange(size, dtype=start.dtype, device=start.device)
    cdf = tent_cdf(edges[:, None] - grid[None, :])  # (pool + 1, size)
    return cdf[1:] - cdf[:-1], length


def prroi_pool2d(
    features: torch.Tensor, rois: torch.Tensor, pooled_height: int, pooled_width: int, spatial_scale: float
) -> torch.Tensor:
    """Pool ``features`` (N, C, H, W) over ``rois`` (K, 5) rows ``[batch_index, x1, y1, x2, y2]``.

    RoIs are in input pixels and scaled by ``spatial_scale`` with no half-pixel shift; samples outside the
    map count as 0; an empty bin gives 0. Returns (K, C, pooled_height, pooled_width).
    """
    if features.dim() != 4 or rois.dim() != 2 or rois.shape[1] != 5:
        raise ValueError("features must be (N, C, H, W) and rois (K, 5)")
    _, channels, height, width = features.shape
    out = features.new_zeros((rois.shape[0], channels, pooled_height, pooled_width))
    rois = rois.to(features.dtype)
    for k in range(rois.shape[0]):
        index = int(rois[k, 0].item())
        x1, y1, x2, y2 = (rois[k, 1:] * spatial_scale).unbind()
        wy, bin_h = _axis_weights(y1, y2, pooled_height, height)
        wx, bin_w = _axis_weights(x1, x2, pooled_width, width)
        area = bin_h * bin_w
        if float(area) <= 0.0:
            continue
        out[k] = torch.einsum("ph,chw,qw->cpq", wy, features[index], wx) / area
    return out
