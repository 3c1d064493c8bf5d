"""Mask videos in folder layouts: the generic DAVIS / YouTube-VOS folder, DAVIS 2017 (with its ImageSets
split lists), YouTube-VOS 2019 (``meta.json``), MOSE and the DAVIS-style export of VISOR's toolkit.

All of them hold ``JPEGImages/<video>/<frame>.jpg`` and ``Annotations/<video>/<frame>.png`` palette masks;
they differ in where the split lives and which frames are annotated.
"""

from __future__ import annotations

import json
from pathlib import Path

from trek_tracker.errors import InputError
from trek_tracker.train.datasets.base import (
    VideoItem,
    file_video,
    frame_number,
    images_in,
    read_list,
    restrict,
    scanning,
)
from trek_tracker.train.datasets.source import DataSource


def video_dirs(root: Path) -> tuple[Path, Path]:
    """``JPEGImages`` and ``Annotations`` of a DAVIS/YouTube-VOS folder (``480p`` level when present)."""
    img, ann = root / "JPEGImages", root / "Annotations"
    if not img.is_dir() or not ann.is_dir():
        raise InputError(f"{root} is not in the DAVIS / YouTube-VOS layout (needs JPEGImages/ and "
                         "Annotations/ folders)")
    if (img / "480p").is_dir() and (ann / "480p").is_dir():
        img, ann = img / "480p", ann / "480p"
    return img, ann


def _frame_order(path: Path) -> tuple:
    """Frames in the order of their numbers (``2.png`` before ``10.png``), then by name."""
    n = frame_number(path.stem)
    return (n is None, n if n is not None else 0, path.name)


def folder_videos(img_dir: Path, ann_dir: Path, names: list[str], frames: dict[str, set[str]] | None = None
                  ) -> list[VideoItem]:
    """Videos whose annotated frames are the masks that have an image (optionally only ``frames[name]``)."""
    items = []
    for name in scanning(names, f"scanning {ann_dir}"):
        images = images_in(img_dir / name)
        labels = sorted((p for p in (ann_dir / name).glob("*.png") if p.stem in images), key=_frame_order)
        if frames is not None:
            labels = [p for p in labels if p.stem in frames.get(name, ())]
        if labels:
            items.append(file_video(name, [images[p.stem] for p in labels], labels))
    return items


def _nonempty(items: list[VideoItem], where: Path) -> list[VideoItem]:
    if not items:
        raise InputError(f"no annotated sequences found in {where}")
    return items


def list_folder(src: DataSource) -> list[VideoItem]:
    """Generic ``kind = "video"``: every sequence folder of Annotations/."""
    img_dir, ann_dir = video_dirs(Path(src.root))
    names = sorted(p.name for p in ann_dir.iterdir() if p.is_dir())
    names = restrict(names, src.sequences, src.exclude, str(ann_dir))
    return _nonempty(folder_videos(img_dir, ann_dir, names), ann_dir)


def _split_names(root: Path, year: str, split: str) -> list[str] | None:
    path = root / "ImageSets" / year / f"{split}.txt"
    return read_list(path) if path.is_file() else None


def list_davis(src: DataSource, *, year: str = "2017") -> list[VideoItem]:
    """DAVIS 2017: ``JPEGImages/<resolution>/``, ``Annotations/<resolution>/`` and
    ``ImageSets/2017/<split>.txt`` (``options.resolution``: 480p or Full-Resolution)."""
    root = Path(src.root)
    resolution = str(src.options.get("resolution", "480p"))
    year = str(src.options.get("year", year))
    img_dir, ann_dir = root / "JPEGImages" / resolution, root / "Annotations" / resolution
    if not img_dir.is_dir() or not ann_dir.is_dir():
        raise InputError(f"{root} is not a DAVIS root: JPEGImages/{resolution}/ and Annotations/{resolution}/ "
                         "are missing (options.resolution picks 480p or Full-Resolution)")
    split = src.split or "train"
    names = _split_names(root, year, split)
    if names is None:
        raise InputError(f"{root}: split list ImageSets/{year}/{split}.txt not found")
    present = {p.name for p in ann_dir.iterdir() if p.is_dir()}
    missing = [n for n in names if n not in present]
    if missing:
        raise InputError(f"{root}: {len(missing)} sequence(s) of the {split} split have no Annotations folder, "
                         f"e.g. {missing[0]}")
    names = restrict(names, src.sequences, src.exclude, f"{root} ({split})")
    return _nonempty(folder_videos(img_dir, ann_dir, names), ann_dir)


def _split_root(root: Path, split: str, kind: str) -> Path:
    """``root/<split>`` when present (the dataset's top folder), else ``root`` itself (the split folder)."""
    for folder in (root / split, root):
        if (folder / "JPEGImages").is_dir():
            if not (folder / "Annotations").is_dir():
                raise InputError(f"{folder} is not a complete {kind} split folder: JPEGImages/ is there but "
                                 "Annotations/ is missing (unpack the split's annotations beside it)")
            return folder
    raise InputError(f"{root} is not a {kind} root: neither {split}/JPEGImages/ nor JPEGImages/ exists")


def read_meta(path: Path) -> dict[str, set[str]]:
    """YouTube-VOS ``meta.json``: annotated frame names per video, objects with fewer than 2 frames left out
    (as the official training reader does)."""
    try:
        videos = json.loads(path.read_text(encoding="utf-8"))["videos"]
    except (OSError, ValueError, KeyError) as err:
        raise InputError(f"cannot read {path} (a YouTube-VOS meta.json with a 'videos' table): {err}") from None
    frames: dict[str, set[str]] = {}
    for name, video in videos.items():
        keep: set[str] = set()
        for obj in video.get("objects", {}).values():
            if len(obj.get("frames", [])) >= 2:
                keep.update(obj["frames"])
        if len(keep) >= 2:
            frames[name] = keep
    return frames


def list_youtubevos(src: DataSource) -> list[VideoItem]:
    """YouTube-VOS 2019: ``<split>/JPEGImages``, ``<split>/Annotations`` (every 5th frame annotated in train)
    and ``<split>/meta.json``."""
    split = src.split or "train"
    root = _split_root(Path(src.root), split, "YouTube-VOS")
    meta = root / "meta.json"
    if not meta.is_file():
        raise InputError(f"{root}: meta.json not found (YouTube-VOS lists each object's frames there)")
    frames = read_meta(meta)
    img_dir, ann_dir = root / "JPEGImages", root / "Annotations"
    names = restrict(sorted(frames), src.sequences, src.exclude, str(meta))
    _all_present(names, img_dir, ann_dir, meta)
    return _nonempty(folder_videos(img_dir, ann_dir, names, frames), ann_dir)


def _all_present(names: list[str], img_dir: Path, ann_dir: Path, listed: Path) -> None:
    """A video that the dataset's own list names but whose folders are absent means a partial download."""
    missing = [n for n in names if not (img_dir / n).is_dir() or not (ann_dir / n).is_dir()]
    if missing:
        raise InputError(f"{len(missing)} of the {len(names)} videos that {listed} lists have no JPEGImages/ or "
                         f"Annotations/ folder, e.g. {missing[0]}: the download is incomplete; unpack the whole "
                         "split (or leave these videos out with exclude)")


def list_mose(src: DataSource) -> list[VideoItem]:
    """MOSE: ``<split>/JPEGImages``, ``<split>/Annotations`` (every frame annotated in train); a
    YouTube-VOS style ``meta.json`` / ``meta_<split>.json`` is used when present."""
    split = src.split or "train"
    top = Path(src.root)
    root = _split_root(top, split, "MOSE")
    for meta in (root / "meta.json", top / f"meta_{split}.json"):
        if meta.is_file():
            frames = read_meta(meta)
            names = restrict(sorted(frames), src.sequences, src.exclude, str(meta))
            _all_present(names, root / "JPEGImages", root / "Annotations", meta)
            return _nonempty(folder_videos(root / "JPEGImages", root / "Annotations", names, frames), root)
    ann_dir = root / "Annotations"
    names = restrict(sorted(p.name for p in ann_dir.iterdir() if p.is_dir()), src.sequences, src.exclude,
                     str(ann_dir))
    return _nonempty(folder_videos(root / "JPEGImages", ann_dir, names), ann_dir)


def list_visor_export(src: DataSource) -> list[VideoItem]:
    """The DAVIS-style export of VISOR's toolkit (``visor_to_davis.py``): ``JPEGImages/480p``,
    ``Annotations/480p``, ``ImageSets/2022/<split>.txt``; frame numbers come from the file names
    (``P01_01_frame_0000000140``)."""
    root = Path(src.root)
    if (root / "VISOR_2022").is_dir():
        root = root / "VISOR_2022"
    img_dir, ann_dir = video_dirs(root)
    split = src.split or "train"
    names = _split_names(root, "2022", split)
    if names is None:
        names = sorted(p.name for p in ann_dir.iterdir() if p.is_dir())
    names = restrict(names, src.sequences, src.exclude, str(ann_dir))
    return _nonempty(folder_videos(img_dir, ann_dir, names), ann_dir)
