"""The unrolled training step (spec deaot.md §4, official ``aot_engine.forward``) as an ``nn.Module``,
so that DDP can wrap it and synchronise the gradients of everything it touches.

Reference frame -> memory (its own decoded logits give the auxiliary loss); then every later frame is
propagated against the reference (long-term) and the previous frame (short-term), scored, and written to
memory with either its ground truth (first part of training) or the model's own arg-max prediction
(afterwards, with the ID embedding detached), which teaches the model to recover from its own errors.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from trek_tracker.train.losses import frame_loss
from trek_tracker.vos.gpm import FrameEntry, LayerMemory


@dataclass
class StepOutput:
    loss: torch.Tensor
    aux_loss: torch.Tensor
    frame_losses: torch.Tensor  # (T - 1,) detached


def one_hot(labels: torch.Tensor, classes: int) -> torch.Tensor:
    """(B, H, W) ids -> (B, classes, H, W) float."""
    return F.one_hot(labels.clamp(0, classes - 1), classes).permute(0, 3, 1, 2).float()


def _to_map(tokens: torch.Tensor, h: int, w: int) -> torch.Tensor:
    n, b, c = tokens.shape
    return tokens.view(h, w, b, c).permute(2, 3, 0, 1)


class UnrolledStep(nn.Module):
    """Computes the clip loss of a batch; ``model`` is any DeAOT-family model (encode / id_embedding /
    propagate / decode / fuse_id)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor, labels: torch.Tensor, num_objects: torch.Tensor, *,
                hard_fraction: float = 1.0, aux_weight: float = 1.0, gt_memory: bool = True,
                long_term_gap: int = 9999) -> StepOutput:
        """``images`` (B, T, 3, H, W), ``labels`` (B, T, H, W) ids 0..N at input size, ``num_objects`` (B,)."""
        model = self.model
        b, t = images.shape[:2]
        classes = model.config.max_objects + 1
        feats_all = model.encode(images.flatten(0, 1))
        feats = [[f.unflatten(0, (b, t))[:, i] for f in feats_all] for i in range(t)]
        h16, w16 = feats_all[-1].shape[-2:]

        id_emb = model.id_embedding(one_hot(labels[:, 0], classes))
        tokens, entries = model.propagate(feats[0], None, id_emb)
        aux = frame_loss(model.decode(tokens, feats[0]), labels[:, 0], num_objects, hard_fraction)
        keys = [e.key for e in entries]
        values = [torch.cat([e.value, e.id_value], dim=-1) for e in entries]
        long_keys, long_values = keys, values
        short = list(zip(keys, values, strict=True))
        last_long = 0

        losses = []
        for i in range(1, t):
            memories = [LayerMemory(lk, lv, _to_map(sk, h16, w16), _to_map(sv, h16, w16))
                        for lk, lv, (sk, sv) in zip(long_keys, long_values, short, strict=True)]
            tokens, entries = model.propagate(feats[i], memories)
            logits = model.decode(tokens, feats[i])
            losses.append(frame_loss(logits, labels[:, i], num_objects, hard_fraction))
            if i == t - 1:
                break
            if gt_memory:
                emb = model.id_embedding(one_hot(labels[:, i], classes))
            else:
                with torch.no_grad():
                    up = F.interpolate(logits.float(), size=labels.shape[-2:], mode="bilinear",
                                       align_corners=True)
                    ids = torch.arange(classes, device=up.device).view(1, -1, 1, 1)
                    up = up.masked_fill(ids > num_objects.view(-1, 1, 1, 1), -1e4)
                    emb = model.id_embedding(one_hot(up.argmax(1), classes)).detach()
            keys, values = self._entries(entries, emb)
            short = list(zip(keys, values, strict=True))
            if i - last_long >= long_term_gap:
                long_keys = [torch.cat([k, lk]) for k, lk in zip(keys, long_keys, strict=True)]
                long_values = [torch.cat([v, lv]) for v, lv in zip(values, long_values, strict=True)]
                last_long = i
        frame_losses = torch.stack(losses)
        loss = aux_weight * aux + frame_losses.mean()
        return StepOutput(loss=loss, aux_loss=aux.detach(), frame_losses=frame_losses.detach())

    def _entries(self, entries: list[FrameEntry], id_emb: torch.Tensor
                 ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        keys = [e.key for e in entries]
        values = [torch.cat([e.value, self.model.fuse_id(j, e, id_emb)], dim=-1) for j, e in enumerate(entries)]
        return keys, values
