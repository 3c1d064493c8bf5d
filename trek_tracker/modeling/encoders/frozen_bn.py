"""BatchNorm with fixed statistics and affine, as the DeAOT encoders use.

The official checkpoints store all four tensors as *buffers* (so ``state_dict`` holds ``weight``, ``bias``,
``running_mean``, ``running_var`` and no ``num_batches_tracked``), and nothing of it is ever trained: video
batches are too small for batch statistics.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class FrozenBatchNorm2d(nn.Module):
    """``y = (x - running_mean) / sqrt(running_var + eps) * weight + bias`` with frozen tensors.

    The defaults make it the identity (``running_var = 1 - eps``), as the official constructor does.
    """

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features) - eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.requires_grad:
            # The fused op would also build gradients for its (frozen) affine: fold it into one scale
            # and shift instead, which costs less memory in training.
            scale = self.weight * (self.running_var + self.eps).rsqrt()
            shift = self.bias - self.running_mean * scale
            return x * scale.view(1, -1, 1, 1).to(x.dtype) + shift.view(1, -1, 1, 1).to(x.dtype)
        return F.batch_norm(
            x, self.running_mean, self.running_var, self.weight, self.bias, training=False, eps=self.eps
        )

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}"
