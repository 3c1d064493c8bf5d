"""VMOS: HQTrack's multi-scale DeAOT (``MSDeAOT_V2`` on InternImage-T), the multi-scale DeAOT with public
weights (docs/vmos.md).

Per frame, on the shared DeAOT-family interface (``modeling/base.py``):

* stride 16: DeAOT-L's three GPM layers (``gpm.layers.0..2``) on the projected InternImage 16x map, with
  the 16x ID bank; their outputs are collected *without* DeAOT's closing GroupNorm;
* 16x -> 8x bridge, per stream (visual and ID keep their own convolutions, the encoder skip is shared):
  ``ReLU(ConvGN1x1(concat of the three layers' outputs))``, bilinear resize to the 8x grid
  (align_corners=True), add ``Conv1x1(f8)``, two residual ConvGN blocks, ReLU;
* stride 8: one GPM layer (``gpm8``, d = 128) of the ID-taking form. Its ID embedding comes from a second
  bank that is, like the 16x one, a stride-16 convolution (kernel 17, stride 16, padding 8), normalised and
  **nearest-upsampled** to ``(ceil(h/8), ceil(w/8))`` as HQTrack does;
* 8x -> 4x bridge (no GPM at 4x), then GroupNorm(2) over ``[visual, ID]`` and the head
  ``Conv1x1(ReLU(ConvGN3x3(.)))`` to 11 logits at stride 4.

The official model also builds an FPN decoder and a GroupNorm that its forward pass never calls; they are
kept here (``unused_decoder``, ``unused_norm``, never run) so that official checkpoints load strictly and
files we write load in the official code.

Test-time engine defaults are HQTrack's (``configs/models/internT_msdeaotl_v2.py``, ``msaot_engine_v2.py``):
long-term gap 50, short-term skip 4, long-term cap 6 frames with the oldest non-reference frame evicted.
Its trackers' preprocessing is also a property of the variant: the frame is resized as uint8 and small
frames are enlarged to a short edge of 480 (``input_resize``, ``min_short_edge``; inference/preprocess.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from trek_tracker.errors import UserError
from trek_tracker.modeling.base import LayerLayout, ModelConfig, VOSModel, embed_ids, init_id_bank, patch_id_bank
from trek_tracker.modeling.decoders import ConvGN, FPNHead
from trek_tracker.modeling.gpm import FrameEntry, GatedPropagationLayer, LayerMemory
from trek_tracker.modeling.layout import map_to_tokens, tokens_to_map
from trek_tracker.modeling.msdeaot import MultiScaleID
from trek_tracker.modeling.registry import register_family, register_variant


@dataclass(frozen=True)
class VMOSConfig(ModelConfig):
    """A VMOS variant: the common fields, the widths of the 8x and 4x stages, and its preprocessing."""

    long_term_gap: int = 50
    train_long_term_gap: int = 2
    short_term_skip: int = 4
    long_term_cap: int | None = 6
    num_layers: int = 3  # GPM layers at stride 16
    width8: int = 128  # d_model of the 8x GPM layer and its bridge
    width4: int = 64  # channels per stream of the 4x refinement
    head_hidden: int = 128
    freeze_at: int = 0  # HQTrack trains the whole InternImage
    input_resize: str = "uint8"  # resize the uint8 frame (HQTrack's trackers), not a float32 copy (DeAOT's)
    min_short_edge: int | None = 480  # frames with a shorter short edge are enlarged to it

    family: ClassVar[str] = "vmos"

    def __post_init__(self) -> None:
        if self.num_layers < 1:
            raise UserError(f"VMOS {self.name!r}: num_layers must be at least 1, got {self.num_layers}")
        for name in ("width8", "width4", "head_hidden"):
            value = getattr(self, name)
            if value < 8 or value % 8:
                raise UserError(f"VMOS {self.name!r}: {name} must be a positive multiple of 8, got {value}")
        if self.input_resize not in ("uint8", "float32"):
            raise UserError(f"VMOS {self.name!r}: input_resize must be 'uint8' or 'float32', "
                            f"got {self.input_resize!r}")


class ResBlockGN(nn.Module):
    """HQTrack's ``ResBlock`` (same in/out width): ``x + GN(conv3x3(ReLU(GN(conv3x3(ReLU(x))))))``."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(dim, dim, 3, padding=1)
        self.conv2 = nn.Conv2d(dim, dim, 3, padding=1)
        self.gn1 = nn.GroupNorm(8, dim)
        self.gn2 = nn.GroupNorm(8, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = self.gn1(self.conv1(F.relu(x)))
        return x + self.gn2(self.conv2(F.relu(r)))


class ResGN(nn.Module):
    """Two :class:`ResBlockGN` (HQTrack's ``ResGN``; note the ReLU *before* each block's first conv)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.res1 = ResBlockGN(dim)
        self.res2 = ResBlockGN(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.res2(self.res1(x))


class Bridge(nn.Module):
    """Coarser outputs of both streams -> this stride's inputs: collapse, resize, add the encoder skip,
    refine (HQTrack's ``s8_*`` / ``s4_*`` modules)."""

    def __init__(self, in_dim: int, out_dim: int, enc_dim: int) -> None:
        super().__init__()
        self.collapse_vis = ConvGN(in_dim, out_dim, 1)
        self.collapse_id = ConvGN(in_dim, out_dim, 1)
        self.refine_vis = ResGN(out_dim)
        self.refine_id = ResGN(out_dim)
        self.skip = nn.Conv2d(enc_dim, out_dim, 1)

    def forward(self, vis: torch.Tensor, ids: torch.Tensor, feat: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """vis, ids: (B, in_dim, h, w) maps; feat: the encoder map at the target stride."""
        size = feat.shape[-2:]
        skip = self.skip(feat)
        vis = F.interpolate(F.relu(self.collapse_vis(vis)), size=size, mode="bilinear", align_corners=True)
        ids = F.interpolate(F.relu(self.collapse_id(ids)), size=size, mode="bilinear", align_corners=True)
        return F.relu(self.refine_vis(skip + vis)), F.relu(self.refine_id(skip + ids))


class _Layers(nn.Module):
    """Holds the 16x GPM layers under ``gpm.layers`` (DeAOT's names)."""

    def __init__(self, layers: list[GatedPropagationLayer]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)


@register_family
class VMOS(VOSModel):
    """HQTrack's VMOS (``MSDeAOT_V2``). Official key map: docs/vmos.md#key-map."""

    family = "vmos"
    config_class = VMOSConfig
    official_key_map = (
        ("LSTT.layers.", "gpm.layers."),
        ("LSTT.layer_s8.", "gpm8."),
        ("LSTT.s8_cons_in.", "bridge8.collapse_vis."),
        ("LSTT.s8_cons_in_id.", "bridge8.collapse_id."),
        ("LSTT.s8_cons_out.", "bridge8.refine_vis."),
        ("LSTT.s8_cons_out_id.", "bridge8.refine_id."),
        ("LSTT.s8_proj.", "bridge8.skip."),
        ("LSTT.s4_cons_in.", "bridge4.collapse_vis."),
        ("LSTT.s4_cons_in_id.", "bridge4.collapse_id."),
        ("LSTT.s4_cons_out.", "bridge4.refine_vis."),
        ("LSTT.s4_cons_out_id.", "bridge4.refine_id."),
        ("LSTT.s4_proj.", "bridge4.skip."),
        ("LSTT.decoder_norms_s4.0.gn.", "out_norm."),
        ("LSTT.decoder_norms.0.gn.", "unused_norm."),
        ("decoder.", "unused_decoder."),
        ("patch_wise_id_bank_s8.", "id_bank8."),
        ("patch_wise_id_bank.", "id_bank."),
        ("id_norm_s8.", "id_norm8."),
        ("conv_output1.", "head_conv."),
        ("conv_output2.", "head_out."),
    )

    def __init__(self, config: VMOSConfig) -> None:
        super().__init__(config)
        c = config
        if not c.align_corners:
            raise UserError(f"VMOS {c.name!r} needs an encoder with 16k+1 inputs (align_corners), "
                            f"not {c.encoder!r}")
        dims = self.encoder_dims
        classes = c.max_objects + 1
        self.gpm = _Layers([
            GatedPropagationLayer(c.d_model, first=i == 0, expand=c.expand, max_dis=c.max_dis, droppath=c.droppath)
            for i in range(c.num_layers)
        ])
        self.gpm8 = GatedPropagationLayer(c.width8, first=False, expand=c.expand, max_dis=c.max_dis, droppath=0.0)
        self.bridge8 = Bridge(c.num_layers * c.d_model, c.width8, dims[1])
        self.bridge4 = Bridge(c.width8, c.width4, dims[0])
        self.out_norm = nn.GroupNorm(2, 2 * c.width4)
        # Built by the official model, never called by its forward pass (see the module docstring).
        self.unused_norm = nn.GroupNorm(2, 2 * c.d_model)
        self.unused_decoder = FPNHead(2 * c.d_model, classes, (dims[0], dims[1], dims[2]), hidden_dim=c.d_model)
        for p in (*self.unused_norm.parameters(), *self.unused_decoder.parameters()):
            p.requires_grad_(False)  # no gradient ever reaches them; keeps them out of optimisers and DDP
        self._add_id_bank()
        self.id_bank8 = patch_id_bank(classes, c.width8, 16, True)
        self.id_norm8 = nn.LayerNorm(c.width8)
        self.head_conv = ConvGN(2 * c.width4, c.head_hidden, 3)
        self.head_out = nn.Conv2d(c.head_hidden, classes, 1)
        # The official initialisation: xavier projector, orthogonal 16x ID bank (the 8x bank keeps
        # PyTorch's default, as in HQTrack).
        nn.init.xavier_uniform_(self.encoder_projector.weight)
        init_id_bank(self.id_bank)

    def _layers(self) -> list[GatedPropagationLayer]:
        return [*self.gpm.layers, self.gpm8]

    # ------------------------------------------------------------------ interface
    def memory_layout(self, feats: list[torch.Tensor]) -> list[LayerLayout]:
        """The 16x layers at the 16x grid, the 8x layer at the 8x grid; long-term memory at full resolution."""
        grid16, grid8 = tuple(feats[-1].shape[-2:]), tuple(feats[1].shape[-2:])
        return [LayerLayout(grid16)] * len(self.gpm.layers) + [LayerLayout(grid8)]

    def id_embedding(self, one_hot: torch.Tensor) -> MultiScaleID:
        """One-hot labels (B, 1 + max_objects, h, w) at input size -> 16x and 8x ID tokens.

        The 8x tokens are the second bank's 16x embedding nearest-resized to ``(ceil(h/8), ceil(w/8))``,
        which is the 8x grid for 16k+1 inputs.
        """
        emb16 = embed_ids(self.id_bank, self.id_norm, one_hot)
        emb = self.id_bank8(one_hot)
        emb = self.id_norm8(emb.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        h, w = one_hot.shape[-2:]
        emb8 = map_to_tokens(F.interpolate(emb, size=(math.ceil(h / 8), math.ceil(w / 8)), mode="nearest"))
        n16 = len(self.gpm.layers)
        return MultiScaleID([emb16, emb8], [0] * n16 + [1])

    def propagate(self, feats: list[torch.Tensor], memories: list[LayerMemory] | None,
                  id_emb: MultiScaleID | None = None) -> tuple[torch.Tensor, list[FrameEntry]]:
        """Match the current frame against memory (or itself, given ``id_emb``) at 16x and 8x and refine to 4x.

        Returns the normalised 4x ``[visual, ID]`` tokens (HW4, B, 2*width4) and one :class:`FrameEntry` per
        GPM layer (16x layers first, then the 8x layer).
        """
        f4, f8, x16 = feats[0], feats[1], feats[-1]
        size16 = (x16.shape[-2], x16.shape[-1])
        x, x_id = map_to_tokens(x16), None
        entries: list[FrameEntry] = []
        vis, ids = [], []
        for i, layer in enumerate(self.gpm.layers):
            x, x_id, entry = layer(x, x_id, None if memories is None else memories[i], size16,
                                   None if id_emb is None else id_emb.for_layer(i))
            entries.append(entry)
            vis.append(tokens_to_map(x, size16))
            ids.append(tokens_to_map(x_id, size16))
        v8, i8 = self.bridge8(torch.cat(vis, dim=1), torch.cat(ids, dim=1), f8)
        size8 = (v8.shape[-2], v8.shape[-1])
        li = len(self.gpm.layers)
        x, x_id, entry = self.gpm8(map_to_tokens(v8), map_to_tokens(i8), None if memories is None else memories[li],
                                   size8, None if id_emb is None else id_emb.for_layer(li))
        entries.append(entry)
        v4, i4 = self.bridge4(tokens_to_map(x, size8), tokens_to_map(x_id, size8), f4)
        out = self.out_norm(torch.cat([v4, i4], dim=1))
        return map_to_tokens(out), entries

    def decode(self, tokens: torch.Tensor, feats: list[torch.Tensor]) -> torch.Tensor:
        """Propagated 4x tokens -> logits (B, 1 + max_objects, H4, W4)."""
        x = tokens_to_map(tokens, tuple(feats[0].shape[-2:]))
        return self.head_out(F.relu(self.head_conv(x)))

    def fuse_id(self, layer: int, entry: FrameEntry, id_emb: MultiScaleID) -> torch.Tensor:
        """The ID value of ``entry`` (GPM ``layer`` of a propagated frame) once its label is known."""
        return self._layers()[layer].fuse_id(entry.id_in, id_emb.for_layer(layer))


for _config, _aliases in (
    # HQTrack's VMOS: InternImage-T, YouTube-VOS + DAVIS + VIPSeg (configs/models/internT_msdeaotl_v2.py).
    (VMOSConfig("vmos", "internimage_t"), ("internt_msdeaotl_v2",)),
    # A tiny untrained model for tests and smoke runs; never meaningful output.
    (VMOSConfig("test_vmos_tiny", "test_internimage_tiny", d_model=32, width8=16, width4=16, head_hidden=16,
                num_layers=2), ()),
):
    register_variant(_config, aliases=_aliases)
