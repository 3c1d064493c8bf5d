"""EPIC-KITCHENS VISOR in its published layout (``GroundTruth-SparseAnnotations``), read natively:

    annotations/<split>/P01_01.json          one file per video: {"video_annotations": [...]}
    rgb_frames/<split>/P01/P01_01.zip        the annotated frames, zipped (or unpacked into P01_01/)

Each entry of ``video_annotations`` is one annotated frame: ``image`` (``name``, ``subsequence``, ``video``)
and ``annotations``, one per mask, with an entity ``name`` and ``segments`` (polygons of ``[x, y]``
points). A VOS sequence is a ``subsequence``; as VISOR's toolkit does, its objects are numbered 1..N by the
sorted entity names of the whole sub-sequence, so an id means the same entity in every frame, and masks are
filled in annotation order (a later mask covers an earlier one). Only the annotated frames (about two per
action) are sampled; their real frame numbers come from the image names.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from trek_tracker.errors import InputError
from trek_tracker.train.datasets.base import (
    ImageRef,
    VideoItem,
    ZipMember,
    frame_number,
    image_size,
    images_in,
    polygons_to_label,
    restrict,
    scanning,
    zip_members,
)
from trek_tracker.train.datasets.folders import list_visor_export
from trek_tracker.train.datasets.source import DataSource

# The toolkit keeps sub-sequences with at least this many annotated frames (visor_to_davis.py).
MIN_FRAMES = {"train": 3, "val": 2}


class PolygonLabel:
    """Loads one frame's id map by filling its polygons at the frame's own size."""

    def __init__(self, image: ImageRef, objects: list[tuple[int, list[np.ndarray]]]) -> None:
        self.image, self.objects = image, objects

    def __call__(self) -> np.ndarray:
        return polygons_to_label(self.objects, image_size(self.image))


def _frames_of_video(rgb_root: Path, video: str) -> dict[str, ImageRef]:
    """Image name -> file or zip member for one video, in any of the published arrangements."""
    participant = video.split("_")[0]
    for folder in (rgb_root / participant / video, rgb_root / video):
        found = images_in(folder)
        if found:
            return {p.name: p for p in found.values()}
    for archive in (rgb_root / participant / f"{video}.zip", rgb_root / f"{video}.zip"):
        if archive.is_file():
            return {Path(m).name: ZipMember(archive, m) for m in zip_members(archive) if not m.endswith("/")}
    return {}


def read_visor_json(path: Path) -> list[dict]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        entries = data["video_annotations"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise InputError(f"cannot read VISOR annotations {path} (needs a 'video_annotations' list): {err}") from None
    return entries


def subsequences(entries: list[dict]) -> dict[str, list[dict]]:
    """Entries grouped by sub-sequence, each sorted by frame number."""
    groups: dict[str, list[dict]] = {}
    for e in entries:
        groups.setdefault(e["image"]["subsequence"], []).append(e)
    for frames in groups.values():
        frames.sort(key=lambda e: (frame_number(Path(e["image"]["name"]).stem) or 0, e["image"]["name"]))
    return groups


def object_ids(frames: list[dict]) -> dict[str, int]:
    """Entity name -> id 1..N: the sorted names of every non-empty mask of the sub-sequence (toolkit order)."""
    names = {a["name"] for e in frames for a in e["annotations"] if a.get("segments")}
    return {name: i for i, name in enumerate(sorted(names), start=1)}


def _polygons(segments: list) -> list[np.ndarray]:
    return [np.asarray(poly, np.float32).reshape(-1, 2) for poly in segments if len(poly) >= 3]


def list_visor(src: DataSource) -> list[VideoItem]:
    """VISOR sub-sequences (``kind = "visor"``); a root in the toolkit's DAVIS-style export is read as such."""
    root = Path(src.root)
    if (root / "GroundTruth-SparseAnnotations").is_dir():
        root = root / "GroundTruth-SparseAnnotations"
    if not (root / "annotations").is_dir():
        if (root / "JPEGImages").is_dir() or (root / "VISOR_2022").is_dir():
            return list_visor_export(src)
        raise InputError(f"{src.root} is not a VISOR root: it has neither annotations/<split>/*.json "
                         "(GroundTruth-SparseAnnotations) nor the toolkit's DAVIS-style JPEGImages/")
    split = src.split or "train"
    ann_dir, rgb_root = root / "annotations" / split, root / "rgb_frames" / split
    files = sorted(ann_dir.glob("*.json"))
    if not files:
        raise InputError(f"no VISOR annotation files in {ann_dir}")
    min_frames = int(src.options.get("min_frames", MIN_FRAMES.get(split, 2)))
    items: list[VideoItem] = []
    for path in scanning(files, f"VISOR {split} annotations"):
        groups = subsequences(read_visor_json(path))
        names = restrict(sorted(groups), None, src.exclude, str(path))
        if src.sequences:
            names = [n for n in names if n in set(src.sequences)]
        if not names:
            continue
        frames_of = _frames_of_video(rgb_root, path.stem)
        if not frames_of:
            raise InputError(f"no frames for VISOR video {path.stem} under {rgb_root} (expected "
                             f"{path.stem.split('_')[0]}/{path.stem}.zip or an unpacked folder)")
        for name in names:
            frames = groups[name]
            ids = object_ids(frames)
            images, labels, numbers = [], [], []
            for e in frames:
                image = frames_of.get(e["image"]["name"])
                if image is None:
                    raise InputError(f"VISOR frame {e['image']['name']} of {path.name} is missing under {rgb_root}")
                objects = [(ids[a["name"]], _polygons(a["segments"])) for a in e["annotations"]
                           if a.get("segments") and a["name"] in ids]
                if not objects:
                    continue  # the toolkit drops frames with an empty mask
                images.append(image)
                labels.append(PolygonLabel(image, objects))
                numbers.append(frame_number(Path(e["image"]["name"]).stem) or len(numbers))
            if len(images) >= min_frames:
                items.append(VideoItem(name, images, labels, numbers, [None] * len(images)))
    if src.sequences:
        found = {it.name for it in items}
        missing = sorted(set(src.sequences) - found)
        if missing:
            raise InputError(f"sequences not found in {ann_dir}: {', '.join(missing[:10])}")
    if not items:
        raise InputError(f"no VISOR sub-sequence in {ann_dir} has {min_frames} or more annotated frames")
    return items
