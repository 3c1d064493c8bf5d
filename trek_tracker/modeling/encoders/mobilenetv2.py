"""MobileNetV2 at output stride 16, the image encoder of DeAOT-T/S/B/L.

The module tree mirrors torchvision's MobileNetV2 (``features.<i>...``) so the official checkpoints load by
key; the 32x stages (``features[14:]``) are dilated instead of strided. The four outputs are the ends of
``features[0:4]`` (4x, 24 ch), ``[4:7]`` (8x, 32 ch), ``[7:14]`` (16x, 96 ch) and ``[14:]`` (16x, 1280 ch).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from trek_tracker.modeling.encoders.common import NormFactory, freeze_module
from trek_tracker.modeling.encoders.frozen_bn import FrozenBatchNorm2d

# (expansion t, channels c, repeats n, stride s) of the standard ImageNet MobileNetV2.
_SETTINGS: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)
# Where the four output stages end (exclusive indices into ``features``).
_STAGE_ENDS = (4, 7, 14, None)


def _divisible(v: float, divisor: int = 8) -> int:
    """Round a scaled channel count to a multiple of ``divisor`` without losing more than 10 %."""
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


class ConvNormAct(nn.Sequential):
    """conv (no bias) -> norm -> ReLU6; children ``0``/``1``/``2`` give the official key names."""

    def __init__(
        self,
        cin: int,
        cout: int,
        kernel: int = 3,
        stride: int = 1,
        groups: int = 1,
        dilation: int = 1,
        norm: NormFactory = FrozenBatchNorm2d,
    ) -> None:
        padding = (kernel - 1) // 2 * dilation
        super().__init__(
            nn.Conv2d(cin, cout, kernel, stride, padding, dilation=dilation, groups=groups, bias=False),
            norm(cout),
            nn.ReLU6(inplace=True),
        )


class InvertedResidual(nn.Module):
    """Expand (1x1) -> depth-wise 3x3 -> linear project (1x1), with a skip when shapes allow."""

    def __init__(
        self, cin: int, cout: int, stride: int, dilation: int, expand: int, norm: NormFactory
    ) -> None:
        super().__init__()
        hidden = int(round(cin * expand))
        self.use_skip = stride == 1 and cin == cout
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(ConvNormAct(cin, hidden, kernel=1, norm=norm))
        layers += [
            ConvNormAct(hidden, hidden, stride=stride, dilation=dilation, groups=hidden, norm=norm),
            nn.Conv2d(hidden, cout, 1, 1, 0, bias=False),
            norm(cout),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_skip else self.conv(x)


class MobileNetV2(nn.Module):
    """MobileNetV2 returning ``[f4, f8, f16, f16b]``; ``dims`` gives their channel counts.

    ``width_mult``/``last_channel`` exist for small test models; the DeAOT configs use the defaults.
    """

    def __init__(
        self,
        output_stride: int = 16,
        width_mult: float = 1.0,
        last_channel: int = 1280,
        norm: NormFactory = FrozenBatchNorm2d,
        freeze_at: int = -1,
    ) -> None:
        super().__init__()
        cin = _divisible(32 * width_mult)
        last = _divisible(last_channel * max(1.0, width_mult))
        features: list[nn.Module] = [ConvNormAct(3, cin, stride=2, norm=norm)]
        stride_now, rate = 2, 1
        for t, c, n, s in _SETTINGS:
            # Once the target stride is reached, strides become dilations. As in the official code, the
            # first block of a dilated stage keeps the previous rate and the later blocks use the new one.
            if stride_now == output_stride:
                stride, first_dilation = 1, rate
                rate *= s
            else:
                stride, first_dilation = s, 1
                stride_now *= s
            cout = _divisible(c * width_mult)
            for i in range(n):
                if i == 0:
                    features.append(InvertedResidual(cin, cout, stride, first_dilation, t, norm))
                else:
                    features.append(InvertedResidual(cin, cout, 1, rate, t, norm))
                cin = cout
        features.append(ConvNormAct(cin, last, kernel=1, norm=norm))
        self.features = nn.Sequential(*features)

        starts = (0,) + _STAGE_ENDS[:-1]
        self._stage_slices = [slice(a, b) for a, b in zip(starts, _STAGE_ENDS, strict=True)]
        self.dims: tuple[int, int, int, int] = tuple(  # type: ignore[assignment]
            _out_channels(self.features[sl][-1]) for sl in self._stage_slices
        )
        self._init_weights()
        self.freeze(freeze_at)

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")

    def stages(self) -> list[nn.Sequential]:
        return [self.features[sl] for sl in self._stage_slices]

    def freeze(self, freeze_at: int) -> None:
        """``freeze_at >= 1`` freezes the stem conv, ``>= k`` the first ``k - 1`` output stages."""
        if freeze_at >= 1:
            freeze_module(self.features[0])
        for idx, stage in enumerate(self.stages(), start=2):
            if freeze_at >= idx:
                freeze_module(stage)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs = []
        for stage in self.stages():
            x = stage(x)
            outs.append(x)
        return outs


def _out_channels(block: nn.Module) -> int:
    convs = [m for m in block.modules() if isinstance(m, nn.Conv2d)]
    return convs[-1].out_channels


def mobilenetv2(*, freeze_at: int = -1, norm: Callable[[int], nn.Module] = FrozenBatchNorm2d) -> MobileNetV2:
    """The DeAOT-T/S/B/L encoder: dims ``(24, 32, 96, 1280)``."""
    return MobileNetV2(output_stride=16, norm=norm, freeze_at=freeze_at)
