"""Small pieces shared by the encoders."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

NormFactory = Callable[[int], nn.Module]
"""Builds the 2-D normalisation for a channel count (``FrozenBatchNorm2d`` for every released model)."""


def freeze_module(module: nn.Module) -> None:
    """Stop gradients for every parameter of ``module`` (frozen-BN tensors are buffers already)."""
    for p in module.parameters():
        p.requires_grad_(False)
