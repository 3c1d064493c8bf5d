"""Segmentation heads that turn propagated features into per-ID logits."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ConvGN(nn.Module):
    """Convolution (with bias, 'same' padding) followed by GroupNorm(8)."""

    def __init__(self, in_dim: int, out_dim: int, kernel_size: int, groups: int = 8) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_dim, out_dim, kernel_size, padding=kernel_size // 2)
        self.gn = nn.GroupNorm(groups, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gn(self.conv(x))


class FPNHead(nn.Module):
    """DeAOT's FPN decoder: GPM output at 16x, refined with encoder skips at 16x, 8x and 4x.

    ``skip_dims`` are the encoder widths ``[C4, C8, C16]`` (the raw maps, not the projected one). Output:
    logits at stride 4 with ``out_dim`` channels (background + max objects).
    """

    def __init__(self, in_dim: int, out_dim: int, skip_dims: tuple[int, int, int], hidden_dim: int = 256,
                 align_corners: bool = True) -> None:
        super().__init__()
        c4, c8, c16 = skip_dims
        self.align_corners = align_corners
        self.conv_in = ConvGN(in_dim, hidden_dim, 1)
        self.conv_16x = ConvGN(hidden_dim, hidden_dim, 3)
        self.conv_8x = ConvGN(hidden_dim, hidden_dim // 2, 3)
        self.conv_4x = ConvGN(hidden_dim // 2, hidden_dim // 2, 3)
        self.adapter_16x = nn.Conv2d(c16, hidden_dim, 1)
        self.adapter_8x = nn.Conv2d(c8, hidden_dim, 1)
        self.adapter_4x = nn.Conv2d(c4, hidden_dim // 2, 1)
        self.conv_out = nn.Conv2d(hidden_dim // 2, out_dim, 1)
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def forward(self, x: torch.Tensor, f4: torch.Tensor, f8: torch.Tensor, f16: torch.Tensor) -> torch.Tensor:
        """x: (B, in_dim, H16, W16) propagated features; f4, f8, f16: raw encoder maps."""
        x = F.relu(self.conv_in(x))
        x = F.relu(self.conv_16x(self.adapter_16x(f16) + x))
        x = F.interpolate(x, size=f8.shape[-2:], mode="bilinear", align_corners=self.align_corners)
        x = F.relu(self.conv_8x(self.adapter_8x(f8) + x))
        x = F.interpolate(x, size=f4.shape[-2:], mode="bilinear", align_corners=self.align_corners)
        x = F.relu(self.conv_4x(self.adapter_4x(f4) + x))
        return self.conv_out(x)
