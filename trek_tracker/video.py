"""Frame sources (video files, image folders) and decoding ahead (:func:`prefetch`).

Frames are read lazily, one at a time, as RGB ``uint8`` arrays of shape (H, W, 3): memory does not grow
with the length of the video (user need 1), and tracking can start before the last frame is decoded.

Decoding note (measured on DAVIS blackswan, OpenCV 5.0 / FFmpeg): the H.264 ``videos/blackswan.mp4`` and
the JPEG folder ``davis/JPEGImages/480p/blackswan`` have the same 50 frames of 854x480; per pixel and
channel they differ by mean |Δ| = 4.46 and max |Δ| = 83 (both are lossy encodings of the same source;
90 % of values differ by less than 10, 99.96 % by less than 30). Reading one as BGR and the other as RGB
gives mean |Δ| = 19.7, which is what the tests use to catch a colour-order bug. Results computed from a video
file and from its extracted frames are therefore close but not bit-identical.

Damaged input (how a truncated video or image is reported)
----------------------------------------------------------
Decoders hide damage: OpenCV decodes a JPEG cut short without an error (libjpeg only prints "Premature
end of JPEG file" on stderr and fills the rest grey), and a video whose end is missing or whose middle is
corrupt just stops early, like a complete one. The sources therefore check for themselves:

* an image frame is read as bytes first; a JPEG without its end-of-image marker (after the last scan) or a
  PNG without its ``IEND`` chunk is *truncated*, a JPEG whose marker structure is broken is *damaged*
  (:func:`image_damage`); an empty (0-byte) file or one that no decoder reads is an
  :class:`~trek_tracker.errors.InputError` naming the file;
* a video is *truncated* when it decodes fewer frames than its container lists (MP4/MOV list the exact
  count; other containers estimate it from the duration, so there one frame of slack is allowed); an
  MP4/MOV without its ``moov`` index (a download or recording cut short) cannot be opened at all, and the
  error says so.

Damage that still leaves usable frames (a truncated or damaged image, decoded as far as it goes, silently
by PIL; a video whose frames up to the damage are decoded) is **not** an error by default: each problem
is logged once, as a warning on the ``trek_tracker.video`` logger, and recorded in ``source.damage``, a
list of :class:`InputDamage` (file, first affected frame, kind, one-line message). Whoever runs over a
source reads ``source.damage`` when the iteration ends and records it (a run's ``run.json``) instead of
calling the run complete without a word; it need not print it again. With ``strict=True`` a source raises
:class:`DamagedInputError` (an ``InputError``) at the frame where the damage is found instead.

FFmpeg's own log lines (``moov atom not found``, ``error while decoding MB ...``) are silenced by setting
``OPENCV_FFMPEG_LOGLEVEL=-8`` (quiet) when this module is imported, unless the variable is already set;
OpenCV reads it when its FFmpeg backend is first used. Our one line says what went wrong instead.
"""

from __future__ import annotations

import collections
import contextlib
import io
import itertools
import logging
import os
import queue
import re
import sys
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

# Before OpenCV's FFmpeg backend is first used (it reads the variable then): FFmpeg prints nothing itself.
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from trek_tracker.errors import InputError  # noqa: E402

__all__ = [
    "IMAGE_EXTENSIONS",
    "FrameSource",
    "InputDamage",
    "DamagedInputError",
    "decode_rgb",
    "image_damage",
    "read_image_rgb",
    "pil_to_rgb",
    "ImageFolderSource",
    "VideoFileSource",
    "ArraySource",
    "open_frames",
    "prefetch",
    "natural_key",
]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
# Still-image formats that OpenCV's FFmpeg backend would otherwise open as a one-frame "video".
_STILL_IMAGE_EXTENSIONS = (".bmp", ".dib", ".tif", ".tiff", ".webp", ".jp2", ".jpe", ".jfif", ".pbm", ".pgm",
                           ".ppm", ".pnm", ".exr", ".hdr")
_REPORT_LOCK = threading.Lock()

_DIGITS = re.compile(r"(\d+)")
# A video reaches a start frame by decoding every frame before it; from this many on, a bar shows it.
_SKIP_BAR_FRAMES = 1000


def natural_key(name: str) -> tuple:
    """Sort key that orders digit runs by value: ``2.jpg`` before ``10.jpg``, ``f2`` before ``f10``."""
    return tuple((0, int(p), p) if p.isdigit() else (1, 0, p.lower()) for p in _DIGITS.split(name) if p)


log = logging.getLogger(__name__)


@dataclass(frozen=True)
class InputDamage:
    """One damaged input found while reading frames (see the module docstring).

    ``file``: the damaged file (the video, or one frame image); ``frame``: index of the first frame it
    affects; ``kind``: ``"truncated-video"``, ``"truncated-image"`` or ``"damaged-image"`` (a broken JPEG
    structure); ``message``: one line naming the file, what is wrong and what it means for the frames.
    """

    file: Path
    frame: int | None
    kind: str
    message: str

    def to_dict(self) -> dict:
        """JSON-ready form (for ``run.json``)."""
        return {"file": str(self.file), "frame": self.frame, "kind": self.kind, "message": self.message}


class DamagedInputError(InputError):
    """Raised instead of a warning by sources opened with ``strict=True``; ``damage`` says what and where."""

    def __init__(self, damage: InputDamage) -> None:
        super().__init__(damage.message)
        self.damage = damage


_JPEG_SIGNATURE = b"\xff\xd8\xff"
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_JPEG_STANDALONE = frozenset([0x01, *range(0xD0, 0xD8)])  # TEM, RST0-7: markers without a length
# In entropy-coded data, FF is followed by 00 (a stuffed byte), a restart marker or fill; else a marker starts.
_JPEG_NEXT_MARKER = re.compile(rb"\xff(?=[^\x00\xd0-\xd7\xff])")


_JPEG_CUT = "truncated (the JPEG data ends before its end-of-image marker)"


def _jpeg_problem(data: bytes) -> str | None:
    """What is wrong with a JPEG's marker structure, or None when it reaches its end-of-image marker (EOI
    after the last scan).

    Segments are skipped by their length (so an EXIF thumbnail's own EOI does not count) and entropy-coded
    data is scanned for the next marker (``FF`` followed by neither ``00`` nor a restart marker). Bytes after
    the EOI (camera trailers) are allowed. Running out of data is *truncated*; anything else that breaks
    the structure (libjpeg skips it with a warning on stderr) is *damaged*.
    """
    n, i = len(data), 2
    while i < n:
        if data[i] != 0xFF:
            return f"damaged (no JPEG marker at byte {i})"
        while i < n and data[i] == 0xFF:  # fill bytes
            i += 1
        if i >= n:
            return _JPEG_CUT
        marker = data[i]
        i += 1
        if marker == 0xD9:
            return None
        if marker in _JPEG_STANDALONE:
            continue
        if i + 2 > n:
            return _JPEG_CUT
        length = int.from_bytes(data[i:i + 2], "big")
        if length < 2:
            return f"damaged (a JPEG segment of length {length} at byte {i})"
        end = i + length
        if end > n:
            return _JPEG_CUT
        if marker != 0xDA:
            i = end
            continue
        found = _JPEG_NEXT_MARKER.search(data, end)  # start of scan: entropy-coded data up to the next marker
        if found is None:
            return _JPEG_CUT
        i = found.start()
    return _JPEG_CUT


def _png_complete(data: bytes) -> bool:
    """Whether a PNG's chunk chain reaches its ``IEND`` chunk."""
    n, i = len(data), 8
    while i + 8 <= n:
        length = int.from_bytes(data[i:i + 4], "big")
        kind = data[i + 4:i + 8]
        if kind == b"IEND":
            return i + 12 + length <= n  # its CRC too: libpng refuses a file cut inside it
        i += 12 + length
    return False


def image_damage(data: bytes) -> str | None:
    """What is wrong with the bytes of a JPEG or PNG file, or None when they look whole.

    ``"empty (0 bytes)"``, ``"truncated (...)"`` (the data ends early) or ``"damaged (...)"`` (the marker
    structure is broken); the bytes of other formats are not checked. Cheap: the marker/chunk structure is
    walked without decoding.
    """
    if not data:
        return "empty (0 bytes)"
    if len(data) < 8 and (_JPEG_SIGNATURE.startswith(data) or _PNG_SIGNATURE.startswith(data)):
        return "truncated (it ends inside its signature)"
    if data[:3] == _JPEG_SIGNATURE:
        return _jpeg_problem(data)
    if data[:8] == _PNG_SIGNATURE:
        return None if _png_complete(data) else "truncated (the PNG data ends before its IEND chunk)"
    return None


_PIL_TRUNCATED = threading.Lock()


def pil_to_rgb(im, path: str | os.PathLike | None = None):
    """A PIL image as 8-bit RGB: 16-bit images are scaled (value >> 8, as OpenCV reads them) instead of
    clipped, which turns most of a 16-bit image white; palette and alpha images are converted as usual.
    32-bit float images are refused with an :class:`InputError` naming ``path``: their range is unknown."""
    from PIL import Image

    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N") or (im.mode == "I" and np.asarray(im).max(initial=0) > 255):
        arr = np.asarray(im).astype(np.int64)
        if arr.min(initial=0) < 0 or arr.max(initial=0) > 65535:
            raise InputError(f"image {path or ''} has {im.mode} values outside 0..65535; save it as 8-bit RGB")
        im = Image.fromarray((arr >> 8).astype(np.uint8), "L")
    elif im.mode == "F":
        raise InputError(f"image {path or ''} holds 32-bit float values; save it as 8-bit RGB (JPEG or PNG)")
    return im if im.mode == "RGB" else im.convert("RGB")


def _decode_partial(data: bytes, path: Path) -> np.ndarray | None:
    """Decode what a truncated or damaged image holds, silently (OpenCV's libjpeg would print on stderr)."""
    from PIL import Image, ImageFile, ImageOps

    with _PIL_TRUNCATED:  # the flag is global in PIL; held only while this image loads
        before = ImageFile.LOAD_TRUNCATED_IMAGES
        ImageFile.LOAD_TRUNCATED_IMAGES = True
        try:
            with Image.open(io.BytesIO(data)) as im:
                im.load()
                im = ImageOps.exif_transpose(im)
                return np.asarray(pil_to_rgb(im, path), dtype=np.uint8)
        except (OSError, ValueError, SyntaxError):
            return None
        finally:
            ImageFile.LOAD_TRUNCATED_IMAGES = before


_IMREAD_RGB = getattr(cv2, "IMREAD_COLOR_RGB", None)  # OpenCV 4.11 and later


def decode_rgb(data: bytes | bytearray | memoryview, *, orientation: bool = True) -> np.ndarray | None:
    """Image bytes decoded by OpenCV as RGB uint8 (H, W, 3), or None when OpenCV cannot decode them.

    Grey to 3 channels, alpha dropped, 16-bit scaled to 8, and the EXIF orientation applied unless
    ``orientation`` is False (as PIL, and so the TREK-150 toolkit, reads frames). libjpeg-turbo writes RGB
    itself, so no BGR image is converted: a 1080p JPEG decodes in about 8 ms instead of 11.5 (one core
    here), with the same pixels as PIL's decoder, which is libjpeg-turbo too.
    """
    if not data:
        return None
    buffer = np.frombuffer(data, np.uint8)
    flags = 0 if orientation else cv2.IMREAD_IGNORE_ORIENTATION
    if _IMREAD_RGB is not None:
        return cv2.imdecode(buffer, _IMREAD_RGB | flags)
    img = cv2.imdecode(buffer, cv2.IMREAD_COLOR | flags)
    return None if img is None else _bgr_to_rgb(img)


def read_image_rgb(path: str | os.PathLike) -> tuple[np.ndarray, str | None]:
    """Read one image file as RGB uint8 (H, W, 3) and say whether it is damaged.

    Returns ``(frame, damage)``: ``damage`` is None for a whole file, else what :func:`image_damage` found
    (the frame then holds what could be decoded). Decoded by :func:`decode_rgb`. Raises
    :class:`InputError` naming the file when it cannot be read, is empty, or cannot be decoded at all.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as err:
        from trek_tracker.files import os_error_message

        raise InputError(os_error_message(err, path, "read")) from None
    damage = image_damage(data)
    if damage == "empty (0 bytes)":
        raise InputError(f"image {path} is empty (0 bytes): the copy or extraction that wrote it was "
                         "interrupted; write it again")
    if damage is None:
        frame = decode_rgb(data)
        if frame is not None:
            return frame, None
    else:
        frame = _decode_partial(data, path)
    if frame is None:
        raise InputError(f"cannot decode image {path}" + (f": {damage}" if damage else "")
                         + "; is it a valid JPEG/PNG file?")
    return frame, damage


class FrameSource:
    """A sequence of RGB uint8 frames (H, W, 3), read lazily.

    Attributes: ``path`` (what was opened), ``name`` (folder name or file stem), ``size`` ``(h, w)``,
    ``fps`` (None when unknown, e.g. image folders), ``damage`` (the :class:`InputDamage` found so far while
    reading, see the module docstring). ``len()`` is exact for folders and an estimate for video files until
    they have been iterated once (see :class:`VideoFileSource`). Every ``iter()`` starts from frame 0 and
    holds one frame at a time.
    """

    path: Path
    name: str
    size: tuple[int, int]
    fps: float | None
    strict: bool = False

    @property
    def damage(self) -> list[InputDamage]:
        """The damage found so far while reading (see the module docstring); empty for whole input."""
        return self.__dict__.setdefault("_damage", [])

    @property
    def truncated(self) -> bool:
        """Whether damage that cut frames short (a truncated video or image) has been found."""
        return any(d.kind.startswith("truncated") for d in self.damage)

    def _report(self, damage: InputDamage) -> None:
        """Record ``damage`` once (warning on the module logger), or raise it when ``strict``. Frames may be
        decoded by several threads (:func:`prefetch`), hence the lock."""
        if self.strict:
            raise DamagedInputError(damage)
        with _REPORT_LOCK:
            if any(d.file == damage.file and d.kind == damage.kind for d in self.damage):
                return
            self.damage.append(damage)
        log.warning("%s", damage.message)

    def __iter__(self) -> Iterator[np.ndarray]:
        raise NotImplementedError

    def __len__(self) -> int:
        raise NotImplementedError

    def __bool__(self) -> bool:  # a source always has at least one frame (checked at open time)
        return True

    def __getitem__(self, index: int) -> np.ndarray:
        raise NotImplementedError

    def frames(self, start: int = 0, stop: int | None = None, *, progress: bool | str = False
               ) -> Iterable[np.ndarray]:
        """What the tracking loop iterates: frames ``start`` to ``stop - 1`` (to the last when ``stop`` is
        None), indices counted from 0 in decoding order. For frame files an :class:`IndexedFrames` that
        several threads decode at once; a video is one stream, which reaches ``start`` by decoding every
        frame before it (exact on any video; ``progress`` shows a bar while it does, when that is long).

        Raises :class:`InputError` for a range that is empty or starts past the last frame, and for one
        that ends past it where the length is known (folders, arrays, MP4/MOV)."""
        start, stop = self._frame_range(start, stop, len(self))
        return IndexedFrames(self.__getitem__, range(start, stop))

    def _frame_range(self, start: int, stop: int | None, length: int | None) -> tuple[int, int | None]:
        """``(start, stop)`` checked against ``length`` (None: not known before decoding); ``stop`` is
        ``length`` when None and the length is known."""
        if start < 0:
            raise InputError(f"frame indices start at 0; cannot start at frame {start}")
        if stop is not None and stop <= start:
            raise InputError(f"no frames to track from frame {start} to frame {stop - 1}: the last frame must not "
                             "come before the first")
        if length is not None:
            span = f"{self.path} has {length} frame{'s' if length != 1 else ''} (0-{length - 1})"
            if start >= length:
                raise InputError(f"cannot start at frame {start}: {span}")
            if stop is not None and stop > length:
                raise InputError(f"cannot track up to frame {stop - 1}: {span}; leave the last frame out to track "
                                 "to the end")
            stop = length if stop is None else stop
        return start, stop

    def __repr__(self) -> str:
        h, w = self.size
        return f"{type(self).__name__}({str(self.path)!r}, frames={len(self)}, size={w}x{h}, fps={self.fps})"


def _bgr_to_rgb(img: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


class ImageFolderSource(FrameSource):
    """Frames from a folder of ``.jpg``/``.jpeg``/``.png`` files (any case), in natural order.

    Hidden files (``.name``) are ignored. Random access (``source[i]``) is exact and cheap. Every frame must
    have the size of the first one; a different size raises :class:`InputError` naming the file, when that
    frame is read. Images are decoded with OpenCV (EXIF orientation applied), grey images become 3 channels,
    alpha channels are dropped and 16-bit images are scaled to 8 bits.

    Refused when opened, with an :class:`InputError` naming the files: two images for one frame number
    (``00001.jpg`` and ``00001.png``, or ``1.jpg`` and ``0001.jpg``: frames would be doubled), and an image
    name that is not a readable file (a broken link: the frame would silently go missing). A few names
    outside the numbering of the rest (``mask.png`` among ``00000.jpg``...) are a warning naming them. When
    read: an empty or undecodable frame is an :class:`InputError`; a truncated one is damage (module
    docstring).
    """

    def __init__(self, path: str | os.PathLike, strict: bool = False) -> None:
        self.path = Path(path)
        self.name = self.path.resolve().name
        self.fps = None
        self.strict = strict
        try:
            entries = [e for e in os.listdir(self.path) if not e.startswith(".")]
        except OSError as err:
            from trek_tracker.files import os_error_message

            raise InputError(os_error_message(err, self.path, "list frame folder")) from None
        if not entries:
            raise InputError(f"frame folder {self.path} is empty; put the video's frames there as .jpg/.png")
        images = [e for e in entries if e.lower().endswith(IMAGE_EXTENSIONS)]
        not_files = [e for e in images if not (self.path / e).is_file()]
        broken = [e for e in not_files if (self.path / e).is_symlink() and not (self.path / e).exists()]
        if broken:
            raise InputError(f"frame {self.path / broken[0]} is a broken link"
                             + (f" (and {len(broken) - 1} more)" if len(broken) > 1 else "")
                             + "; its frame would be missing from the video: restore the file(s)")
        files = [e for e in images if e not in not_files]
        if not files:
            shown = ", ".join(sorted(entries, key=natural_key)[:5])
            raise InputError(
                f"frame folder {self.path} has no .jpg/.jpeg/.png images (found: {shown}"
                f"{', ...' if len(entries) > 5 else ''})"
            )
        files = sorted(files, key=natural_key)
        _check_frame_names(self.path, files)
        self.files: list[Path] = [self.path / f for f in files]
        first = self._read(0, check_size=False)
        self.size = (int(first.shape[0]), int(first.shape[1]))

    def _read(self, index: int, check_size: bool = True) -> np.ndarray:
        file = self.files[index]
        img, damage = read_image_rgb(file)
        if damage is not None:
            kind = "truncated-image" if damage.startswith("truncated") else "damaged-image"
            what = ("only its first part holds image content" if kind == "truncated-image"
                    else "it was decoded as far as possible")
            self._report(InputDamage(file, index, kind, f"frame {index} ({file}) is {damage}; {what}: copy or "
                                                        "extract it again"))
        if check_size and img.shape[:2] != self.size:
            h, w = self.size
            raise InputError(
                f"frame {file} is {img.shape[1]}x{img.shape[0]}, but the folder's first frame "
                f"{self.files[0].name} is {w}x{h}; all frames of a video must have the same size"
            )
        return img

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

    def frames(self, start: int = 0, stop: int | None = None, *, progress: bool | str = False) -> IndexedFrames:
        start, stop = self._frame_range(start, stop, len(self.files))
        return IndexedFrames(self._read, range(start, stop))


def _name_number_key(name: str) -> tuple:
    """A frame name without its extension, digit runs as numbers: ``1.jpg``, ``01.png`` -> the same key."""
    stem = os.path.splitext(name)[0]
    return tuple(int(p) if p.isdigit() else p.lower() for p in _DIGITS.split(stem) if p)


def _check_frame_names(folder: Path, files: list[str]) -> None:
    """Refuse two files for one frame; warn about names outside the folder's numbering (see
    :class:`ImageFolderSource`)."""
    keys = {f: _name_number_key(f) for f in files}
    seen: dict[tuple, str] = {}
    for f, key in keys.items():
        if key in seen:
            raise InputError(
                f"frame folder {folder} has both {seen[key]} and {f} for one frame: one file per frame is expected "
                "(a mask, a second copy or two numberings among the frames?); move the extra files out"
            )
        seen[key] = f
    patterns: dict[str, list[str]] = {}
    for f in files:
        patterns.setdefault(_DIGITS.sub("#", os.path.splitext(f)[0]).lower(), []).append(f)
    main = max(patterns.values(), key=len)
    odd = [f for names in patterns.values() if names is not main for f in names]
    if odd and "#" in _DIGITS.sub("#", main[0]) and len(main) >= 2 * len(odd):
        log.warning("frame folder %s: %d file(s) do not follow the numbering of the other %d (%s%s); they are "
                    "taken as frames in name order: move them out if they are not frames", folder, len(odd),
                    len(main), ", ".join(odd[:3]), ", ..." if len(odd) > 3 else "")
    _warn_of_gaps(folder, main, [keys[f] for f in main])


def _warn_of_gaps(folder: Path, names: list[str], keys: list[tuple]) -> None:
    """Warn where a folder's numbering skips frames (``00010`` to ``00019`` deleted, an extraction cut short):
    frames are taken in name order, so every frame after a gap is tracked as an earlier one. A numbering
    with a constant step (every other frame, as extractions at a lower rate name them) is not a gap. The frame
    number is the one number that changes along the names (``P01_01_frame_0000000123.jpg``: the last one);
    names where several change have no numbering to judge. ``keys``: the names' :func:`_name_number_key`
    (names of one pattern, which a literal ``#`` in a name can still make differ in shape)."""
    if len(keys) < 3 or len({len(key) for key in keys}) != 1:
        return
    varying = [i for i, part in enumerate(keys[0]) if isinstance(part, int) and len({k[i] for k in keys}) > 1]
    if len(varying) != 1 or not all(isinstance(k[varying[0]], int) for k in keys):
        return
    # Python's integers: a name's number can pass 2**63 (20-digit time stamps, YYYYMMDDhhmmss and microseconds)
    numbers = [key[varying[0]] for key in keys]
    steps = [b - a for a, b in itertools.pairwise(numbers)]
    counts = collections.Counter(steps)
    step = min(counts, key=lambda s: (-counts[s], s))  # the most common step (of those as common, the smallest)
    gaps = [i for i, s in enumerate(steps) if s > step]
    if step <= 0 or not gaps or any(s < step for s in steps):  # no gap, or no regular numbering to tell one by
        return
    missing = sum((steps[g] - 1) // step for g in gaps)
    first = gaps[0]
    log.warning("frame folder %s: its numbering skips after %s (next: %s)%s, %d frame(s) missing in all; frames "
                "are taken in name order, so every frame after a gap counts as an earlier one: restore the missing "
                "frames if the numbers matter", folder, names[first], names[first + 1],
                f" and at {len(gaps) - 1} more place(s)" if len(gaps) > 1 else "", missing)


def _mp4_without_index(path: Path) -> bool:
    """Whether ``path`` is an MP4/MOV (``ftyp`` first) whose top-level boxes hold no ``moov`` index: the
    writer never finished (a recording or download cut short); FFmpeg then says "moov atom not found"."""
    try:
        with open(path, "rb") as f:
            size_total = os.fstat(f.fileno()).st_size
            pos, first = 0, True
            while pos + 8 <= size_total:
                f.seek(pos)
                header = f.read(16)
                size, kind = int.from_bytes(header[:4], "big"), header[4:8]
                if first and kind != b"ftyp":
                    return False
                first = False
                if kind == b"moov":
                    return False
                if size == 1 and len(header) == 16:
                    size = int.from_bytes(header[8:16], "big")
                elif size == 0:
                    return True  # the last box runs to the end of the file
                if size < 8:
                    return False  # not a box structure we understand; let the generic message speak
                pos += size
            return not first
    except OSError:
        return False


class VideoFileSource(FrameSource):
    """Frames decoded from a video file by OpenCV (anything its FFmpeg backend reads).

    ``len()`` is the container's frame count, an *estimate* (containers can be wrong, especially with
    variable frame rate); after one full iteration it is the exact number of decoded frames
    (``len_is_exact`` tells which). ``promised`` is the container's count (None when it gives none). An
    iteration that decodes fewer frames than promised found a truncated or damaged video: that is damage
    (module docstring), reported when the iteration ends (``strict``: raised there). Random access
    ``source[i]`` is exact but sequential: moving forward decodes and skips frames, moving backward reopens
    the file and decodes from the start, so it costs up to O(i) decodes. Read frames in order (``iter``, or
    ``frames(start, stop)`` for a part of the video, which decodes the frames before ``start`` without
    converting them: ``benchmarks/start_frame.py``) wherever possible; for random access over
    a long video, extract the frames to a folder.
    """

    def __init__(self, path: str | os.PathLike, strict: bool = False) -> None:
        self.path = Path(path)
        self.name = self.path.stem
        self.strict = strict
        cap = self._open()
        ok, frame = cap.read()
        if not ok or frame is None:
            cap.release()
            raise InputError(f"cannot decode any frame of {self.path}; the file is corrupt or not a video")
        self.size = (int(frame.shape[0]), int(frame.shape[1]))
        fps = cap.get(cv2.CAP_PROP_FPS)
        self.fps = float(fps) if fps and np.isfinite(fps) and fps > 0 else None
        count = cap.get(cv2.CAP_PROP_FRAME_COUNT)
        self.promised: int | None = int(count) if count and np.isfinite(count) and count > 0 else None
        self._estimate = self.promised or 1
        # MP4/MOV store the exact count; elsewhere OpenCV estimates it from the duration (allow one frame).
        self._slack = 0 if self._is_mp4() else 1
        self._exact: int | None = None
        # A capture kept open for random access; ``_pos`` is the index of the frame it reads next.
        self._cap: cv2.VideoCapture | None = cap
        self._pos = 1
        self._first = frame

    def _is_mp4(self) -> bool:
        try:
            with open(self.path, "rb") as f:
                return f.read(8)[4:8] == b"ftyp"
        except OSError:
            return False

    def _open(self) -> cv2.VideoCapture:
        try:
            with open(self.path, "rb") as f:
                empty = not f.read(1)
        except OSError as err:
            from trek_tracker.files import os_error_message

            raise InputError(os_error_message(err, self.path, "read video")) from None
        if empty:
            raise InputError(f"video {self.path} is empty (0 bytes): the copy or download that wrote it was "
                             "interrupted; get it again")
        cap = cv2.VideoCapture(str(self.path))
        if not cap.isOpened():
            cap.release()
            if _mp4_without_index(self.path):
                raise InputError(f"cannot open video {self.path}: it is truncated (the MP4/MOV index, its 'moov' "
                                 "box, is missing: the download, copy or recording was cut short); get the whole "
                                 "file again")
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
            raise InputError(f"frame {index} of {self.path} changes size to {w}x{h} (frame 0 is {self.size[1]}x"
                             f"{self.size[0]}); re-encode the video at one frame size (e.g. ffmpeg -i IN -vf "
                             f"scale={self.size[1]}:{self.size[0]} OUT.mp4)")
        return _bgr_to_rgb(frame)

    def _short(self, decoded: int) -> bool:
        return self.promised is not None and decoded < self.promised - self._slack

    def _report_truncated(self, decoded: int) -> None:
        last = f"frames 0-{decoded - 1}" if decoded > 1 else "frame 0"
        if self._slack == 0:
            what = (f"is truncated or damaged: decoding stopped after {decoded} of the {self.promised} frames its "
                    "container lists")
        else:  # the count is OpenCV's estimate from the duration, which can also be off for other reasons
            what = (f"may be truncated or damaged: decoding stopped after {decoded} frames, but its duration "
                    f"suggests {self.promised}")
        self._report(InputDamage(self.path, decoded, "truncated-video",
                                 f"video {self.path} {what}; only {last} were read"))

    def __iter__(self) -> Iterator[np.ndarray]:
        return self._stream(self._open(), 0, None)

    def frames(self, start: int = 0, stop: int | None = None, *, progress: bool | str = False
               ) -> Iterator[np.ndarray]:
        # MP4/MOV list their exact count (a truncated one is found while decoding); elsewhere it is an estimate.
        known = self._exact if self._exact is not None else (self.promised if self._slack == 0 else None)
        self._frame_range(start, stop, known)  # checked only: without a stop, the stream reads to the real end
        cap = self._open()
        try:
            self._skip(cap, start, progress)
        except BaseException:
            cap.release()
            raise
        return self._stream(cap, start, stop)

    def _skip(self, cap: cv2.VideoCapture, start: int, progress: bool | str) -> None:
        """Decode (without converting) the ``start`` frames before ``start``: exact, whatever the video's
        timestamps (seeking by time is not, on variable frame rate video), at the decoder's full speed."""
        bar = None
        if progress and start >= _SKIP_BAR_FRAMES:
            from tqdm import tqdm

            bar = tqdm(total=start, unit="frame", desc=f"{self.name}: to frame {start}", file=sys.stderr,
                       dynamic_ncols=True, leave=False)
        try:
            for n in range(start):
                if not cap.grab():
                    self._exact = n
                    if self._short(n):
                        self._report_truncated(n)
                    raise InputError(f"cannot start at frame {start}: {self.path} has {n} decodable frame"
                                     f"{'s' if n != 1 else ''} (0-{n - 1})")
                if bar is not None and n % 256 == 255:
                    bar.update(256)
            if bar is not None:  # the last partial block: the bar ends full, not where it was last fed (or drawn)
                bar.update(start - bar.n)
                bar.refresh()
        finally:
            if bar is not None:
                bar.close()

    def _stream(self, cap: cv2.VideoCapture, start: int, stop: int | None) -> Iterator[np.ndarray]:
        """Frames ``start`` .. ``stop - 1`` (or to the end) of ``cap``, positioned at ``start``; reaching the
        end makes the length exact and reports a truncated video."""
        n, ended = start, False
        try:
            while stop is None or n < stop:
                ok, frame = cap.read()
                if not ok or frame is None:
                    ended = True
                    break
                yield self._check(frame, n)
                n += 1
        finally:
            cap.release()
        if ended:
            self._exact = n
            if self._short(n):
                self._report_truncated(n)

    def __getitem__(self, index: int) -> np.ndarray:
        asked = index
        if index < 0:
            if self._exact is None:
                raise IndexError(f"negative frame index on {self.path} before its length is known")
            index += self._exact
        if index < 0 or (self._exact is not None and index >= self._exact):
            raise IndexError(f"frame {asked} out of range for {len(self)} frames in {self.path}")
        if index == 0:
            return _bgr_to_rgb(self._first)
        if self._cap is None or index < self._pos:
            self.close()
            self._cap, self._pos = self._open(), 0
        while self._pos < index:
            if not self._cap.grab():
                self._end_reached(self._pos, index)
            self._pos += 1
        ok, frame = self._cap.read()
        if not ok or frame is None:
            self._end_reached(self._pos, index)
        self._pos += 1
        return self._check(frame, index)

    def _end_reached(self, decoded: int, index: int) -> None:
        self._exact = decoded
        if self._short(decoded):
            self._report_truncated(decoded)
        raise IndexError(f"frame {index} out of range: {self.path} has {decoded} decodable frames")

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


def open_frames(path: str | os.PathLike | np.ndarray | Sequence[np.ndarray], strict: bool = False) -> FrameSource:
    """Open a video file or a folder of images as a lazy :class:`FrameSource`.

    Frames already in memory (an (N, H, W, 3) array or a list of arrays) are wrapped in an
    :class:`ArraySource`. ``strict``: raise :class:`DamagedInputError` on a truncated video or image instead
    of recording it in ``source.damage`` with a warning (module docstring).

    Raises :class:`InputError` for a missing path, an undecodable video (the first frame is decoded here),
    an empty folder or a folder without images, and for anything that is neither a file nor a folder.
    """
    if isinstance(path, (np.ndarray, list, tuple)):
        return ArraySource(path)
    p = Path(path)
    if not p.exists():
        if p.is_symlink():
            raise InputError(f"{p} is a broken link; point it at the video file or frame folder")
        raise InputError(f"no such video file or frame folder: {p}")
    if p.is_dir():
        return ImageFolderSource(p, strict=strict)
    if not p.is_file():
        raise InputError(f"{p} is not a regular file (a device, pipe or socket?); give a video file or a frame "
                         "folder")
    if p.suffix.lower() in IMAGE_EXTENSIONS:
        raise InputError(f"{p} is a single image; pass the folder that holds the video's frames")
    if p.suffix.lower() in _STILL_IMAGE_EXTENSIONS:
        raise InputError(f"{p} is a single image; pass a video file or the folder that holds the video's frames "
                         "as .jpg/.png files")
    return VideoFileSource(p, strict=strict)


_DONE = object()
_Frame = TypeVar("_Frame")


def decode_threads() -> int:
    """Default threads for decoding frame files ahead (up to 4, at most the CPUs this process may use): a 1080p
    JPEG takes about 8 ms to decode, so one thread caps a run near 120 frames per second."""
    from trek_tracker.device import usable_cpus

    return min(4, usable_cpus())


class IndexedFrames:
    """Frames read one at a time by index, ``read(i)`` for each ``i`` of ``indices``: files (a TREK-150
    sequence's JPEGs, an image folder), which several threads may decode at once (:func:`prefetch`),
    unlike a video stream. ``read`` must be safe to call from several threads."""

    def __init__(self, read: Callable[[int], _Frame], indices: Sequence[int]) -> None:
        self.read, self.indices = read, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __iter__(self) -> Iterator[_Frame]:
        return (self.read(i) for i in self.indices)


def prefetch(frames: Iterable[_Frame], depth: int = 2, threads: int = 1) -> Iterator[_Frame]:
    """Iterate ``frames`` while background threads decode up to ``depth`` frames ahead.

    OpenCV and PIL release the GIL while decoding, so decoding overlaps with tracking; the tracker's timed
    ``init``/``update`` calls then exclude decoding, as the toolkit's timing does (docs/trek150.md#timing). Memory
    stays bounded by ``depth`` frames (and ``threads`` in flight). Errors of the source are raised here, at the
    frame where they occurred; stopping early (``break``) stops the threads and closes ``frames`` when it is
    a generator (a video stream then releases its decoder). Any iterable works: the arrays
    of a :class:`FrameSource`, or the ``PIL`` images the evaluation runner hands to trackers. An
    :class:`IndexedFrames` with ``threads > 1`` is decoded by that many threads, still in order.
    """
    if threads > 1 and isinstance(frames, IndexedFrames):
        yield from _prefetch_parallel(frames, max(depth, threads), threads)
        return
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
        it = None
        try:
            it = iter(frames)
            for frame in it:
                if not put(frame):
                    return
        except BaseException as err:  # noqa: BLE001 - handed to the consumer
            put(err)
            return
        finally:
            if stop.is_set() and hasattr(it, "close"):  # stopped early: a video stream releases its decoder now,
                with contextlib.suppress(Exception):  # not when the caller drops the generator
                    it.close()
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


def _prefetch_parallel(frames: IndexedFrames, ahead: int, threads: int) -> Iterator[_Frame]:
    """``frames`` in order, ``ahead`` of them submitted to a pool of ``threads`` decoders at any time."""
    from concurrent.futures import ThreadPoolExecutor

    indices = iter(frames.indices)
    pending: collections.deque = collections.deque()
    pool = ThreadPoolExecutor(threads, thread_name_prefix="frame-decode")
    try:
        for i in itertools.islice(indices, ahead):
            pending.append(pool.submit(frames.read, i))
        while pending:
            frame = pending.popleft().result()  # a frame's error is raised here, at its place in the order
            for i in itertools.islice(indices, 1):
                pending.append(pool.submit(frames.read, i))
            yield frame
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
