"""Augmentation against the official v2 transforms (dataloaders/video_transforms.py, train_datasets.py):
interpolation, crop attempts, object selection, dynamic merge, colour jitter."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from trek_tracker.train.augment import (
    AugmentConfig,
    augment_static,
    balanced_crop,
    paste_clip,
    photometric,
    random_scale,
    select_objects,
)


def test_random_scale_resizes_images_bicubic_and_labels_nearest():
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)
    label = rng.integers(0, 3, (60, 80)).astype(np.int64)
    cfg = AugmentConfig(short_edge=90)
    (out,), (lab,) = random_scale([frame], [label], np.random.default_rng(1), cfg)
    size = (out.shape[1], out.shape[0])
    assert out.shape[0] != 60
    assert np.array_equal(out, cv2.resize(frame, size, interpolation=cv2.INTER_CUBIC))
    assert np.array_equal(lab, cv2.resize(label.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST))


class _CountingRng:
    """A generator that counts the crop windows drawn (two ``integers`` calls per window)."""

    def __init__(self, seed: int) -> None:
        self.rng, self.calls = np.random.default_rng(seed), 0

    def integers(self, *args, **kw):
        self.calls += 1
        return self.rng.integers(*args, **kw)


def test_balanced_crop_tries_the_official_five_windows():
    frame = np.zeros((200, 200, 3), np.uint8)
    label = np.zeros((200, 200), np.int64)  # no object anywhere: every window fails
    rng = _CountingRng(0)
    frames, labels = balanced_crop([frame], [label], rng, AugmentConfig(crop=(97, 97)))
    assert frames[0].shape == (97, 97, 3) and rng.calls == 2 * 5


def test_objects_all_below_the_size_floor_are_not_kept():
    """The official crop keeps only reference objects of more than 100 pixels: a clip of specks has no
    object (and the dataset then merges a second clip into it)."""
    lab = np.zeros((40, 40), np.int64)
    lab[0:5, 0:5] = 1  # 25 pixels
    lab[20:28, 20:28] = 2  # 64 pixels
    (first, later), n = select_objects([lab, lab.copy()], np.random.default_rng(0), AugmentConfig())
    assert n == 0 and not first.any() and not later.any()


def test_static_clips_keep_every_visible_object():
    """The official StaticTrain keeps every object of frame 0 however small (ToOnehot); only a merge
    applies the size floor."""
    lab = np.zeros((97, 97), np.int64)
    lab[10:60, 10:60] = 1  # large
    lab[80:85, 80:86] = 2  # 30 pixels
    frames = [np.zeros((97, 97, 3), np.uint8)] * 3
    _, labels, n = augment_static(frames, [lab] * 3, np.random.default_rng(0), AugmentConfig(crop=(97, 97)))
    assert n == 2 and set(np.unique(labels[0]).tolist()) == {0, 1, 2}


def test_dynamic_merge_pastes_every_object_and_selects_ten_at_random():
    """Official _merge_sample: all of the second clip's objects are pasted; then at most 10 of all the
    reference objects over 100 pixels are drawn at random (here 8 + 5), not the first clip's first."""
    base_lab, other_lab = np.zeros((40, 80), np.int64), np.zeros((40, 80), np.int64)
    for k in range(8):
        base_lab[:20, k * 10:k * 10 + 10] = k + 1  # 200 pixels each, top half
    for k in range(5):
        other_lab[20:, k * 10:k * 10 + 10] = k + 1  # bottom half
    base = ([np.zeros((40, 80, 3), np.uint8)], [base_lab])
    other = ([np.full((40, 80, 3), 200, np.uint8)], [other_lab])
    frames, labels = paste_clip(base, other, max_objects=10)
    pasted = other_lab > 0
    assert (frames[0][pasted] == 200).all() and (frames[0][~pasted] == 0).all()
    assert set(np.unique(labels[0]).tolist()) == set(range(14))
    kept_from_first = set()
    for seed in range(20):
        (sel,), n = select_objects(labels, np.random.default_rng(seed), AugmentConfig())
        assert n == 10
        kept_from_first.add(len(np.unique(sel[:20])) - 1)
    assert min(kept_from_first) < 8  # sometimes one of the first clip's objects gives way


class _ScriptedRng:
    """Plays back the draws of :func:`photometric`: jitter applied, no grayscale, no blur."""

    def __init__(self, order, factors) -> None:
        self.order, self.factors, self.flags = list(order), list(factors), [0.0, 0.99, 0.99]

    def random(self):
        return self.flags.pop(0)

    def permutation(self, n):
        assert n == 4
        return np.array(self.order)

    def uniform(self, lo, hi):
        return self.factors.pop(0)


@pytest.mark.parametrize("order,expected", [
    # brightness 1.4 first: 250 -> 255 (clipped, as PIL's 8-bit result), 10 -> 14; then contrast 0.6
    # about their mean grey, rounded as PIL's (135): 207.3 and 62.4
    ([0, 1, 2, 3], (207, 62)),
    # contrast 0.6 first about 130: 202 and 58; then brightness 1.4: 282.8 -> 255 and 81.2
    ([1, 0, 2, 3], (255, 81)),
])
def test_colour_jitter_applies_its_factors_in_a_random_order_clipping_each(order, expected):
    frame = np.full((4, 4, 3), 250, np.uint8)
    frame[2:] = 10
    factors = {0: 1.4, 1: 0.6, 2: 1.0}  # brightness, contrast, saturation (a no-op on grey)
    rng = _ScriptedRng(order, [factors[i] for i in order if i in factors])
    out = photometric(frame, rng, AugmentConfig(color_jitter=(0.4, 0.4, 0.2, 0.0)))
    assert abs(int(out[0, 0, 0]) - expected[0]) <= 1 and abs(int(out[3, 3, 0]) - expected[1]) <= 1
    assert (out == out[..., :1]).all()  # still grey
