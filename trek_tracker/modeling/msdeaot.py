"""MSDeAOT: DeAOT with gated propagation at several strides (docs/msdeaot.md#design).

The reports' design is a stage list, coarse to fine (default, reading R1 = R2-[2, 0, 1]):

* stride 16, 2 GPM layers: DeAOT's own layers (``gpm.layers.0/1``, so they load from a DeAOT checkpoint),
  without DeAOT's closing GroupNorm;
* stride 16, 0 layers: a conv-only stage that adds the raw 16x encoder map (the "duplicated 16x map");
* stride 8, 1 GPM layer of the ``x_id``-taking form, with its own stride-8 ID bank, so small objects are
  matched at twice DeAOT's resolution.

Between stages, per stream (visual and ID keep separate convolutions; the encoder adapter is shared):
``y = ReLU(ConvGN1x1(concat(previous stage outputs)))``, bilinear resize to the stage grid, then
``y = ReLU(refine(adapter(f_s) + y))`` with ``refine`` a ConvGN3x3 at the same stride and two residual
ConvGN blocks after upsampling. The 4x map is not used; prediction is at the finest stage's stride
(GroupNorm(2) -> ConvGN3x3 -> ReLU -> Conv1x1) and the engine upsamples it.

The model is a registered family on the shared base (:mod:`trek_tracker.modeling.base`); its ID embedding
is a :class:`MultiScaleID` holding one embedding per ID bank, which the caller passes around without looking
inside, and :meth:`MSDeAOT.memory_layout` tells the memory each layer's grid and long-term subsampling.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from trek_tracker.errors import UserError
from trek_tracker.modeling.base import (
    LayerLayout,
    ModelConfig,
    VOSModel,
    embed_ids,
    init_id_bank,
    patch_id_bank,
)
from trek_tracker.modeling.decoders import ConvGN
from trek_tracker.modeling.gpm import FrameEntry, GatedPropagationLayer, LayerMemory
from trek_tracker.modeling.layout import map_to_tokens, tokens_to_map
from trek_tracker.modeling.registry import register_family, register_variant

# Encoder output index for each stride: ``[f4, f8, f16 (raw), x16 (projected)]``.
_FEATURE_INDEX = {4: 0, 8: 1, 16: 2}

# Default stage list of the reports: (stride, GPM layers, width).
REPORT_STAGES: tuple[tuple[int, int, int], ...] = ((16, 2, 256), (16, 0, 256), (8, 1, 256))


@dataclass(frozen=True)
class MSDeAOTConfig(ModelConfig):
    """An MSDeAOT variant: the common fields plus the stage list.

    ``stages`` are ``(stride, layers, d_model)`` triples, coarse to fine. The first stage is DeAOT's 16x stack
    (stride 16, at least one layer, width ``d_model``). ``long_term_dilation`` gives, per stride, the step of
    the ``[::d, ::d]`` subsampling applied to long-term memory keys and values (MS-AOT's memory saving; the
    short-term memory stays at full resolution).
    """

    long_term_gap: int = 5
    train_long_term_gap: int = 2
    stages: tuple[tuple[int, int, int], ...] = REPORT_STAGES
    head_hidden: int = 128
    long_term_dilation: tuple[tuple[int, int], ...] = ((16, 1), (8, 2))

    family: ClassVar[str] = "msdeaot"

    def __post_init__(self) -> None:
        stages = tuple(tuple(int(v) for v in s) for s in self.stages)
        object.__setattr__(self, "stages", stages)
        object.__setattr__(self, "long_term_dilation",
                           tuple(tuple(int(v) for v in p) for p in self.long_term_dilation))
        if not stages or stages[0][0] != 16 or stages[0][1] < 1 or stages[0][2] != self.d_model:
            raise UserError(f"MSDeAOT {self.name!r}: the first stage must be (16, layers >= 1, {self.d_model}), "
                            f"got {stages[:1]}")
        previous = 16
        for stride, layers, width in stages:
            if stride not in _FEATURE_INDEX or stride > previous or layers < 0 or width < 16 or width % 16:
                raise UserError(f"MSDeAOT {self.name!r}: invalid stage (stride={stride}, layers={layers}, "
                                f"d_model={width}); strides are 16, 8 or 4, non-increasing, widths multiples "
                                "of 16")
            previous = stride

    @property
    def num_layers(self) -> int:
        return sum(s[1] for s in self.stages)

    @property
    def output_stride(self) -> int:
        return self.stages[-1][0]


@dataclass
class MultiScaleID:
    """The ID embedding of one label map, one token sequence per ID bank (16x first).

    ``per_layer[i]`` is the index of the bank that GPM layer ``i`` fuses with.
    """

    banks: list[torch.Tensor]
    per_layer: list[int]

    def for_layer(self, layer: int) -> torch.Tensor:
        return self.banks[self.per_layer[layer]]


class _Layers(nn.Module):
    """Holds the 16x GPM layers under ``gpm.layers`` (DeAOT's names, so checkpoints share keys)."""

    def __init__(self, layers: list[GatedPropagationLayer]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)


class ResidualGN(nn.Module):
    """Two residual blocks of ``ConvGN3x3 -> ReLU -> ConvGN3x3``. Modelled on HQTrack's ``ResGN``, which
    also puts a ReLU before each block's first convolution; no released MSDeAOT weights fix the choice."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            nn.ModuleList([ConvGN(dim, dim, 3), ConvGN(dim, dim, 3)]) for _ in range(2)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for a, b in self.blocks:
            x = x + b(F.relu(a(x)))
        return x


class StreamBridge(nn.Module):
    """Previous stage outputs of one stream -> this stage's input: collapse, resize, add encoder, refine."""

    def __init__(self, in_dim: int, out_dim: int, upsample: bool) -> None:
        super().__init__()
        self.collapse = ConvGN(in_dim, out_dim, 1)
        self.refine = ResidualGN(out_dim) if upsample else ConvGN(out_dim, out_dim, 3)

    def forward(self, x: torch.Tensor, skip: torch.Tensor, align_corners: bool) -> torch.Tensor:
        x = F.relu(self.collapse(x))
        if x.shape[-2:] != skip.shape[-2:]:
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=align_corners)
        return F.relu(self.refine(skip + x))


class Stage(nn.Module):
    """A stage after the first: bridges (visual and ID), encoder adapter, optional GPM layers and ID bank."""

    def __init__(self, stride: int, layers: int, d_model: int, prev_dim: int, prev_outputs: int,
                 prev_stride: int, enc_dim: int, c: MSDeAOTConfig) -> None:
        super().__init__()
        self.stride = stride
        self.adapter = nn.Conv2d(enc_dim, d_model, 1)
        upsample = stride != prev_stride
        self.bridge_vis = StreamBridge(prev_dim * prev_outputs, d_model, upsample)
        self.bridge_id = StreamBridge(prev_dim * prev_outputs, d_model, upsample)
        self.layers = nn.ModuleList(
            GatedPropagationLayer(d_model, first=False, expand=c.expand, max_dis=c.max_dis, droppath=c.droppath)
            for _ in range(layers)
        )
        nn.init.xavier_uniform_(self.adapter.weight)


@register_family
class MSDeAOT(VOSModel):
    """Multi-scale DeAOT. Parameter names shared with :class:`~trek_tracker.modeling.deaot.DeAOT`: ``encoder``,
    ``encoder_projector``, ``gpm.layers.{0..n16-1}``, ``id_bank``, ``id_norm``; new: ``stages.*``,
    ``id_banks.*``, ``id_norms.*``, ``out_norm``, ``head_conv``, ``head_out``. A DeAOT checkpoint starts it:
    the shared parts load, the new ones keep their random initialisation (docs/msdeaot.md#initialisation)."""

    family = "msdeaot"
    config_class = MSDeAOTConfig
    official_key_map = (
        ("LSTT.layers.", "gpm.layers."),
        ("patch_wise_id_bank.", "id_bank."),
    )
    parent_family = "deaot"
    # Parameters no DeAOT checkpoint has (bridges, finer GPM stages and their ID banks, head) and DeAOT
    # parameters MSDeAOT does not use (its FPN decoder and closing norm; 16x layers beyond this model's
    # count are also unused, see checkpoints.init_from_parent).
    new_prefixes = ("stages.", "id_banks.", "id_norms.", "out_norm.", "head_conv.", "head_out.")
    unused_prefixes = ("decoder.", "LSTT.decoder_norms.", "LSTT.layers.")

    def __init__(self, config: MSDeAOTConfig) -> None:
        super().__init__(config)
        c = config
        dims = self.encoder_dims
        ac = c.align_corners
        nn.init.xavier_uniform_(self.encoder_projector.weight)
        n16 = c.stages[0][1]
        self.gpm = _Layers([
            GatedPropagationLayer(c.d_model, first=i == 0, expand=c.expand, max_dis=c.max_dis,
                                  droppath=c.droppath)
            for i in range(n16)
        ])
        self._add_id_bank()
        init_id_bank(self.id_bank)

        self.stages = nn.ModuleList()
        self.id_banks = nn.ModuleList()  # extra banks, one per GPM stage after the first
        self.id_norms = nn.ModuleList()
        # Per GPM layer: the ID bank it fuses with (0 = the 16x bank) and its stride.
        self._layer_bank: list[int] = [0] * n16
        self._layer_stride: list[int] = [16] * n16
        prev_stride, prev_dim, prev_outputs = 16, c.d_model, n16
        for stride, layers, width in c.stages[1:]:
            stage = Stage(stride, layers, width, prev_dim, prev_outputs, prev_stride,
                          dims[_FEATURE_INDEX[stride]], c)
            self.stages.append(stage)
            if layers:
                bank_conv = patch_id_bank(c.max_objects + 1, width, stride, ac)
                init_id_bank(bank_conv)
                self.id_banks.append(bank_conv)
                self.id_norms.append(nn.LayerNorm(width))
                bank = len(self.id_banks)
            else:
                bank = -1
            self._layer_bank += [bank] * layers
            self._layer_stride += [stride] * layers
            prev_stride, prev_dim, prev_outputs = stride, width, max(layers, 1)
        out_dim = c.stages[-1][2]
        self.out_norm = nn.GroupNorm(2, 2 * out_dim)
        self.head_conv = ConvGN(2 * out_dim, c.head_hidden, 3)
        self.head_out = nn.Conv2d(c.head_hidden, c.max_objects + 1, 1)
        nn.init.xavier_uniform_(self.head_conv.conv.weight)
        nn.init.xavier_uniform_(self.head_out.weight)

    @property
    def output_stride(self) -> int:
        return self.config.output_stride

    @property
    def layer_strides(self) -> list[int]:
        """The stride of each GPM layer, in memory-list order."""
        return list(self._layer_stride)

    def _layers(self) -> list[GatedPropagationLayer]:
        return list(self.gpm.layers) + [la for s in self.stages for la in s.layers]

    # ------------------------------------------------------------------ interface
    def memory_layout(self, feats: list[torch.Tensor]) -> list[LayerLayout]:
        """Each GPM layer's grid (its stride's) and long-term subsampling (``long_term_dilation``)."""
        grids = {16: tuple(feats[-1].shape[-2:]), 8: tuple(feats[1].shape[-2:]), 4: tuple(feats[0].shape[-2:])}
        dilation = dict(self.config.long_term_dilation)
        return [LayerLayout(grids[s], dilation.get(s, 1)) for s in self._layer_stride]

    def id_embedding(self, one_hot: torch.Tensor) -> MultiScaleID:
        """One-hot labels (B, 1 + max_objects, H, W) at input size -> the ID tokens of every bank."""
        banks = [embed_ids(self.id_bank, self.id_norm, one_hot)]
        for bank, norm in zip(self.id_banks, self.id_norms, strict=True):
            banks.append(embed_ids(bank, norm, one_hot))
        return MultiScaleID(banks, self._layer_bank)

    def propagate(self, feats: list[torch.Tensor], memories: list[LayerMemory] | None,
                  id_emb: MultiScaleID | None = None) -> tuple[torch.Tensor, list[FrameEntry]]:
        """Match the current frame against memory (or itself, given ``id_emb``) at every GPM stage.

        Returns the normalised finest-stage ``[visual, ID]`` tokens (HW_s, B, 2*d_s) and one
        :class:`FrameEntry` per GPM layer (16x layers first).
        """
        ac = self.align_corners
        x16 = feats[-1]
        size = (x16.shape[-2], x16.shape[-1])
        x, x_id = map_to_tokens(x16), None
        entries: list[FrameEntry] = []
        outputs: list[tuple[torch.Tensor, torch.Tensor]] = []
        li = 0
        for layer in self.gpm.layers:
            x, x_id, entry = layer(x, x_id, None if memories is None else memories[li], size,
                                   None if id_emb is None else id_emb.for_layer(li))
            entries.append(entry)
            outputs.append((x, x_id))
            li += 1
        for stage in self.stages:
            vis = torch.cat([tokens_to_map(o[0], size) for o in outputs], dim=1)
            ids = torch.cat([tokens_to_map(o[1], size) for o in outputs], dim=1)
            skip = stage.adapter(feats[_FEATURE_INDEX[stage.stride]])
            vis = stage.bridge_vis(vis, skip, ac)
            ids = stage.bridge_id(ids, skip, ac)
            size = (vis.shape[-2], vis.shape[-1])
            x, x_id = map_to_tokens(vis), map_to_tokens(ids)
            outputs = [(x, x_id)]
            if len(stage.layers):
                outputs = []
            for layer in stage.layers:
                x, x_id, entry = layer(x, x_id, None if memories is None else memories[li], size,
                                       None if id_emb is None else id_emb.for_layer(li))
                entries.append(entry)
                outputs.append((x, x_id))
                li += 1
        x, x_id = outputs[-1]
        out = torch.cat([x, x_id], dim=-1)
        out = self.out_norm(out.permute(1, 2, 0)).permute(2, 0, 1)
        return out, entries

    def decode(self, tokens: torch.Tensor, feats: list[torch.Tensor]) -> torch.Tensor:
        """Propagated tokens -> logits (B, 1 + max_objects, h, w) at the finest stage's stride."""
        stride = self.config.output_stride
        grid = tuple(feats[-1].shape[-2:]) if stride == 16 else tuple(feats[_FEATURE_INDEX[stride]].shape[-2:])
        x = tokens_to_map(tokens, grid)
        return self.head_out(F.relu(self.head_conv(x)))

    def fuse_id(self, layer: int, entry: FrameEntry, id_emb: MultiScaleID) -> torch.Tensor:
        """The ID value of ``entry`` (GPM ``layer`` of a propagated frame) once its label is known."""
        return self._layers()[layer].fuse_id(entry.id_in, id_emb.for_layer(layer))


# The reports' stages (16x: 2 layers, 16x conv-only skip, 8x: 1 layer; docs/msdeaot.md#design). No official
# weights exist: start them from the DeAOT-L checkpoint of the same encoder.
for _config in (
    MSDeAOTConfig("r50_msdeaot", "resnet50"),
    MSDeAOTConfig("swinb_msdeaot", "swin_base"),
    # Reading R1 without the conv-only 16x stage (profile ``msdeaot_2stage``).
    MSDeAOTConfig("r50_msdeaot_2stage", "resnet50", stages=((16, 2, 256), (8, 1, 256))),
    MSDeAOTConfig("test_msdeaot_tiny", "test_tiny", d_model=32, head_hidden=16,
                  stages=((16, 2, 32), (16, 0, 32), (8, 1, 32))),
):
    register_variant(_config)
