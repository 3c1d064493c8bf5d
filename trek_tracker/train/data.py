"""Training clips: video datasets in the DAVIS / YouTube-VOS layout and static images made into clips.

Every sample is a pure function of ``(seed, g)`` where ``g`` is the global sample number (step x batch
position): the source item comes from a per-epoch permutation and all augmentation from a generator seeded
with ``(seed, g)``. So a run resumed at step ``s`` sees exactly the clips the uninterrupted run would have,
with any number of loader workers or processes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, Sampler

from trek_tracker.errors import InputError
from trek_tracker.inference.preprocess import IMAGENET_MEAN, IMAGENET_STD
from trek_tracker.train.augment import AugmentConfig, augment_clip, paste_clip, select_objects, static_clip

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")


@dataclass
class DataSource:
    """One dataset. ``kind`` is ``"video"`` (JPEGImages/ + Annotations/, optionally under a resolution
    folder such as ``480p``) or ``"static"`` (an image folder and a mask folder with matching names)."""

    root: str
    kind: str = "video"
    repeat: int = 1  # how many times its items enter the sampling pool (DAVIS is repeated 5x officially)
    max_gap: int = 3  # video: frame gaps drawn uniformly in 1..max_gap (official: 3 YTB, 12 DAVIS)
    sequences: list[str] | None = None  # video: restrict to these sequences
    exclude: list[str] = field(default_factory=list)  # video: never use these (held-out validation)
    images: str = "images"  # static: folder names under root
    masks: str = "masks"

    def __post_init__(self) -> None:
        if self.kind not in ("video", "static"):
            raise InputError(f"data source kind must be 'video' or 'static', got {self.kind!r}")
        if self.repeat < 1 or self.max_gap < 1:
            raise InputError(f"data source {self.root}: repeat and max_gap must be at least 1")


def read_image(path: Path) -> np.ndarray:
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise InputError(f"cannot read image {path}")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def read_label(path: Path) -> np.ndarray:
    """A mask file as object ids (H, W) int64.

    Palette PNGs hold ids directly (255 is DAVIS-2017's "void" and becomes background); a grayscale 0/255
    mask (DAVIS-2016) is one object; other grayscale masks hold ids; RGB masks: any colour is one object.
    """
    with Image.open(path) as im:
        mode = im.mode
        arr = np.asarray(im)
    if mode == "P":
        arr = np.where(arr == 255, 0, arr)
    elif arr.ndim == 3:
        arr = (arr[..., :3].max(axis=-1) > 0).astype(np.uint8)
    elif arr.max() == 255 and not np.isin(arr, (0, 255), invert=True).any():
        arr = (arr > 0).astype(np.uint8)
    return arr.astype(np.int64)


def video_dirs(root: Path) -> tuple[Path, Path]:
    """``JPEGImages`` and ``Annotations`` of a DAVIS/YouTube-VOS folder (``480p`` level when present)."""
    img, ann = root / "JPEGImages", root / "Annotations"
    if not img.is_dir() or not ann.is_dir():
        raise InputError(f"{root} is not in the DAVIS / YouTube-VOS layout (needs JPEGImages/ and "
                         "Annotations/ folders)")
    if (img / "480p").is_dir() and (ann / "480p").is_dir():
        img, ann = img / "480p", ann / "480p"
    return img, ann


@dataclass
class VideoItem:
    name: str
    frames: list[Path]  # frames that have an annotation, in order
    labels: list[Path]


def list_videos(src: DataSource) -> list[VideoItem]:
    img_dir, ann_dir = video_dirs(Path(src.root))
    names = sorted(p.name for p in ann_dir.iterdir() if p.is_dir())
    if src.sequences:
        missing = sorted(set(src.sequences) - set(names))
        if missing:
            raise InputError(f"sequences not found in {ann_dir}: {', '.join(missing)}")
        names = [n for n in names if n in src.sequences]
    names = [n for n in names if n not in set(src.exclude)]
    items = []
    for name in names:
        images = {p.stem: p for p in (img_dir / name).glob("*") if p.suffix.lower() in IMAGE_SUFFIXES}
        labels = sorted(p for p in (ann_dir / name).glob("*.png") if p.stem in images)
        if labels:
            items.append(VideoItem(name, [images[p.stem] for p in labels], labels))
    if not items:
        raise InputError(f"no annotated sequences found in {ann_dir}")
    return items


def list_static(src: DataSource) -> list[tuple[Path, Path]]:
    root = Path(src.root)
    img_dir, mask_dir = root / src.images, root / src.masks
    if not img_dir.is_dir() or not mask_dir.is_dir():
        raise InputError(f"static image folder {root} needs {src.images}/ and {src.masks}/ subfolders")
    masks = {p.stem: p for p in mask_dir.glob("*.png")}
    pairs = sorted((p, masks[p.stem]) for p in img_dir.iterdir()
                   if p.suffix.lower() in IMAGE_SUFFIXES and p.stem in masks)
    if not pairs:
        raise InputError(f"no image/mask pairs with matching names in {img_dir} and {mask_dir}")
    return pairs


def sample_frame_indices(n: int, length: int, max_gap: int, rng: np.random.Generator) -> list[int]:
    """``length`` increasing frame indices with gaps in 1..max_gap (shrunk to fit), randomly reversed.

    A video with fewer than ``length`` frames repeats frames.
    """
    if n < length:
        idx = np.sort(rng.integers(0, n, size=length))
    else:
        gaps = rng.integers(1, max_gap + 1, size=length - 1)
        while gaps.sum() > n - 1:
            gaps[int(np.argmax(gaps))] -= 1
        start = int(rng.integers(0, n - int(gaps.sum())))
        idx = start + np.concatenate([[0], np.cumsum(gaps)])
    if rng.random() < 0.5:
        idx = idx[::-1]
    return [int(i) for i in idx]


def to_tensors(frames: list[np.ndarray], labels: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised images (T, 3, H, W) float32 and labels (T, H, W) int64."""
    x = np.stack(frames).astype(np.float32) / 255.0
    x = (x - np.asarray(IMAGENET_MEAN, np.float32)) / np.asarray(IMAGENET_STD, np.float32)
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))), torch.from_numpy(np.stack(labels))


class ClipDataset(Dataset):
    """Clips of ``length`` frames from several sources; index = global sample number (see module doc)."""

    def __init__(self, sources: list[DataSource], *, length: int = 5, augment: AugmentConfig | None = None,
                 merge_p: float = 0.3, seed: int = 0) -> None:
        if length < 2:
            raise InputError(f"clip length must be at least 2 (reference + one frame), got {length}")
        self.sources = sources
        self.length = length
        self.augment = augment or AugmentConfig()
        self.merge_p = merge_p
        self.seed = seed
        self.items: list[tuple[int, object]] = []
        for s, src in enumerate(sources):
            listed = list_videos(src) if src.kind == "video" else list_static(src)
            self.items += [(s, item) for item in listed] * src.repeat
        if not self.items:
            raise InputError("the training data is empty")
        self._perm_epoch, self._perm = -1, np.arange(0)

    def __len__(self) -> int:
        return len(self.items)

    def _item(self, g: int) -> tuple[int, object]:
        epoch = g // len(self.items)
        if epoch != self._perm_epoch:
            self._perm = np.random.default_rng([self.seed, 7, epoch]).permutation(len(self.items))
            self._perm_epoch = epoch
        return self.items[int(self._perm[g % len(self.items)])]

    def _raw_clip(self, entry: tuple[int, object], rng: np.random.Generator):
        s, item = entry
        src = self.sources[s]
        if src.kind == "static":
            image_path, mask_path = item
            return static_clip(read_image(image_path), read_label(mask_path), self.length, rng, self.augment)
        idx = sample_frame_indices(len(item.frames), self.length, src.max_gap, rng)
        for _ in range(4):  # prefer a reference frame that shows an object
            if read_label(item.labels[idx[0]]).any():
                break
            idx = sample_frame_indices(len(item.frames), self.length, src.max_gap, rng)
        return [read_image(item.frames[i]) for i in idx], [read_label(item.labels[i]) for i in idx]

    def clip(self, g: int) -> tuple[list[np.ndarray], list[np.ndarray], int]:
        """The augmented clip number ``g`` as arrays (frames, labels, object count)."""
        rng = np.random.default_rng([self.seed, g])
        frames, labels, n = augment_clip(*self._raw_clip(self._item(g), rng), rng, self.augment)
        if rng.random() < self.merge_p:
            other = self.items[int(rng.integers(0, len(self.items)))]
            of, ol, _ = augment_clip(*self._raw_clip(other, rng), rng, self.augment)
            frames, labels = paste_clip((frames, labels), (of, ol), self.augment.max_objects)
            labels, n = select_objects(labels, rng, self.augment)
        return frames, labels, n

    def __getitem__(self, g: int) -> dict[str, torch.Tensor]:
        frames, labels, n = self.clip(int(g))
        images, label_t = to_tensors(frames, labels)
        return {"images": images, "labels": label_t, "num_objects": torch.tensor(n, dtype=torch.int64)}


class StepSampler(Sampler[int]):
    """Global sample numbers for one process: micro-batch ``m`` of rank ``r`` holds
    ``(m * world + r) * batch + i``. Starting at ``start_micro`` resumes the stream exactly."""

    def __init__(self, batch_size: int, *, rank: int = 0, world: int = 1, start_micro: int = 0,
                 num_micro: int | None = None) -> None:
        self.batch_size, self.rank, self.world = batch_size, rank, world
        self.start_micro, self.num_micro = start_micro, num_micro

    def __iter__(self):
        m = self.start_micro
        while self.num_micro is None or m < self.start_micro + self.num_micro:
            base = (m * self.world + self.rank) * self.batch_size
            yield from range(base, base + self.batch_size)
            m += 1

    def __len__(self) -> int:
        if self.num_micro is None:
            raise TypeError("an endless sampler has no length")
        return self.num_micro * self.batch_size
