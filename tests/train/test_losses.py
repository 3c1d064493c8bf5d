"""Losses and schedules of the training recipe, against hand computations."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from trek_tracker.train.losses import (
    bootstrapped_ce,
    frame_loss,
    hard_pixel_fraction,
    mask_unused_ids,
    soft_jaccard,
)


def test_hard_pixel_fraction_ramp():
    assert hard_pixel_fraction(0, 100_000) == 1.0
    assert hard_pixel_fraction(25_000, 100_000) == pytest.approx(1 - 0.85 / 2)
    assert hard_pixel_fraction(50_000, 100_000) == pytest.approx(0.15)
    assert hard_pixel_fraction(90_000, 100_000) == pytest.approx(0.15)
    assert all(hard_pixel_fraction(s, 1000, final=1.0) == 1.0 for s in range(1001))  # plain CE throughout


def test_hard_pixel_fraction_without_a_ramp():
    """``hard_mining_ratio = 0`` (allowed by the config): the official ``1e-5`` guard keeps it finite, so step 0
    is the plain mean and every later step keeps the final fraction."""
    assert hard_pixel_fraction(0, 1000, final=0.15, ratio=0.0) == 1.0
    assert hard_pixel_fraction(1, 1000, final=0.15, ratio=0.0) == pytest.approx(0.15)
    assert hard_pixel_fraction(999, 1000, final=0.15, ratio=0.0) == pytest.approx(0.15)


def test_bootstrapped_ce_keeps_the_hardest_pixels_per_sample():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 4, 5)
    labels = torch.randint(0, 3, (2, 4, 5))
    ce = F.cross_entropy(logits, labels, reduction="none").flatten(1)
    assert bootstrapped_ce(logits, labels, 1.0) == pytest.approx(float(ce.mean()))
    top = torch.sort(ce, dim=1, descending=True).values[:, :5]  # 25 % of 20 pixels
    assert bootstrapped_ce(logits, labels, 0.25) == pytest.approx(float(top.mean()), rel=1e-6)
    assert bootstrapped_ce(logits, labels, 0.25) > bootstrapped_ce(logits, labels, 1.0)


def test_bootstrapped_ce_keeps_at_least_one_pixel():
    """Fewer than one pixel's worth (fraction x HW < 1) still keeps the single hardest pixel of each sample."""
    torch.manual_seed(2)
    logits = torch.randn(2, 3, 2, 3)
    labels = torch.randint(0, 3, (2, 2, 3))
    ce = F.cross_entropy(logits, labels, reduction="none").flatten(1)
    hardest = float(ce.max(dim=1).values.mean())
    assert bootstrapped_ce(logits, labels, 0.1) == pytest.approx(hardest, rel=1e-6)  # int(0.6) = 0 -> 1
    assert bootstrapped_ce(logits, labels, 2 / 6) == pytest.approx(float(ce.topk(2, 1).values.mean()), rel=1e-6)


def test_soft_jaccard_of_a_background_only_sample_is_its_background_term():
    """Only the classes present count: a sample of background alone averages over that one class."""
    logits = torch.tensor([[[[math.log(3.0), 0.0]], [[0.0, 0.0]]]])  # p0 = [0.75, 0.5]
    labels = torch.zeros(1, 1, 2, dtype=torch.int64)
    p0 = torch.tensor([0.75, 0.5])
    j0 = 1 - p0.sum() / (2 + 1e-6)  # inter = sum p0, union = sum p0 + 2 - inter
    assert soft_jaccard(logits, labels) == pytest.approx(float(j0), rel=1e-6)


def test_soft_jaccard_by_hand():
    # One sample, two classes, two pixels; class 1 on pixel 0 only.
    logits = torch.tensor([[[[0.0, 0.0]], [[math.log(3.0), 0.0]]]])  # softmax: p1 = [0.75, 0.5]
    labels = torch.tensor([[[1, 0]]])
    p1 = torch.tensor([0.75, 0.5])
    j1 = 1 - 0.75 / (p1.sum() + 1 - 0.75 + 1e-6)  # the official tversky_loss epsilon, in the denominator
    p0 = 1 - p1
    j0 = 1 - 0.5 / (p0.sum() + 1 - 0.5 + 1e-6)
    assert soft_jaccard(logits, labels) == pytest.approx(float((j0 + j1) / 2), rel=1e-6)


def test_soft_jaccard_ignores_absent_classes_and_is_zero_when_perfect():
    labels = torch.tensor([[[0, 1], [1, 0]]])
    perfect = F.one_hot(labels, 4).permute(0, 3, 1, 2).float() * 50
    assert soft_jaccard(perfect, labels) == pytest.approx(0.0, abs=1e-6)
    # Classes 2 and 3 never appear: their (huge) errors must not count.
    wrong = perfect.clone()
    wrong[:, 3] = 49.0
    assert soft_jaccard(wrong, labels) < 0.6


def test_mask_unused_ids_per_sample():
    logits = torch.zeros(2, 4, 1, 1)
    out = mask_unused_ids(logits, torch.tensor([1, 3]))
    assert out[0, :2].eq(0).all() and out[0, 2:].lt(-1e3).all()
    assert out[1].eq(0).all()


def test_frame_loss_upsamples_and_combines():
    torch.manual_seed(1)
    logits = torch.randn(1, 11, 3, 3)
    labels = torch.randint(0, 3, (1, 9, 9))
    up = mask_unused_ids(F.interpolate(logits, size=(9, 9), mode="bilinear", align_corners=True),
                         torch.tensor([2]))
    expected = 0.5 * bootstrapped_ce(up, labels, 0.5) + 0.5 * soft_jaccard(up, labels)
    assert frame_loss(logits, labels, torch.tensor([2]), 0.5) == pytest.approx(float(expected), rel=1e-6)


def _official_frame_loss(logits, labels, num_objects, step, total, top_k=0.15, mining_ratio=0.5):
    """An independent transcription of the official per-sample recipe (aot_engine.calculate_current_loss and
    networks/layers/loss.py): logits sliced to ``obj_num + 1`` channels, CE over the top
    ``int((r * top_k + 1 - r) * HW)`` pixels, Jaccard ``1 - inter / (union + 1e-6)`` over the classes present,
    0.5 each, averaged over the batch."""
    up = F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=True)
    mining_step = mining_ratio * total + 1e-5
    per_sample = []
    for b in range(up.shape[0]):
        x = up[b:b + 1, :int(num_objects[b]) + 1]
        y = labels[b:b + 1]
        hw = float(x.shape[2] * x.shape[3])
        pix = F.cross_entropy(x.flatten(2), y.flatten(1), ignore_index=255, reduction="none")
        r = min(1.0, step / float(mining_step))
        ce = torch.topk(pix, k=int((r * top_k + (1.0 - r)) * hw), dim=1)[0].mean()
        probs = torch.softmax(x, 1)[0].flatten(1)
        flat = y.flatten()
        terms = []
        for c in range(x.shape[1]):
            g = (flat == c).float()
            if g.sum() == 0:
                continue
            p = probs[c]
            inter = (p * g).sum()
            terms.append(1 - inter / (inter + (p * (1 - g)).sum() + ((1 - p) * g).sum() + 1e-6))
        per_sample.append(0.5 * ce + 0.5 * sum(terms) / len(terms))
    return torch.stack(per_sample).mean()


@pytest.mark.parametrize("step", [0, 1, 137, 2_501, 12_345, 33_333, 49_999, 50_000, 77_777])
def test_frame_loss_matches_the_official_formula_over_the_ramp(step):
    """Same random inputs, the official computation: equal to float32 rounding at every step of the
    hard-pixel ramp (the pixel count is truncated as the official ``int``), with a one-pixel class whose
    Jaccard term shows the epsilon."""
    total = 100_000
    g = torch.Generator().manual_seed(step)
    logits = torch.randn(3, 11, 9, 9, generator=g) * 3
    labels = torch.randint(0, 4, (3, 33, 33), generator=g)
    labels[1] = labels[1].clamp(max=1)
    labels[2] = (labels[2] > 0).long() * 2
    labels[2, 5, 5] = 1  # a one-pixel object
    n = torch.tensor([3, 1, 2])
    ours = frame_loss(logits, labels, n, hard_pixel_fraction(step, total, final=0.15, ratio=0.5))
    official = _official_frame_loss(logits, labels, n, step, total)
    assert float(ours) == pytest.approx(float(official), rel=2e-6, abs=1e-7)
