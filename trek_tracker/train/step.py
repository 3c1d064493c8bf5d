"""The unrolled training step (docs/training.md#unrolled-step, official ``aot_engine.forward``) as an
``nn.Module``, so that DDP can wrap it and synchronise the gradients of everything it touches.

Reference frame -> memory (its own decoded logits give the auxiliary loss); then every later frame is
propagated against the memory, scored, and written to memory with either its ground truth (first part of
training) or the model's own arg-max prediction (afterwards, with every ID embedding detached, the
reference's included, as the official ``freeze_id``), which teaches the model to recover from its own errors.
The memory is the inference engine's own (:class:`~trek_tracker.inference.memory.Memory`), with the training
gap, skip 1 and no cap.

ID shuffle (official ``enable_id_shuffle``): each sample may carry a permutation of the ID channels that keeps
background at 0. Object ``o`` is then embedded with ID ``perm[o]`` and read from decoder channel ``perm[o]``, so
every ID embedding and every decoder output channel is trained, not only the first few in object order.
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


def identity_perm(batch: int, classes: int, device: torch.device | None = None) -> torch.Tensor:
    return torch.arange(classes, device=device).expand(batch, classes)


def shuffled_ids(labels: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    """Object ids (B, H, W) -> the ID channels they are embedded with, ``perm[b, id]``."""
    return torch.gather(perm, 1, labels.flatten(1).clamp(0, perm.shape[1] - 1)).view_as(labels)


def unshuffle_logits(logits: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    """Decoder channels (B, C, h, w) -> object order: object ``o`` reads channel ``perm[b, o]``."""
    index = perm.view(*perm.shape, 1, 1).expand(-1, -1, *logits.shape[-2:])
    return torch.gather(logits, 1, index)


class UnrolledStep(nn.Module):
    """Computes the clip loss of a batch for any registered DeAOT-family model."""

    def __init__(self, model: VOSModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor, labels: torch.Tensor, num_objects: torch.Tensor, *,
                hard_fraction: float = 1.0, aux_weight: float = 1.0, gt_memory: bool = True,
                long_term_gap: int = 9999, id_perm: torch.Tensor | None = None) -> StepOutput:
        """``images`` (B, T, 3, H, W), ``labels`` (B, T, H, W) ids 0..N at input size, ``num_objects`` (B,);
        ``id_perm`` (B, 1 + max_objects): each sample's ID permutation (None: identity)."""
        model = self.model
        b, t = images.shape[:2]
        classes = model.config.max_objects + 1
        align = model.align_corners
        if id_perm is None:
            id_perm = identity_perm(b, classes, labels.device)
        elif id_perm.shape != (b, classes) or bool((id_perm[:, 0] != 0).any()):
            raise ValueError(f"id_perm must be ({b}, {classes}) permutations keeping 0 first, "
                             f"got {tuple(id_perm.shape)}")

        def embed(ids: torch.Tensor):
            return model.id_embedding(one_hot(shuffled_ids(ids, id_perm), classes))

        def decode(tokens, feats_i) -> torch.Tensor:
            return unshuffle_logits(model.decode(tokens, feats_i), id_perm)

        feats_all = model.encode(images.flatten(0, 1))
        feats = [[f.unflatten(0, (b, t))[:, i] for f in feats_all] for i in range(t)]
        memory = Memory(model.memory_layout(feats[0]), MemorySchedule(gap=long_term_gap))

        # Once predictions feed the memory, every ID embedding is detached, the reference's too (official
        # ``assign_identity`` under ``freeze_id``): the ID bank and its norm get no gradient, so they neither
        # train nor count in the clipped gradient norm.
        with torch.set_grad_enabled(gt_memory and torch.is_grad_enabled()):
            ref_emb = embed(labels[:, 0])
        tokens, entries = model.propagate(feats[0], None, ref_emb)
        aux = frame_loss(decode(tokens, feats[0]), labels[:, 0], num_objects, hard_fraction,
                         align_corners=align)
        memory.remember(0, entries, [e.id_value for e in entries], reference=True)

        losses = []
        for i in range(1, t):
            tokens, entries = model.propagate(feats[i], memory.attend())
            logits = decode(tokens, feats[i])
            losses.append(frame_loss(logits, labels[:, i], num_objects, hard_fraction, align_corners=align))
            if i == t - 1:
                break
            if gt_memory:
                emb = embed(labels[:, i])
            else:  # the model's own prediction; no gradient through the labels or their embedding
                with torch.no_grad():
                    up = F.interpolate(logits.float(), size=labels.shape[-2:], mode="bilinear", align_corners=align)
                    ids = torch.arange(classes, device=up.device).view(1, -1, 1, 1)
                    up = up.masked_fill(ids > num_objects.view(-1, 1, 1, 1), -1e4)
                    emb = embed(up.argmax(1))
            memory.remember(i, entries, [model.fuse_id(j, e, emb) for j, e in enumerate(entries)])
        frame_losses = torch.stack(losses)
        loss = aux_weight * aux + frame_losses.mean()
        return StepOutput(loss=loss, aux_loss=aux.detach(), frame_losses=frame_losses.detach())
