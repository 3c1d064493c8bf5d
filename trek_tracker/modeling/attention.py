"""Gated propagation attention: global (long-term, self) and local (short-term 15x15 window).

These are the attention blocks of DeAOT's gated propagation module (GPM): softmax attention whose output is
multiplied by a gate ``U``, passed through a 5x5 depth-wise convolution and projected. Parameter names follow
the official aot-benchmark modules so that checkpoints load without renaming inside a layer.

Tokens are laid out ``(L, B, C)`` (sequence first), as in the official code.

The local attention is computed without the official dense ``HW x HW`` scatter of the window weights and
without the optional correlation CUDA extension: queries are processed in bands of rows, each against only the
key rows its window can reach, with both products done as matrix multiplications. That is the same
mathematics (window positions outside the image get weight exactly 0) at a fraction of the memory.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from trek_tracker.device import constant_tensors
from trek_tracker.modeling.layout import map_to_tokens, tokens_to_map


def silu(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(x)


class DepthwiseConv(nn.Module):
    """5x5 depth-wise convolution over token maps, then channel dropout (training only)."""

    def __init__(self, dim: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(dim, dim, 5, padding=2, groups=dim, bias=False)
        self.dropout = nn.Dropout2d(p=dropout)

    def forward(self, x: torch.Tensor, size_2d: tuple[int, int]) -> torch.Tensor:
        return map_to_tokens(self.dropout(self.conv(tokens_to_map(x, size_2d))))


class GlobalGatedPropagation(nn.Module):
    """Softmax attention over all memory tokens, gated: ``proj(dwconv(softmax(QK^T/sqrt(d)) V * U))``.

    With ``use_linear`` (the self-attention of a GPM layer) the module owns its projections: Q = K from the
    concatenated visual+ID input, and V, U from each half separately. Without it (long-term attention) the
    caller passes projected Q, K, V and U.
    """

    def __init__(self, d_att: int, d_value: int, d_out: int, *, use_linear: bool = False,
                 d_in: int | None = None, dropout: float = 0.0) -> None:
        super().__init__()
        self.d_att = d_att
        self.use_linear = use_linear
        if use_linear:
            assert d_in is not None
            half = d_value // 2
            self.linear_QK = nn.Linear(d_in, d_att)
            self.linear_V1 = nn.Linear(d_in // 2, half)
            self.linear_V2 = nn.Linear(d_in // 2, half)
            self.linear_U1 = nn.Linear(d_in // 2, half)
            self.linear_U2 = nn.Linear(d_in // 2, half)
        self.dropout_p = dropout
        self.dw_conv = DepthwiseConv(d_value)
        self.projection = nn.Linear(d_value, d_out)

    def forward(self, q: torch.Tensor, k: torch.Tensor | None, v: torch.Tensor, u: torch.Tensor | None,
                size_2d: tuple[int, int]) -> torch.Tensor:
        """q: (L, B, d_att) or, with ``use_linear``, the (L, B, d_in) input used for q, k, v and u alike."""
        if self.use_linear:
            x = q
            q = k = self.linear_QK(x)
            x1, x2 = x.chunk(2, dim=-1)
            v = silu(torch.cat([self.linear_V1(x1), self.linear_V2(x2)], dim=-1))
            u = silu(torch.cat([self.linear_U1(x1), self.linear_U2(x2)], dim=-1))
        length, batch, _ = q.shape
        # (B, 1, L, d) layout for scaled_dot_product_attention (single head, scale 1/sqrt(d_att)).
        qb = q.permute(1, 0, 2).unsqueeze(1)
        kb = k.permute(1, 0, 2).unsqueeze(1)
        vb = v.permute(1, 0, 2).unsqueeze(1)
        drop = self.dropout_p if self.training else 0.0
        out = F.scaled_dot_product_attention(qb, kb, vb, dropout_p=drop)
        out = out.squeeze(1).permute(1, 0, 2) * u
        return self.projection(self.dw_conv(out, size_2d))


@constant_tensors
def _window_index(h: int, w: int, y0: int, y1: int, max_dis: int, dilation: int,
                  device: torch.device) -> tuple[torch.Tensor, torch.Tensor, int, int]:
    """For query rows ``[y0, y1)``: the index of each window position in the key band, and validity.

    Returns ``(index (nq, K), valid (nq, K), band_start_row, band_rows)`` with ``K = (2*max_dis+1)**2``
    window positions in row-major (dy, dx) order, the order of the official relative-position channels.
    Invalid positions (outside the image) point at the dummy column ``band_rows * w``. Built once per shape
    and device (``constant_tensors``); under ``torch.compile`` traced, as it depends only on shapes.
    """
    reach = max_dis * dilation
    k0, k1 = max(0, y0 - reach), min(h, y1 + reach)
    offsets = torch.arange(-max_dis, max_dis + 1, device=device) * dilation
    qy = torch.arange(y0, y1, device=device).view(-1, 1, 1, 1)
    qx = torch.arange(w, device=device).view(1, -1, 1, 1)
    ky = qy + offsets.view(1, 1, -1, 1)
    kx = qx + offsets.view(1, 1, 1, -1)
    valid = (ky >= 0) & (ky < h) & (kx >= 0) & (kx < w)
    index = (ky - k0) * w + kx
    index = torch.where(valid, index, torch.full_like(index, (k1 - k0) * w))
    n_win = offsets.numel() ** 2
    nq = (y1 - y0) * w
    return index.reshape(nq, n_win), valid.reshape(nq, n_win), k0, k1 - k0


def local_window_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor, *,
                           max_dis: int = 7, dilation: int = 1,
                           max_block_elements: int = 1 << 24) -> torch.Tensor:
    """Softmax attention of each query over the ``(2*max_dis+1)^2`` keys around it.

    Args:
        q: (B, D, H, W) queries, already scaled.  k: (B, D, H, W) keys.  v: (B, C, H, W) values.
        bias: (B, K, H, W) additive logit bias per window position (the relative-position term).
    Returns:
        (HW, B, C) aggregated values.
    """
    b, d, h, w = q.shape
    c = v.shape[1]
    reach = max_dis * dilation
    # Rows of queries per band, so that the dense (band queries x band keys) block stays bounded.
    rows = h
    while rows > 1 and rows * w * (rows + 2 * reach) * w * b > max_block_elements:
        rows = max(1, rows // 2)
    q_seq = q.flatten(2).transpose(1, 2)  # (B, HW, D)
    k_seq = k.flatten(2).transpose(1, 2)
    v_seq = v.flatten(2).transpose(1, 2)  # (B, HW, C)
    bias_seq = bias.flatten(2).transpose(1, 2)  # (B, HW, K)
    outputs = []
    for y0 in range(0, h, rows):
        y1 = min(h, y0 + rows)
        index, valid, k0, kr = _window_index(h, w, y0, y1, max_dis, dilation, q.device)
        qs = slice(y0 * w, y1 * w)
        ks = slice(k0 * w, (k0 + kr) * w)
        scores = torch.bmm(q_seq[:, qs], k_seq[:, ks].transpose(1, 2))  # (B, nq, kr*w)
        scores = F.pad(scores, (0, 1))  # dummy column for out-of-image positions
        idx = index.unsqueeze(0).expand(b, -1, -1)
        logits = scores.gather(2, idx) + bias_seq[:, qs]
        logits = logits.masked_fill(~valid, torch.finfo(logits.dtype).min)
        # Under CUDA autocast softmax runs in float32 while the products run in half precision: the weights
        # go back to the products' dtype before they are scattered next to them.
        attn = torch.softmax(logits, dim=-1).to(scores.dtype)
        dense = torch.zeros_like(scores).scatter_(2, idx, attn)[..., :-1]
        outputs.append(torch.bmm(dense, v_seq[:, ks].to(dense.dtype)))
    out = torch.cat(outputs, dim=1) if len(outputs) > 1 else outputs[0]
    return out.permute(1, 0, 2).reshape(h * w, b, c)


class LocalGatedPropagation(nn.Module):
    """Short-term attention: each query attends to a 15x15 window of the previous frame, with a
    content-dependent relative-position bias ``Conv1x1(q)`` (computed on the unscaled query)."""

    def __init__(self, d_att: int, d_value: int, d_out: int, *, max_dis: int = 7, dilation: int = 1) -> None:
        super().__init__()
        self.d_att = d_att
        self.max_dis = max_dis
        self.dilation = dilation
        window = 2 * max_dis + 1
        self.relative_emb_k = nn.Conv2d(d_att, window * window, kernel_size=1)
        self.dw_conv = DepthwiseConv(d_value)
        self.projection = nn.Linear(d_value, d_out)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, u: torch.Tensor,
                size_2d: tuple[int, int]) -> torch.Tensor:
        """q, k: (B, d_att, H, W); v: (B, d_value, H, W); u: (HW, B, d_value) gate."""
        bias = self.relative_emb_k(q)
        q = q / math.sqrt(self.d_att)
        out = local_window_attention(q, k, v, bias, max_dis=self.max_dis, dilation=self.dilation)
        return self.projection(self.dw_conv(out * u, size_2d))
