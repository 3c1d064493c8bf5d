"""ResNet backbones of the two Alpha-Refine networks, with torchvision parameter names.

The official checkpoints store torchvision-named ResNets (``conv1``, ``bn1``, ``layer1..4``); only the
forward differs: SEcm taps ``conv1`` *before* max-pooling, and ARnet_seg_mask renames the stages
(``layer1`` = after max-pool, ``layer2..5`` = torchvision ``layer1..4``). We build the torchvision
blocks without the unused classifier (declared unused in the key map) and write the two forwards here.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn
from torchvision.models import resnet


def _resnet(kind: str, with_layer4: bool) -> nn.Module:
    builder = {"resnet34": resnet.resnet34, "resnet50": resnet.resnet50}[kind]
    net = builder(weights=None)
    del net.fc
    del net.avgpool
    if not with_layer4:
        del net.layer4
    return net


class ResNet34Taps(nn.Module):
    """ResNet-34 returning ``conv1`` (pre max-pool), ``layer1``, ``layer2``, ``layer3`` (SEcm's taps)."""

    def __init__(self) -> None:
        super().__init__()
        net = _resnet("resnet34", with_layer4=False)
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3 = net.layer1, net.layer2, net.layer3

    def forward(self, x: torch.Tensor, layers: Iterable[str]) -> dict[str, torch.Tensor]:
        layers = list(layers)  # read twice: an iterator would be used up by the first read
        wanted = set(layers)
        out: dict[str, torch.Tensor] = {}
        x = self.relu(self.bn1(self.conv1(x)))
        out["conv1"] = x
        for name in ("layer1", "layer2", "layer3"):
            if wanted.issubset(out):
                break
            x = getattr(self, name)(x if name != "layer1" else self.maxpool(x))
            out[name] = x
        return {k: out[k] for k in layers}


class ResNet50SegTaps(nn.Module):
    """ResNet-50 with ARnet_seg_mask's stage names: ``layer1`` (max-pool, 64 ch, /4) ... ``layer5`` (/32)."""

    def __init__(self) -> None:
        super().__init__()
        net = _resnet("resnet50", with_layer4=True)
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4

    def forward(self, x: torch.Tensor, layers: Iterable[str]) -> dict[str, torch.Tensor]:
        layers = list(layers)
        wanted = set(layers)
        out: dict[str, torch.Tensor] = {}
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        out["layer1"] = x
        for ours, theirs in (
            ("layer2", "layer1"),
            ("layer3", "layer2"),
            ("layer4", "layer3"),
            ("layer5", "layer4"),
        ):
            if wanted.issubset(out):
                break
            x = getattr(self, theirs)(x)
            out[ours] = x
        return {k: out[k] for k in layers}
