"""Frame sources (video files, image folders) and the overlay video writer.

Frames are read lazily, one at a time, as RGB ``uint8`` arrays of shape (H, W, 3): memory does not grow
with the length of the video (user need 1), and tracking can start before the last frame is decoded.

Decoding note (measured on DAVIS blackswan, OpenCV 5.0 / FFmpeg): the H.264 ``videos/blackswan.mp4`` and
the JPEG folder ``davis/JPEGImages/480p/blackswan`` have the same 50 frames of 854x480; per pixel and
channel they differ by mean |Δ| = 4.46 and max |Δ| = 83 (both are lossy encodings of the same source;
90 % of values differ by less than 10, 99.96 % by less than 30). Reading one as BGR and the other as RGB
gives mean |Δ| = 19.7, which is what the tests use to catch a colour-order bug. Results computed from a video
file and from its extracted frames are therefore close but not bit-identical.
"""

from __future__ import annotations

import os
import queue
import re
import threading
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TypeVar

import cv2
import numpy as np

from trek_tracker.errors import InputError, UserError

__all__ = [
    "IMAGE_EXTENSIONS",
    "FrameSource",
    "ImageFolderSource",
    "VideoFileSource",
    "ArraySource",
    "open_frames",
    "prefetch",
    "natural_key",
    "id_color",
    "draw_overlay",
    "OverlayWriter",
]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")

_DIGITS = re.compile(r"(\d+)")


def natural_key(name: str) -> tuple:
    """Sort key that orders digit runs by value: ``2.jpg`` before ``10.jpg``, ``f2`` before ``f10``."""
    return tuple((0, int(p), p) if p.isdigit() else (1, 0, p.lower()) for p in _DIGITS.split(name) if p)


class FrameSource:
    """A sequence of RGB uint8 frames (H, W, 3), read lazily.

    Attributes: ``path`` (what was opened), ``name`` (folder name or file stem), ``size`` ``(h, w)``,
    ``fps`` (None when unknown, e.g. image folders). ``len()`` is exact for folders and an estimate for
    video files until they have been iterated once (see :class:`VideoFileSource`). Every ``iter()`` starts
    from frame 0 and holds one frame at a time.
    """

    path: Path
    name: str
    size: tuple[int, int]
    fps: float | None

    def __iter__(self) -> Iterator[np.ndarray]:
        raise NotImplementedError

    def __len__(self) -> int:
        raise NotImplementedError

    def __bool__(self) -> bool:  # a source always has at least one frame (checked at open time)
        return True

    def __getitem__(self, index: int) -> np.ndarray:
        raise NotImplementedError

    def __repr__(self) -> str:
        h, w = self.size
        return f"{type(self).__name__}({str(self.path)!r}, frames={len(self)}, size={w}x{h}, fps={self.fps})"


def _bgr_to_rgb(img: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


class ImageFolderSource(FrameSource):
    """Frames from a folder of ``.jpg``/``.jpeg``/``.png`` files (any case), in natural order.

    Hidden files (``.name``) are ignored. Random access (``source[i]``) is exact and cheap. Every frame must
    have the size of the first one; a different size raises :class:`InputError` naming the file, when that
    frame is read. Images are decoded with OpenCV (EXIF orientation applied), grey images become 3 channels
    and alpha channels are dropped.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.name = self.path.resolve().name
        self.fps = None
        try:
            entries = [e for e in os.listdir(self.path) if not e.startswith(".")]
        except OSError as err:
            raise InputError(f"cannot list frame folder {self.path}: {err.strerror}") from None
        if not entries:
            raise InputError(f"frame folder {self.path} is empty; put the video's frames there as .jpg/.png")
        files = [e for e in entries if e.lower().endswith(IMAGE_EXTENSIONS) and (self.path / e).is_file()]
        if not files:
            shown = ", ".join(sorted(entries, key=natural_key)[:5])
            raise InputError(
                f"frame folder {self.path} has no .jpg/.jpeg/.png images (found: {shown}"
                f"{', ...' if len(entries) > 5 else ''})"
            )
        self.files: list[Path] = [self.path / f for f in sorted(files, key=natural_key)]
        first = self._read(0, check_size=False)
        self.size = (int(first.shape[0]), int(first.shape[1]))

    def _read(self, index: int, check_size: bool = True) -> np.ndarray:
        file = self.files[index]
        img = cv2.imread(str(file), cv2.IMREAD_COLOR)
        if img is None:
            raise InputError(f"cannot decode image {file}; is it a valid JPEG/PNG file?")
        if check_size and img.shape[:2] != self.size:
            h, w = self.size
            raise InputError(
                f"frame {file} is {img.shape[1]}x{img.shape[0]}, but the folder's first frame "
                f"{self.files[0].name} is {w}x{h}; all frames of a video must have the same size"
            )
        return _bgr_to_rgb(img)

    def __len__(self) -> int:
        return len(self.files)

    def __iter__(self) -> Iterator[np.ndarray]:
        for i in range(len(self.files)):
            yield self._read(i)

    def __getitem__(self, index: int) -> np.ndarray:
        n = len(self.files)
        if not -n <= index < n:
            raise IndexError(f"frame {index} out of range for {n} frames in {self.path}")
        return self._read(index % n)


class VideoFileSource(FrameSource):
    """Frames decoded from a video file by OpenCV (anything its FFmpeg backend reads).

    ``len()`` is the container's frame count, an *estimate* (containers can be wrong, especially with
    variable frame rate); after one full iteration it is the exact number of decoded frames
    (``len_is_exact`` tells which). Random access ``source[i]`` is exact but sequential: moving forward
    decodes and skips frames, moving backward reopens the file and decodes from the start, so it costs up to
    O(i) decodes. Read frames in order (``iter``) wherever possible; for random access over a long video,
    extract the frames to a folder.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.name = self.path.stem
        cap = self._open()
        ok, frame = cap.read()
        if not ok or frame is None:
            cap.release()
            raise InputError(f"cannot decode any frame of {self.path}; the file is corrupt or not a video")
        self.size = (int(frame.shape[0]), int(frame.shape[1]))
        fps = cap.get(cv2.CAP_PROP_FPS)
        self.fps = float(fps) if fps and np.isfinite(fps) and fps > 0 else None
        count = cap.get(cv2.CAP_PROP_FRAME_COUNT)
        self._estimate = int(count) if count and np.isfinite(count) and count > 0 else 1
        self._exact: int | None = None
        # A capture kept open for random access; ``_pos`` is the index of the frame it reads next.
        self._cap: cv2.VideoCapture | None = cap
        self._pos = 1
        self._first = frame

    def _open(self) -> cv2.VideoCapture:
        cap = cv2.VideoCapture(str(self.path))
        if not cap.isOpened():
            cap.release()
            raise InputError(f"cannot open video {self.path}; it is corrupt or not a video OpenCV can read")
        return cap

    @property
    def len_is_exact(self) -> bool:
        return self._exact is not None

    def __len__(self) -> int:
        return self._exact if self._exact is not None else self._estimate

    def _check(self, frame: np.ndarray, index: int) -> np.ndarray:
        if frame.shape[:2] != self.size:
            h, w = frame.shape[:2]
            raise InputError(f"frame {index} of {self.path} changes size to {w}x{h}")
        return _bgr_to_rgb(frame)

    def __iter__(self) -> Iterator[np.ndarray]:
        cap = self._open()
        n = 0
        try:
            while True:
                ok, frame = cap.read()
                if not ok or frame is None:
                    break
                yield self._check(frame, n)
                n += 1
        finally:
            cap.release()
        self._exact = n

    def __getitem__(self, index: int) -> np.ndarray:
        if index < 0:
            if self._exact is None:
                raise IndexError(f"negative frame index on {self.path} before its length is known")
            index += self._exact
        if index < 0 or (self._exact is not None and index >= self._exact):
            raise IndexError(f"frame {index} out of range for {len(self)} frames in {self.path}")
        if index == 0:
            return _bgr_to_rgb(self._first)
        if self._cap is None or index < self._pos:
            self.close()
            self._cap, self._pos = self._open(), 0
        while self._pos < index:
            if not self._cap.grab():
                self._exact = self._pos
                raise IndexError(f"frame {index} out of range: {self.path} has {self._pos} frames")
            self._pos += 1
        ok, frame = self._cap.read()
        if not ok or frame is None:
            self._exact = self._pos
            raise IndexError(f"frame {index} out of range: {self.path} has {self._pos} frames")
        self._pos += 1
        return self._check(frame, index)

    def close(self) -> None:
        """Release the capture kept for random access (iteration uses its own)."""
        if self._cap is not None:
            self._cap.release()
            self._cap = None

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass


class ArraySource(FrameSource):
    """Frames already in memory: an (N, H, W, 3) uint8 array or a sequence of (H, W, 3) arrays, in RGB.

    For callers that decode frames themselves (user need 4). Frames are checked for shape and dtype when
    read, like the other sources.
    """

    def __init__(
        self, frames: np.ndarray | Sequence[np.ndarray], fps: float | None = None, name: str = "frames"
    ) -> None:
        if len(frames) == 0:
            raise InputError("no frames given")
        self._frames = frames
        self.path = Path(name)
        self.name = name
        self.fps = fps
        first = self._check(0)
        self.size = (int(first.shape[0]), int(first.shape[1]))

    def _check(self, index: int) -> np.ndarray:
        frame = np.asarray(self._frames[index])
        if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
            raise InputError(
                f"frame {index} must be an RGB uint8 array (H, W, 3), got {frame.dtype} {frame.shape}"
            )
        if index and frame.shape[:2] != self.size:
            raise InputError(
                f"frame {index} is {frame.shape[1]}x{frame.shape[0]}, the first frame is "
                f"{self.size[1]}x{self.size[0]}"
            )
        return frame

    def __len__(self) -> int:
        return len(self._frames)

    def __iter__(self) -> Iterator[np.ndarray]:
        for i in range(len(self._frames)):
            yield self._check(i)

    def __getitem__(self, index: int) -> np.ndarray:
        n = len(self._frames)
        if not -n <= index < n:
            raise IndexError(f"frame {index} out of range for {n} frames")
        return self._check(index % n)


def open_frames(path: str | os.PathLike | np.ndarray | Sequence[np.ndarray]) -> FrameSource:
    """Open a video file or a folder of images as a lazy :class:`FrameSource`.

    Frames already in memory (an (N, H, W, 3) array or a list of arrays) are wrapped in an
    :class:`ArraySource`.

    Raises :class:`InputError` for a missing path, an undecodable video (the first frame is decoded here),
    an empty folder or a folder without images.
    """
    if isinstance(path, (np.ndarray, list, tuple)):
        return ArraySource(path)
    p = Path(path)
    if not p.exists():
        raise InputError(f"no such video file or frame folder: {p}")
    if p.is_dir():
        return ImageFolderSource(p)
    if p.suffix.lower() in IMAGE_EXTENSIONS:
        raise InputError(f"{p} is a single image; pass the folder that holds the video's frames")
    return VideoFileSource(p)


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
        labels = labels.astype(np.int64)
        ids = np.unique(labels)
        lut = np.zeros((int(ids.max()) + 1, 3), dtype=np.float32)
        for i in ids[ids > 0]:
            lut[i] = id_color(int(i))
        fg = labels > 0
        out[fg] = np.round((1 - alpha) * out[fg] + alpha * lut[labels[fg]]).astype(np.uint8)
    if boxes is not None:
        items = boxes.items() if isinstance(boxes, Mapping) else [(1, boxes)]
        for obj_id, box in items:
            b = np.asarray(box, dtype=np.float64)
            if not np.all(np.isfinite(b)):
                continue
            cv2.polylines(out, [_box_points(b)], True, id_color(int(obj_id)), thickness, cv2.LINE_AA)
    return out


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
        if self._writer is None:
            raise RuntimeError("OverlayWriter is closed")
        if tuple(frame.shape[:2]) != self.size:
            raise InputError(f"frame of size {frame.shape[:2]} does not match the overlay's size {self.size}")
        img = draw_overlay(frame, mask, boxes)
        self._writer.write(cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
        self.frames += 1

    def close(self) -> None:
        """Finish the video and move it into place."""
        if self._writer is None:
            return
        self._writer.release()
        self._writer = None
        os.replace(self._tmp, self.path)

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


_DONE = object()
_Frame = TypeVar("_Frame")


def prefetch(frames: Iterable[_Frame], depth: int = 2) -> Iterator[_Frame]:
    """Iterate ``frames`` while a background thread decodes up to ``depth`` frames ahead.

    OpenCV releases the GIL while decoding, so decoding overlaps with tracking; the tracker's timed
    ``init``/``update`` calls then exclude decoding, as the toolkit's timing does (docs/trek150.md#timing). Memory
    stays bounded by ``depth`` frames. Errors of the source are raised here, at the frame where they
    occurred; stopping early (``break``) stops the thread. Any iterable works: the arrays of a
    :class:`FrameSource`, or the ``PIL`` images the evaluation runner hands to trackers.
    """
    q: queue.Queue = queue.Queue(maxsize=max(1, depth))
    stop = threading.Event()

    def put(item: object) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            for frame in frames:
                if not put(frame):
                    return
        except BaseException as err:  # noqa: BLE001 - handed to the consumer
            put(err)
            return
        put(_DONE)

    thread = threading.Thread(target=work, name="frame-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join()
