"""Track a whole video with a :class:`~trek_tracker.pipeline.Tracker` and write the run's files.

Files in the output folder:

- ``boxes.txt``: one ``x,y,w,h`` line per frame (TREK-150 result format, 3 decimals); line 0 is the given
  box. With several objects (an init mask with several ids) there is one ``boxes_<id>.txt`` per object
  instead, ``<id>`` being the object's value in the init mask.
- ``times.txt``: seconds per frame (line 0: box-to-mask and reference encoding).
- ``masks/<frame index>.png`` (``--save-masks``): label maps with the init mask's values and palette.
- ``overlay.mp4`` (``--overlay``): the video with masks and boxes drawn.
- ``run.json``: settings, model, checkpoint sha256, frame count, lost frames, timings, status.

Text files stream to ``<name>.part`` with a flush per frame and are renamed when the run finishes, so a
crash keeps every finished frame and never leaves a file that looks complete but is not. ``run.json`` is
written at the end in every case, with ``status`` ``complete``, ``interrupted`` or ``failed``.
"""

from __future__ import annotations

import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from trek_tracker import __version__
from trek_tracker.files import write_json
from trek_tracker.geometry import check_box_in_frame
from trek_tracker.pipeline import Tracker
from trek_tracker.results import ObjectIds, StreamingTextWriter, write_label_png
from trek_tracker.video import FrameSource, OverlayWriter, prefetch


@dataclass
class InitMask:
    """An init mask as read from a PNG: its labels, palette and the value of each object."""

    labels: np.ndarray  # original values
    palette: np.ndarray | None
    ids: ObjectIds


@dataclass
class RunOutputs:
    out_dir: Path
    save_masks: bool = False
    overlay: bool = False
    progress: bool = True


@dataclass
class RunSummary:
    frames: int
    lost: dict[str, list[int]]
    seconds: float
    files: list[str] = field(default_factory=list)


def _box_files(out_dir: Path, ids: ObjectIds) -> dict[int, Path]:
    if len(ids) == 1:
        return {1: out_dir / "boxes.txt"}
    return {i + 1: out_dir / f"boxes_{value}.txt" for i, value in enumerate(ids.values)}


def track_video(source: FrameSource, tracker: Tracker, outputs: RunOutputs, *, box: np.ndarray | None = None,
                init_mask: InitMask | None = None) -> RunSummary:
    """Run ``tracker`` over ``source`` from ``box`` or ``init_mask`` and write the run's files.

    Inputs are checked against the first frame before anything is written.
    """
    h, w = source.size
    if init_mask is not None:
        if init_mask.labels.shape != (h, w):
            mh, mw = init_mask.labels.shape
            from trek_tracker.errors import InputError

            raise InputError(f"init mask is {mw}x{mh} but the video is {w}x{h}; give a mask of the frame size")
        engine_labels = init_mask.ids.to_engine(init_mask.labels)
        ids, palette = init_mask.ids, init_mask.palette
    else:
        check_box_in_frame(box, (h, w))  # raises when the box lies wholly outside the frame
        engine_labels = None
        ids, palette = ObjectIds((255,)), None  # a box's mask is saved as 0/255 grayscale

    out = outputs.out_dir
    out.mkdir(parents=True, exist_ok=True)
    masks_dir = out / "masks"
    if outputs.save_masks:
        masks_dir.mkdir(exist_ok=True)
        for stale in masks_dir.glob("*.png"):
            stale.unlink()
    box_writers = {i: StreamingTextWriter(p) for i, p in _box_files(out, ids).items()}
    times = StreamingTextWriter(out / "times.txt")
    overlay = OverlayWriter(out / "overlay.mp4", source.fps, (h, w)) if outputs.overlay else None
    lost: dict[int, list[int]] = {i: [] for i in box_writers}
    status, error, n = "failed", None, 0
    started = time.perf_counter()
    try:
        bar = tqdm(total=len(source), unit="frame", desc=source.name, disable=not outputs.progress,
                   file=sys.stderr, dynamic_ncols=True)
        with bar:
            for index, frame in enumerate(prefetch(source)):
                if index == 0:
                    result = tracker.init(frame, box, mask=engine_labels)
                    if box is not None:
                        result.boxes[1] = np.asarray(box, dtype=np.float64)  # line 0 is the given box
                else:
                    result = tracker.step(frame)
                for i, writer in box_writers.items():
                    writer.write_box(result.boxes[i])
                    if result.lost.get(i):
                        lost[i].append(index)
                times.write_time(result.seconds)
                if outputs.save_masks:
                    write_label_png(masks_dir / f"{index:05d}.png", ids.to_original(result.labels), palette)
                if overlay is not None:
                    overlay.write(frame, result.labels, result.boxes)
                n = index + 1
                bar.update(1)
        status = "complete"
    except KeyboardInterrupt:
        status = "interrupted"
        raise
    except Exception as err:
        error = f"{type(err).__name__}: {err}"
        raise
    finally:
        files = []
        for writer in [*box_writers.values(), times]:
            if status == "complete":
                files.append(writer.commit().name)
            else:
                writer.close()
        if overlay is not None:
            if status == "complete":
                overlay.close()
                files.append("overlay.mp4")
            else:
                overlay.abort()
        if outputs.save_masks:
            files.append("masks/")
        seconds = time.perf_counter() - started
        by_value = {str(ids.values[i - 1]): v for i, v in lost.items()}
        record: dict[str, Any] = {
            "status": status,
            "error": error,
            "video": {"path": str(source.path), "name": source.name, "size": [h, w], "fps": source.fps,
                      "frames": n},
            "start": {"box": None if box is None else [float(v) for v in box],
                      "init_mask_ids": list(ids.values) if init_mask is not None else None},
            "tracker": tracker.describe(),
            "lost_frames": by_value,
            "seconds": round(seconds, 3),
            "fps": round(n / seconds, 3) if seconds > 0 else None,
            "files": files + ["run.json"],
            "software": {"trek_tracker": __version__, "python": platform.python_version(),
                         "torch": _torch_version()},
        }
        write_json(out / "run.json", record)
    return RunSummary(frames=n, lost=by_value, seconds=seconds, files=record["files"])


def _torch_version() -> str | None:
    try:
        import torch

        return torch.__version__
    except ImportError:  # pragma: no cover
        return None
