"""``trek-track train-data check KIND ROOT``: find what would break or silently spoil a training run, before it
starts. Each problem is one line naming the file; counts summarise what the reader found.

Checked: the reader can list the root (layout, split lists, annotation files); every listed image and mask
can be read; a mask has the size of its image and is not empty; ids agree with the dataset's own object
list (YouTube-VOS / MOSE ``meta.json``) or, for DAVIS, appear in the first frame; frame numbers have no
holes; box tracks have finite, positive boxes inside their frames where the target is visible.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from trek_tracker.errors import UserError
from trek_tracker.train import datasets
from trek_tracker.train.datasets.base import BoxTrack, StaticItem, VideoItem, image_size, images_in
from trek_tracker.train.datasets.source import DataSource


@dataclass
class CheckReport:
    kind: str
    root: str
    problems: list[str] = field(default_factory=list)
    counts: Counter = field(default_factory=Counter)

    @property
    def ok(self) -> bool:
        return not self.problems


def _label(load, where: str, problems: list[str]) -> np.ndarray | None:
    try:
        return load()
    except UserError as err:
        problems.append(f"{where}: unreadable mask ({err})")
    except Exception as err:  # a corrupt file can fail in PIL, OpenCV or scipy in many ways
        problems.append(f"{where}: unreadable mask ({type(err).__name__}: {err})")
    return None


def _size(ref, problems: list[str]) -> tuple[int, int] | None:
    try:
        return image_size(ref)
    except UserError as err:
        problems.append(f"{ref}: unreadable image ({err})")
    except Exception as err:
        problems.append(f"{ref}: unreadable image ({type(err).__name__}: {err})")
    return None


def _holes(numbers: list[int]) -> list[int]:
    """Missing numbers in an evenly spaced run (every frame, or every 5th as YouTube-VOS train)."""
    if len(numbers) < 3:
        return []
    steps = np.diff(numbers)
    step = int(np.min(steps)) if len(steps) else 1
    if step < 1 or not (steps % step == 0).all():
        return []
    present = set(numbers)
    return [n for n in range(numbers[0], numbers[-1] + 1, step) if n not in present]


def _meta_objects(src: DataSource) -> dict[str, dict[str, set[int]]] | None:
    """frame -> object ids of YouTube-VOS / MOSE ``meta.json``, per video, when the dataset has one."""
    import json

    if src.kind not in ("youtubevos", "mose"):
        return None
    split = src.split or "train"
    root = Path(src.root)
    for meta in (root / split / "meta.json", root / "meta.json", root / f"meta_{split}.json"):
        if meta.is_file():
            videos = json.loads(meta.read_text(encoding="utf-8"))["videos"]
            out: dict[str, dict[str, set[int]]] = {}
            for name, video in videos.items():
                per_frame: dict[str, set[int]] = {}
                for obj_id, obj in video.get("objects", {}).items():
                    for frame in obj.get("frames", []):
                        per_frame.setdefault(frame, set()).add(int(obj_id))
                out[name] = per_frame
            return out
    return None


def check_video(item: VideoItem, problems: list[str], counts: Counter, meta: dict | None, kind: str) -> None:
    counts["sequences"] += 1
    counts["annotated frames"] += len(item)
    ids_seen: set[int] = set()
    first_ids: set[int] | None = None
    for i in range(len(item)):
        where = str(item.label_files[i]) if item.label_files and item.label_files[i] else \
            f"{item.name} frame {item.numbers[i]}"
        size = _size(item.images[i], problems)
        label = _label(item.labels[i], where, problems)
        if label is None or size is None:
            continue
        if label.shape != size:
            problems.append(f"{where}: mask is {label.shape[1]}x{label.shape[0]}, its frame "
                            f"{size[1]}x{size[0]}")
        ids = set(np.unique(label).tolist()) - {0}
        if not ids:
            problems.append(f"{where}: empty mask (no object)")
            counts["empty masks"] += 1
        if first_ids is None:
            first_ids = ids
        elif kind == "davis" and ids - first_ids:
            problems.append(f"{where}: object id(s) {sorted(ids - first_ids)} are not in the first frame")
        if meta is not None:
            listed = meta.get(Path(where).stem, set())
            if ids != listed:
                problems.append(f"{where}: ids {sorted(ids)} but meta.json lists {sorted(listed)}")
        ids_seen |= ids
    counts["objects"] += len(ids_seen)
    holes = _holes(item.numbers) if kind in ("davis", "mose", "video", "youtubevos") else []
    if holes:
        problems.append(f"{item.name}: frame number(s) missing from the sequence: {holes[:10]}"
                        + (" ..." if len(holes) > 10 else ""))


def _stray_masks(items: list[VideoItem], problems: list[str]) -> None:
    """Masks that no image matches (the reader skips them silently) in folder layouts."""
    for item in items:
        files = [p for p in item.label_files if p is not None]
        if not files:
            continue
        image_folder = Path(str(item.images[0])).parent
        images = set(images_in(image_folder))
        for mask in sorted(files[0].parent.glob("*.png")):
            if mask.stem not in images:
                problems.append(f"{mask}: mask without a frame (no {mask.stem}.jpg in {image_folder})")


def check_track(track: BoxTrack, problems: list[str], counts: Counter) -> None:
    counts["tracks"] += 1
    counts["frames"] += len(track)
    counts["visible boxes"] += int(track.visible.sum())
    present = np.flatnonzero(~track.absent if track.absent is not None else np.ones(len(track), bool))
    size = _size(track.images[present[0]], problems) if len(present) else None  # a video has one frame size
    if size is None:
        return
    h, w = size
    for i in present:
        box = track.boxes[i]
        x, y, bw, bh = box
        if not np.isfinite(box).all() or bw <= 0 or bh <= 0:
            problems.append(f"{track.name} frame {track.numbers[i]}: target present but its box is {box.tolist()}")
        elif x >= w or y >= h or x + bw <= 0 or y + bh <= 0:
            problems.append(f"{track.name} frame {track.numbers[i]}: box {box.tolist()} lies outside the "
                            f"{w}x{h} frame")
            counts["boxes out of frame"] += 1
        elif x < -1 or y < -1 or x + bw > w + 1 or y + bh > h + 1:
            counts["boxes partly out of frame"] += 1


def check_static(item: StaticItem, problems: list[str], counts: Counter) -> None:
    counts["images"] += 1
    where = str(item.label_file or item.name)
    size = _size(item.image_ref, problems)
    label = _label(item.load_label, where, problems)
    if size is None or label is None:
        return
    if label.shape != size:
        problems.append(f"{where}: mask is {label.shape[1]}x{label.shape[0]}, its image {size[1]}x{size[0]}")
    n = len(set(np.unique(label).tolist()) - {0})
    if n == 0:
        problems.append(f"{where}: empty mask (no object)")
        counts["empty masks"] += 1
    counts["objects"] += n


def check_dataset(src: DataSource, *, progress: bool | None = False) -> CheckReport:
    """Every check for one source; a root the reader cannot list is one problem. ``progress``: bars on
    stderr while the root is scanned and checked (None: on a terminal only)."""
    from trek_tracker.train.datasets import base

    report = CheckReport(src.kind, src.root)
    family = datasets.reader(src.kind).family

    def bar(items: list) -> Iterator:
        if progress is False:
            return iter(items)
        from tqdm import tqdm

        return iter(tqdm(items, desc=f"check {src.kind}", dynamic_ncols=True,
                         disable=None if progress is None else False))

    before, base.SCAN_PROGRESS = base.SCAN_PROGRESS, progress
    try:
        if family == "boxes":
            tracks = datasets.list_tracks(src)
            for track in bar(tracks):
                check_track(track, report.problems, report.counts)
            if src.mask_root:
                items = datasets.list_items(src)
                report.counts["sequences with masks"] = len(items)
                for item in bar(items):
                    check_video(item, report.problems, Counter(), None, src.kind)
        elif family == "video":
            items = datasets.list_items(src)
            meta = _meta_objects(src)
            for item in bar(items):
                check_video(item, report.problems, report.counts, None if meta is None else meta.get(item.name, {}),
                            src.kind)
            _stray_masks(items, report.problems)
        else:
            for item in bar(datasets.list_items(src)):
                check_static(item, report.problems, report.counts)
    except UserError as err:
        said = str(err)  # most name the root already
        report.problems.append(said if said.startswith(str(src.root)) else f"{src.root}: {said}")
    finally:
        base.SCAN_PROGRESS = before
    return report
