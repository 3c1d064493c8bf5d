"""The DeAOT family's shared base: the common config fields, the encoder / projector / ID-bank scaffold,
and the interface that the inference engine and the training step call.

A family (DeAOT, MSDeAOT, ...) is a subclass of :class:`VOSModel` with its own config subclass, registered
in :mod:`trek_tracker.modeling.registry`. Per frame the callers compose five operations:

* :meth:`VOSModel.encode` -- image -> ``[f4, f8, f16, x16]`` (``x16`` projected to ``d_model``);
* :meth:`VOSModel.id_embedding` -- one-hot labels at input size -> ID tokens (opaque to the caller);
* :meth:`VOSModel.propagate` -- match the frame against memory (or itself, given an ID embedding) and
  return the decoder's tokens plus one :class:`~trek_tracker.modeling.gpm.FrameEntry` per GPM layer;
* :meth:`VOSModel.decode` -- tokens -> logits at :attr:`VOSModel.output_stride`;
* :meth:`VOSModel.fuse_id` -- a layer's ID value once the frame's label is known.

What a layer's memory looks like (its token grid and the subsampling of its long-term entries) comes from
:meth:`VOSModel.memory_layout`; the memory itself is built in :mod:`trek_tracker.inference.memory`, for
inference and training alike. Models hold no state across frames.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from trek_tracker.errors import CheckpointError
from trek_tracker.modeling.encoders import build_encoder, encoder_spec
from trek_tracker.modeling.gpm import FrameEntry, LayerMemory
from trek_tracker.modeling.layout import map_to_tokens
from trek_tracker.sections import dataclass_from

COMPILE_BACKEND = "inductor"  # torch.compile's backend for --compile (tests use "eager": tracing only)


@dataclass(frozen=True)
class ModelConfig:
    """Fields every DeAOT-family variant has. The memory fields are the variant's test-time defaults,
    which :class:`~trek_tracker.inference.memory.MemoryConfig` can override: the official gap and skip, and
    our bound on the long-term memory (docs/inference.md#bounded-memory)."""

    name: str
    encoder: str
    long_term_gap: int = 9999  # frames between long-term memory entries at test time
    train_long_term_gap: int = 9999
    short_term_skip: int = 1  # the short-term memory is the frame this many steps back
    # Long-term frames kept at test time: DMAOT's 10 (the VOTS 2023 winner on long videos), so a video of
    # any length runs in constant memory and time; None is the official, unbounded DeAOT memory.
    long_term_cap: int | None = 10
    eviction: str = "oldest"  # which frame leaves a full long-term memory: oldest | least-similar
    # The official test preprocessing: the frame is resized as float32 (DeAOT's evaluator) or as uint8
    # (HQTrack's trackers), after smaller frames are enlarged to ``min_short_edge`` (docs/inference.md).
    input_resize: str = "float32"
    min_short_edge: int | None = None
    d_model: int = 256
    max_objects: int = 10
    expand: int = 2
    max_dis: int = 7
    droppath: float = 0.1
    freeze_at: int = 2  # encoder stages frozen in training (stem + stage 1)

    family: ClassVar[str] = ""

    @property
    def align_corners(self) -> bool:
        """Official ``MODEL_ALIGN_CORNERS``: True for MobileNet/ResNet, False for Swin."""
        return encoder_spec(self.encoder).align_corners

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields plus ``family``, as stored in our checkpoints and ``run.json``."""
        return {"family": self.family, **_plain(asdict(self))}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ModelConfig:
        """Inverse of :meth:`to_dict`; an unknown or missing field is a :class:`CheckpointError`."""
        return dataclass_from(
            cls, {k: v for k, v in values.items() if k != "family"},
            unknown=lambda names, _: CheckpointError(
                f"checkpoint config has fields this version does not know: {', '.join(names)}"),
            convert=lambda _, value: _tupled(value),
            invalid=lambda err: CheckpointError(f"checkpoint config is incomplete: {err}"))


def _plain(value: Any) -> Any:
    """Tuples (of tuples) as lists, so that a config reads the same from JSON as from the dataclass."""
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _tupled(value: Any) -> Any:
    return tuple(_tupled(v) for v in value) if isinstance(value, list) else value


@dataclass(frozen=True)
class LayerLayout:
    """How one GPM layer's memory is laid out: its token grid and the ``[::d, ::d]`` subsampling of its
    long-term entries (1 = full resolution; MS-AOT's memory saving for fine layers)."""

    grid: tuple[int, int]
    long_term_dilation: int = 1

    @property
    def long_term_grid(self) -> tuple[int, int]:
        h, w = self.grid
        d = self.long_term_dilation
        return (h + d - 1) // d, (w + d - 1) // d


def patch_id_bank(classes: int, dim: int, stride: int, align_corners: bool) -> nn.Conv2d:
    """A patch-wise ID bank at ``stride``: kernel s+1 / padding s/2 for 16k+1 inputs, kernel s for 16k
    (Swin) (docs/deaot.md#id-bank). Initialise it with :func:`init_id_bank`."""
    if align_corners:
        return nn.Conv2d(classes, dim, kernel_size=stride + 1, stride=stride, padding=stride // 2)
    return nn.Conv2d(classes, dim, kernel_size=stride, stride=stride, padding=0)


def init_id_bank(bank: nn.Conv2d) -> None:
    """The official orthogonal initialisation, gain 1 / kernel area (a separate step so that every family
    keeps its official order of random draws)."""
    nn.init.orthogonal_(bank.weight.view(bank.out_channels, -1), gain=bank.kernel_size[0] ** -2)


def embed_ids(bank: nn.Conv2d, norm: nn.LayerNorm, one_hot: torch.Tensor) -> torch.Tensor:
    """One-hot labels (B, classes, H, W) -> normalised ID tokens (HW_s, B, dim) on the bank's grid."""
    emb = bank(one_hot)
    return map_to_tokens(norm(emb.permute(0, 2, 3, 1)).permute(0, 3, 1, 2))


class VOSModel(nn.Module):
    """Base of every DeAOT-family network: ``encoder``, ``encoder_projector``, ``id_bank``, ``id_norm``.

    Class attributes a family sets: ``family`` (its registry name), ``config_class``,
    ``official_key_map`` (official key prefix -> ours, for :mod:`trek_tracker.modeling.checkpoints`), and,
    for a family that can start from another family's checkpoint, ``parent_family`` with
    ``new_prefixes`` (its own parameters such a file lacks) and ``unused_prefixes`` (parameters of such a
    file it has no use for).
    """

    family: ClassVar[str] = ""
    config_class: ClassVar[type[ModelConfig]] = ModelConfig
    official_key_map: ClassVar[tuple[tuple[str, str], ...]] = ()
    parent_family: ClassVar[str | None] = None
    new_prefixes: ClassVar[tuple[str, ...]] = ()
    unused_prefixes: ClassVar[tuple[str, ...]] = ()

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        if not isinstance(config, self.config_class):
            raise TypeError(f"{type(self).__name__} needs a {self.config_class.__name__}, got "
                            f"{type(config).__name__}")
        self.config = config
        self.encoder_dims = encoder_spec(config.encoder).dims
        self.encoder = build_encoder(config.encoder, freeze_at=config.freeze_at)
        self.encoder_projector = nn.Conv2d(self.encoder_dims[-1], config.d_model, kernel_size=1)

    @classmethod
    def our_key(cls, key: str) -> str:
        """An official checkpoint key -> ours (a DataParallel ``module.`` prefix is dropped)."""
        key = key.removeprefix("module.")
        for official, ours in cls.official_key_map:
            if key.startswith(official):
                return ours + key[len(official):]
        return key

    @classmethod
    def official_key(cls, key: str) -> str:
        """One of our keys -> the official checkpoint's."""
        for official, ours in cls.official_key_map:
            if key.startswith(ours):
                return official + key[len(ours):]
        return key

    def _add_id_bank(self) -> None:
        """The 16x ID bank and its norm, not yet initialised (a separate step so that each family keeps the
        official order of modules and random draws)."""
        c = self.config
        self.id_bank = patch_id_bank(c.max_objects + 1, c.d_model, 16, c.align_corners)
        self.id_norm = nn.LayerNorm(c.d_model)

    @property
    def align_corners(self) -> bool:
        return self.config.align_corners

    @property
    def output_stride(self) -> int:
        """Stride of :meth:`decode`'s logits."""
        return 4

    def compile_inference(self, *, backend: str | None = None, mode: str | None = None,
                          fullgraph: bool = False) -> bool:
        """``torch.compile`` the per-frame entry points (:meth:`encode`, :meth:`propagate`, :meth:`decode`)
        of this instance, in place; the weights and their names are untouched. Returns False when already
        compiled. Shapes are fixed within a video, so each input size compiles once; the long-term memory's
        length grows until its cap and is then made dynamic by PyTorch (docs/inference.md#compilation).
        """
        if getattr(self, "_compiled", False):
            return False
        for name in ("encode", "propagate", "decode"):
            setattr(self, name, torch.compile(getattr(self, name), backend=backend or COMPILE_BACKEND, mode=mode,
                                              fullgraph=fullgraph))
        self._compiled = True
        return True

    def store_for_autocast(self, dtype: torch.dtype) -> int:
        """Store every convolution's and linear layer's weight and bias in ``dtype`` (bf16 or fp16), in place;
        returns how many tensors changed. Under autocast of that dtype these layers run in it anyway, and
        autocast would otherwise cast their float32 weights again on every call (about 150 copies per frame
        for R50-DeAOT-L): the products are bit for bit the same, with fewer kernels and half the weight
        memory. Everything autocast keeps in float32 (norms, soft-max) keeps its float32 parameters.
        Inference only: the model must then run under that autocast (docs/inference.md#precision)."""
        if dtype not in (torch.bfloat16, torch.float16):
            raise ValueError(f"store_for_autocast takes bf16 or fp16, got {dtype}")
        changed = 0
        for module in self.modules():
            if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)):
                for param in (module.weight, module.bias):
                    if param is not None and param.dtype != dtype:
                        param.data = param.data.to(dtype)
                        changed += 1
        return changed

    def encode(self, image: torch.Tensor) -> list[torch.Tensor]:
        """Normalised image (B, 3, H, W) -> ``[f4, f8, f16, x16]`` with ``x16`` projected to d_model."""
        feats = list(self.encoder(image))
        feats[-1] = self.encoder_projector(feats[-1])
        return feats

    def id_embedding(self, one_hot: torch.Tensor) -> Any:
        """One-hot labels (B, 1 + max_objects, H, W) at input size -> ID tokens (HW16, B, d_model)."""
        return embed_ids(self.id_bank, self.id_norm, one_hot)

    def propagate(self, feats: list[torch.Tensor], memories: list[LayerMemory] | None,
                  id_emb: Any = None) -> tuple[torch.Tensor, list[FrameEntry]]:
        raise NotImplementedError

    def decode(self, tokens: torch.Tensor, feats: list[torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def fuse_id(self, layer: int, entry: FrameEntry, id_emb: Any) -> torch.Tensor:
        raise NotImplementedError

    def memory_layout(self, feats: list[torch.Tensor]) -> list[LayerLayout]:
        """One :class:`LayerLayout` per GPM layer, in memory-list order, for features of this size."""
        raise NotImplementedError
