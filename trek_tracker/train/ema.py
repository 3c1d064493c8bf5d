"""Exponential moving average of the weights, the copy that is evaluated and released.

As the official ``utils/ema.py`` (``get_param_buffer_for_ema``), only what training changes is averaged: the
trainable parameters, and the running statistics of BatchNorm layers that update them. Everything else (frozen
encoder stages, frozen-BN statistics, index buffers) is copied: averaging a constant is not exact in floating
point, and after 100k updates at decay 0.9999 it moves almost every element of a frozen tensor by up to a few
parts in 1e4, so the released weights would no longer hold the encoder's real frozen values.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


def default_decay(total_steps: int) -> float:
    """Official ``1 - 1 / (0.1 * steps)`` (0.9999 for 100k steps)."""
    return 1.0 - 1.0 / max(1.0, 0.1 * total_steps)


def averaged_names(model: nn.Module) -> set[str]:
    """State entries the EMA averages: trainable parameters, and the running mean and variance of BatchNorm
    layers that track them (the official ``update_buffer`` set, used when BN is not frozen)."""
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    for prefix, module in model.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.track_running_stats:
            names.update(f"{prefix}.{b}" if prefix else b for b in ("running_mean", "running_var"))
    return names


class EMA:
    """Keeps ``model``'s averaged copy; the decay is warmed up as ``min(decay, (1 + n) / (10 + n))`` so
    early updates are not dominated by the random initialisation."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.updates = 0
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        averaged = averaged_names(model)
        current = model.state_dict()
        for name, avg in self.module.state_dict().items():
            src = current[name].detach()
            if name in averaged and avg.dtype.is_floating_point:
                avg.mul_(d).add_(src.to(avg.dtype), alpha=1.0 - d)
            else:
                avg.copy_(src)

    def state_dict(self) -> dict:
        return {"decay": self.decay, "updates": self.updates, "module": self.module.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.decay = float(state["decay"])
        self.updates = int(state["updates"])
        self.module.load_state_dict(state["module"])
