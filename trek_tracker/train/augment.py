"""Clip augmentation of the official recipe ("v2", docs/training.md#augmentation), on uint8 RGB frames and label maps.

Geometry (scale, crop, flip) is drawn once per clip so the frames stay consistent; photometric changes
(colour jitter, grayscale, blur) are drawn per frame, which also teaches the model to ignore lighting
flicker. Static images become clips as the official ``StaticTrain`` makes them (:func:`static_clip`). All randomness
comes from the ``numpy.random.Generator`` passed in, so a clip is a pure function of its seed.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


@dataclass
class AugmentConfig:
    crop: tuple[int, int] = (465, 465)  # (h, w); 16k + 1 for MobileNet/ResNet models, 16k for Swin
    short_edge: int = 480  # RandomScale works around this short edge
    scale_range: tuple[float, float] = (0.7, 1.3)
    max_objects: int = 10
    min_object_pixels: int = 100
    crop_attempts: int = 5  # the official BalancedRandomCrop's max_step (the trainer leaves it at 5)
    color_jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.2, 0.1)  # brightness, contrast, sat, hue
    jitter_p: float = 0.8
    gray_p: float = 0.2
    blur_p: float = 0.3
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    flip_p: float = 0.5
    pad_fill: tuple[int, int, int] = (124, 116, 104)
    # static-image clips
    affine_degrees: float = 20.0
    affine_translate: float = 0.1
    affine_scale: tuple[float, float] = (0.9, 1.1)
    affine_shear: float = 10.0
    resized_crop_scale: tuple[float, float] = (0.8, 1.0)


Clip = tuple[list[np.ndarray], list[np.ndarray]]  # frames (H, W, 3) uint8, labels (H, W) int64


def random_scale(frames: list[np.ndarray], labels: list[np.ndarray], rng: np.random.Generator,
                 cfg: AugmentConfig) -> Clip:
    """Resize the clip so its short edge is ``short_edge * U(scale_range)``: images bicubic, labels nearest,
    as the official ``RandomScale``."""
    h, w = frames[0].shape[:2]
    s = cfg.short_edge * rng.uniform(*cfg.scale_range) / min(h, w)
    size = (max(1, round(w * s)), max(1, round(h * s)))
    frames = [cv2.resize(f, size, interpolation=cv2.INTER_CUBIC) for f in frames]
    labels = [cv2.resize(lb.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST).astype(np.int64)
              for lb in labels]
    return frames, labels


def _pad(frames: list[np.ndarray], labels: list[np.ndarray], crop: tuple[int, int], rng: np.random.Generator,
         fill: tuple[int, int, int]) -> Clip:
    h, w = frames[0].shape[:2]
    ph, pw = max(0, crop[0] - h), max(0, crop[1] - w)
    if ph == 0 and pw == 0:
        return frames, labels
    top, left = int(rng.integers(0, ph + 1)), int(rng.integers(0, pw + 1))
    pads = ((top, ph - top), (left, pw - left))
    frames = [np.stack([np.pad(f[..., c], pads, constant_values=fill[c]) for c in range(3)], -1)
              for f in frames]
    labels = [np.pad(lb, pads) for lb in labels]
    return frames, labels


def balanced_crop(frames: list[np.ndarray], labels: list[np.ndarray], rng: np.random.Generator,
                  cfg: AugmentConfig) -> Clip:
    """Random crop (padding first when the clip is smaller) that keeps an object of the reference frame.

    Up to ``crop_attempts`` windows are drawn; the first whose reference label holds an object of more than
    ``min_object_pixels`` pixels wins (else the last one), so few clips start with nothing to track.
    """
    frames, labels = _pad(frames, labels, cfg.crop, rng, cfg.pad_fill)
    h, w = frames[0].shape[:2]
    ch, cw = cfg.crop
    for _ in range(max(1, cfg.crop_attempts)):
        y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        ref = labels[0][y:y + ch, x:x + cw]
        counts = np.bincount(ref.ravel())[1:]
        if (counts > cfg.min_object_pixels).any():
            break
    return ([f[y:y + ch, x:x + cw] for f in frames], [lb[y:y + ch, x:x + cw] for lb in labels])


def select_objects(labels: list[np.ndarray], rng: np.random.Generator, cfg: AugmentConfig,
                   min_pixels: int | None = None) -> tuple[list[np.ndarray], int]:
    """Keep at most ``max_objects`` (chosen at random) of the objects with more than ``min_pixels`` pixels
    (default ``cfg.min_object_pixels``) in the reference frame, renumbered 1..N in all frames; the others
    become background.

    As the official crop and merge do, a clip whose objects are all too small keeps none (0 objects), and
    then gets a second clip's objects by dynamic merge, instead of training on specks."""
    floor = cfg.min_object_pixels if min_pixels is None else min_pixels
    counts = np.bincount(labels[0].ravel())
    ids = [i for i in range(1, len(counts)) if counts[i] > floor]
    if len(ids) > cfg.max_objects:
        ids = sorted(rng.choice(ids, size=cfg.max_objects, replace=False).tolist())
    top = max(int(lb.max()) for lb in labels)
    table = np.zeros(top + 1, dtype=np.int64)
    for new, old in enumerate(ids, start=1):
        table[old] = new
    return [table[lb] for lb in labels], len(ids)


# ITU-R 601 luma, as PIL's "L" conversion that torchvision's colour transforms use on images.
_LUMA = np.array([0.299, 0.587, 0.114], np.float32)


def _luma(img: np.ndarray) -> np.ndarray:
    return img @ _LUMA


def color_jitter(img: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig) -> np.ndarray:
    """torchvision ``ColorJitter`` on a float RGB image in [0, 255]: brightness, contrast, saturation and hue
    factors applied in a random order, each result clipped to [0, 255] as PIL's 8-bit enhancers clip it."""
    b, c, s, hue = cfg.color_jitter
    for op in rng.permutation(4):
        if op == 0 and b > 0:
            img = img * rng.uniform(1 - b, 1 + b)
        elif op == 1 and c > 0:
            mean = float(int(_luma(img).mean() + 0.5))  # PIL's Contrast blends with the rounded mean grey
            img = (img - mean) * rng.uniform(1 - c, 1 + c) + mean
        elif op == 2 and s > 0:
            gray = _luma(img)[..., None]
            img = gray + (img - gray) * rng.uniform(1 - s, 1 + s)
        elif op == 3 and hue > 0:
            hsv = cv2.cvtColor(np.clip(img, 0, 255).round().astype(np.uint8), cv2.COLOR_RGB2HSV)
            shift = int(round(rng.uniform(-hue, hue) * 180))
            hsv[..., 0] = ((hsv[..., 0].astype(np.int32) + shift) % 180).astype(np.uint8)
            img = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB).astype(np.float32)
        img = np.clip(img, 0, 255)
    return img


def photometric(frame: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig) -> np.ndarray:
    """Colour jitter (p = ``jitter_p``), grayscale (p = ``gray_p``) and Gaussian blur (p = ``blur_p``), the
    official v2 ``RandomColorJitter``, ``RandomGrayScale`` and ``RandomGaussianBlur``, which also draw anew
    for every frame."""
    img = frame.astype(np.float32)
    if rng.random() < cfg.jitter_p:
        img = color_jitter(img, rng, cfg)
    if rng.random() < cfg.gray_p:
        img = np.repeat(_luma(img)[..., None], 3, axis=-1)
    if rng.random() < cfg.blur_p:
        img = cv2.GaussianBlur(img, (0, 0), float(rng.uniform(*cfg.blur_sigma)))
    return np.clip(img, 0, 255).round().astype(np.uint8)  # rounded, as PIL's 8-bit results are


def random_affine(image: np.ndarray, label: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Rotation, translation, scale and shear about the image centre (torchvision ``RandomAffine`` ranges);
    the image bicubic, as the official ``StaticTrain`` resamples it, the label nearest."""
    h, w = image.shape[:2]
    angle = np.deg2rad(rng.uniform(-cfg.affine_degrees, cfg.affine_degrees))
    shear = np.deg2rad(rng.uniform(-cfg.affine_shear, cfg.affine_shear))
    scale = rng.uniform(*cfg.affine_scale)
    tx = rng.uniform(-cfg.affine_translate, cfg.affine_translate) * w
    ty = rng.uniform(-cfg.affine_translate, cfg.affine_translate) * h
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    m = scale * rot @ np.array([[1.0, np.tan(shear)], [0.0, 1.0]])
    centre = np.array([w / 2, h / 2])
    offset = centre + np.array([tx, ty]) - m @ centre
    mat = np.hstack([m, offset[:, None]]).astype(np.float64)
    img = cv2.warpAffine(image, mat, (w, h), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_CONSTANT,
                         borderValue=tuple(int(v) for v in cfg.pad_fill))
    lab = cv2.warpAffine(label.astype(np.uint8), mat, (w, h), flags=cv2.INTER_NEAREST,
                         borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    return img, lab.astype(np.int64)


def random_resized_crop(image: np.ndarray, label: np.ndarray, rng: np.random.Generator,
                        cfg: AugmentConfig) -> tuple[np.ndarray, np.ndarray]:
    """A window of ``U(resized_crop_scale)`` of the area, its aspect ratio within [3/4, 4/3] of the crop's
    (log-uniform), resized to ``cfg.crop`` (the image bicubic, the label nearest): the official
    ``RandomResizedCrop`` of ``StaticTrain``, with its central-crop fallback after 10 tries."""
    h, w = image.shape[:2]
    base = cfg.crop[1] / cfg.crop[0]
    box = None
    for _ in range(10):
        area = rng.uniform(*cfg.resized_crop_scale) * h * w
        aspect = np.exp(rng.uniform(np.log(base * 3 / 4), np.log(base * 4 / 3)))
        cw, ch = int(round(np.sqrt(area * aspect))), int(round(np.sqrt(area / aspect)))
        if 0 < cw <= w and 0 < ch <= h:
            box = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1)), ch, cw
            break
    if box is None:  # the official fallback: the central crop of the nearest allowed aspect ratio
        cw, ch = w, h
        if w / h < base * 3 / 4:
            ch = int(round(w / (base * 3 / 4)))
        elif w / h > base * 4 / 3:
            cw = int(round(h * base * 4 / 3))
        box = (h - ch) // 2, (w - cw) // 2, ch, cw
    y, x, ch, cw = box
    size = (cfg.crop[1], cfg.crop[0])
    img = cv2.resize(image[y:y + ch, x:x + cw], size, interpolation=cv2.INTER_CUBIC)
    lab = cv2.resize(label[y:y + ch, x:x + cw].astype(np.uint8), size, interpolation=cv2.INTER_NEAREST)
    return img, lab.astype(np.int64)


# The official StaticTrain's flips: the image once for the whole clip, then each frame after the first.
STATIC_CLIP_FLIP_P, STATIC_FRAME_FLIP_P = 0.5, 0.3


def static_clip(image: np.ndarray, label: np.ndarray, length: int, rng: np.random.Generator,
                cfg: AugmentConfig) -> Clip:
    """A synthetic clip of ``length`` frames of ``cfg.crop`` from one image, as the official ``StaticTrain``
    makes it: the image flipped (p = 0.5); frame 0 the image itself, each later frame flipped (p = 0.3)
    and given its own affine; every frame its own resized crop. Photometry and object selection follow
    (:func:`augment_static`); a video clip's scale, balanced crop and flip do not apply."""
    if rng.random() < STATIC_CLIP_FLIP_P:
        image, label = image[:, ::-1], label[:, ::-1]
    frames, labels = [], []
    for i in range(length):
        img, lab = np.ascontiguousarray(image), np.ascontiguousarray(label)
        if i > 0:
            if rng.random() < STATIC_FRAME_FLIP_P:
                img, lab = np.ascontiguousarray(img[:, ::-1]), np.ascontiguousarray(lab[:, ::-1])
            img, lab = random_affine(img, lab, rng, cfg)
        img, lab = random_resized_crop(img, lab, rng, cfg)
        frames.append(img)
        labels.append(lab)
    return frames, labels


def augment_static(frames: list[np.ndarray], labels: list[np.ndarray], rng: np.random.Generator,
                   cfg: AugmentConfig) -> tuple[list[np.ndarray], list[np.ndarray], int]:
    """What follows :func:`static_clip` (already of ``cfg.crop``): object selection and per-frame photometry.

    The official ``StaticTrain`` keeps every object visible in frame 0, however small (its ``ToOnehot``);
    the size floor applies when a merge selects objects again."""
    labels, num_objects = select_objects(labels, rng, cfg, min_pixels=0)
    return [photometric(f, rng, cfg) for f in frames], labels, num_objects


def augment_clip(frames: list[np.ndarray], labels: list[np.ndarray], rng: np.random.Generator,
                 cfg: AugmentConfig) -> tuple[list[np.ndarray], list[np.ndarray], int]:
    """The v2 pipeline on a clip: scale, balanced crop, object selection, flip, per-frame photometry.

    Returns frames and labels of exactly ``cfg.crop`` and the number of objects kept.
    """
    frames, labels = random_scale(frames, labels, rng, cfg)
    frames, labels = balanced_crop(frames, labels, rng, cfg)
    labels, num_objects = select_objects(labels, rng, cfg)
    if rng.random() < cfg.flip_p:
        frames = [f[:, ::-1] for f in frames]
        labels = [lb[:, ::-1] for lb in labels]
    frames = [photometric(np.ascontiguousarray(f), rng, cfg) for f in frames]
    return frames, [np.ascontiguousarray(lb) for lb in labels], num_objects


def paste_clip(base: Clip, other: Clip, max_objects: int) -> Clip:
    """"Dynamic merge": paste ``other``'s objects over ``base`` frame by frame, ids shifted past ``base``'s.

    Both clips must already have the same size and at most ``max_objects`` consecutive ids each. Every object
    is pasted and keeps its own id (up to ``2 * max_objects``), as the official ``_merge_sample`` does: the
    :func:`select_objects` that follows then draws at most ``max_objects`` of all of them at random, and the
    pixels of those not drawn stay in the image as background.
    """
    frames, labels = [], []
    shift = max(int(lb.max()) for lb in base[1])
    if shift > max_objects or max(int(lb.max()) for lb in other[1]) > max_objects:
        raise ValueError(f"paste_clip expects clips of at most {max_objects} objects")
    for f, lb, of, olb in zip(base[0], base[1], other[0], other[1], strict=True):
        keep = olb > 0
        f = f.copy()
        f[keep] = of[keep]
        lb = np.where(keep, olb + shift, lb)
        frames.append(f)
        labels.append(lb)
    return frames, labels
