"""Data-dependent statistics for the frozen BatchNorm layers of an encoder that was never trained.

The DeAOT encoders use BatchNorm with frozen statistics, which the official training always takes from an
ImageNet-trained backbone. Built from scratch (no ``model.init``, e.g. the tiny test model), those
statistics are the identity: activations then shrink layer after layer (the tiny MobileNet's stride-16 map
comes out with a standard deviation of about 1e-3), the projector's bias dominates, and every token of a
frame is the same vector after the first LayerNorm (cosine similarity 1.000). Attention over identical
keys is uniform, so the reference's ID embedding is averaged over the whole frame and no object location
reaches the decoder: the model can only learn the class prior (all background) until the slowly trained
encoder happens to develop spatial contrast, which is what made the learning check depend on the seed.

:func:`calibrate_frozen_bn` sets each frozen BatchNorm's statistics to the per-channel mean and variance of
its input on a few training clips, in one forward pass, layer by layer, which is what a trained BatchNorm
would hold, so every layer starts normalised as a pretrained backbone's does.
"""

from __future__ import annotations

import torch
from torch import nn

from trek_tracker.modeling.encoders.frozen_bn import FrozenBatchNorm2d


@torch.no_grad()
def calibrate_frozen_bn(model: nn.Module, images: torch.Tensor) -> int:
    """Set the statistics of every :class:`FrozenBatchNorm2d` under ``model.encoder`` from ``images``
    (N, 3, H, W), normalised as the model expects. Returns the number of layers calibrated."""
    layers = [m for m in model.encoder.modules() if isinstance(m, FrozenBatchNorm2d)]

    def set_stats(module: FrozenBatchNorm2d, args: tuple) -> None:
        x = args[0].float()
        module.running_mean.copy_(x.mean(dim=(0, 2, 3)))
        module.running_var.copy_(x.var(dim=(0, 2, 3), unbiased=False).clamp_min(module.eps) - module.eps)

    hooks = [m.register_forward_pre_hook(set_stats) for m in layers]
    was_training = model.training
    try:
        model.eval()
        model.encode(images)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return len(layers)
