"""DeAOT's gated propagation module (GPM): a stack of layers that propagate a visual stream and an ID
stream from memory frames to the current frame.

Per layer (docs/deaot.md#gated-propagation-layer): long-term attention over every memory token and
short-term attention over a 15x15 window of the previous frame share one query/key projection of the
*visual* stream; the values carry both streams (visual ``v`` and the frame's ID value ``idv``), so object
identities travel with the same attention map. A gated self-attention then mixes the two streams. Keys are
the queries (one projection).

The layers are pure: what a frame contributes to memory comes back as a :class:`FrameEntry`, and
:class:`trek_tracker.inference.memory.Memory` builds the memories from it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from trek_tracker.modeling.attention import GlobalGatedPropagation, LocalGatedPropagation, silu
from trek_tracker.modeling.layout import tokens_to_map


@dataclass
class LayerMemory:
    """What one GPM layer attends to: long-term tokens and the short-term (previous) frame as maps.

    ``long_key`` (M, B, d_att) and ``long_value`` (M, B, 2*expand*d) hold all long-term frames, newest first;
    ``short_key`` (B, d_att, H, W) and ``short_value`` (B, 2*expand*d, H, W) hold the short-term frame.
    Values are the concatenation ``[v, idv]`` of the visual value and the ID value.
    """

    long_key: torch.Tensor
    long_value: torch.Tensor
    short_key: torch.Tensor
    short_value: torch.Tensor


@dataclass
class FrameEntry:
    """One layer's share of the current frame, from which its memory entry is built once its label is known.

    ``key`` (HW, B, d_att), ``value`` (HW, B, expand*d), ``id_in`` (HW, B, d) the layer's normalised ID-stream
    input (None in layer 0), ``id_value`` the fused ID value when the frame's ID embedding was given.
    """

    key: torch.Tensor
    value: torch.Tensor
    id_in: torch.Tensor | None
    id_value: torch.Tensor | None = None


def drop_path(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Stochastic depth per sample; tokens are (L, B, C) so the sample axis is 1."""
    if p == 0.0 or not training:
        return x
    keep = 1.0 - p
    mask = x.new_empty((1, x.shape[1], 1)).bernoulli_(keep)
    return x * mask / keep


class GatedPropagationLayer(nn.Module):
    """One DeAOT GPM layer. ``first`` layers have no ID-stream input (their ID gate half is all ones)."""

    def __init__(self, d_model: int = 256, *, first: bool, expand: int = 2, max_dis: int = 7,
                 dilation: int = 1, droppath: float = 0.1) -> None:
        super().__init__()
        self.d_model = d_model
        self.d_att = d_model // 2
        self.d_value = d_model * expand
        self.first = first
        self.droppath = droppath
        self.norm1 = nn.LayerNorm(d_model)
        self.linear_QV = nn.Linear(d_model, self.d_att + self.d_value)
        self.linear_U = nn.Linear(d_model, self.d_value)
        if first:
            self.linear_ID_V = nn.Linear(d_model, self.d_value)
        else:
            self.id_norm1 = nn.LayerNorm(d_model)
            self.linear_ID_V = nn.Linear(2 * d_model, self.d_value)
            self.linear_ID_U = nn.Linear(d_model, self.d_value)
        self.long_term_attn = GlobalGatedPropagation(self.d_att, 2 * self.d_value, 2 * d_model)
        self.short_term_attn = LocalGatedPropagation(self.d_att, 2 * self.d_value, 2 * d_model,
                                                     max_dis=max_dis, dilation=dilation)
        self.norm2 = nn.LayerNorm(d_model)
        self.id_norm2 = nn.LayerNorm(d_model)
        self.self_attn = GlobalGatedPropagation(self.d_att, 2 * self.d_value, 2 * d_model, use_linear=True,
                                                d_in=2 * d_model)
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def fuse_id(self, id_in: torch.Tensor | None, id_emb: torch.Tensor) -> torch.Tensor:
        """The ID value of a frame whose ID embedding is known: ``SiLU(W [id_in, id_emb])``."""
        if self.first:
            return silu(self.linear_ID_V(id_emb))
        return silu(self.linear_ID_V(torch.cat([id_in, id_emb], dim=-1)))

    def forward(self, x: torch.Tensor, x_id: torch.Tensor | None, memory: LayerMemory | None,
                size_2d: tuple[int, int], id_emb: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, FrameEntry]:
        """Propagate to the current frame.

        With ``id_emb`` (a reference frame) the frame attends to itself; otherwise to ``memory``.
        """
        h = self.norm1(x)
        q, v = torch.split(self.linear_QV(h), [self.d_att, self.d_value], dim=-1)
        v = silu(v)
        u = self.linear_U(h)
        if self.first:
            gate = torch.cat([silu(u), torch.ones_like(u)], dim=-1)
            id_in = None
        else:
            id_in = self.id_norm1(x_id)
            gate = silu(torch.cat([u, self.linear_ID_U(id_in)], dim=-1))

        entry = FrameEntry(key=q, value=v, id_in=id_in)
        if id_emb is not None:
            entry.id_value = self.fuse_id(id_in, id_emb)
            long_key, long_value = q, torch.cat([v, entry.id_value], dim=-1)
            short_key, short_value = tokens_to_map(long_key, size_2d), tokens_to_map(long_value, size_2d)
        else:
            assert memory is not None, "a frame without ID embedding needs a memory"
            long_key, long_value = memory.long_key, memory.long_value
            short_key, short_value = memory.short_key, memory.short_value

        a_lt = self.long_term_attn(q, long_key, long_value, gate, size_2d)
        a_st = self.short_term_attn(tokens_to_map(q, size_2d), short_key, short_value, gate, size_2d)
        lt_vis, lt_id = torch.split(a_lt, self.d_model, dim=-1)
        st_vis, st_id = torch.split(a_st, self.d_model, dim=-1)
        x = x + (lt_vis + st_vis)
        x_id = (lt_id + st_id) if x_id is None else x_id + (lt_id + st_id)

        z = torch.cat([self.norm2(x), self.id_norm2(x_id)], dim=-1)
        s_vis, s_id = torch.split(self.self_attn(z, None, None, None, size_2d), self.d_model, dim=-1)
        x = x + drop_path(s_vis, self.droppath, self.training)
        x_id = x_id + drop_path(s_id, self.droppath, self.training)
        return x, x_id, entry


class GatedPropagationStack(nn.Module):
    """DeAOT's ``DualBranchGPM``: layers in sequence, then GroupNorm(2 groups) over ``[visual, ID]``."""

    def __init__(self, num_layers: int, d_model: int = 256, *, expand: int = 2, max_dis: int = 7,
                 dilation: int = 1, droppath: float = 0.1) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            GatedPropagationLayer(d_model, first=i == 0, expand=expand, max_dis=max_dis, dilation=dilation,
                                  droppath=droppath)
            for i in range(num_layers)
        )
        self.out_norm = nn.GroupNorm(2, 2 * d_model)

    def forward(self, x: torch.Tensor, memories: list[LayerMemory] | None, size_2d: tuple[int, int],
                id_emb: torch.Tensor | None = None
                ) -> tuple[list[torch.Tensor], list[FrameEntry]]:
        """Returns every layer's ``[x, x_id]`` output (the last one normalised) and the frame's entries."""
        outputs, entries = [], []
        x_id = None
        for i, layer in enumerate(self.layers):
            x, x_id, entry = layer(x, x_id, None if memories is None else memories[i], size_2d, id_emb)
            outputs.append(torch.cat([x, x_id], dim=-1))
            entries.append(entry)
        last = outputs[-1]
        outputs[-1] = self.out_norm(last.permute(1, 2, 0)).permute(2, 0, 1)
        return outputs, entries
