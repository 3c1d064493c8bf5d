"""Optimiser parameter groups and the learning-rate schedule of the official recipe (docs/training.md#optimiser).

The schedule is a pure function of the step, so resuming needs only the step number; the optimiser's
groups are re-priced at every step by :func:`apply_lr`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

# Parameters never decayed, besides every 1-D tensor (biases, LayerNorm/GroupNorm affine). ``head_out`` is
# MSDeAOT's counterpart of DeAOT's output convolution ``conv_out``.
NO_DECAY_NAMES = ("absolute_pos_embed", "relative_position_bias_table", "relative_emb_v", "conv_out", "head_out")


@dataclass
class OptimConfig:
    """AdamW with warm-up and polynomial decay; ``encoder_lr_ratio`` scales the encoder's share of the lr
    above ``min_lr``."""

    lr: float = 2e-4
    min_lr: float = 1e-5
    weight_decay: float = 0.07
    warmup_ratio: float = 0.05
    power: float = 0.9
    encoder_lr_ratio: float = 0.1
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    grad_clip: float = 5.0


def learning_rate(step: int, total_steps: int, cfg: OptimConfig) -> float:
    """Base lr at ``step``: linear from ``min_lr`` over the warm-up, then ``(1 - t)^power`` decay to
    ``min_lr`` at the last step."""
    warmup = cfg.warmup_ratio * total_steps  # a float, as the official warm_up_steps
    span = cfg.lr - cfg.min_lr
    if step < warmup:
        return cfg.min_lr + span * step / warmup
    t = (step - warmup) / max(1.0, total_steps - warmup)
    return cfg.min_lr + span * max(0.0, 1.0 - t) ** cfg.power


def encoder_learning_rate(lr: float, cfg: OptimConfig) -> float:
    return (lr - cfg.min_lr) * cfg.encoder_lr_ratio + cfg.min_lr


def _exempt(name: str, param: torch.Tensor) -> bool:
    return param.ndim <= 1 or any(n in name for n in NO_DECAY_NAMES)


def param_groups(model: nn.Module, cfg: OptimConfig) -> list[dict]:
    """Trainable parameters split by (encoder / ID banks / rest) x (decayed / exempt).

    Frozen tensors (frozen BN buffers, frozen encoder stages) are not optimised. Each group carries a
    ``role`` so the step can re-price it: the encoder gets the reduced lr, and the ID bank is switched off
    (lr and weight decay 0) once memories come from the model's own predictions, as the official trainer does.
    """
    buckets: dict[tuple[str, bool], list[torch.Tensor]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        role = "encoder" if name.startswith("encoder.") else "id_bank" if name.startswith("id_bank") else "rest"
        buckets.setdefault((role, _exempt(name, p)), []).append(p)
    groups = []
    for (role, exempt), params in sorted(buckets.items()):
        wd = 0.0 if exempt else cfg.weight_decay
        groups.append({"params": params, "role": role, "base_weight_decay": wd, "weight_decay": wd,
                       "lr": cfg.min_lr})
    return groups


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.AdamW:
    return torch.optim.AdamW(param_groups(model, cfg), lr=cfg.min_lr, betas=tuple(cfg.betas), eps=cfg.eps)


def apply_lr(optimizer: torch.optim.Optimizer, step: int, total_steps: int, cfg: OptimConfig, *,
             freeze_id_bank: bool = False) -> float:
    """Set every group's lr (and the ID bank's weight decay) for ``step``; returns the base lr."""
    lr = learning_rate(step, total_steps, cfg)
    for group in optimizer.param_groups:
        role = group.get("role", "rest")
        if role == "encoder":
            group["lr"] = encoder_learning_rate(lr, cfg)
        elif role == "id_bank" and freeze_id_bank:
            group["lr"], group["weight_decay"] = 0.0, 0.0
            continue
        else:
            group["lr"] = lr
        group["weight_decay"] = group.get("base_weight_decay", group["weight_decay"])
    return lr
