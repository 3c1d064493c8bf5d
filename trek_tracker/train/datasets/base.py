"""What every dataset reader yields: annotated videos, box tracks and static images, each loaded lazily.

- :class:`VideoItem`: the annotated frames of one video (or sub-sequence), with their real frame numbers, so a
  sparsely annotated video (VISOR, YouTube-VOS train) is sampled among its annotated frames while the clip
  still knows the true gaps between them.
- :class:`BoxTrack`: one box track (LaSOT, GOT-10k, EgoTracks), the input of ``trek-track train-data masks-from-boxes``.
- :class:`StaticItem`: one image and its object masks (COCO, PASCAL VOC, saliency sets).

Images are files or members of zip archives (VISOR ships its frames zipped); labels are id maps (H, W)
int64 with 0 for background, produced by a per-item loader (palette PNG, polygons, RLE, ...).
"""

from __future__ import annotations

import io
import os
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from trek_tracker.errors import InputError
from trek_tracker.files import os_error_message
from trek_tracker.video import decode_rgb

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")


@dataclass(frozen=True)
class ZipMember:
    """A file inside a zip archive (read without unpacking)."""

    archive: Path
    member: str

    @property
    def stem(self) -> str:
        return Path(self.member).stem

    def __str__(self) -> str:
        return f"{self.archive}:{self.member}"


ImageRef = Path | ZipMember

_ZIPS: dict[tuple[int, Path], zipfile.ZipFile] = {}


def _zip(path: Path) -> zipfile.ZipFile:
    """One open handle per archive and process (a handle inherited through fork shares its file offset)."""
    key = (os.getpid(), path)
    if key not in _ZIPS:
        try:
            _ZIPS[key] = zipfile.ZipFile(path)
        except (OSError, zipfile.BadZipFile) as err:
            raise InputError(f"cannot open zip archive {path}: {err}") from None
    return _ZIPS[key]


def zip_members(path: Path) -> list[str]:
    return _zip(path).namelist()


def read_bytes(ref: ImageRef) -> bytes:
    if isinstance(ref, ZipMember):
        try:
            return _zip(ref.archive).read(ref.member)
        except KeyError:
            raise InputError(f"{ref.member} is not in {ref.archive}") from None
    return Path(ref).read_bytes()


def read_image(ref: ImageRef) -> np.ndarray:
    """An RGB uint8 image from a file or a zip member (:func:`~trek_tracker.video.decode_rgb`)."""
    try:
        data = read_bytes(ref)
    except OSError as err:
        where = ref.archive if isinstance(ref, ZipMember) else ref
        raise InputError(os_error_message(err, where, "read image")) from None
    img = decode_rgb(data)
    if img is None:
        raise InputError(f"cannot read image {ref}")
    return img


def image_size(ref: ImageRef) -> tuple[int, int]:
    """(h, w) of an image from its header, without decoding its pixels."""
    try:
        with Image.open(io.BytesIO(read_bytes(ref)) if isinstance(ref, ZipMember) else ref) as im:
            return im.size[1], im.size[0]
    except (OSError, ValueError) as err:
        raise InputError(f"cannot read image {ref}: {err}") from None


def read_label(path: Path) -> np.ndarray:
    """A mask file as object ids (H, W) int64.

    Palette PNGs hold ids directly (255 is DAVIS-2017's "void" and becomes background); a grayscale 0/255
    mask (DAVIS-2016, saliency sets) is one object; other grayscale masks hold ids; RGB masks: any colour is
    one object. 16-bit PNGs hold ids.
    """
    try:
        with Image.open(path) as im:
            mode = im.mode
            arr = np.asarray(im)
    except (OSError, ValueError) as err:
        raise InputError(f"cannot read mask {path}: {err}") from None
    if mode == "P":
        arr = np.where(arr == 255, 0, arr)
    elif arr.ndim == 3:
        arr = (arr[..., :3].max(axis=-1) > 0).astype(np.uint8)
    elif arr.dtype == np.uint8 and arr.max() == 255 and not np.isin(arr, (0, 255), invert=True).any():
        arr = (arr > 0).astype(np.uint8)
    return arr.astype(np.int64)


def read_binary_label(path: Path) -> np.ndarray:
    """A one-object saliency mask (ECSSD, MSRA10K, PASCAL-S) as ids 0/1: pixels at or above half the
    mask's full scale are the object. PASCAL-S masks are graded (the share of subjects who chose each
    segment), and saliency masks may have anti-aliased rims. Reading them as ids would make every grey
    level an object of its own."""
    try:
        with Image.open(path) as im:
            mode = im.mode
            arr = np.asarray(im if mode in ("P", "L", "I;16", "I", "1") else im.convert("L"))
    except (OSError, ValueError) as err:
        raise InputError(f"cannot read mask {path}: {err}") from None
    if mode in ("P", "1"):  # palette indices / bilevel: any non-zero index is the object
        return (arr > 0).astype(np.int64)
    full = 255 if arr.dtype == np.uint8 else max(int(arr.max()), 1)
    return (arr.astype(np.int64) * 2 >= full).astype(np.int64)


def frame_number(stem: str) -> int | None:
    """The frame number in a file stem: its last run of digits (``00045``, ``P01_01_frame_0000000140``)."""
    digits = ""
    for ch in reversed(stem):
        if ch.isdigit():
            digits = ch + digits
        elif digits:
            break
    return int(digits) if digits else None


def images_in(folder: Path) -> dict[str, Path]:
    """Image files of a folder by stem."""
    if not folder.is_dir():
        return {}
    return {p.stem: p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES}


def polygons_to_label(objects: list[tuple[int, list[np.ndarray]]], size: tuple[int, int]) -> np.ndarray:
    """Fill each object's polygons with its id, in order (a later object covers an earlier one)."""
    label = np.zeros(size, np.uint8 if max((i for i, _ in objects), default=0) < 256 else np.int32)
    for obj_id, polys in objects:
        if polys:
            cv2.fillPoly(label, [np.round(p).astype(np.int32).reshape(-1, 1, 2) for p in polys], int(obj_id))
    return label.astype(np.int64)


@dataclass
class VideoItem:
    """The annotated frames of one video. ``labels[i]`` loads frame ``i``'s id map."""

    name: str
    images: list[ImageRef]
    labels: list[Callable[[], np.ndarray]]
    numbers: list[int]  # real frame numbers of the annotated frames, increasing
    label_files: list[Path | None] = field(default_factory=list)  # for checks, when labels are files

    def __len__(self) -> int:
        return len(self.images)

    def image(self, i: int) -> np.ndarray:
        return read_image(self.images[i])

    def label(self, i: int) -> np.ndarray:
        return self.labels[i]()


@dataclass
class BoxTrack:
    """One target's boxes ``x, y, w, h`` over a video. ``absent``: the dataset's own absence flags;
    ``visible``: present with a finite, positive box (the frames that get a mask)."""

    name: str
    images: list[ImageRef]
    boxes: np.ndarray  # (N, 4) float64
    visible: np.ndarray  # (N,) bool
    numbers: list[int]
    absent: np.ndarray | None = None  # (N,) bool; None: no flags (every frame present)

    def __len__(self) -> int:
        return len(self.images)


@dataclass
class StaticItem:
    name: str
    image_ref: ImageRef
    load_label: Callable[[], np.ndarray]
    label_file: Path | None = None

    def image(self) -> np.ndarray:
        return read_image(self.image_ref)

    def label(self) -> np.ndarray:
        return self.load_label()


class FileLabel:
    """A picklable label loader for one mask file (``reader`` turns the file into ids)."""

    def __init__(self, path: Path, reader: Callable[[Path], np.ndarray] = read_label) -> None:
        self.path, self.reader = path, reader

    def __call__(self) -> np.ndarray:
        return self.reader(self.path)


def file_video(name: str, images: list[ImageRef], labels: list[Path], numbers: list[int] | None = None,
               reader: Callable[[Path], np.ndarray] = read_label) -> VideoItem:
    """A video whose labels are mask files; numbers default to the digits of the mask names."""
    if numbers is None:
        numbers = [frame_number(p.stem) for p in labels]
        if any(n is None for n in numbers):
            numbers = list(range(len(labels)))
    return VideoItem(name, list(images), [FileLabel(p, reader) for p in labels], [int(n) for n in numbers],
                     list(labels))


def restrict(names: list[str], sequences: list[str] | None, exclude: list[str], where: str) -> list[str]:
    """Apply a source's ``sequences`` / ``exclude`` lists to the names found in ``where``."""
    if sequences:
        missing = sorted(set(sequences) - set(names))
        if missing:
            raise InputError(f"sequences not found in {where}: {', '.join(missing[:10])}"
                             + (" ..." if len(missing) > 10 else ""))
        wanted = set(sequences)
        names = [n for n in names if n in wanted]
    drop = set(exclude)
    return [n for n in names if n not in drop]


def pick_subset(names: list[str], count: int | None, seed: int = 0) -> list[str]:
    """A fixed random subset of ``count`` names (``max_sequences``), kept in their listed order."""
    if count is None or len(names) <= count:
        return names
    pick = np.random.default_rng(seed).choice(len(names), count, replace=False)
    return [names[i] for i in sorted(pick)]


# Progress while a reader scans a dataset: None shows it on a terminal only (tqdm's rule), True always,
# False never.
SCAN_PROGRESS: bool | None = None


def scanning(items, desc: str, total: int | None = None):
    """``items`` with a progress bar on stderr while a reader scans a large dataset (docs/datasets.md)."""
    if SCAN_PROGRESS is False:
        return items
    from tqdm import tqdm

    return tqdm(items, desc=desc, total=total, leave=False, dynamic_ncols=True, mininterval=0.5,
                disable=None if SCAN_PROGRESS is None else False)


def read_list(path: Path) -> list[str]:
    """A split file: one name per line (blank lines and surrounding spaces ignored)."""
    if not path.is_file():
        raise InputError(f"split list not found: {path}")
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


