"""InternImage-T as HQTrack's VMOS uses it: a DCNv3 backbone whose last level stays at stride 16.

Structure (docs/vmos.md#encoder), LayerNorm (eps 1e-6) everywhere and exact GELU:

* ``patch_embed``: conv 3->C/2 (k3 s2) -> LN -> GELU -> conv C/2->C (k3 s2) -> LN, channels last out;
* ``levels.i`` (i = 0..3): ``depth`` blocks ``x += gamma1 * DCNv3(LN(x)); x += gamma2 * MLP(LN(x))``, a
  closing LN (the level's output), then, for levels 0-2, a downsample (conv k3 s2 without bias -> LN)
  that feeds the next level;
* HQTrack's change: level 3 has the width of level 2 and runs on level 2's *output* (stride 16, before its
  downsample), so level 2's downsample is computed by the official code and thrown away. We keep its
  parameters (checkpoints hold them) but never run it.

Outputs (NCHW): ``[L0 @ 4x, L1 @ 8x, L2 @ 16x, L3 @ 16x]``. Parameter names are the official ones (with
the index of each norm inside its ``nn.Sequential``), so checkpoints load without renaming. The MLP and
drop-path are timm's layers (the same computation).
"""

from __future__ import annotations

import torch
from timm.layers import DropPath, Mlp
from torch import nn

from trek_tracker.modeling.dcnv3 import DCNv3, _ChannelsFirst, _ChannelsLast
from trek_tracker.modeling.encoders.common import freeze_module

EPS = 1e-6


class Stem(nn.Module):
    """Two stride-2 3x3 convolutions with LayerNorm (official ``StemLayer``); NCHW in, NHWC out."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, channels // 2, 3, stride=2, padding=1)
        self.norm1 = nn.Sequential(_ChannelsLast(), nn.LayerNorm(channels // 2, eps=EPS), _ChannelsFirst())
        self.act = nn.GELU()
        self.conv2 = nn.Conv2d(channels // 2, channels, 3, stride=2, padding=1)
        self.norm2 = nn.Sequential(_ChannelsLast(), nn.LayerNorm(channels, eps=EPS))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm2(self.conv2(self.act(self.norm1(self.conv1(x)))))


class Downsample(nn.Module):
    """Conv C->2C (k3 s2, no bias) and LayerNorm; NHWC in and out."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, 2 * channels, 3, stride=2, padding=1, bias=False)
        self.norm = nn.Sequential(_ChannelsLast(), nn.LayerNorm(2 * channels, eps=EPS))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv(x.permute(0, 3, 1, 2)))


class Block(nn.Module):
    """One InternImage layer with layer scale (pre-norm): DCNv3 then MLP, each scaled per channel."""

    def __init__(self, channels: int, group: int, *, mlp_ratio: float = 4.0, drop_path: float = 0.0,
                 layer_scale: float = 1.0, offset_scale: float = 1.0) -> None:
        super().__init__()
        self.norm1 = nn.Sequential(nn.LayerNorm(channels, eps=EPS))
        self.dcn = DCNv3(channels, group, offset_scale=offset_scale)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.Sequential(nn.LayerNorm(channels, eps=EPS))
        self.mlp = Mlp(channels, int(channels * mlp_ratio), act_layer=nn.GELU)
        self.gamma1 = nn.Parameter(layer_scale * torch.ones(channels))
        self.gamma2 = nn.Parameter(layer_scale * torch.ones(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.gamma1 * self.dcn(self.norm1(x)))
        return x + self.drop_path(self.gamma2 * self.mlp(self.norm2(x)))


class Level(nn.Module):
    """Blocks, the closing LayerNorm (the level's output) and an optional downsample for the next level."""

    def __init__(self, channels: int, depth: int, group: int, *, downsample: bool, drop_path: list[float]) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            Block(channels, group, drop_path=drop_path[i]) for i in range(depth)
        )
        self.norm = nn.Sequential(nn.LayerNorm(channels, eps=EPS))
        self.downsample = Downsample(channels) if downsample else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """NHWC -> the level's normalised output (NHWC), before any downsample."""
        for block in self.blocks:
            x = block(x)
        return self.norm(x)


class InternImageEncoder(nn.Module):
    """InternImage with HQTrack's stride-16 last level; ``forward(img)`` -> ``[f4, f8, f16, f16b]`` (NCHW)."""

    def __init__(self, channels: int = 64, depths: tuple[int, ...] = (4, 4, 18, 4),
                 groups: tuple[int, ...] = (4, 8, 16, 32), *, drop_path_rate: float = 0.2,
                 freeze_at: int = -1) -> None:
        super().__init__()
        if len(depths) != 4 or len(groups) != 4:
            raise ValueError("InternImage needs four levels")
        self.patch_embed = Stem(channels)
        rates = [x.item() for x in torch.linspace(0, drop_path_rate, sum(depths))]
        widths = [channels, 2 * channels, 4 * channels, 4 * channels]  # level 3 keeps level 2's width
        self.dims = (widths[0], widths[1], widths[2], widths[3])
        self.levels = nn.ModuleList()
        for i in range(4):
            start = sum(depths[:i])
            self.levels.append(Level(widths[i], depths[i], groups[i], downsample=i < 3,
                                     drop_path=rates[start:start + depths[i]]))
        # Level 2's downsample never runs (level 3 takes level 2's output); the official model computes it and
        # throws it away. Its parameters stay (checkpoints hold them) but take no part in training.
        freeze_module(self.levels[2].downsample)
        self.freeze_at = freeze_at
        if freeze_at >= 1:
            freeze_module(self.patch_embed)
        for i in range(max(0, freeze_at - 1)):
            freeze_module(self.levels[i])

    def forward(self, img: torch.Tensor) -> list[torch.Tensor]:
        x = self.patch_embed(img)
        outs = []
        for i, level in enumerate(self.levels):
            y = level(x)
            outs.append(y.permute(0, 3, 1, 2).contiguous())
            if i < 2:  # level 2's downsample is not used: level 3 runs on level 2's output
                x = level.downsample(y)
            else:
                x = y
        return outs


def internimage_t(*, freeze_at: int = -1) -> InternImageEncoder:
    """InternImage-T as in HQTrack's ``INTERN_T()``: channels 64, depths 4/4/18/4, groups 4/8/16/32."""
    return InternImageEncoder(64, (4, 4, 18, 4), (4, 8, 16, 32), freeze_at=freeze_at)


def tiny_internimage(*, freeze_at: int = -1) -> InternImageEncoder:
    """A tiny InternImage (channels 8, one block per level) for fast tests; untrained."""
    return InternImageEncoder(8, (1, 1, 1, 1), (2, 2, 4, 4), freeze_at=freeze_at)

