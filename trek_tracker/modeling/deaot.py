"""DeAOT (aot-benchmark ``networks/models/deaot.py``): the base scaffold, one gated propagation stack at
stride 16 and the FPN decoder. Variants and their official checkpoints: docs/deaot.md#variants.

The model is a pure ``nn.Module``; all state that lives across frames (memories, object groups) is in
:mod:`trek_tracker.inference`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from trek_tracker.modeling.base import LayerLayout, ModelConfig, VOSModel, init_id_bank
from trek_tracker.modeling.decoders import FPNHead
from trek_tracker.modeling.gpm import FrameEntry, GatedPropagationStack, LayerMemory
from trek_tracker.modeling.layout import map_to_tokens, tokens_to_map
from trek_tracker.modeling.registry import register_family, register_variant


@dataclass(frozen=True)
class DeAOTConfig(ModelConfig):
    """A DeAOT variant (official ``configs/models/*.py``): the common fields plus the GPM depth."""

    num_layers: int = 3

    family: ClassVar[str] = "deaot"


@register_family
class DeAOT(VOSModel):
    """DeAOT: encoder, projector, ID bank, gated propagation stack and FPN decoder.

    Attribute names follow our own layout; :attr:`official_key_map` maps the official keys onto them
    (every key not listed is the same in both).
    """

    family = "deaot"
    config_class = DeAOTConfig
    official_key_map = (
        ("LSTT.decoder_norms.0.gn.", "gpm.out_norm."),
        ("LSTT.layers.", "gpm.layers."),
        ("patch_wise_id_bank.", "id_bank."),
    )

    def __init__(self, config: DeAOTConfig) -> None:
        super().__init__(config)
        c = config
        dims = self.encoder_dims
        self.gpm = GatedPropagationStack(c.num_layers, c.d_model, expand=c.expand, max_dis=c.max_dis,
                                         droppath=c.droppath)
        self.decoder = FPNHead(2 * c.d_model, c.max_objects + 1, (dims[0], dims[1], dims[2]),
                               hidden_dim=c.d_model, align_corners=c.align_corners)
        self._add_id_bank()
        nn.init.xavier_uniform_(self.encoder_projector.weight)
        init_id_bank(self.id_bank)

    def propagate(self, feats: list[torch.Tensor], memories: list[LayerMemory] | None,
                  id_emb: torch.Tensor | None = None) -> tuple[torch.Tensor, list[FrameEntry]]:
        """Match the current frame against memory (or itself, given ``id_emb``).

        Returns the normalised ``[visual, ID]`` tokens (HW16, B, 2*d_model) that the decoder reads and the
        frame's per-layer memory ingredients.
        """
        x16 = feats[-1]
        size_2d = (x16.shape[-2], x16.shape[-1])
        outputs, entries = self.gpm(map_to_tokens(x16), memories, size_2d, id_emb)
        return outputs[-1], entries

    def decode(self, tokens: torch.Tensor, feats: list[torch.Tensor]) -> torch.Tensor:
        """Propagated tokens -> logits (B, 1 + max_objects, H4, W4) at stride 4."""
        x = tokens_to_map(tokens, tuple(feats[-1].shape[-2:]))
        return self.decoder(x, feats[0], feats[1], feats[2])

    def fuse_id(self, layer: int, entry: FrameEntry, id_emb: torch.Tensor) -> torch.Tensor:
        """The ID value of ``entry`` (one layer of a propagated frame) once its label is known."""
        return self.gpm.layers[layer].fuse_id(entry.id_in, id_emb)

    def memory_layout(self, feats: list[torch.Tensor]) -> list[LayerLayout]:
        """Every layer's memory at the 16x grid, long-term at full resolution."""
        return [LayerLayout(tuple(feats[-1].shape[-2:]))] * len(self.gpm.layers)


for _config in (
    DeAOTConfig("deaott", "mobilenetv2", num_layers=1),
    DeAOTConfig("deaots", "mobilenetv2", num_layers=2),
    DeAOTConfig("deaotb", "mobilenetv2", num_layers=3),
    DeAOTConfig("deaotl", "mobilenetv2", num_layers=3, long_term_gap=5, train_long_term_gap=2),
    DeAOTConfig("r50_deaotl", "resnet50", num_layers=3, long_term_gap=5, train_long_term_gap=2),
    DeAOTConfig("swinb_deaotl", "swin_base", num_layers=3, long_term_gap=5, train_long_term_gap=2),
    # A tiny untrained model for tests and smoke runs; never meaningful output.
    DeAOTConfig("test_deaot_tiny", "test_tiny", num_layers=2, long_term_gap=5, d_model=32),
):
    register_variant(_config)
