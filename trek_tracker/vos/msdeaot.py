"""MSDeAOT: DeAOT with gated propagation at several strides (spec deaot.md Part B, §5.4).

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

The model keeps DeAOT's interface (``encode``, ``id_embedding``, ``propagate``, ``decode``, ``fuse_id``);
its ID embedding is a :class:`MultiScaleID` holding one embedding per ID bank, which the caller passes
around without looking inside. Two extra hooks tell the engine how each layer's memory is laid out:
:meth:`MSDeAOT.layer_grids` and :meth:`MSDeAOT.long_term_dilation`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from trek_tracker.errors import UserError
from trek_tracker.vos.attention import map_to_seq
from trek_tracker.vos.decoders import ConvGN
from trek_tracker.vos.encoders import build_encoder, encoder_spec
from trek_tracker.vos.gpm import FrameEntry, GatedPropagationLayer, LayerMemory

# Encoder output index for each stride: ``[f4, f8, f16 (raw), x16 (projected)]``.
_FEATURE_INDEX = {4: 0, 8: 1, 16: 2}

# Default stage list of the reports: (stride, GPM layers, width).
REPORT_STAGES: tuple[tuple[int, int, int], ...] = ((16, 2, 256), (16, 0, 256), (8, 1, 256))


@dataclass(frozen=True)
class MSDeAOTConfig:
    """Architecture and memory schedule of an MSDeAOT variant.

    ``stages`` are ``(stride, layers, d_model)`` triples, coarse to fine. The first stage is DeAOT's 16x stack
    (stride 16, at least one layer, width ``d_model``). ``long_term_dilation`` gives, per stride, the step of
    the ``[::d, ::d]`` subsampling applied to long-term memory keys and values (MS-AOT's memory saving; the
    short-term memory stays at full resolution).
    """

    name: str
    encoder: str
    stages: tuple[tuple[int, int, int], ...] = REPORT_STAGES
    long_term_gap: int = 5
    train_long_term_gap: int = 2
    short_term_skip: int = 1
    d_model: int = 256
    max_objects: int = 10
    expand: int = 2
    max_dis: int = 7
    droppath: float = 0.1
    freeze_at: int = 2
    head_hidden: int = 128
    long_term_dilation: tuple[tuple[int, int], ...] = ((16, 1), (8, 2))
    arch: str = field(default="msdeaot")

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
    def align_corners(self) -> bool:
        return encoder_spec(self.encoder).align_corners

    @property
    def num_layers(self) -> int:
        return sum(s[1] for s in self.stages)

    @property
    def output_stride(self) -> int:
        return self.stages[-1][0]

    def to_dict(self) -> dict:
        d = asdict(self)
        d["stages"] = [list(s) for s in self.stages]
        d["long_term_dilation"] = [list(p) for p in self.long_term_dilation]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> MSDeAOTConfig:
        d = dict(d)
        d.pop("arch", None)
        d["stages"] = tuple(tuple(s) for s in d.get("stages", REPORT_STAGES))
        if "long_term_dilation" in d:
            d["long_term_dilation"] = tuple(tuple(p) for p in d["long_term_dilation"])
        return cls(**d)


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
    """Two residual blocks of ``ConvGN3x3 -> ReLU -> ConvGN3x3`` (HQTrack / MS-AOT ``ResGN``)."""

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


def _id_bank(classes: int, dim: int, stride: int, align_corners: bool) -> nn.Conv2d:
    """A patch-wise ID bank at ``stride``: kernel s+1, padding s/2 (16k+1 inputs) or kernel s (Swin)."""
    if align_corners:
        bank = nn.Conv2d(classes, dim, kernel_size=stride + 1, stride=stride, padding=stride // 2)
        gain = (stride + 1) ** -2
    else:
        bank = nn.Conv2d(classes, dim, kernel_size=stride, stride=stride, padding=0)
        gain = stride**-2
    nn.init.orthogonal_(bank.weight.view(dim, -1), gain=gain)
    return bank


def _seq_to_map(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    h, w = size
    _, b, c = x.shape
    return x.view(h, w, b, c).permute(2, 3, 0, 1)


class MSDeAOT(nn.Module):
    """Multi-scale DeAOT. Parameter names shared with :class:`~trek_tracker.vos.models.DeAOT`: ``encoder``,
    ``encoder_projector``, ``gpm.layers.{0..n16-1}``, ``id_bank``, ``id_norm``; new: ``stages.*``,
    ``id_banks.*``, ``id_norms.*``, ``out_norm``, ``head_conv``, ``head_out``."""

    def __init__(self, config: MSDeAOTConfig) -> None:
        super().__init__()
        self.config = c = config
        dims = encoder_spec(c.encoder).dims
        ac = c.align_corners
        self.encoder = build_encoder(c.encoder, freeze_at=c.freeze_at)
        self.encoder_projector = nn.Conv2d(dims[-1], c.d_model, kernel_size=1)
        nn.init.xavier_uniform_(self.encoder_projector.weight)
        n16 = c.stages[0][1]
        self.gpm = _Layers([
            GatedPropagationLayer(c.d_model, first=i == 0, expand=c.expand, max_dis=c.max_dis,
                                  droppath=c.droppath)
            for i in range(n16)
        ])
        self.id_bank = _id_bank(c.max_objects + 1, c.d_model, 16, ac)
        self.id_norm = nn.LayerNorm(c.d_model)

        self.stages = nn.ModuleList()
        self.id_banks = nn.ModuleList()  # extra banks, one per GPM stage after the first
        self.id_norms = nn.ModuleList()
        # Per GPM layer: (stage index, bank index) with bank 0 the 16x bank.
        self._layer_bank: list[int] = [0] * n16
        self._layer_stride: list[int] = [16] * n16
        prev_stride, prev_dim, prev_outputs = 16, c.d_model, n16
        for stride, layers, width in c.stages[1:]:
            stage = Stage(stride, layers, width, prev_dim, prev_outputs, prev_stride,
                          dims[_FEATURE_INDEX[stride]], c)
            self.stages.append(stage)
            if layers:
                self.id_banks.append(_id_bank(c.max_objects + 1, width, stride, ac))
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
    def align_corners(self) -> bool:
        return self.config.align_corners

    @property
    def layer_strides(self) -> list[int]:
        """The stride of each GPM layer, in memory-list order."""
        return list(self._layer_stride)

    # ------------------------------------------------------------------ interface
    def encode(self, image: torch.Tensor) -> list[torch.Tensor]:
        """Normalised image (B, 3, H, W) -> ``[f4, f8, f16, x16]`` with ``x16`` projected to d_model."""
        feats = list(self.encoder(image))
        feats[-1] = self.encoder_projector(feats[-1])
        return feats

    def layer_grids(self, feats: list[torch.Tensor]) -> list[tuple[int, int]]:
        """The token grid of each GPM layer (its memory's 2-D size) for these features."""
        grids = {16: tuple(feats[-1].shape[-2:]), 8: tuple(feats[1].shape[-2:]), 4: tuple(feats[0].shape[-2:])}
        return [grids[s] for s in self._layer_stride]

    def long_term_dilation(self, layer: int) -> int:
        """Subsampling step of long-term memory for GPM ``layer`` (1 = full resolution)."""
        return dict(self.config.long_term_dilation).get(self._layer_stride[layer], 1)

    def id_embedding(self, one_hot: torch.Tensor) -> MultiScaleID:
        """One-hot labels (B, 1 + max_objects, H, W) at input size -> the ID tokens of every bank."""
        banks = [self._embed(self.id_bank, self.id_norm, one_hot)]
        for bank, norm in zip(self.id_banks, self.id_norms, strict=True):
            banks.append(self._embed(bank, norm, one_hot))
        return MultiScaleID(banks, self._layer_bank)

    @staticmethod
    def _embed(bank: nn.Conv2d, norm: nn.LayerNorm, one_hot: torch.Tensor) -> torch.Tensor:
        emb = bank(one_hot)
        return map_to_seq(norm(emb.permute(0, 2, 3, 1)).permute(0, 3, 1, 2))

    def propagate(self, feats: list[torch.Tensor], memories: list[LayerMemory] | None,
                  id_emb: MultiScaleID | None = None) -> tuple[torch.Tensor, list[FrameEntry]]:
        """Match the current frame against memory (or itself, given ``id_emb``) at every GPM stage.

        Returns the normalised finest-stage ``[visual, ID]`` tokens (HW_s, B, 2*d_s) and one
        :class:`FrameEntry` per GPM layer (16x layers first).
        """
        ac = self.align_corners
        x16 = feats[-1]
        size = (x16.shape[-2], x16.shape[-1])
        x, x_id = map_to_seq(x16), None
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
            vis = torch.cat([_seq_to_map(o[0], size) for o in outputs], dim=1)
            ids = torch.cat([_seq_to_map(o[1], size) for o in outputs], dim=1)
            skip = stage.adapter(feats[_FEATURE_INDEX[stage.stride]])
            vis = stage.bridge_vis(vis, skip, ac)
            ids = stage.bridge_id(ids, skip, ac)
            size = (vis.shape[-2], vis.shape[-1])
            x, x_id = map_to_seq(vis), map_to_seq(ids)
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
        x = _seq_to_map(tokens, grid)
        return self.head_out(F.relu(self.head_conv(x)))

    def fuse_id(self, layer: int, entry: FrameEntry, id_emb: MultiScaleID) -> torch.Tensor:
        """The ID value of ``entry`` (GPM ``layer`` of a propagated frame) once its label is known."""
        return self._layer(layer).fuse_id(entry.id_in, id_emb.for_layer(layer))

    def _layer(self, index: int) -> GatedPropagationLayer:
        layers = list(self.gpm.layers) + [la for s in self.stages for la in s.layers]
        return layers[index]
