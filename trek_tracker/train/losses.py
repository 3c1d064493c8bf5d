"""Training losses of DeAOT (docs/training.md#losses): bootstrapped cross-entropy and soft Jaccard.

Both read logits that are already restricted to each sample's objects (unused ids masked) and upsampled to
the label size; they are computed in float32 even under AMP, because the hard-pixel selection and the
Jaccard ratios lose too much in half precision.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def hard_pixel_fraction(step: int, total_steps: int, *, final: float = 0.15, ratio: float = 0.5) -> float:
    """Fraction of pixels the bootstrapped CE keeps: 1 at step 0, linearly down to ``final`` at
    ``ratio * total_steps`` (official ``TRAIN_TOP_K_PERCENT_PIXELS`` / ``TRAIN_HARD_MINING_RATIO``).

    Written as the official ``CrossEntropyLoss`` computes it (including its ``1e-5`` guard), so that
    :func:`bootstrapped_ce` keeps exactly the official number of pixels at every step."""
    if final >= 1.0:  # no hard-pixel mining: the plain mean (the official ``top_k_percent_pixels=None``)
        return 1.0
    progress = min(1.0, step / float(ratio * total_steps + 1e-5))
    return progress * final + (1.0 - progress)


def mask_unused_ids(logits: torch.Tensor, num_objects: torch.Tensor) -> torch.Tensor:
    """Logits (B, C, H, W) with channels above each sample's object count pushed to a large negative."""
    ids = torch.arange(logits.shape[1], device=logits.device).view(1, -1, 1, 1)
    unused = ids > num_objects.to(logits.device).view(-1, 1, 1, 1)
    return logits.masked_fill(unused, -1e4)


def bootstrapped_ce(logits: torch.Tensor, labels: torch.Tensor, fraction: float) -> torch.Tensor:
    """Mean cross-entropy of the hardest ``fraction`` of pixels of each sample, averaged over samples.

    ``logits`` (B, C, H, W) float, ``labels`` (B, H, W) int64 ids in ``0..C-1``.
    """
    ce = F.cross_entropy(logits.float(), labels, reduction="none").flatten(1)
    if fraction >= 1.0:
        return ce.mean()
    k = max(1, int(fraction * float(ce.shape[1])))  # truncated, as the official top-k count
    return ce.topk(k, dim=1, sorted=False).values.mean()


def soft_jaccard(logits: torch.Tensor, labels: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """1 - soft IoU of softmax probabilities and one-hot labels, averaged over the classes present in each
    sample's labels (background included when present), then over samples. ``1 - inter / (union + eps)``,
    the official ``tversky_loss`` with alpha = beta = 1 and its epsilon."""
    probs = torch.softmax(logits.float(), dim=1).flatten(2)
    one_hot = F.one_hot(labels, logits.shape[1]).permute(0, 3, 1, 2).flatten(2).to(probs.dtype)
    inter = (probs * one_hot).sum(-1)
    union = probs.sum(-1) + one_hot.sum(-1) - inter
    loss = 1.0 - inter / (union + eps)
    present = (one_hot.sum(-1) > 0).to(loss.dtype)
    per_sample = (loss * present).sum(1) / present.sum(1).clamp_min(1.0)
    return per_sample.mean()


def frame_loss(logits: torch.Tensor, labels: torch.Tensor, num_objects: torch.Tensor,
               fraction: float, *, align_corners: bool = True) -> torch.Tensor:
    """``0.5 * bootstrapped CE + 0.5 * soft Jaccard`` of low-resolution logits (B, C, h, w) against labels
    (B, H, W); the logits are upsampled as the model's own resizing does (``align_corners``)."""
    logits = F.interpolate(logits.float(), size=labels.shape[-2:], mode="bilinear", align_corners=align_corners)
    logits = mask_unused_ids(logits, num_objects)
    return 0.5 * bootstrapped_ce(logits, labels, fraction) + 0.5 * soft_jaccard(logits, labels)
