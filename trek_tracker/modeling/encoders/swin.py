"""Swin-B with three stages, the image encoder of SwinB-DeAOT-L.

Layout and key names follow the segmentation-style Swin backbone (``patch_embed``,
``layers.<i>.blocks.<j>``, ``layers.<i>.downsample``, an output LayerNorm ``norm<i>`` per stage). The 32x
stage is dropped, so the outputs are 4x (128 ch), 8x (256 ch) and 16x (512 ch), the 16x map returned twice.
Inputs of any size work: maps are padded on the right/bottom to a multiple of the patch size, the window
size, or 2 (patch merging), as the segmentation Swin does, and the padding is cropped away again.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from trek_tracker.modeling.encoders.common import freeze_module

_SHIFT_MASK_VALUE = -100.0


def relative_position_index(window: int) -> torch.Tensor:
    """Swin's (window², window²) int64 table: index into the (2w-1)² relative-offset bias table.

    Entry ``[i, j]`` encodes the offset of token ``i`` from token ``j`` (row-major inside the window) as
    ``(dy + w - 1) * (2w - 1) + (dx + w - 1)``.
    """
    ys, xs = torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")
    coords = torch.stack([ys.flatten(), xs.flatten()])  # 2, w*w
    rel = coords[:, :, None] - coords[:, None, :]  # 2, w*w, w*w
    return (rel[0] + window - 1) * (2 * window - 1) + (rel[1] + window - 1)


class DropPath(nn.Module):
    """Stochastic depth per sample (batch dimension 0); the identity at eval or with ``p == 0``."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        shape = (x.shape[0],) + (1,) * (x.ndim - 1)
        mask = torch.floor(keep + torch.rand(shape, dtype=x.dtype, device=x.device))
        return x.div(keep) * mask

    def extra_repr(self) -> str:
        return f"p={self.p}"


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class WindowAttention(nn.Module):
    """Multi-head self-attention inside each window, with a learned relative-position bias."""

    def __init__(self, dim: int, window: int, heads: int) -> None:
        super().__init__()
        self.window = window
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, heads))
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
        # Persistent, as in the official checkpoints (their key is part of the state dict), but fully
        # determined by the window size: see ``_load_from_state_dict``.
        self.register_buffer("relative_position_index", relative_position_index(window))
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):  # type: ignore[no-untyped-def]
        # The index is a constant of the architecture. Accept state dicts without it (seeded/parity
        # weights skip integer buffers) and refuse one whose table is not Swin's, which would silently
        # scramble the position bias.
        key = prefix + "relative_position_index"
        expected = relative_position_index(self.window)
        if key not in state_dict:
            state_dict[key] = expected
        elif not torch.equal(state_dict[key].to(expected.device, torch.int64), expected):
            error_msgs.append(f"{key}: not Swin's relative position index for window {self.window}")
            state_dict[key] = expected
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """x: (windows*B, N, C); mask: (windows, N, N) of 0 / -100 or None."""
        bw, n, c = x.shape
        qkv = self.qkv(x).reshape(bw, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = (q * self.scale) @ k.transpose(-2, -1)
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        attn = attn + bias.view(n, n, -1).permute(2, 0, 1).unsqueeze(0)
        if mask is not None:
            nw = mask.shape[0]
            attn = attn.view(bw // nw, nw, self.heads, n, n) + mask.unsqueeze(1).unsqueeze(0)
            attn = attn.view(-1, self.heads, n, n)
        attn = attn.softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(bw, n, c))


def _to_windows(x: torch.Tensor, w: int) -> torch.Tensor:
    """(B, H, W, C) -> (B * H/w * W/w, w*w, C), windows in row-major order."""
    b, h, wd, c = x.shape
    x = x.view(b, h // w, w, wd // w, w, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, w * w, c)


def _from_windows(windows: torch.Tensor, w: int, h: int, wd: int) -> torch.Tensor:
    """Inverse of ``_to_windows`` for a padded (h, wd) map."""
    b = windows.shape[0] // ((h // w) * (wd // w))
    x = windows.view(b, h // w, wd // w, w, w, -1).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(b, h, wd, -1)


class SwinBlock(nn.Module):
    """Pre-norm (shifted-)window attention and MLP, each with a (drop-path) residual."""

    def __init__(self, dim: int, heads: int, window: int, shift: int, drop_path: float) -> None:
        super().__init__()
        self.window = window
        self.shift = shift
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, window, heads)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, 4 * dim)

    def forward(self, x: torch.Tensor, h: int, wd: int, shift_mask: torch.Tensor) -> torch.Tensor:
        b, length, c = x.shape
        w = self.window
        shortcut = x
        x = self.norm1(x).view(b, h, wd, c)
        pad_b, pad_r = (w - h % w) % w, (w - wd % w) % w
        x = F.pad(x, (0, 0, 0, pad_r, 0, pad_b))  # zeros after the norm, as Swin-seg does
        hp, wp = x.shape[1], x.shape[2]
        if self.shift > 0:
            x = torch.roll(x, shifts=(-self.shift, -self.shift), dims=(1, 2))
        x = self.attn(_to_windows(x, w), shift_mask if self.shift > 0 else None)
        x = _from_windows(x, w, hp, wp)
        if self.shift > 0:
            x = torch.roll(x, shifts=(self.shift, self.shift), dims=(1, 2))
        x = x[:, :h, :wd, :].reshape(b, length, c)
        x = shortcut + self.drop_path(x)
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchMerging(nn.Module):
    """2x2 neighbourhood -> concat (4C) -> LayerNorm -> Linear to 2C; odd sizes padded by one."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
        self.norm = nn.LayerNorm(4 * dim)

    def forward(self, x: torch.Tensor, h: int, wd: int) -> torch.Tensor:
        b, _, c = x.shape
        x = x.view(b, h, wd, c)
        if h % 2 or wd % 2:
            x = F.pad(x, (0, 0, 0, wd % 2, 0, h % 2))
        # Order of the four neighbours as in Swin: (0,0), (1,0), (0,1), (1,1).
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], -1)
        return self.reduction(self.norm(x.view(b, -1, 4 * c)))


def shift_attention_mask(h: int, wd: int, window: int, shift: int, device: torch.device) -> torch.Tensor:
    """(windows, w², w²) additive mask keeping shifted windows from mixing regions that were not adjacent.

    Computed on the map padded to a multiple of the window; tokens from different regions get -100.
    """
    hp = -(-h // window) * window
    wp = -(-wd // window) * window
    region = torch.zeros((1, hp, wp, 1), device=device)
    bands = (slice(0, -window), slice(-window, -shift), slice(-shift, None))
    label = 0
    for hs in bands:
        for ws in bands:
            region[:, hs, ws, :] = label
            label += 1
    windows = _to_windows(region, window).squeeze(-1)  # nW, w*w
    diff = windows.unsqueeze(1) - windows.unsqueeze(2)
    return diff.masked_fill(diff != 0, _SHIFT_MASK_VALUE).masked_fill(diff == 0, 0.0)


class SwinStage(nn.Module):
    """``depth`` blocks alternating plain and shifted windows, then optional patch merging."""

    def __init__(
        self, dim: int, depth: int, heads: int, window: int, drop_paths: list[float], downsample: bool
    ) -> None:
        super().__init__()
        self.window = window
        self.shift = window // 2
        self.blocks = nn.ModuleList(
            SwinBlock(dim, heads, window, 0 if i % 2 == 0 else self.shift, drop_paths[i])
            for i in range(depth)
        )
        self.downsample = PatchMerging(dim) if downsample else None

    def forward(self, x: torch.Tensor, h: int, wd: int) -> tuple[torch.Tensor, torch.Tensor, int, int]:
        """Returns (stage output, input of the next stage, its height, its width)."""
        mask = shift_attention_mask(h, wd, self.window, self.shift, x.device)
        for blk in self.blocks:
            x = blk(x, h, wd, mask)
        if self.downsample is None:
            return x, x, h, wd
        return x, self.downsample(x, h, wd), (h + 1) // 2, (wd + 1) // 2


class PatchEmbed(nn.Module):
    """Non-overlapping ``patch``x``patch`` conv (input zero-padded to a multiple), then LayerNorm."""

    def __init__(self, patch: int, dim: int) -> None:
        super().__init__()
        self.patch = patch
        self.proj = nn.Conv2d(3, dim, patch, stride=patch)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, wd = x.shape[-2:]
        p = self.patch
        if wd % p:
            x = F.pad(x, (0, p - wd % p))
        if h % p:
            x = F.pad(x, (0, 0, 0, p - h % p))
        x = self.proj(x)
        b, c, hh, ww = x.shape
        x = self.norm(x.flatten(2).transpose(1, 2))
        return x.transpose(1, 2).view(b, c, hh, ww)


class SwinEncoder(nn.Module):
    """Swin backbone truncated to ``len(depths) - 1`` stages, returning ``[f4, f8, f16, f16]``.

    ``depths``/``heads`` list all four stages of the original network: the stochastic-depth schedule
    (linear from 0 to ``drop_path_rate`` over *all* blocks) is defined on the full network, as in the
    official model, even though the last stage is not built.
    """

    def __init__(
        self,
        embed_dim: int = 128,
        depths: tuple[int, ...] = (2, 2, 18, 2),
        heads: tuple[int, ...] = (4, 8, 16, 32),
        window: int = 7,
        patch: int = 4,
        drop_path_rate: float = 0.3,
        freeze_at: int = -1,
    ) -> None:
        super().__init__()
        n_stages = len(depths) - 1
        self.patch_embed = PatchEmbed(patch, embed_dim)
        rates = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        self.layers = nn.ModuleList()
        for i in range(n_stages):
            first = sum(depths[:i])
            self.layers.append(
                SwinStage(
                    embed_dim * 2**i,
                    depths[i],
                    heads[i],
                    window,
                    rates[first : first + depths[i]],
                    downsample=i < n_stages - 1,
                )
            )
        self.num_features = [embed_dim * 2**i for i in range(n_stages)]
        for i, dim in enumerate(self.num_features):
            self.add_module(f"norm{i}", nn.LayerNorm(dim))
        self.dims: tuple[int, ...] = (*self.num_features, self.num_features[-1])
        self._init_weights()
        self.freeze(freeze_at)

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def freeze(self, freeze_at: int) -> None:
        """Official ``frozen_stages`` semantics for ``freeze_at >= 1``: the patch embedding, and from 2 on
        the blocks of stages ``0 .. freeze_at-2`` (their drop-path removed too). The patch merging of the
        last frozen stage stays trainable, as in the official code.
        """
        if freeze_at >= 1:
            freeze_module(self.patch_embed)
        last = None
        for i in range(min(max(freeze_at - 1, 0), len(self.layers))):
            last = self.layers[i]
            for blk in last.blocks:
                blk.drop_path = nn.Identity()
            freeze_module(last)
        if last is not None and last.downsample is not None:
            last.downsample.requires_grad_(True)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.patch_embed(x)
        h, wd = x.shape[-2:]
        x = x.flatten(2).transpose(1, 2)
        outs = []
        for i, stage in enumerate(self.layers):
            out, x, nh, nw = stage(x, h, wd)
            out = getattr(self, f"norm{i}")(out)
            outs.append(out.view(-1, h, wd, self.num_features[i]).permute(0, 3, 1, 2).contiguous())
            h, wd = nh, nw
        outs.append(outs[-1])
        return outs


def swin_base(*, freeze_at: int = -1, drop_path_rate: float = 0.3) -> SwinEncoder:
    """The SwinB-DeAOT-L encoder: dims ``(128, 256, 512, 512)``, window 7."""
    return SwinEncoder(128, (2, 2, 18, 2), (4, 8, 16, 32), 7, 4, drop_path_rate, freeze_at)
