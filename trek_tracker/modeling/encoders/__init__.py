"""Image encoders of the DeAOT family and a registry to build them by name.

Every encoder is an ``nn.Module`` whose ``forward(img)`` returns ``[f4, f8, f16, f16b]`` (strides 4, 8,
16, 16) and whose ``dims`` attribute gives their channel counts. Its ``state_dict`` keys are the official
ones without the ``encoder.`` prefix, so a model holding it as ``self.encoder`` loads official checkpoints
as they are.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from trek_tracker.errors import UserError
from trek_tracker.modeling.encoders.frozen_bn import FrozenBatchNorm2d
from trek_tracker.modeling.encoders.internimage import InternImageEncoder, internimage_t, tiny_internimage
from trek_tracker.modeling.encoders.mobilenetv2 import MobileNetV2, mobilenetv2
from trek_tracker.modeling.encoders.resnet import ResNetEncoder, resnet50
from trek_tracker.modeling.encoders.swin import SwinEncoder, relative_position_index, swin_base


@dataclass(frozen=True)
class EncoderSpec:
    """What a model needs to know about an encoder before building it."""

    name: str
    dims: tuple[int, int, int, int]
    align_corners: bool  # the official MODEL_ALIGN_CORNERS that goes with this encoder
    build: Callable[..., nn.Module]


def _test_tiny(*, freeze_at: int = -1) -> MobileNetV2:
    """A ~130k-parameter MobileNetV2 (width 0.25, 64-ch head) for fast CLI and engine tests; untrained."""
    return MobileNetV2(output_stride=16, width_mult=0.25, last_channel=64, freeze_at=freeze_at)


ENCODERS: dict[str, EncoderSpec] = {
    "mobilenetv2": EncoderSpec("mobilenetv2", (24, 32, 96, 1280), True, mobilenetv2),
    "resnet50": EncoderSpec("resnet50", (256, 512, 1024, 1024), True, resnet50),
    "swin_base": EncoderSpec("swin_base", (128, 256, 512, 512), False, swin_base),
    "test_tiny": EncoderSpec("test_tiny", (8, 8, 24, 64), True, _test_tiny),
    # HQTrack's InternImage-T (VMOS): DCNv3 levels, the last one kept at stride 16 (docs/vmos.md#encoder).
    "internimage_t": EncoderSpec("internimage_t", (64, 128, 256, 256), True, internimage_t),
    "test_internimage_tiny": EncoderSpec("test_internimage_tiny", (8, 16, 32, 32), True, tiny_internimage),
}


def encoder_spec(name: str) -> EncoderSpec:
    """The registry entry for ``name``; a ``UserError`` listing the known names otherwise."""
    try:
        return ENCODERS[name]
    except KeyError:
        raise UserError(f"unknown encoder {name!r}; choose one of: {', '.join(ENCODERS)}") from None


def encoder_dims(name: str) -> tuple[int, int, int, int]:
    """Channel counts ``(C4, C8, C16, C16b)`` of the encoder's four outputs (``MODEL_ENCODER_DIM``)."""
    return encoder_spec(name).dims


def build_encoder(name: str, *, freeze_at: int = -1, **kw: object) -> nn.Module:
    """Build encoder ``name`` with random weights.

    ``freeze_at`` follows ``TRAIN_ENCODER_FREEZE_AT`` (the official training uses 2: stem and first stage
    frozen; -1 or 0 freezes nothing). Extra keywords go to the builder (``drop_path_rate`` for Swin,
    ``norm`` for the CNNs).
    """
    return encoder_spec(name).build(freeze_at=freeze_at, **kw)


__all__ = [
    "ENCODERS",
    "EncoderSpec",
    "FrozenBatchNorm2d",
    "InternImageEncoder",
    "MobileNetV2",
    "ResNetEncoder",
    "SwinEncoder",
    "build_encoder",
    "encoder_dims",
    "encoder_spec",
    "relative_position_index",
]
