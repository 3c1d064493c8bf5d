"""DeAOT assembled from its parts, and the registry of named variants.

The model is a pure ``nn.Module`` with four operations the engine composes per frame: :meth:`DeAOT.encode`,
:meth:`DeAOT.id_embedding`, :meth:`DeAOT.propagate` and :meth:`DeAOT.decode`. All state that lives across
frames (memories, object groups) is in :mod:`trek_tracker.vos.engine`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace

import torch
from torch import nn

from trek_tracker.errors import CheckpointError, UserError
from trek_tracker.vos.attention import map_to_seq
from trek_tracker.vos.decoders import FPNHead
from trek_tracker.vos.encoders import build_encoder, encoder_spec
from trek_tracker.vos.gpm import FrameEntry, GatedPropagationStack, LayerMemory
from trek_tracker.vos.msdeaot import MSDeAOT, MSDeAOTConfig


@dataclass(frozen=True)
class DeAOTConfig:
    """Architecture and memory schedule of a DeAOT variant (official ``configs/models/*.py``)."""

    name: str
    encoder: str
    num_layers: int
    long_term_gap: int = 9999  # frames between long-term memory entries at test time
    train_long_term_gap: int = 9999
    short_term_skip: int = 1
    d_model: int = 256
    max_objects: int = 10
    expand: int = 2
    max_dis: int = 7
    droppath: float = 0.1
    freeze_at: int = 2  # encoder stages frozen in training (stem + stage 1)

    @property
    def align_corners(self) -> bool:
        """Official ``MODEL_ALIGN_CORNERS``: True for MobileNet/ResNet, False for Swin."""
        return encoder_spec(self.encoder).align_corners

    def to_dict(self) -> dict:
        return asdict(self)


VARIANTS: dict[str, DeAOTConfig] = {
    "deaott": DeAOTConfig("deaott", "mobilenetv2", 1),
    "deaots": DeAOTConfig("deaots", "mobilenetv2", 2),
    "deaotb": DeAOTConfig("deaotb", "mobilenetv2", 3),
    "deaotl": DeAOTConfig("deaotl", "mobilenetv2", 3, long_term_gap=5, train_long_term_gap=2),
    "r50_deaotl": DeAOTConfig("r50_deaotl", "resnet50", 3, long_term_gap=5, train_long_term_gap=2),
    "swinb_deaotl": DeAOTConfig("swinb_deaotl", "swin_base", 3, long_term_gap=5, train_long_term_gap=2),
    # A tiny untrained model for tests and smoke runs; never meaningful output.
    "test_deaot_tiny": DeAOTConfig("test_deaot_tiny", "test_tiny", 2, long_term_gap=5, d_model=32),
}


# MSDeAOT variants (spec §5.4.1): the reports' stages (16x: 2 layers, 16x conv-only skip, 8x: 1 layer).
# No official weights exist; start them from the DeAOT-L checkpoint of the same encoder
# (``checkpoints.init_msdeaot_from_deaot``).
MSDEAOT_VARIANTS: dict[str, MSDeAOTConfig] = {
    "r50_msdeaot": MSDeAOTConfig("r50_msdeaot", "resnet50"),
    "swinb_msdeaot": MSDeAOTConfig("swinb_msdeaot", "swin_base"),
    # Reading R1 without the conv-only 16x stage (spec §5.4.1 profile ``msdeaot_2stage``).
    "r50_msdeaot_2stage": MSDeAOTConfig("r50_msdeaot_2stage", "resnet50", stages=((16, 2, 256), (8, 1, 256))),
    "test_msdeaot_tiny": MSDeAOTConfig("test_msdeaot_tiny", "test_tiny", d_model=32, head_hidden=16,
                                       stages=((16, 2, 32), (16, 0, 32), (8, 1, 32))),
}

ModelConfig = DeAOTConfig | MSDeAOTConfig


def model_names() -> list[str]:
    """Every registered model name (DeAOT, then MSDeAOT variants)."""
    return [*VARIANTS, *MSDEAOT_VARIANTS]


def model_config(name: str, **overrides) -> ModelConfig:
    """The registered config for ``name`` (with optional field overrides)."""
    base = VARIANTS.get(name) or MSDEAOT_VARIANTS.get(name)
    if base is None:
        raise UserError(f"unknown model {name!r}; choose one of: {', '.join(model_names())}")
    return replace(base, **overrides) if overrides else base


class DeAOT(nn.Module):
    """DeAOT: encoder, projector, ID bank, gated propagation stack and FPN decoder.

    Attribute names follow our own layout; ``checkpoints.py`` maps the official keys onto them.
    """

    def __init__(self, config: DeAOTConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        dims = encoder_spec(c.encoder).dims
        self.encoder = build_encoder(c.encoder, freeze_at=c.freeze_at)
        self.encoder_projector = nn.Conv2d(dims[-1], c.d_model, kernel_size=1)
        self.gpm = GatedPropagationStack(c.num_layers, c.d_model, expand=c.expand, max_dis=c.max_dis,
                                         droppath=c.droppath)
        self.decoder = FPNHead(2 * c.d_model, c.max_objects + 1, (dims[0], dims[1], dims[2]),
                               hidden_dim=c.d_model, align_corners=c.align_corners)
        # One-hot labels at input resolution -> one token per 16x16 patch.
        if c.align_corners:
            self.id_bank = nn.Conv2d(c.max_objects + 1, c.d_model, kernel_size=17, stride=16, padding=8)
        else:
            self.id_bank = nn.Conv2d(c.max_objects + 1, c.d_model, kernel_size=16, stride=16, padding=0)
        self.id_norm = nn.LayerNorm(c.d_model)
        nn.init.xavier_uniform_(self.encoder_projector.weight)
        gain = 17**-2 if c.align_corners else 16**-2
        nn.init.orthogonal_(self.id_bank.weight.view(c.d_model, -1), gain=gain)

    @property
    def align_corners(self) -> bool:
        return self.config.align_corners

    def encode(self, image: torch.Tensor) -> list[torch.Tensor]:
        """Normalised image (B, 3, H, W) -> ``[f4, f8, f16, x16]`` with ``x16`` projected to d_model."""
        feats = list(self.encoder(image))
        feats[-1] = self.encoder_projector(feats[-1])
        return feats

    def id_embedding(self, one_hot: torch.Tensor) -> torch.Tensor:
        """One-hot labels (B, 1 + max_objects, H, W) at input size -> ID tokens (HW16, B, d_model)."""
        emb = self.id_bank(one_hot)
        emb = self.id_norm(emb.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return map_to_seq(emb)

    def propagate(self, feats: list[torch.Tensor], memories: list[LayerMemory] | None,
                  id_emb: torch.Tensor | None = None) -> tuple[torch.Tensor, list[FrameEntry]]:
        """Match the current frame against memory (or itself, given ``id_emb``).

        Returns the normalised ``[visual, ID]`` tokens (HW16, B, 2*d_model) that the decoder reads and the
        frame's per-layer memory ingredients.
        """
        x16 = feats[-1]
        size_2d = (x16.shape[-2], x16.shape[-1])
        outputs, entries = self.gpm(map_to_seq(x16), memories, size_2d, id_emb)
        return outputs[-1], entries

    def decode(self, tokens: torch.Tensor, feats: list[torch.Tensor]) -> torch.Tensor:
        """Propagated tokens -> logits (B, 1 + max_objects, H4, W4) at stride 4."""
        b, _, h, w = feats[-1].shape
        x = tokens.view(h, w, b, -1).permute(2, 3, 0, 1)
        return self.decoder(x, feats[0], feats[1], feats[2])

    def fuse_id(self, layer: int, entry: FrameEntry, id_emb: torch.Tensor) -> torch.Tensor:
        """The ID value of ``entry`` (one layer of a propagated frame) once its label is known."""
        return self.gpm.layers[layer].fuse_id(entry.id_in, id_emb)

    def layer_grids(self, feats: list[torch.Tensor]) -> list[tuple[int, int]]:
        """The token grid of each GPM layer's memory: all at 16x for DeAOT."""
        return [tuple(feats[-1].shape[-2:])] * len(self.gpm.layers)

    def long_term_dilation(self, layer: int) -> int:
        """DeAOT keeps long-term memory at full resolution."""
        return 1


VOSModel = DeAOT | MSDeAOT


def build_model(name: str, **overrides) -> VOSModel:
    """A DeAOT or MSDeAOT variant by registry name, with random weights (load weights with
    ``checkpoints.py``)."""
    config = model_config(name, **overrides)
    return MSDeAOT(config) if isinstance(config, MSDeAOTConfig) else DeAOT(config)


def build_model_from_config(config: dict) -> VOSModel:
    """Rebuild a model from the config stored in one of our checkpoints (``DeAOTConfig``/``MSDeAOTConfig``
    as a dict). Unknown fields are an error rather than silently dropped."""
    d = dict(config)
    is_ms = d.get("arch") == "msdeaot" or "stages" in d
    cls = MSDeAOTConfig if is_ms else DeAOTConfig
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise CheckpointError(f"checkpoint config has fields this version does not know: {', '.join(unknown)}")
    try:
        cfg = MSDeAOTConfig.from_dict(d) if is_ms else DeAOTConfig(**d)
    except TypeError as err:
        raise CheckpointError(f"checkpoint config is incomplete: {err}") from None
    return MSDeAOT(cfg) if is_ms else DeAOT(cfg)

