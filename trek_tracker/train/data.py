"""Training clips from a mixture of datasets (video datasets, box datasets with their masks, static images
made into clips); the readers of each published layout are in :mod:`trek_tracker.train.datasets`.

Every sample is a pure function of ``(seed, g)`` where ``g`` is the global sample number (step x batch
position): the source and item come from :class:`~trek_tracker.train.mixture.Mixture` (sources drawn at
their weights, each source's items in a per-epoch permutation) and all augmentation from a generator seeded
with ``(seed, g)``. So a run resumed at step ``s`` sees exactly the clips the uninterrupted run would have,
with any number of loader workers or processes.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from trek_tracker.errors import InputError
from trek_tracker.inference.preprocess import IMAGENET_MEAN, IMAGENET_STD
from trek_tracker.train import datasets
from trek_tracker.train.augment import (
    AugmentConfig,
    augment_clip,
    augment_static,
    paste_clip,
    select_objects,
    static_clip,
)
from trek_tracker.train.datasets.base import IMAGE_SUFFIXES, read_image, read_label  # noqa: F401 (re-exported)
from trek_tracker.train.datasets.folders import video_dirs  # noqa: F401 (re-exported)
from trek_tracker.train.datasets.source import DataSource
from trek_tracker.train.mixture import Mixture


def source_items(src: DataSource) -> list:
    """A source's training items: :class:`~trek_tracker.train.datasets.base.VideoItem` for video and box
    datasets, :class:`~trek_tracker.train.datasets.base.StaticItem` for static ones."""
    return datasets.list_items(src)


def compact_ids(labels: list[np.ndarray]) -> list[np.ndarray]:
    """Renumber the ids of a clip's labels to 1..K (same id, same number) when some exceed 255, as
    panoptic and COCO ids can; the augmentation resizes labels as 8-bit images. Ids past 255 are dropped."""
    if max(int(lb.max()) for lb in labels) < 256:
        return labels
    values = np.unique(np.concatenate([np.unique(lb) for lb in labels]))
    values = values[values > 0]
    table = np.zeros(int(values[-1]) + 1, np.int64)
    table[values[:255]] = np.arange(1, min(len(values), 255) + 1)
    return [table[lb] for lb in labels]


def sample_frame_indices(n: int, length: int, max_gap: int, rng: np.random.Generator, min_gap: int = 1
                         ) -> list[int]:
    """``length`` increasing indices into ``n`` annotated frames with gaps in min_gap..max_gap (shrunk to
    fit), randomly reversed. A video with fewer than ``length`` frames repeats frames."""
    if n < length:
        idx = np.sort(rng.integers(0, n, size=length))
    else:
        gaps = rng.integers(min(min_gap, max_gap), max_gap + 1, size=length - 1)
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


def source_weights(sources: list[DataSource], sizes: list[int]) -> list[float]:
    """The sampling weight of each source: its ``weight`` when every source gives one, else its item count x
    ``repeat`` (the official concatenated pool). Giving weights to only some sources is an error."""
    given = [s.weight is not None for s in sources]
    if all(given):
        return [float(s.weight) for s in sources]
    if any(given):
        raise InputError("give a weight to every [[data]] source or to none (then items x repeat decide)")
    return [float(n * s.repeat) for s, n in zip(sources, sizes, strict=True)]


class ClipDataset(Dataset):
    """Clips of ``length`` frames from several sources; index = global sample number (see module doc)."""

    def __init__(self, sources: list[DataSource], *, length: int = 5, augment: AugmentConfig | None = None,
                 merge_p: float = 0.3, seed: int = 0, id_classes: int | None = None) -> None:
        if length < 2:
            raise InputError(f"clip length must be at least 2 (reference + one frame), got {length}")
        if not sources:
            raise InputError("the training data is empty")
        self.sources = sources
        self.length = length
        self.augment = augment or AugmentConfig()
        self.merge_p = merge_p
        self.seed = seed
        self.id_classes = id_classes  # draw an ID permutation of this many channels per sample (ID shuffle)
        self.items: list[list] = [source_items(src) for src in sources]
        for src, items in zip(sources, self.items, strict=True):
            if not items:
                raise InputError(f"data source {src.root} ({src.kind}) has no items")
        sizes = [len(items) for items in self.items]
        self.weights = source_weights(sources, sizes)
        self.mixture = Mixture(sizes, self.weights, seed)

    def __len__(self) -> int:
        return sum(len(items) * src.repeat for src, items in zip(self.sources, self.items, strict=True))

    def locate(self, g: int) -> tuple[int, int]:
        """``(source index, item index)`` of sample ``g``."""
        return self.mixture(g)

    def _raw_clip(self, s: int, k: int, rng: np.random.Generator) -> tuple[list, list, dict]:
        src, item = self.sources[s], self.items[s][k]
        if datasets.is_static(src.kind):
            frames, labels = static_clip(item.image(), compact_ids([item.label()])[0], self.length, rng, self.augment)
            return frames, labels, {"source": s, "item": item.name, "frames": [0] * self.length}
        idx = sample_frame_indices(len(item), self.length, src.max_gap, rng, src.min_gap)
        for _ in range(4):  # prefer a reference frame that shows an object
            if item.label(idx[0]).any():
                break
            idx = sample_frame_indices(len(item), self.length, src.max_gap, rng, src.min_gap)
        labels = compact_ids([item.label(i) for i in idx])
        return ([item.image(i) for i in idx], labels,
                {"source": s, "item": item.name, "frames": [item.numbers[i] for i in idx]})

    def _augment(self, s: int, frames: list, labels: list, rng: np.random.Generator) -> tuple[list, list, int]:
        """A static source's clip is made at the crop size (the official ``StaticTrain``); a video's is scaled,
        cropped and flipped here (the official video pipeline)."""
        if datasets.is_static(self.sources[s].kind):
            return augment_static(frames, labels, rng, self.augment)
        return augment_clip(frames, labels, rng, self.augment)

    def _merge_partner(self, s: int, k: int, rng: np.random.Generator) -> tuple[int, int]:
        """The second clip of a dynamic merge: another item of the same source, as the official dataset draws
        another index of itself (a source of one item merges with itself, where the official loop never ends)."""
        n = len(self.items[s])
        if n == 1:
            return s, k
        j = int(rng.integers(0, n - 1))
        return s, j + (j >= k)

    def sample(self, g: int) -> tuple[list[np.ndarray], list[np.ndarray], int, dict]:
        """The augmented clip number ``g``: frames, labels, object count and where it came from
        (``source`` index, ``item`` name, real frame numbers)."""
        rng = np.random.default_rng([self.seed, g])
        where = self.locate(g)
        frames, labels, meta = self._raw_clip(*where, rng)
        frames, labels, n = self._augment(where[0], frames, labels, rng)
        merge = rng.random() < self.merge_p
        if merge or n == 0:  # an empty clip always gets a second clip's objects (official dynamic merge)
            other = self._merge_partner(*where, rng)
            of, ol, _ = self._augment(other[0], *self._raw_clip(*other, rng)[:2], rng)
            frames, labels = paste_clip((frames, labels), (of, ol), self.augment.max_objects)
            labels, n = select_objects(labels, rng, self.augment)
        return frames, labels, n, meta

    def clip(self, g: int) -> tuple[list[np.ndarray], list[np.ndarray], int]:
        """The augmented clip number ``g`` as arrays (frames, labels, object count)."""
        return self.sample(g)[:3]

    def __getitem__(self, g: int) -> dict[str, torch.Tensor]:
        frames, labels, n = self.clip(int(g))
        images, label_t = to_tensors(frames, labels)
        sample = {"images": images, "labels": label_t, "num_objects": torch.tensor(n, dtype=torch.int64)}
        if self.id_classes:
            sample["id_perm"] = torch.from_numpy(id_permutation(self.id_classes, self.seed, int(g)))
        return sample


def id_permutation(classes: int, seed: int, g: int) -> np.ndarray:
    """The ID channels of sample ``g``: background stays 0, the foreground ids are permuted (official
    ``generate_permute_matrix(keep_first=True)``). Its own generator, so the clip itself does not change."""
    fg = np.random.default_rng([seed, g, 3]).permutation(classes - 1) + 1
    return np.concatenate([[0], fg]).astype(np.int64)


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
