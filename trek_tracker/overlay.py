"""The overlay video: each frame with its objects' masks tinted and boxes outlined, in the DAVIS palette.

Drawing (:func:`draw_overlay`) is separate from writing (:class:`OverlayWriter`) so that a run draws frames in
a thread pool and writes them in order; the video appears whole or not at all.
"""

from __future__ import annotations

import errno
import os
import shutil
import uuid
from collections.abc import Mapping
from pathlib import Path

import cv2
import numpy as np

from trek_tracker.errors import InputError, UserError

__all__ = ["id_color", "draw_overlay", "check_overlay_encoder", "OverlayWriter"]


def id_color(obj_id: int) -> tuple[int, int, int]:
    """RGB colour of object ``obj_id`` in the DAVIS/PASCAL palette (1 red, 2 green, 3 yellow, ...)."""
    r = g = b = 0
    c = int(obj_id)
    for j in range(8):
        r |= ((c >> 0) & 1) << (7 - j)
        g |= ((c >> 1) & 1) << (7 - j)
        b |= ((c >> 2) & 1) << (7 - j)
        c >>= 3
    return r, g, b


def _box_points(box: np.ndarray) -> np.ndarray:
    b = np.asarray(box, dtype=np.float64).reshape(-1)
    if b.size == 4:
        x, y, w, h = b
        b = np.array([x, y, x + w, y, x + w, y + h, x, y + h])
    if b.size != 8:
        raise ValueError(f"a box is 4 values x,y,w,h or 8 polygon values, got {b.size}")
    return np.round(b.reshape(4, 2)).astype(np.int32)


def draw_overlay(
    frame: np.ndarray,
    mask: np.ndarray | None = None,
    boxes: np.ndarray | Mapping[int, np.ndarray] | None = None,
    alpha: float = 0.5,
    thickness: int = 2,
) -> np.ndarray:
    """Frame (RGB) with each object's mask tinted in its colour and its box outlined; returns a new array.

    ``mask``: bool (object 1) or an integer label map (0 = background). ``boxes``: one box (object 1) or
    ``{object id: box}``; a box is ``x,y,w,h`` or an 8-value polygon.
    """
    out = np.array(frame, dtype=np.uint8, copy=True)
    if mask is not None:
        labels = np.asarray(mask)
        if labels.shape != out.shape[:2]:
            raise InputError(f"mask of shape {labels.shape} does not match the frame {out.shape[:2]}")
        rows, cols = np.flatnonzero(labels.any(axis=1)), np.flatnonzero(labels.any(axis=0))
        if rows.size:  # tint inside the objects' extent only: a 1080p frame is mostly background
            crop = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
            labels = labels[crop].astype(np.uint8 if labels.dtype in (bool, np.uint8) else np.int64)
            ids = np.flatnonzero(np.bincount(labels.ravel()))
            lut = np.zeros((int(ids.max()) + 1, 3), dtype=np.float32)
            for i in ids[ids > 0]:
                lut[i] = id_color(int(i))
            fg, region = labels > 0, out[crop]
            region[fg] = np.round((1 - alpha) * region[fg] + alpha * lut[labels[fg]]).astype(np.uint8)
    if boxes is not None:
        items = boxes.items() if isinstance(boxes, Mapping) else [(1, boxes)]
        for obj_id, box in items:
            b = np.asarray(box, dtype=np.float64)
            if not np.all(np.isfinite(b)):
                continue
            cv2.polylines(out, [_box_points(b)], True, id_color(int(obj_id)), thickness, cv2.LINE_AA)
    return out


def check_overlay_encoder() -> None:
    """A :class:`UserError` when this OpenCV cannot write the overlay video: checked before a run writes
    anything, so that ``--overlay`` never fails after an earlier run in the folder was replaced."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="trek-track-") as folder:
        writer = cv2.VideoWriter(os.path.join(folder, "probe.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), 30.0, (16, 16))
        ok = writer.isOpened()
        writer.release()
    if not ok:
        raise UserError("cannot write overlay videos: this OpenCV build has no mp4v encoder; run without --overlay "
                        "(or install opencv-python-headless from PyPI)")


def _write_failure(path: Path) -> tuple[int, str]:
    """The likely ``(errno, reason)`` of a write to ``path`` that failed without saying why."""
    code = errno.EIO
    if shutil.disk_usage(path.parent).free < (1 << 20):
        code = errno.ENOSPC
    else:
        try:
            import resource

            limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
            if limit != resource.RLIM_INFINITY and path.stat().st_size >= limit:
                code = errno.EFBIG
        except (ImportError, OSError):
            pass
    return code, os.strerror(code)


class OverlayWriter:
    """Writes an MP4 (``mp4v``) of frames with masks tinted per object id and boxes drawn.

    The video is written to a hidden temporary file beside ``path`` and moved into place on
    :meth:`close`, so ``path`` is either absent or complete. As a context manager it closes on success and
    removes the temporary file when the block raises. ``size`` is ``(h, w)`` like ``FrameSource.size``.
    """

    def __init__(self, path: str | os.PathLike, fps: float | None, size: tuple[int, int]) -> None:
        self.path = Path(path)
        self.size = (int(size[0]), int(size[1]))
        self.fps = float(fps) if fps and fps > 0 else 30.0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        suffix = self.path.suffix or ".mp4"
        self._tmp = self.path.with_name(f".{self.path.stem}.{uuid.uuid4().hex[:8]}.tmp{suffix}")
        h, w = self.size
        self._writer = cv2.VideoWriter(str(self._tmp), cv2.VideoWriter_fourcc(*"mp4v"), self.fps, (w, h))
        if not self._writer.isOpened():
            self._writer.release()
            self._tmp.unlink(missing_ok=True)
            raise UserError(
                f"cannot write video {self.path} (OpenCV has no mp4v encoder, or the folder is not writable)"
            )
        self.frames = 0

    def write(
        self,
        frame: np.ndarray,
        mask: np.ndarray | None = None,
        boxes: np.ndarray | Mapping[int, np.ndarray] | None = None,
    ) -> None:
        """Append one RGB frame with its overlay (see :func:`draw_overlay`)."""
        self.check(frame)
        self.append(draw_overlay(frame, mask, boxes))

    def check(self, frame: np.ndarray) -> None:
        """An :class:`InputError` unless ``frame`` has the video's size."""
        if tuple(frame.shape[:2]) != self.size:
            raise InputError(f"frame of size {frame.shape[:2]} does not match the overlay's size {self.size}")

    def append(self, drawn: np.ndarray) -> None:
        """Append an RGB frame already drawn (:func:`draw_overlay` may run in other threads)."""
        if self._writer is None:
            raise RuntimeError("OverlayWriter is closed")
        self.check(drawn)
        self._writer.write(cv2.cvtColor(drawn, cv2.COLOR_RGB2BGR))
        self.frames += 1

    def close(self) -> None:
        """Finish the video and move it into place, once it reads back with every frame written."""
        if self._writer is None:
            return
        self._writer.release()
        self._writer = None
        try:
            self._check_written()
        except BaseException:
            self._tmp.unlink(missing_ok=True)
            raise
        os.replace(self._tmp, self.path)

    def _check_written(self) -> None:
        """An ``OSError`` naming ``path`` unless the finished file holds all the frames appended: OpenCV's
        writer reports a failed write (a full disk, a file-size limit) only as a warning on the console, and
        its MP4 then lacks the index written last, which a reader needs (opening it fails)."""
        if self.frames == 0:  # nothing to read back: OpenCV writes no index for an empty video
            return
        video = cv2.VideoCapture(str(self._tmp))
        try:
            count = int(video.get(cv2.CAP_PROP_FRAME_COUNT)) if video.isOpened() else -1
        finally:
            video.release()
        if count == self.frames:
            return
        raise OSError(*_write_failure(self._tmp), str(self.path))

    def abort(self) -> None:
        """Stop and delete the temporary file; ``path`` is left untouched."""
        if self._writer is not None:
            self._writer.release()
            self._writer = None
        self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> OverlayWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
