"""DCNv3, InternImage's deformable convolution, in plain PyTorch (no CUDA extension).

Per output pixel and group, DCNv3 samples the input projection at ``K = kernel**2`` points, each the
regular kernel position moved by a learned offset, and sums them weighted by a softmax over the K points
(docs/vmos.md#dcnv3). The official package computes this with a CUDA kernel, or, for testing, with a
pure-PyTorch core built on ``grid_sample``; HQTrack's goldens were made with that core on CPU.

:func:`dcnv3_sample_grid` is that core's arithmetic (``float32`` ``linspace`` reference points,
``grid_sample`` with ``align_corners=False`` and zero padding), written anew; on the same inputs it gives
bitwise the same result (tests/modeling/test_vmos.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from trek_tracker.device import constant_tensors


@constant_tensors
def _reference_points(h_in: int, w_in: int, h_out: int, w_out: int, kernel: int, dilation: int,
                      device: torch.device) -> torch.Tensor:
    """Normalised centre of every output pixel's kernel in the padded input: (1, H_out, W_out, 1, 2) (x, y).

    Built as the official core does (``float32`` ``linspace`` divided by the padded size), so that the
    sampling locations agree with it to the last bit.
    """
    c = (dilation * (kernel - 1)) // 2 + 0.5
    ys = torch.linspace(c, c + (h_out - 1), h_out, dtype=torch.float32, device=device)
    xs = torch.linspace(c, c + (w_out - 1), w_out, dtype=torch.float32, device=device)
    ref_y, ref_x = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack((ref_x.reshape(-1)[None] / w_in, ref_y.reshape(-1)[None] / h_in), -1).reshape(
        1, h_out, w_out, 1, 2)


@constant_tensors
def _kernel_grid(h_in: int, w_in: int, kernel: int, dilation: int, group: int,
                 device: torch.device) -> torch.Tensor:
    """Normalised kernel offsets, x-major (point ``p = kernel * ix + iy``), repeated per group:
    (1, 1, 1, group * K, 2)."""
    half = (dilation * (kernel - 1)) // 2
    steps = torch.linspace(-half, -half + (kernel - 1) * dilation, kernel, dtype=torch.float32, device=device)
    gx, gy = torch.meshgrid(steps, steps, indexing="ij")  # gx varies along the first axis: x-major
    grid = torch.stack([gx / w_in, gy / h_in], -1).reshape(-1, 1, 2).repeat(1, group, 1).permute(1, 0, 2)
    return grid.reshape(1, 1, 1, group * kernel * kernel, 2)


@constant_tensors
def _input_size(w_in: int, h_in: int, points: int, device: torch.device) -> torch.Tensor:
    """The padded input's ``(w, h)`` as int64, repeated for every sampling point: (1, 1, 1, 2 * points), what
    the official core divides the offsets by."""
    return torch.tensor([w_in, h_in]).to(device).reshape(1, 1, 1, 2).repeat(1, 1, 1, points)


def dcnv3_sample_grid(value: torch.Tensor, offset: torch.Tensor, mask: torch.Tensor, *, group: int,
                      kernel: int = 3, pad: int = 1, dilation: int = 1,
                      offset_scale: float = 1.0) -> torch.Tensor:
    """DCNv3 sampling with ``grid_sample`` (the official pure-PyTorch core's arithmetic; stride 1).

    Args:
        value: (N, H, W, C) input projection, channels last.
        offset: (N, H, W, group * K * 2) offsets in pixels, ``(group, point, [dx, dy])``.
        mask: (N, H, W, group * K) softmax weights per group.
    Returns:
        (N, H, W, C).
    """
    value = F.pad(value, [0, 0, pad, pad, pad, pad])
    n, h_in, w_in, c = value.shape
    _, h_out, w_out, _ = offset.shape
    k = kernel * kernel
    cg = c // group
    ref = _reference_points(h_in, w_in, h_out, w_out, kernel, dilation, value.device)
    grid = _kernel_grid(h_in, w_in, kernel, dilation, group, value.device)
    norm = _input_size(w_in, h_in, group * k, value.device)
    loc = (ref + grid * offset_scale).repeat(n, 1, 1, 1, 1).flatten(3, 4) + offset * offset_scale / norm
    grids = (2 * loc - 1).view(n, h_out * w_out, group, k, 2).transpose(1, 2).flatten(0, 1)
    planes = value.view(n, h_in * w_in, c).transpose(1, 2).reshape(n * group, cg, h_in, w_in)
    # Sampled in the wider of the two dtypes, as CUDA autocast runs grid_sample (a "promote" op) and the
    # official core therefore samples under mixed precision: the locations, built in float32, are never
    # rounded to a half-precision value's dtype (bf16 would move them by up to 1/4 pixel on a 262-wide map).
    dtype = torch.promote_types(planes.dtype, grids.dtype)
    sampled = F.grid_sample(planes.to(dtype), grids.to(dtype), mode="bilinear", padding_mode="zeros",
                            align_corners=False)
    weights = mask.view(n, h_out * w_out, group, k).transpose(1, 2).reshape(n * group, 1, h_out * w_out, k)
    out = (sampled * weights).sum(-1).view(n, c, h_out * w_out)
    return out.transpose(1, 2).reshape(n, h_out, w_out, c).contiguous()


class DCNv3(nn.Module):
    """InternImage's DCNv3 block operator (stride 1), channels last in and out.

    Parameter names follow the official ``DCNv3`` / ``DCNv3_pytorch`` modules (``dw_conv.0`` the
    depth-wise conv, ``dw_conv.1.1`` its LayerNorm) so that checkpoints load as they are.
    """

    def __init__(self, channels: int, group: int, *, kernel: int = 3, offset_scale: float = 1.0) -> None:
        super().__init__()
        if channels % group:
            raise ValueError(f"DCNv3: channels ({channels}) must be divisible by group ({group})")
        self.channels, self.group, self.kernel, self.offset_scale = channels, group, kernel, offset_scale
        self.dw_conv = nn.Sequential(
            nn.Conv2d(channels, channels, kernel, padding=(kernel - 1) // 2, groups=channels),
            nn.Sequential(_ChannelsLast(), nn.LayerNorm(channels, eps=1e-6)),
            nn.GELU(),
        )
        self.offset = nn.Linear(channels, group * kernel * kernel * 2)
        self.mask = nn.Linear(channels, group * kernel * kernel)
        self.input_proj = nn.Linear(channels, channels)
        self.output_proj = nn.Linear(channels, channels)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The official initialisation: zero offsets and uniform masks, xavier projections."""
        for layer in (self.offset, self.mask):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)
        for layer in (self.input_proj, self.output_proj):
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, H, W, C) -> (N, H, W, C)."""
        n, h, w, _ = x.shape
        value = self.input_proj(x)
        feat = self.dw_conv(x.permute(0, 3, 1, 2))
        offset = self.offset(feat)
        mask = torch.softmax(self.mask(feat).reshape(n, h, w, self.group, -1), -1).reshape(n, h, w, -1)
        out = dcnv3_sample_grid(value, offset, mask, group=self.group, kernel=self.kernel, pad=(self.kernel - 1) // 2,
                     offset_scale=self.offset_scale)
        return self.output_proj(out)


class _ChannelsLast(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(0, 2, 3, 1)


class _ChannelsFirst(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(0, 3, 1, 2)
