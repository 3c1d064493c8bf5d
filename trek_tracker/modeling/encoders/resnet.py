"""ResNet-50 without its last stage, the image encoder of R50-DeAOT-L.

torchvision layout and key names (``conv1``, ``bn1``, ``layerK.i.*``, v1.5: stride on the 3x3 conv),
frozen BN, and no ``layer4``/``fc``: following STM, the 16x ``layer3`` output is the deepest feature,
returned twice.
"""

from __future__ import annotations

import torch
from torch import nn

from trek_tracker.modeling.encoders.common import NormFactory, freeze_module
from trek_tracker.modeling.encoders.frozen_bn import FrozenBatchNorm2d


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(
        self,
        cin: int,
        planes: int,
        stride: int = 1,
        dilation: int = 1,
        downsample: nn.Module | None = None,
        norm: NormFactory = FrozenBatchNorm2d,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = norm(planes)
        self.conv2 = nn.Conv2d(
            planes, planes, 3, stride=stride, padding=dilation, dilation=dilation, bias=False
        )
        self.bn2 = norm(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = norm(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        out += identity
        return self.relu(out)


class ResNetEncoder(nn.Module):
    """Stem + ``layer1..3`` of a bottleneck ResNet, returning ``[f4, f8, f16, f16]``."""

    def __init__(
        self,
        blocks: tuple[int, int, int] = (3, 4, 6),
        norm: NormFactory = FrozenBatchNorm2d,
        freeze_at: int = -1,
    ) -> None:
        super().__init__()
        self._norm = norm
        self._cin = 64
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = norm(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(64, blocks[0], stride=1)
        self.layer2 = self._make_layer(128, blocks[1], stride=2)
        self.layer3 = self._make_layer(256, blocks[2], stride=2)
        c = Bottleneck.expansion
        self.dims: tuple[int, int, int, int] = (64 * c, 128 * c, 256 * c, 256 * c)
        self._init_weights()
        self.freeze(freeze_at)

    def _make_layer(self, planes: int, n: int, stride: int) -> nn.Sequential:
        cout = planes * Bottleneck.expansion
        downsample = None
        if stride != 1 or self._cin != cout:
            downsample = nn.Sequential(
                nn.Conv2d(self._cin, cout, 1, stride=stride, bias=False), self._norm(cout)
            )
        layers = [Bottleneck(self._cin, planes, stride, 1, downsample, self._norm)]
        self._cin = cout
        layers += [Bottleneck(cout, planes, norm=self._norm) for _ in range(1, n)]
        return nn.Sequential(*layers)

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def freeze(self, freeze_at: int) -> None:
        """``freeze_at >= 1`` freezes the stem, ``>= k`` also ``layer1 .. layer(k-1)``."""
        if freeze_at >= 1:
            freeze_module(self.conv1)
            freeze_module(self.bn1)
        for idx, stage in enumerate((self.layer1, self.layer2, self.layer3), start=2):
            if freeze_at >= idx:
                freeze_module(stage)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        f4 = self.layer1(x)
        f8 = self.layer2(f4)
        f16 = self.layer3(f8)
        return [f4, f8, f16, f16]


def resnet50(*, freeze_at: int = -1, norm: NormFactory = FrozenBatchNorm2d) -> ResNetEncoder:
    """The R50-DeAOT-L encoder: dims ``(256, 512, 1024, 1024)``."""
    return ResNetEncoder((3, 4, 6), norm=norm, freeze_at=freeze_at)
