"""VIPSeg (video panoptic segmentation) in its published 720p layout, as its ``change2_720p.py`` writes it:

    VIPSeg_720P/images/<video>/<frame>.jpg
    VIPSeg_720P/panomasks/<video>/<frame>.png     one value per segment (0: unlabelled), consistent over time
    train.txt / val.txt / test.txt               video names of each split (beside or above VIPSeg_720P)

Every segment (stuff region or thing instance) is an object; ``options.min_value`` keeps only segments whose
value is at least that (e.g. the thing instances, whose values lie above the stuff classes'). Segment values
exceed 255 and are made consecutive per clip by the clip sampler.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from trek_tracker.errors import InputError
from trek_tracker.train.datasets.base import VideoItem, file_video, images_in, read_list, restrict, scanning
from trek_tracker.train.datasets.source import DataSource


class PanopticReader:
    """Reads a panomask (8- or 16-bit PNG) as segment values, dropping values below ``min_value``."""

    def __init__(self, min_value: int = 1) -> None:
        self.min_value = min_value

    def __call__(self, path: Path) -> np.ndarray:
        arr = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if arr is None:
            raise InputError(f"cannot read VIPSeg mask {path}")
        if arr.ndim == 3:
            raise InputError(f"{path}: VIPSeg panomasks are single-channel (use panomasks/, not panomasksRGB/)")
        arr = arr.astype(np.int64)
        return np.where(arr >= self.min_value, arr, 0)


def list_vipseg(src: DataSource) -> list[VideoItem]:
    top = Path(src.root)
    root = top / "VIPSeg_720P" if (top / "VIPSeg_720P").is_dir() else top
    img_dir, ann_dir = root / "images", root / "panomasks"
    if not img_dir.is_dir() or not ann_dir.is_dir():
        raise InputError(f"{src.root} is not a VIPSeg root: VIPSeg_720P/images/ and VIPSeg_720P/panomasks/ "
                         "are missing (run VIPSeg's change2_720p.py first)")
    split = src.split or "train"
    listed = next((p for p in (root / f"{split}.txt", top / f"{split}.txt") if p.is_file()), None)
    if listed is None:
        raise InputError(f"VIPSeg split list {split}.txt not found in {root} or {top}")
    names = restrict(read_list(listed), src.sequences, src.exclude, str(listed))
    reader = PanopticReader(int(src.options.get("min_value", 1)))
    items = []
    for name in scanning(names, "VIPSeg videos"):
        images = images_in(img_dir / name)
        labels = sorted(p for p in (ann_dir / name).glob("*.png") if p.stem in images)
        if labels:
            items.append(file_video(name, [images[p.stem] for p in labels], labels, reader=reader))
    if not items:
        raise InputError(f"no VIPSeg video of {listed} has frames and masks")
    return items
