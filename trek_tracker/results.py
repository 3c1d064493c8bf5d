"""Result file formats: boxes, times, label PNGs, object ids, and a crash-safe per-frame text writer.

Every whole-file write is atomic (:func:`trek_tracker.files.atomic_write`), so a result file is either
absent or complete: the evaluation runner can treat an existing file as a finished run
(docs/trek150.md#resuming). Box and time files are byte-identical to what the TREK-150 toolkit writes
(``np.savetxt(fmt='%.3f' / '%.8f', delimiter=',')``, docs/trek150.md#result-files) and are read back by both
this module and the toolkit.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import IO

import numpy as np
from PIL import Image

from trek_tracker.errors import InputError
from trek_tracker.files import atomic_write, naming, os_error_message, write_text

log = logging.getLogger(__name__)

__all__ = [
    "format_box",
    "write_boxes",
    "read_boxes",
    "read_result",
    "write_times",
    "read_times",
    "read_label_png",
    "write_label_png",
    "ObjectIds",
    "StreamingTextWriter",
]

# ----------------------------------------------------------------------------------------------- boxes


def format_box(box: Iterable[float]) -> str:
    """One result line without the newline: ``%.3f,%.3f,%.3f,%.3f`` as ``np.savetxt`` formats it."""
    values = [float(v) for v in box]
    if len(values) != 4:
        raise ValueError(f"a box has 4 values x,y,w,h, got {len(values)}")
    x, y, w, h = values
    return f"{x:.3f},{y:.3f},{w:.3f},{h:.3f}"


def write_boxes(path: str | os.PathLike, boxes: np.ndarray | Iterable[Iterable[float]]) -> None:
    """Write an (N, 4) ``x,y,w,h`` array as the TREK-150 toolkit does, atomically.

    Each line is ``%.3f,%.3f,%.3f,%.3f\\n`` (trailing newline on the last line too); values are written
    as given (the lost-target policy is what keeps NaN out).
    """
    arr = np.asarray(boxes, dtype=np.float64)
    if arr.size == 0:
        arr = arr.reshape(0, 4)
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise ValueError(f"boxes must have shape (N, 4), got {arr.shape}")
    write_text(path, "".join(format_box(row) + "\n" for row in arr))


_SPLIT = re.compile(r"[\s,;]+")


def _read_rows(path: str | os.PathLike, width: int, what: str, toolkit: bool = False, hint: str = "") -> np.ndarray:
    """Rows of ``width`` numbers; ``toolkit`` parses as ``np.loadtxt(delimiter=',')`` does (see
    :func:`read_result`); ``hint`` is appended to every error message."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"{what} file not found: {path}{hint}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"cannot read {what} file {path}: {err}{hint}") from None
    rows: list[list[float]] = []
    # read_text already turned \r\n and \r into \n, as np.loadtxt's reading does; splitlines also splits
    # on form feeds, \x1c-\x1e, \x85 and \u2028, which np.loadtxt keeps inside a line
    lines = text.split("\n") if toolkit else text.splitlines()
    for lineno, line in enumerate(lines, start=1):
        content = line.split("#", 1)[0].strip()
        if not content:
            continue
        if toolkit:
            # only commas separate, an empty field is an error, and a value is a plain ASCII number
            # (float() also takes '1_000' and non-ASCII digits, numpy does not)
            parts = content.split(",")
            ok = all(p.isascii() and "_" not in p for p in parts)
        else:
            parts = [p for p in _SPLIT.split(content) if p]
            ok = True
        try:
            values = [float(p) for p in parts] if ok else []
        except ValueError:
            values = []
        if len(values) != width:
            expected = f"{width} numbers" if width > 1 else "1 number"
            if toolkit:
                expected = expected.replace("number", "comma-separated number")
            raise InputError(f"{path}, line {lineno}: expected {expected}, got {line.strip()!r}{hint}")
        rows.append(values)
    return np.array(rows, dtype=np.float64).reshape(-1, width)


def read_boxes(path: str | os.PathLike, rows: int | None = None) -> np.ndarray:
    """Read an ``x,y,w,h`` file (ours, the toolkit's, or ground truth) as float64 (N, 4), even for N = 0 or 1.

    Values may be separated by commas and/or whitespace; blank lines and ``#`` comments are skipped; ``nan``
    is read as NaN. A malformed row raises :class:`InputError` naming the file and line. With ``rows``, a
    different row count is an :class:`InputError` too (a run is only done when its file is complete, R2).
    For a tracker's result file that must also be readable by the TREK-150 toolkit, use :func:`read_result`.
    """
    boxes = _read_rows(path, 4, "box")
    if rows is not None and len(boxes) != rows:
        raise InputError(f"{path} has {len(boxes)} boxes, expected {rows}")
    return boxes


def read_result(path: str | os.PathLike, rows: int | None = None) -> np.ndarray:
    """Read a tracker's result file exactly as the TREK-150 toolkit's ``np.loadtxt(delimiter=',')`` accepts
    it, as float64 (N, 4) (a one-row file stays one row, unlike ``np.loadtxt``; docs/trek150.md#reading-result-files).

    Stricter than :func:`read_boxes`, so that a file accepted here is one the toolkit's report and exporter
    read: only commas separate values (spaces around them are allowed), an empty field or a row of other
    than 4 values is an error; blank lines and ``#`` comments are skipped; ``nan``/``inf`` are read. Raises
    :class:`InputError` naming the file when it is missing, has a malformed row (and its line), or, with
    ``rows``, has a different row count: the evaluation's resume check and its report of what to rerun.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"result file {path} is missing")
    boxes = _read_rows(path, 4, "result", toolkit=True, hint="; delete it and run again")
    if rows is not None and len(boxes) != rows:
        raise InputError(f"result file {path} has {len(boxes)} rows, expected {rows}; delete it and run again")
    return boxes


def write_times(path: str | os.PathLike, seconds: Iterable[float]) -> None:
    """Write per-frame times in seconds, one ``%.8f`` per line (the toolkit's ``times/<seq>_time.txt``)."""
    arr = np.asarray(list(seconds) if not isinstance(seconds, np.ndarray) else seconds, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"times must be one-dimensional, got shape {arr.shape}")
    write_text(path, "".join(f"{v:.8f}\n" for v in arr.tolist()))


def read_times(path: str | os.PathLike, rows: int | None = None) -> np.ndarray:
    """Read a times file as float64 (N,); malformed lines raise :class:`InputError` naming file and line."""
    times = _read_rows(path, 1, "times").reshape(-1)
    if rows is not None and len(times) != rows:
        raise InputError(f"{path} has {len(times)} times, expected {rows}")
    return times


# ------------------------------------------------------------------------------------------ label PNGs


def read_label_png(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray | None]:
    """Read a label mask PNG as ``(labels uint8 (H, W), palette uint8 (256, 3) or None)``.

    Palette PNGs give their indices and palette; grayscale PNGs give their values and None (e.g. DAVIS-2016
    0/255 masks); 1-bit PNGs give 0/255. RGB masks (no palette) are turned into a palette image: black is 0,
    the other colours get 1, 2, ... in order of first appearance, and the returned palette maps them back.

    16-bit masks: values 0..255 are taken as they are, and values that are all multiples of 257 (an 8-bit
    mask saved with 16 bits) are divided by 257 with a warning; any other value above 255 is an
    :class:`InputError` (object ids must fit in 8 bits). JPEG masks: compression noise turns one object into
    many values (a 0/255 mask saved at quality 95 has about 16), so a JPEG is read as one object
    (pixels >= 128, written back as 255) with a warning when it is a grey two-level mask, and refused
    otherwise (colours or several grey levels: the object ids cannot be recovered). Warnings go to the
    ``trek_tracker.results`` logger and name the file.
    """
    from trek_tracker.video import image_damage

    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise InputError(f"mask file not found: {path}") from None
    except OSError as err:
        raise InputError(os_error_message(err, path, "read mask")) from None
    damage = image_damage(data)
    if damage is not None:
        raise InputError(f"mask {path} is {damage}; save or copy it again")
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            lossy = im.format in _LOSSY_FORMATS
    except Image.UnidentifiedImageError:  # PIL's message names its in-memory buffer, not the file
        raise InputError(f"cannot read mask {path}: it is not an image PIL knows (a PNG is expected)") from None
    except OSError as err:
        raise InputError(f"cannot read mask {path}: {err}") from None
    except (ValueError, SyntaxError) as err:  # malformed headers some PIL plugins report this way
        raise InputError(f"cannot read mask {path}: {err}") from None
    if lossy:
        return _lossy_mask(im, path), None
    if im.mode in ("P", "PA"):
        pal = np.zeros(768, dtype=np.uint8)
        raw = np.asarray(im.getpalette() or [], dtype=np.uint8)[:768]
        pal[: raw.size] = raw
        return np.asarray(im.getchannel(0), dtype=np.uint8), pal.reshape(256, 3)
    if im.mode in ("L", "LA"):
        return np.asarray(im.getchannel(0), dtype=np.uint8), None
    if im.mode == "1":
        return np.asarray(im.convert("L"), dtype=np.uint8), None
    if im.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        return _wide_mask(np.asarray(im), path), None
    if im.mode in ("RGB", "RGBA"):
        return _rgb_to_labels(np.asarray(im.convert("RGB")), path)
    raise InputError(f"mask {path} has PNG mode {im.mode}; use a palette or grayscale PNG")


_LOSSY_FORMATS = ("JPEG", "MPO")


def _wide_mask(arr: np.ndarray, path: Path) -> np.ndarray:
    """A 16/32-bit or float mask as uint8 labels (see :func:`read_label_png`)."""
    if arr.size and not np.all(np.isfinite(arr)):
        raise InputError(f"mask {path} has NaN or infinite values; object ids must be integers 0..255")
    if arr.size and (arr.min() < 0 or not np.all(arr == np.round(arr))):
        raise InputError(f"mask {path} has values outside 0..255 (min {arr.min()}); object ids must be "
                         "integers 0..255: save it as an 8-bit grayscale or palette PNG")
    top = arr.max() if arr.size else 0
    if top <= 255:
        return arr.astype(np.uint8)
    values = np.unique(arr)
    if np.all(values % 257 == 0) and top <= 65535:
        scaled = (values // 257).astype(int).tolist()
        log.warning("mask %s is a 16-bit image whose values %s are 8-bit values scaled by 257; read as %s",
                    path, _short_list(values.astype(int).tolist()), _short_list(scaled))
        return (arr // 257).astype(np.uint8)
    raise InputError(f"mask {path} has values outside 0..255 (up to {int(top)}, {np.count_nonzero(values)} non-zero "
                     "values); object ids must fit in 8 bits: save it as an 8-bit grayscale or palette PNG")


def _short_list(values: list[int], n: int = 6) -> str:
    return "[" + ", ".join(map(str, values[:n])) + (", ...]" if len(values) > n else "]")


def _lossy_mask(im: Image.Image, path: Path) -> np.ndarray:
    """A JPEG mask: one object when it is a grey two-level mask, else an :class:`InputError`."""
    fix = "save the mask as a PNG (grayscale or palette), which keeps values exactly"
    if im.mode in ("RGB", "RGBA", "CMYK", "YCbCr"):
        rgb = np.asarray(im.convert("RGB"), dtype=np.int16)
        spread = rgb.max(axis=2) - rgb.min(axis=2)
        if np.mean(spread > 24) > 0.001:
            flat = rgb.reshape(-1, 3).astype(np.int32)
            colours = len(np.unique((flat[:, 0] << 16) | (flat[:, 1] << 8) | flat[:, 2]))
            raise InputError(f"mask {path} is a colour JPEG: compression noise gives it {colours} colours, so "
                             f"its object ids cannot be recovered; {fix}")
        grey = np.asarray(im.convert("L"), dtype=np.uint8)
    else:
        grey = np.asarray(im.convert("L"), dtype=np.uint8)
    distinct = len(np.unique(grey))
    if distinct <= 2:  # no compression noise at all: the values are what was saved
        return grey
    fg = grey >= 128
    marked = grey > 32
    between = marked & (grey < 223)
    if fg.any() and between.sum() <= 0.1 * marked.sum():
        log.warning("mask %s is a JPEG: compression noise gives it %d distinct values instead of 2; read as one "
                    "object (pixels >= 128, written back as 255); %s", path, distinct, fix)
        return np.where(fg, 255, 0).astype(np.uint8)
    raise InputError(f"mask {path} is a JPEG with {distinct} distinct values: compression noise makes its object "
                     f"ids ambiguous (one object or {distinct - 1}?); {fix}")


def _rgb_to_labels(rgb: np.ndarray, path: Path) -> tuple[np.ndarray, np.ndarray]:
    flat = rgb.reshape(-1, 3).astype(np.int64)
    codes = (flat[:, 0] << 16) | (flat[:, 1] << 8) | flat[:, 2]
    uniq, first, inverse = np.unique(codes, return_index=True, return_inverse=True)
    order = [int(i) for i in np.argsort(first, kind="stable") if uniq[i] != 0]
    if len(order) > 255:
        raise InputError(f"mask {path} has {len(order)} colours; at most 255 objects fit in a label mask")
    lut = np.zeros(len(uniq), dtype=np.uint8)
    palette = np.zeros((256, 3), dtype=np.uint8)
    for new, i in enumerate(order, start=1):
        lut[i] = new
        palette[new] = [(uniq[i] >> 16) & 255, (uniq[i] >> 8) & 255, uniq[i] & 255]
    return lut[inverse.reshape(-1)].reshape(rgb.shape[:2]), palette


def write_label_png(
    path: str | os.PathLike, labels: np.ndarray, palette: np.ndarray | Iterable[int] | None = None
) -> None:
    """Write a label map (values 0..255, kept exactly): a palette PNG, or grayscale when ``palette`` is None.

    ``palette`` is what :func:`read_label_png` returned for the init mask ((K, 3) or a flat list), so
    output masks look like the input. Written atomically.
    """
    arr = np.asarray(labels)
    if arr.ndim != 2:
        raise ValueError(f"labels must be 2-D (H, W), got shape {arr.shape}")
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    if arr.size and (arr.min() < 0 or arr.max() > 255):
        raise ValueError(f"label values must be in 0..255, got {arr.min()}..{arr.max()}")
    arr = np.ascontiguousarray(arr, dtype=np.uint8)
    size = (arr.shape[1], arr.shape[0])
    if palette is None:
        im = Image.frombytes("L", size, arr.tobytes())
    else:
        im = Image.frombytes("P", size, arr.tobytes())
        im.putpalette(np.asarray(palette, dtype=np.uint8).reshape(-1)[:768].tolist())
    with atomic_write(path, "wb") as f:
        im.save(f, format="PNG")


@dataclasses.dataclass(frozen=True)
class ObjectIds:
    """Mapping between a mask's own object values and the engine's ids ``1..N``.

    ``values[k]`` is the original value of engine id ``k + 1``; 0 is background on both sides. Built from
    the init mask with the distinct non-zero values in increasing order, e.g. a 0/255 mask is engine
    object 1 and is written back as 255. Later masks that add objects (sparse multi-object annotation)
    extend the mapping without renumbering existing objects.
    """

    values: tuple[int, ...]

    def __post_init__(self) -> None:
        bad = [v for v in self.values if not 0 < v <= 255]
        if bad or len(set(self.values)) != len(self.values):
            raise InputError(f"object values must be distinct integers 1..255, got {list(self.values)}")

    @classmethod
    def from_labels(cls, labels: np.ndarray) -> ObjectIds:
        """The distinct non-zero values of ``labels``; values outside 0..255 (or not integers) are an
        :class:`InputError` (a label map of another kind, e.g. a 16-bit image)."""
        return cls(tuple(_label_values(labels)))

    def __len__(self) -> int:
        return len(self.values)

    def extend(self, labels: np.ndarray) -> ObjectIds:
        """The mapping plus the values of ``labels`` not seen yet (appended in increasing order)."""
        known = set(self.values)
        new = [v for v in _label_values(labels) if v not in known]
        return ObjectIds(self.values + tuple(new))

    def to_engine(self, labels: np.ndarray) -> np.ndarray:
        """Original values → engine ids (uint8); a value not in the mapping is an :class:`InputError`."""
        arr = np.asarray(labels)
        lut = np.zeros(256, dtype=np.uint8)
        lut[list(self.values)] = np.arange(1, len(self.values) + 1, dtype=np.uint8)
        if arr.size and (arr.min() < 0 or arr.max() > 255):
            raise InputError(f"mask values must be in 0..255, got {arr.min()}..{arr.max()}")
        out = lut[arr.astype(np.intp)]
        unknown = np.unique(arr[(out == 0) & (arr != 0)])
        if unknown.size:
            raise InputError(
                f"mask has object values {unknown.tolist()} that the first mask did not have "
                f"(known: {list(self.values)}); add new objects with ObjectIds.extend"
            )
        return out

    def to_original(self, labels: np.ndarray) -> np.ndarray:
        """Engine ids → original values (uint8); an id above N is a ``ValueError`` (an engine bug)."""
        arr = np.asarray(labels)
        if arr.size and (arr.min() < 0 or arr.max() > len(self.values)):
            raise ValueError(f"engine ids must be in 0..{len(self.values)}, got {arr.min()}..{arr.max()}")
        lut = np.array((0, *self.values), dtype=np.uint8)
        return lut[arr if arr.dtype == np.uint8 else arr.astype(np.intp)]


def _label_values(labels: np.ndarray) -> list[int]:
    """The distinct non-zero values of a label map, checked to be integers 0..255."""
    vals = np.unique(np.asarray(labels))
    if vals.size and vals.dtype.kind == "f" and not np.all(np.isfinite(vals) & (vals == np.round(vals))):
        raise InputError("a label map must hold integer object ids 0..255; got non-integer values")
    if vals.size and vals.dtype.kind not in "biuf":
        raise InputError(f"a label map must hold integer object ids 0..255; got {vals.dtype}")
    if vals.size and (vals.min() < 0 or vals.max() > 255):
        raise InputError(f"label values must be in 0..255, got {vals.min()}..{vals.max()}: object ids must fit "
                         "in 8 bits")
    return [int(v) for v in vals if v != 0]


# ----------------------------------------------------------------------------------- streaming writer


class StreamingTextWriter:
    """Line-per-frame text output for long runs that survives a crash of the process.

    Lines go to ``<path>.part``, flushed after every line, so a killed run keeps every finished frame.
    :meth:`commit` moves the file to ``path``; until then only the ``.part`` file exists, which the toolkit
    and our runner never take for a result. As a context manager it commits on success and leaves the
    ``.part`` file on error. ``resume=True`` keeps the complete lines of an existing ``.part`` file (a torn
    last line is dropped) and appends after them; ``keep=n`` keeps exactly the first ``n`` (a resumed run,
    whose later lines are tracked again); :attr:`lines` counts all lines, old ones included. Either takes
    the lines of ``path`` itself when there is no ``.part`` file (its run was stopped after committing this
    file but before it completed, so it is still unfinished).

    >>> with StreamingTextWriter("out/boxes.txt") as w:
    ...     for box in boxes:
    ...         w.write_box(box)
    """

    def __init__(self, path: str | os.PathLike, resume: bool = False, *, keep: int | None = None) -> None:
        self.path = Path(path)
        self.part_path = self.path.with_name(self.path.name + ".part")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.lines = 0
        if (keep is not None or resume) and not self.part_path.exists() and self.path.exists():
            # a run stopped while it committed its files (killed, or a full disk at the next file): the lines
            # are in the committed file, and stay the run's until it commits again
            os.replace(self.path, self.part_path)
        if keep is not None or (resume and self.part_path.exists()):
            data = self.part_path.read_bytes() if self.part_path.exists() else b""
            pieces = data.split(b"\n")[:-1]  # the complete lines (a torn last one is dropped)
            if keep is not None and len(pieces) < keep:
                raise InputError(f"{self.part_path} holds {len(pieces)} finished lines, fewer than the {keep} "
                                 "expected")
            kept = pieces[:keep]
            end = sum(len(line) + 1 for line in kept)
            self.lines = len(kept)
            mode = "r+" if self.part_path.exists() else "w"
            self._file: IO[str] | None = open(self.part_path, mode, encoding="utf-8", newline="\n")
            self._file.truncate(end)
            self._file.seek(end)
        else:
            self._file = open(self.part_path, "w", encoding="utf-8", newline="\n")
        self.committed = False

    def write_line(self, text: str) -> None:
        """Append one line (without its newline) and flush it to the operating system."""
        if self._file is None:
            raise RuntimeError(f"{self.part_path} is closed")
        if "\n" in text or "\r" in text:
            raise ValueError("a line must not contain a newline")
        with naming(self.part_path):  # a full disk's error names no file
            self._file.write(text + "\n")
            self._file.flush()
        self.lines += 1

    def write_box(self, box: Iterable[float]) -> None:
        """Append one ``x,y,w,h`` row in the exact :func:`write_boxes` format."""
        self.write_line(format_box(box))

    def write_time(self, seconds: float) -> None:
        """Append one time in the exact :func:`write_times` format."""
        self.write_line(f"{float(seconds):.8f}")

    def sync(self) -> None:
        """Make every line written so far durable (flushed and synced to the disk)."""
        if self._file is not None:
            with naming(self.part_path):
                self._file.flush()
                os.fsync(self._file.fileno())

    def close(self) -> None:
        """Close without committing: the ``.part`` file stays as an unfinished result."""
        if self._file is not None:
            file, self._file = self._file, None
            with naming(self.part_path):  # closing flushes what is buffered
                file.close()

    def commit(self) -> Path:
        """Sync, close and rename ``<path>.part`` to ``path``; returns ``path``."""
        if self.committed:
            return self.path
        if self._file is None:
            raise RuntimeError(f"{self.part_path} was closed without commit")
        self.sync()
        self.close()
        os.replace(self.part_path, self.path)
        self.committed = True
        return self.path

    def __enter__(self) -> StreamingTextWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.close()
