"""The unrolled training step (docs/training.md#unrolled-step, official ``aot_engine.forward``) as an
``nn.Module``, so that DDP can wrap it and synchronise the gradients of everything it touches.

Reference frame -> memory (its own decoded logits give the auxiliary loss); then every later frame is
propagated against the memory, scored, and written to memory with either its ground truth (first part of
training) or the model's own arg-max prediction (afterwards, with the ID embedding detached), which teaches
the model to recover from its own errors. The memory is the inference engine's own
(:class:`~trek_tracker.inference.memory.Memory`), with the training gap, skip 1 and no cap.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from trek_tracker.inference.memory import Memory, MemorySchedule
from trek_tracker.modeling.base import VOSModel
from trek_tracker.train.losses import frame_loss


@dataclass
class StepOutput:
    loss: torch.Tensor
    aux_loss: torch.Tensor
    frame_losses: torch.Tensor  # (T - 1,) detached


def one_hot(labels: torch.Tensor, classes: int) -> torch.Tensor:
    """(B, H, W) ids -> (B, classes, H, W) float."""
    return F.one_hot(labels.clamp(0, classes - 1), classes).permute(0, 3, 1, 2).float()


class UnrolledStep(nn.Module):
    """Computes the clip loss of a batch for any registered DeAOT-family model."""

    def __init__(self, model: VOSModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor, labels: torch.Tensor, num_objects: torch.Tensor, *,
                hard_fraction: float = 1.0, aux_weight: float = 1.0, gt_memory: bool = True,
                long_term_gap: int = 9999) -> StepOutput:
        """``images`` (B, T, 3, H, W), ``labels`` (B, T, H, W) ids 0..N at input size, ``num_objects`` (B,)."""
        model = self.model
        b, t = images.shape[:2]
        classes = model.config.max_objects + 1
        align = model.align_corners
        feats_all = model.encode(images.flatten(0, 1))
        feats = [[f.unflatten(0, (b, t))[:, i] for f in feats_all] for i in range(t)]
        memory = Memory(model.memory_layout(feats[0]), MemorySchedule(gap=long_term_gap))

        id_emb = model.id_embedding(one_hot(labels[:, 0], classes))
        tokens, entries = model.propagate(feats[0], None, id_emb)
        aux = frame_loss(model.decode(tokens, feats[0]), labels[:, 0], num_objects, hard_fraction,
                         align_corners=align)
        memory.remember(0, entries, [e.id_value for e in entries], reference=True)

        losses = []
        for i in range(1, t):
            tokens, entries = model.propagate(feats[i], memory.attend())
            logits = model.decode(tokens, feats[i])
            losses.append(frame_loss(logits, labels[:, i], num_objects, hard_fraction, align_corners=align))
            if i == t - 1:
                break
            if gt_memory:
                emb = model.id_embedding(one_hot(labels[:, i], classes))
            else:  # the model's own prediction; no gradient through the labels or their embedding
                with torch.no_grad():
                    up = F.interpolate(logits.float(), size=labels.shape[-2:], mode="bilinear", align_corners=align)
                    ids = torch.arange(classes, device=up.device).view(1, -1, 1, 1)
                    up = up.masked_fill(ids > num_objects.view(-1, 1, 1, 1), -1e4)
                    emb = model.id_embedding(one_hot(up.argmax(1), classes))
            memory.remember(i, entries, [model.fuse_id(j, e, emb) for j, e in enumerate(entries)])
        frame_losses = torch.stack(losses)
        loss = aux_weight * aux + frame_losses.mean()
        return StepOutput(loss=loss, aux_loss=aux.detach(), frame_losses=frame_losses.detach())
