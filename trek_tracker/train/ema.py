"""Exponential moving average of the weights, the copy that is evaluated and released."""

from __future__ import annotations

import copy

import torch
from torch import nn


def default_decay(total_steps: int) -> float:
    """Official ``1 - 1 / (0.1 * steps)`` (0.9999 for 100k steps)."""
    return 1.0 - 1.0 / max(1.0, 0.1 * total_steps)


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
        current = model.state_dict()
        for name, avg in self.module.state_dict().items():
            src = current[name].detach()
            if avg.dtype.is_floating_point:
                avg.mul_(d).add_(src.to(avg.dtype), alpha=1.0 - d)
            else:
                avg.copy_(src)

    def state_dict(self) -> dict:
        return {"decay": self.decay, "updates": self.updates, "module": self.module.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.decay = float(state["decay"])
        self.updates = int(state["updates"])
        self.module.load_state_dict(state["module"])
