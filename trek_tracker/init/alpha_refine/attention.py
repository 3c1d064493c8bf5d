"""Attention blocks shared by the Alpha-Refine necks: squeeze-and-excitation and a non-local block.

Parameter names follow the official checkpoints (``fc1``/``fc2``; ``g.0``, ``theta``, ``phi.0``,
``W.0``/``W.1``) so the published weights load by identity.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SqueezeExcite(nn.Module):
    """Channel attention: global average pool, 1x1 bottleneck, sigmoid gate on the input."""

    def __init__(self, channels: int, reduction: int = 4) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(channels, channels // reduction, kernel_size=1)
        self.fc2 = nn.Conv2d(channels // reduction, channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = self.fc2(F.relu(self.fc1(x.mean(dim=(2, 3), keepdim=True))))
        return x * torch.sigmoid(gate)


class NonLocal2d(nn.Module):
    """Embedded-Gaussian non-local block with 2x2 max-pool sub-sampling of ``g`` and ``phi``.

    The output projection ends in a BatchNorm (initialised to zero in training, so the block starts as
    the identity); at inference it is a plain residual attention over all positions.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        inter = max(channels // 2, 1)
        self.inter = inter
        self.g = nn.Sequential(nn.Conv2d(channels, inter, 1), nn.MaxPool2d(2))
        self.theta = nn.Conv2d(channels, inter, 1)
        self.phi = nn.Sequential(nn.Conv2d(channels, inter, 1), nn.MaxPool2d(2))
        self.W = nn.Sequential(nn.Conv2d(inter, channels, 1), nn.BatchNorm2d(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        query = self.theta(x).flatten(2).transpose(1, 2)  # (n, hw, inter)
        key = self.phi(x).flatten(2)  # (n, inter, hw/4)
        value = self.g(x).flatten(2).transpose(1, 2)  # (n, hw/4, inter)
        attn = torch.softmax(query @ key, dim=-1)
        y = (attn @ value).transpose(1, 2).reshape(n, self.inter, h, w)
        return x + self.W(y)


def pixel_correlation(kernel: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    """Pixel-wise correlation: each of the P*P kernel vectors (row-major) dotted with every position.

    ``kernel`` (N, C, P, P), ``features`` (N, C, H, W) -> (N, P*P, H, W).
    """
    n, c, h, w = features.shape
    k = kernel.reshape(kernel.shape[0], c, -1).transpose(1, 2)
    return (k @ features.reshape(n, c, h * w)).reshape(n, -1, h, w)
