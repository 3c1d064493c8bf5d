"""Augmentation against the official v2 transforms (dataloaders/video_transforms.py, train_datasets.py):
interpolation, crop attempts, object selection, dynamic merge, colour jitter."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from trek_tracker.train.augment import (
    AugmentConfig,
    augment_clip,
    augment_static,
    balanced_crop,
    paste_clip,
    photometric,
    random_resized_crop,
    random_scale,
    select_objects,
)


def test_augmentation_defaults_are_the_official_v2_recipe():
    """A config that leaves ``[augment]`` out gets these (docs/training.md#augmentation, #static-image-clips)."""
    cfg = AugmentConfig()
    assert (tuple(cfg.crop), cfg.short_edge, tuple(cfg.scale_range)) == ((465, 465), 480, (0.7, 1.3))
    assert (cfg.max_objects, cfg.min_object_pixels, cfg.crop_attempts) == (10, 100, 5)
    assert tuple(cfg.color_jitter) == (0.4, 0.4, 0.2, 0.1)  # brightness/contrast x U(0.6, 1.4), sat. x U(0.8, 1.2)
    assert (cfg.jitter_p, cfg.gray_p, cfg.blur_p, tuple(cfg.blur_sigma)) == (0.8, 0.2, 0.3, (0.1, 2.0))
    assert (cfg.flip_p, tuple(cfg.pad_fill)) == (0.5, (124, 116, 104))
    assert (cfg.affine_degrees, cfg.affine_translate, tuple(cfg.affine_scale)) == (20, 0.1, (0.9, 1.1))
    assert cfg.affine_shear == 10
    assert tuple(cfg.resized_crop_scale) == (0.8, 1.0)


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


def test_balanced_crop_takes_the_first_window_that_holds_an_object():
    frame = np.zeros((200, 200, 3), np.uint8)
    label = np.ones((200, 200), np.int64)  # every window holds an object of 97 x 97 pixels
    rng = _CountingRng(0)
    balanced_crop([frame], [label], rng, AugmentConfig(crop=(97, 97)))
    assert rng.calls == 2


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


class _FlagRng:
    """Plays back :func:`photometric`'s three coin draws (jitter, grayscale, blur) and one blur sigma."""

    def __init__(self, flags, sigma=1.0) -> None:
        self.flags, self.sigma = list(flags), sigma

    def random(self):
        return self.flags.pop(0)

    def uniform(self, lo, hi):
        assert (lo, hi) == (0.1, 2.0)
        return self.sigma


def test_grayscale_replaces_every_channel_by_the_luma():
    """torchvision's RandomGrayscale on a PIL image: L = 0.299 R + 0.587 G + 0.114 B in all three channels."""
    frame = np.zeros((2, 2, 3), np.uint8)
    frame[0, 0] = (200, 100, 50)  # L = 124.2
    frame[1, 1] = (0, 255, 0)  # L = 149.7
    out = photometric(frame, _FlagRng([0.99, 0.0, 0.99]), AugmentConfig())
    assert (out == out[..., :1]).all()
    from PIL import Image

    assert (out[..., 0] == np.asarray(Image.fromarray(frame).convert("L"))).all()  # 124 and 150, rounded as PIL


def test_gaussian_blur_spreads_an_impulse_by_its_sigma():
    """A Gaussian of sigma 1.5 keeps the mass of an impulse and leaves 1 / (2 pi sigma^2) of it at the centre."""
    frame = np.zeros((21, 21, 3), np.uint8)
    frame[10, 10] = 255
    out = photometric(frame, _FlagRng([0.99, 0.99, 0.0], sigma=1.5), AugmentConfig()).astype(float)
    assert abs(out[10, 10, 0] - 255 / (2 * np.pi * 1.5**2)) <= 1.5
    assert 200 <= out[..., 0].sum() <= 265  # the mass is kept, but for uint8 rounding
    assert out[10, 7, 0] == pytest.approx(out[10, 13, 0], abs=1) and out[10, 8, 0] > out[10, 7, 0] > 0


def test_photometric_changes_are_drawn_at_their_probabilities():
    """Per frame: grayscale with p = 0.2, blur with p = 0.3 (independently). A blur of the smallest sigmas
    leaves the dot's neighbour at 0 after rounding to uint8, so a little under 0.3 of the frames show it."""
    frame = np.zeros((9, 9, 3), np.uint8)
    frame[:, :2, 0] = 200  # red: grey after a grayscale
    frame[4, 7] = 255  # a white dot far from it: its neighbour is lit only by a blur
    rng = np.random.default_rng(0)
    n, gray, blurred = 1000, 0, 0
    for _ in range(n):
        out = photometric(frame, rng, AugmentConfig(jitter_p=0.0))
        gray += int((out == out[..., :1]).all())
        blurred += int(out[4, 6, 2] > 0)
    assert abs(gray / n - 0.2) < 0.04 and 0.21 < blurred / n < 0.33, (gray, blurred)


NO_PHOTOMETRY = dict(jitter_p=0.0, gray_p=0.0, blur_p=0.0)


def test_augment_clip_scales_the_clip_to_the_drawn_short_edge_first():
    """Scale 1 of a short edge of 50 turns a 100 x 150 clip into 50 x 75, which a 50 x 75 crop then takes
    whole: the red left half and blue right half stay halves, in the image and its label."""
    frame = np.zeros((100, 150, 3), np.uint8)
    frame[:, :75, 0] = 255
    frame[:, 75:, 2] = 255
    label = np.zeros((100, 150), np.int64)
    label[:, :75] = 1
    cfg = AugmentConfig(crop=(50, 75), short_edge=50, scale_range=(1.0, 1.0), flip_p=0.0, min_object_pixels=10,
                        **NO_PHOTOMETRY)
    (out,), (lab,), n = augment_clip([frame], [label], np.random.default_rng(0), cfg)
    assert n == 1 and out.shape == (50, 75, 3)
    assert (out[:, :36, 0] > 200).all() and (out[:, 39:, 2] > 200).all()
    assert (lab[:, :37] == 1).all() and (lab[:, 38:] == 0).all()
    # a flip mirrors image and label together; the per-frame photometry comes last
    cfg.flip_p, cfg.gray_p = 1.0, 1.0
    (out,), (lab,), _ = augment_clip([frame], [label], np.random.default_rng(0), cfg)
    assert (out == out[..., :1]).all()  # grayscale applied
    assert (out[:, 39:, 0] == round(0.299 * 255)).all() and (out[:, :36, 0] == round(0.114 * 255)).all()
    assert (lab[:, 38:] == 1).all() and (lab[:, :37] == 0).all()


def test_random_resized_crop_draws_windows_of_80_to_100_percent_of_the_area():
    """A horizontal ramp shows each window's columns: its width, sqrt(area x aspect) with area in [0.8, 1] and
    aspect in [3/4, 4/3], lies between 0.77 and 1 of the image, and the windows differ from clip to clip."""
    ramp = np.tile(np.arange(200, dtype=np.uint8)[None, :, None], (200, 1, 3))
    spans = set()
    for seed in range(20):
        img, _ = random_resized_crop(ramp, np.zeros((200, 200), np.int64), np.random.default_rng(seed),
                                     AugmentConfig(crop=(100, 100)))
        first, last = int(img[50, 0, 0]), int(img[50, -1, 0])
        assert 0.77 * 200 - 3 <= last - first <= 200
        spans.add((first, last))
    assert len(spans) > 10


def test_random_resized_crop_falls_back_to_a_central_crop_of_the_nearest_aspect():
    """No window of 80 %+ of a 10 x 200 strip has an aspect ratio within [3/4, 4/3]: the official fallback takes
    the central 10 x 13 (4/3) window, and of a 200 x 10 strip the central 13 x 10 (3/4) one."""
    ramp = np.tile(np.arange(200, dtype=np.uint8)[None, :, None], (10, 1, 3))
    img, _ = random_resized_crop(ramp, np.zeros((10, 200), np.int64), np.random.default_rng(0),
                                 AugmentConfig(crop=(50, 50)))
    assert abs(int(img[5, 0, 0]) - 93) <= 1 and abs(int(img[5, -1, 0]) - 105) <= 1
    tall = np.ascontiguousarray(ramp.transpose(1, 0, 2))
    img, _ = random_resized_crop(tall, np.zeros((200, 10), np.int64), np.random.default_rng(0),
                                 AugmentConfig(crop=(50, 50)))
    assert abs(int(img[0, 5, 0]) - 93) <= 1 and abs(int(img[-1, 5, 0]) - 105) <= 1


def test_paste_clip_refuses_clips_of_more_objects_than_the_cap():
    small = ([np.zeros((2, 2, 3), np.uint8)], [np.full((2, 2), 3, np.int64)])
    big = ([np.zeros((2, 2, 3), np.uint8)], [np.full((2, 2), 11, np.int64)])
    for base, other in ((big, small), (small, big)):
        with pytest.raises(ValueError, match="at most 10"):
            paste_clip(base, other, max_objects=10)


def test_paste_clip_shifts_past_the_largest_id_of_any_frame_and_leaves_its_inputs():
    base_labels = [np.array([[1, 2]], np.int64), np.array([[1, 0]], np.int64)]  # id 2 only in frame 0
    base = ([np.zeros((1, 2, 3), np.uint8)] * 2, base_labels)
    other = ([np.full((1, 2, 3), 7, np.uint8)] * 2, [np.array([[0, 1]], np.int64)] * 2)
    frames, labels = paste_clip(base, other, max_objects=10)
    assert [lb.tolist() for lb in labels] == [[[1, 3]], [[1, 3]]]
    assert not base[0][0].any() and base_labels[1].tolist() == [[1, 0]]  # the base clip is not modified
