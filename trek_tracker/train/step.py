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
    """(HW, B, C) tokens -> (B, C, H, W) map."""
    _, b, c = tokens.shape
    return tokens.view(h, w, b, c).permute(2, 3, 0, 1)


def _to_tokens(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) map -> (HW, B, C) tokens."""
    b, c, h, w = x.shape
    return x.reshape(b, c, h * w).permute(2, 0, 1)


class UnrolledStep(nn.Module):
    """Computes the clip loss of a batch; ``model`` is any DeAOT-family model (encode / id_embedding /
    propagate / decode / fuse_id, and layer_grids / long_term_dilation for per-layer memory layout)."""

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
        align = model.align_corners
        feats_all = model.encode(images.flatten(0, 1))
        feats = [[f.unflatten(0, (b, t))[:, i] for f in feats_all] for i in range(t)]
        grids = model.layer_grids(feats[0])

        id_emb = model.id_embedding(one_hot(labels[:, 0], classes))
        tokens, entries = model.propagate(feats[0], None, id_emb)
        aux = frame_loss(model.decode(tokens, feats[0]), labels[:, 0], num_objects, hard_fraction,
                         align_corners=align)
        long_mem, short = self._memory(entries, [e.id_value for e in entries], grids)
        last_long = 0

        losses = []
        for i in range(1, t):
            memories = [LayerMemory(lk, lv, sk, sv) for (lk, lv), (sk, sv) in zip(long_mem, short, strict=True)]
            tokens, entries = model.propagate(feats[i], memories)
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
            id_values = [model.fuse_id(j, e, emb) for j, e in enumerate(entries)]
            new_long, short = self._memory(entries, id_values, grids)
            if i - last_long >= long_term_gap:  # newest first, as the engine
                long_mem = [(torch.cat([nk, lk]), torch.cat([nv, lv]))
                            for (nk, nv), (lk, lv) in zip(new_long, long_mem, strict=True)]
                last_long = i
        frame_losses = torch.stack(losses)
        loss = aux_weight * aux + frame_losses.mean()
        return StepOutput(loss=loss, aux_loss=aux.detach(), frame_losses=frame_losses.detach())

    def _memory(self, entries: list[FrameEntry], id_values: list[torch.Tensor], grids: list[tuple[int, int]]
                ) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], list[tuple[torch.Tensor, torch.Tensor]]]:
        """A frame's per-layer long-term tokens (subsampled where the model dilates long-term memory) and
        short-term maps, built as the inference engine builds them."""
        long_mem, short = [], []
        for j, (e, idv, (h, w)) in enumerate(zip(entries, id_values, grids, strict=True)):
            key, value = e.key, torch.cat([e.value, idv], dim=-1)
            key_map, value_map = _to_map(key, h, w), _to_map(value, h, w)
            short.append((key_map, value_map))
            d = self.model.long_term_dilation(j)
            if d > 1:
                key, value = _to_tokens(key_map[..., ::d, ::d]), _to_tokens(value_map[..., ::d, ::d])
            long_mem.append((key, value))
        return long_mem, short
