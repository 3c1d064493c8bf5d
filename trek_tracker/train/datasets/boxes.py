"""Box-track datasets in their published layouts: LaSOT, GOT-10k and EgoTracks.

They have no masks. ``trek-track train-data masks-from-boxes`` turns their boxes into masks with our box -> mask
stage and writes ``<out>/Annotations/<sequence>/<frame>.png``; a training source then names that folder
as ``mask_root`` (externally supplied masks, e.g. RTS's LaSOT masks, work the same way, laid out as
``<mask_root>/<sequence>/<frame>.png`` or ``<mask_root>/<class>/<sequence>/<frame>.png``). Only frames
that have a mask are sampled; the images come from the dataset itself.

- LaSOT: ``<class>/<class>-<n>/img/00000001.jpg``, ``groundtruth.txt`` (``x,y,w,h`` per line),
  ``full_occlusion.txt`` and ``out_of_view.txt`` (one line of 0/1 flags); the split lists
  ``training_set.txt`` / ``testing_set.txt`` of the protocol-II split when present at the root.
- GOT-10k: ``<split>/<sequence>/00000001.jpg``, ``groundtruth.txt``, ``absence.label`` (0/1 per frame),
  ``cover.label`` (visible share 0..8 per frame; 0, fully occluded, hides the target as absence does),
  ``<split>/list.txt``.
- EgoTracks: the annotation file ``egotracks_<split>.json`` (Ego4D ``videos -> clips -> annotations ->
  query_sets -> lt_track`` of ``{exported_clip_frame_number, x, y, width, height}``) and the frames that
  EgoTracks' extraction tool writes, ``frames/<clip_uid>/<frame_number>.jpg``. A track is one query set.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from trek_tracker.errors import InputError
from trek_tracker.train.datasets.base import (
    BoxTrack,
    VideoItem,
    file_video,
    frame_number,
    images_in,
    pick_subset,
    read_list,
    restrict,
    scanning,
)
from trek_tracker.train.datasets.source import DataSource


def read_box_file(path: Path) -> np.ndarray:
    """``x,y,w,h`` rows separated by commas, tabs or spaces; NaN rows stay NaN."""
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            vals = [float(v) for v in line.replace(",", " ").replace("\t", " ").split()]
        except ValueError:
            raise InputError(f"{path}: cannot read the box {line!r}") from None
        if len(vals) != 4:
            raise InputError(f"{path}: a box needs 4 values x,y,w,h, got {line!r}")
        rows.append(vals)
    return np.asarray(rows, np.float64).reshape(-1, 4)


def read_flags(path: Path, n: int) -> np.ndarray:
    """0/1 flags, one per frame, on one line (LaSOT) or one per line (GOT-10k); all 0 when absent."""
    if not path.is_file():
        return np.zeros(n, bool)
    vals = [v for v in path.read_text(encoding="utf-8").replace(",", " ").split() if v]
    flags = np.asarray([int(float(v)) for v in vals], bool)
    if len(flags) != n:
        raise InputError(f"{path}: {len(flags)} flags for {n} frames")
    return flags


def read_cover(path: Path, n: int) -> np.ndarray:
    """GOT-10k ``cover.label``: the visible share of the target in 9 levels, 0 = fully occluded; True where
    it is 0 (all False when the file is absent)."""
    if not path.is_file():
        return np.zeros(n, bool)
    try:
        levels = np.asarray([int(float(v)) for v in path.read_text(encoding="utf-8").replace(",", " ").split()])
    except ValueError:
        raise InputError(f"{path}: cover levels must be integers 0..8") from None
    if len(levels) != n:
        raise InputError(f"{path}: {len(levels)} cover levels for {n} frames")
    return levels == 0


def _track(name: str, folder: Path, image_folder: Path, hidden: list[Path], cover: Path | None = None
           ) -> BoxTrack:
    images = sorted(images_in(image_folder).values())
    gt = folder / "groundtruth.txt"
    if not gt.is_file():
        raise InputError(f"{folder}: groundtruth.txt not found")
    boxes = read_box_file(gt)
    if len(images) != len(boxes):
        raise InputError(f"{folder}: {len(images)} frames but {len(boxes)} boxes in groundtruth.txt")
    absent = np.zeros(len(boxes), bool)
    for flag_file in hidden:
        absent |= read_flags(flag_file, len(boxes))
    if cover is not None:  # GOT-10k: fully occluded (cover 0) hides the target, as pytracking's reader has it
        absent |= read_cover(cover, len(boxes))
    visible = ~absent & np.isfinite(boxes).all(1) & (boxes[:, 2] > 0) & (boxes[:, 3] > 0)
    numbers = [frame_number(p.stem) if frame_number(p.stem) is not None else i for i, p in enumerate(images)]
    return BoxTrack(name, images, boxes, visible, numbers, absent)


def _subset(names: list[str], src: DataSource) -> list[str]:
    names = restrict(names, src.sequences, src.exclude, src.root)
    return pick_subset(names, src.max_sequences, int(src.options.get("subset_seed", 0)))


# ---------------------------------------------------------------------------------------------- LaSOT
def _lasot_folders(root: Path) -> dict[str, Path]:
    found = {}
    for cls in sorted(p for p in root.iterdir() if p.is_dir()):
        for seq in sorted(p for p in cls.iterdir() if p.is_dir() and (p / "groundtruth.txt").is_file()):
            found[seq.name] = seq
    return found


def lasot_tracks(src: DataSource) -> list[BoxTrack]:
    root = Path(src.root)
    if not root.is_dir():
        raise InputError(f"LaSOT root {root} not found")
    folders = _lasot_folders(root)
    if not folders:
        raise InputError(f"{root} is not a LaSOT root: no <class>/<class>-<n>/groundtruth.txt found")
    names = sorted(folders)
    if src.split:
        lists = {"train": "training_set.txt", "test": "testing_set.txt"}
        if src.split not in lists:
            raise InputError(f"LaSOT split must be train or test, got {src.split!r}")
        listed = root / lists[src.split]
        if listed.is_file():
            wanted = set(read_list(listed))
            names = [n for n in names if n in wanted]
        else:
            raise InputError(f"{root}: {lists[src.split]} not found (the protocol-II split list of the LaSOT "
                             "toolkit); put it there or leave split unset to use every sequence")
    return [_track(n, folders[n], folders[n] / "img",
                   [folders[n] / "full_occlusion.txt", folders[n] / "out_of_view.txt"])
            for n in scanning(_subset(names, src), "LaSOT sequences")]


# ---------------------------------------------------------------------------------------------- GOT-10k
def got10k_tracks(src: DataSource) -> list[BoxTrack]:
    split = src.split or "train"
    root = Path(src.root)
    split_dir = root / split if (root / split).is_dir() else root
    listed = split_dir / "list.txt"
    if listed.is_file():
        names = read_list(listed)
    elif split_dir.is_dir():
        names = sorted(p.name for p in split_dir.iterdir() if (p / "groundtruth.txt").is_file())
    else:
        names = []
    if not names:
        raise InputError(f"{split_dir} is not a GOT-10k split folder: no list.txt and no sequence folders "
                         f"(point root at the GOT-10k folder that holds {split}/, or at {split}/ itself)")
    return [_track(n, split_dir / n, split_dir / n, [split_dir / n / "absence.label"], split_dir / n / "cover.label")
            for n in scanning(_subset(names, src), "GOT-10k sequences")]


# ---------------------------------------------------------------------------------------------- EgoTracks
def _egotracks_file(root: Path, split: str) -> Path:
    for path in (root / f"egotracks_{split}.json", root / "annotations" / f"egotracks_{split}.json",
                 root / f"{split}.json"):
        if path.is_file():
            return path
    raise InputError(f"{root}: EgoTracks annotations egotracks_{split}.json not found")


def _clip_extracted(clip: dict, key: str) -> bool:
    """Whether EgoTracks' frame extraction (``extract_ego4d_clip_annotated_frames.py``) takes this clip: it
    skips, whole, a clip with a query set that has no ``lt_track`` or a visual crop, response-track or
    lt_track box without a clip frame number (a failed frame-number conversion upstream)."""
    for ann in clip.get("annotations", []):
        for qset in ann.get("query_sets", {}).values():
            if "lt_track" not in qset or ("visual_crop" in qset and key not in qset["visual_crop"]):
                return False
            if any(key not in box for track in ("response_track", "lt_track") for box in qset.get(track) or []):
                return False
    return True


def egotracks_tracks(src: DataSource) -> list[BoxTrack]:
    split = src.split or "train"
    root = Path(src.root)
    path = _egotracks_file(root, split)
    try:
        videos = json.loads(path.read_text(encoding="utf-8"))["videos"]
    except (OSError, ValueError, KeyError) as err:
        raise InputError(f"cannot read EgoTracks annotations {path}: {err}") from None
    key = str(src.options.get("frame_key", "exported_clip_frame_number"))
    frames_root = root / "frames"
    tracks: dict[str, tuple[str, dict[int, list[float]]]] = {}
    for video in videos:
        for clip in video.get("clips", []):
            clip_uid = clip.get("exported_clip_uid")
            if not clip_uid or not _clip_extracted(clip, key):
                continue  # not exported, or its frames are not extracted (conversion errors upstream)
            for ann in clip.get("annotations", []):
                for target, qset in ann.get("query_sets", {}).items():
                    if not qset.get("is_valid", True) or "lt_track" not in qset:
                        continue
                    boxes = {int(f[key]): [f["x"], f["y"], f["width"], f["height"]] for f in qset["lt_track"]}
                    title = str(qset.get("object_title", "object")).replace("/", "-").replace(" ", "-")
                    tracks[f"{clip_uid}_{target}_{title}"] = (clip_uid, boxes)
    result = []
    for name in scanning(_subset(sorted(tracks), src), "EgoTracks tracks"):
        clip_uid, boxes = tracks[name]
        available = {frame_number(stem): p for stem, p in images_in(frames_root / clip_uid).items()}
        numbers = sorted(n for n in boxes if n in available)
        if not numbers:
            raise InputError(f"EgoTracks track {name}: no extracted frames under {frames_root / clip_uid} "
                             "(run EgoTracks' frame extraction first)")
        arr = np.asarray([boxes[n] for n in numbers], np.float64)
        visible = np.isfinite(arr).all(1) & (arr[:, 2] > 0) & (arr[:, 3] > 0)
        result.append(BoxTrack(name, [available[n] for n in numbers], arr, visible, numbers))
    if not result:
        raise InputError(f"no EgoTracks track in {path}")
    return result


# ---------------------------------------------------------------------------------------------- masks
def mask_folder(mask_root: Path, name: str) -> Path | None:
    """Where the masks of sequence ``name`` are: ``Annotations/<name>``, ``<name>`` or ``<class>/<name>``."""
    candidates = [mask_root / "Annotations" / name, mask_root / name]
    if "-" in name:
        candidates.append(mask_root / name.rsplit("-", 1)[0] / name)
    return next((c for c in candidates if c.is_dir()), None)


def videos_from_masks(tracks: list[BoxTrack], src: DataSource) -> list[VideoItem]:
    """Training videos of a box dataset: its frames that have a mask under ``mask_root``."""
    if not src.mask_root:
        raise InputError(f"data source {src.root} ({src.kind}) has boxes only: set mask_root to the masks made by "
                         f"'trek-track train-data masks-from-boxes {src.kind} {src.root} --out DIR' (or RTS's masks)")
    mask_root = Path(src.mask_root)
    if not mask_root.is_dir():
        raise InputError(f"mask_root {mask_root} not found")
    items = []
    for track in scanning(tracks, f"{src.kind} masks"):
        folder = mask_folder(mask_root, track.name)
        if folder is None:
            continue
        masks = {p.stem: p for p in folder.glob("*.png")}
        keep = [i for i, ref in enumerate(track.images) if Path(str(ref)).stem in masks]
        if keep:
            items.append(file_video(track.name, [track.images[i] for i in keep],
                                    [masks[Path(str(track.images[i])).stem] for i in keep],
                                    [track.numbers[i] for i in keep]))
    if not items:
        raise InputError(f"no masks for any {src.kind} sequence under {mask_root}")
    return items


TRACKS = {"lasot": lasot_tracks, "got10k": got10k_tracks, "egotracks": egotracks_tracks}


def list_box_videos(src: DataSource) -> list[VideoItem]:
    """Training videos of a box dataset (sequences without masks under ``mask_root`` are skipped)."""
    return videos_from_masks(TRACKS[src.kind](src), src)
