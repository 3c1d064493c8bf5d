"""Reader for a prepared TREK-150 root in the official layout.

``<root>/<seq>/`` holds ``groundtruth_rect.txt``, ``frames.txt``, ``img/frame_XXXXXXXXXX.jpg``,
``anchors.txt`` (MSE), optionally ``anchors_hoi.txt`` (HOI), ``attributes.txt``, ``action_target.txt``
and hand annotations. Reading never downloads, unzips or runs ffmpeg (that is ``trek-track dataset
prepare``), and every file is checked with an error that names the file and line, because the official
toolkit either asserts or silently scores the wrong thing on a damaged root.

Two levels of checking: reading a value raises :class:`InputError` at the first problem it meets (so a
run never starts on a damaged sequence); :meth:`Trek150.validate` (``trek-track dataset check``) goes on
past problems and lists them all, with counts, and with ``decode=True`` also decodes every frame
(``--decode``): a truncated, empty or undecodable JPEG is only found that way, since the official
preparation names every frame correctly even when ffmpeg or a copy was cut short.
"""

from __future__ import annotations

import io
import logging
import math
from collections.abc import Iterator
from collections.abc import Sequence as SequenceABC
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

from trek_tracker.errors import InputError
from trek_tracker.files import os_error_message

log = logging.getLogger(__name__)

ANNOTATIONS_DIR = "TREK-150-annotations"
SEQUENCES_FILE = "sequences.txt"
HOI_TYPES = {0: "LHI", 1: "RHI", 2: "BHI"}


def frame_file_name(frame_id: int) -> str:
    """Image name of an ffmpeg output frame number, as the official preparation writes it."""
    return f"frame_{int(frame_id):010d}.jpg"


def sequence_order_key(name: str) -> str:
    """The toolkit orders sequences by the path ``<name>/groundtruth_rect.txt``; sorting by
    ``name + "/"`` reproduces that order for any names."""
    return name + "/"


def _read_text(path: Path, what: str) -> str:
    """The text of an annotation file; unreadable or binary content is an :class:`InputError` naming it."""
    try:
        data = Path(path).read_bytes()
    except OSError as err:
        raise InputError(os_error_message(err, path, "read")) from None
    try:
        text = data.decode("utf-8-sig")  # a byte-order mark (files saved on Windows) is not a value
    except UnicodeDecodeError as err:
        raise InputError(f"{path} should be a text file ({what}) but holds binary data (at byte {err.start}); "
                         "extract the annotations again (trek-track dataset prepare)") from None
    if "\x00" in text:
        raise InputError(f"{path} should be a text file ({what}) but holds NUL bytes (at byte "
                         f"{text.index(chr(0))}); extract the annotations again (trek-track dataset prepare)")
    return text


def _shown(line: str, limit: int = 40) -> str:
    line = line.strip()
    return repr(line if len(line) <= limit else line[:limit] + "...")


def _numbered_rows(path: Path, ncols: int | tuple[int, ...], what: str) -> list[tuple[int, list[float]]]:
    """``(line number, values)`` of a comma-separated numeric file, naming the file and line on error."""
    allowed = (ncols,) if isinstance(ncols, int) else ncols
    text = _read_text(path, what)
    rows = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split(",")
        try:
            row = [float(p) for p in parts]
        except ValueError:
            raise InputError(f"{path}:{lineno}: malformed row {_shown(line)} in {what}: expected "
                             f"{' or '.join(map(str, allowed))} comma-separated numbers") from None
        if len(row) not in allowed:
            raise InputError(f"{path}:{lineno}: {len(row)} values in {what}, expected "
                             f"{' or '.join(map(str, allowed))}")
        rows.append((lineno, row))
    return rows


def _rows(path: Path, ncols: int | tuple[int, ...], what: str) -> list[list[float]]:
    """Parse a comma-separated numeric file into rows of floats, naming the file and line on error."""
    return [row for _, row in _numbered_rows(Path(path), ncols, what)]


def _int_rows(path: Path, ncols: int, what: str) -> list[tuple[int, list[int]]]:
    """Rows of integers (anchors, intervals): NaN, infinite or fractional values name file and line."""
    out = []
    for lineno, row in _numbered_rows(Path(path), ncols, what):
        if not all(math.isfinite(v) and v == int(v) for v in row):
            raise InputError(f"{path}:{lineno}: {what} must be integers, got "
                             f"{','.join(f'{v:g}' for v in row)}")
        out.append((lineno, [int(v) for v in row]))
    return out


def read_boxes(path: Path, what: str = "box file") -> np.ndarray:
    """Read an N x 4 ``x,y,w,h`` file (ground truth, hand boxes)."""
    rows = _rows(Path(path), 4, what)
    return np.array(rows, dtype=np.float64).reshape(-1, 4)


def _ints(path: Path, what: str) -> list[int]:
    """One integer per line (``frames.txt``, contact labels). Parsed by hand: the toolkit's
    ``np.loadtxt(delimiter='\\n')`` fails on numpy >= 1.23."""
    out = []
    for lineno, line in enumerate(_read_text(Path(path), what).splitlines(), 1):
        if not line.strip():
            continue
        try:
            value = float(line.strip())
        except ValueError:
            raise InputError(f"{path}:{lineno}: malformed {what} value {_shown(line)}") from None
        if not math.isfinite(value) or value != int(value):
            raise InputError(f"{path}:{lineno}: {what} value {_shown(line)} is not an integer")
        out.append(int(value))
    return out


# A finding of the annotation checks: (line number, message, fatal). Fatal ones stop reading (the values
# cannot be used); the others are reported by ``dataset check`` as warnings (the toolkit runs on them).
_Finding = tuple[int, str, bool]


def _anchor_problems(rows: list[tuple[int, list[int]]], n: int, absent: np.ndarray) -> list[_Finding]:
    """Findings for MSE anchor rows ``(index, direction)`` of a sequence of ``n`` frames."""
    if not rows:  # MSE scores a sequence as its runs' mean weighted by length: with none, there is no score
        return [(1, "holds no anchor, and MSE needs at least one for every sequence; extract the sequence's "
                    "annotations again (trek-track dataset prepare)", True)]
    out: list[_Finding] = []
    seen: set[int] = set()
    for lineno, (idx, direction) in rows:
        if not 0 <= idx < n:
            out.append((lineno, f"anchor {idx} is outside the sequence (0..{n - 1})", True))
            continue
        if idx in seen:
            # The official file names omit the direction: a repeated index would overwrite a run.
            out.append((lineno, f"anchor {idx} appears twice; result files are named by anchor index only, so "
                                "each index may appear once", True))
        seen.add(idx)
        if direction not in (0, 1):
            out.append((lineno, f"anchor {idx} has direction {direction}, not 0 (forward) or 1 (backward); the "
                                f"toolkit runs it {'forward' if direction < 1 else 'backward'}", False))
        if absent[idx]:
            out.append((lineno, f"anchor {idx} is on a frame where the target is absent, so the run starts from "
                                "no box (our tracker writes it as lost from its first frame)", False))
    return out


def _hoi_problems(rows: list[tuple[int, list[int]]], n: int, absent: np.ndarray) -> list[_Finding]:
    """Findings for HOI interval rows ``(start, end, type)``."""
    out: list[_Finding] = []
    for lineno, (start, end, kind) in rows:
        if not 0 <= start <= end < n:
            out.append((lineno, f"interval {start}-{end} is not inside the sequence (0..{n - 1})", True))
            continue
        if kind not in HOI_TYPES:
            out.append((lineno, f"interval {start}-{end} has type {kind}, not 0 (LHI), 1 (RHI) or 2 (BHI)", False))
        if absent[start]:
            out.append((lineno, f"interval {start}-{end} starts on a frame where the target is absent, so the run "
                                "starts from no box (our tracker writes it as lost from its first frame)", False))
    return out


def _count_detail(files: list[Path], ids: list[int] | None) -> str:
    """Which frames make an image count differ from ``frames.txt`` (the first three of each kind), and what
    to do: `` (missing frame_...; not in frames.txt: frame_...); prepare ...``."""
    parts = []
    if ids is not None:
        names = {f.name for f in files}
        expected = [frame_file_name(i) for i in ids]
        wanted = set(expected)
        for label, items in (("missing", [e for e in expected if e not in names]),
                             ("not in frames.txt", [f.name for f in files if f.name not in wanted])):
            if items:
                parts.append(f"{label}: {', '.join(items[:3])}" + (f" and {len(items) - 3} more" if len(items) > 3
                                                                    else ""))
    return ((f" ({'; '.join(parts)})" if parts else "") + "; prepare the dataset again (trek-track dataset prepare: "
            "it extracts missing frames and deletes those frames.txt does not list)")


_FIX_FRAMES = ("extract the frames again (trek-track dataset prepare); `trek-track dataset check --decode` lists "
               "every damaged frame")


def _frame_bytes(path: Path) -> bytes:
    """A frame file's bytes; an :class:`InputError` naming it when it cannot be read or is empty, truncated
    or damaged (scoring on it would give numbers the toolkit cannot reproduce)."""
    from trek_tracker.video import image_damage

    try:
        data = path.read_bytes()
    except OSError as err:
        raise InputError(os_error_message(err, path, "read frame")) from None
    damage = image_damage(data)
    if damage is not None:
        raise InputError(f"frame {path} is {damage}; {_FIX_FRAMES}")
    return data


def load_image(path: str | Path):
    """A dataset frame as an RGB ``PIL.Image``, decoded by PIL as the official toolkit does.

    Unlike a bare ``Image.open(...).convert("RGB")``, a damaged file is an :class:`InputError` naming it (an
    empty, truncated or undecodable JPEG), and a 16-bit image is scaled to 8 bits instead of clipped to white.
    """
    from PIL import Image

    from trek_tracker.video import pil_to_rgb

    path = Path(path)
    data = _frame_bytes(path)
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            return pil_to_rgb(im, path)
    except (OSError, ValueError, SyntaxError) as err:
        raise InputError(f"cannot decode frame {path} ({err}); {_FIX_FRAMES}") from None


def load_array(path: str | Path) -> np.ndarray:
    """A dataset frame as an RGB uint8 array (H, W, 3), refused like :func:`load_image` refuses it: the
    pixels of :func:`load_image` (both decoders are libjpeg-turbo; EXIF orientation ignored, as PIL does),
    decoded straight into an array by :func:`~trek_tracker.video.decode_rgb`. For our tracker: about 8 ms
    for a 1080p frame on one core here, against 13 for PIL's decode and the copy to an array."""
    from trek_tracker.video import decode_rgb

    path = Path(path)
    frame = decode_rgb(_frame_bytes(path), orientation=False)
    if frame is None:
        raise InputError(f"cannot decode frame {path}; {_FIX_FRAMES}")
    return frame


@dataclass(frozen=True)
class Sequence:
    """One TREK-150 sequence. Ground truth is loaded eagerly (it is small and every protocol needs
    it); images, hand boxes and labels are read when asked for."""

    name: str
    path: Path
    gt: np.ndarray = field(repr=False)

    def __len__(self) -> int:
        return int(self.gt.shape[0])

    @property
    def absent(self) -> np.ndarray:
        """Boolean per frame: target absent (all four GT values < 0)."""
        return np.all(self.gt < 0, axis=1)

    @cached_property
    def frame_ids(self) -> list[int] | None:
        """Frame numbers of the rows (60 fps ffmpeg numbering), or None when ``frames.txt`` is missing."""
        path = self.path / "frames.txt"
        return _ints(path, "frame number") if path.is_file() else None

    @cached_property
    def img_files(self) -> list[Path]:
        """Frame images in temporal order, checked against the ground truth and ``frames.txt``."""
        img_dir = self.path / "img"
        files = sorted(img_dir.glob("*.jpg"))
        if not files:
            raise InputError(f"sequence {self.name}: no images in {img_dir}; prepare the dataset first "
                             "(trek-track dataset prepare)")
        ids = self.frame_ids
        if len(files) != len(self):
            raise InputError(f"sequence {self.name}: {len(files)} images in {img_dir} but {len(self)} rows "
                             f"in groundtruth_rect.txt{_count_detail(files, ids)}")
        if ids is not None:
            if len(ids) != len(self):
                raise InputError(f"sequence {self.name}: {len(ids)} rows in frames.txt but {len(self)} rows "
                                 "in groundtruth_rect.txt; extract the annotations again (trek-track dataset prepare)")
            expected = [frame_file_name(i) for i in ids]
            for i, (f, e) in enumerate(zip(files, expected, strict=True)):
                if f.name != e:
                    raise InputError(f"sequence {self.name}: image {i} is {f.name} but frames.txt "
                                     f"row {i + 1} says {e}; prepare the dataset again (trek-track dataset prepare)")
        return files

    @cached_property
    def anchors(self) -> list[tuple[int, int]] | None:
        """MSE anchors ``(row index, direction)`` in file order (direction 0 forward, 1 backward),
        or None when ``anchors.txt`` is missing."""
        path = self.path / "anchors.txt"
        if not path.is_file():
            return None
        rows = _int_rows(path, 2, "MSE anchors")
        for lineno, problem, fatal in _anchor_problems(rows, len(self), self.absent):
            if fatal:
                raise InputError(f"{path}:{lineno}: {problem}")
        return [(idx, direction) for _, (idx, direction) in rows]

    @cached_property
    def hoi(self) -> list[tuple[int, int, int]] | None:
        """HOI intervals ``(start, end, type)`` (inclusive, 0-based; type 0 LHI, 1 RHI, 2 BHI) in file
        order, or None when the sequence has no ``anchors_hoi.txt``."""
        path = self.path / "anchors_hoi.txt"
        if not path.is_file():
            return None
        rows = _int_rows(path, 3, "HOI intervals")
        for lineno, problem, fatal in _hoi_problems(rows, len(self), self.absent):
            if fatal:
                raise InputError(f"{path}:{lineno}: {problem}")
        return [(start, end, kind) for _, (start, end, kind) in rows]

    @cached_property
    def attributes(self) -> list[str]:
        """Attribute acronyms (e.g. ``SC``, ``POC``); empty when the file is missing."""
        path = self.path / "attributes.txt"
        if not path.is_file():
            return []
        return [line.strip() for line in _read_text(path, "attributes").splitlines() if line.strip()]

    @cached_property
    def action_target(self) -> tuple[int, int, int] | None:
        """EK-55 ``(verb_id, action noun_id, target noun_id)``, or None when the file is missing."""
        path = self.path / "action_target.txt"
        if not path.is_file():
            return None
        values = _ints(path, "class id")
        if len(values) != 3:
            raise InputError(f"{path}: {len(values)} values, expected 3 (verb, action noun, target noun)")
        return (values[0], values[1], values[2])

    def hand_boxes(self, side: str) -> np.ndarray | None:
        """Left (``"l"``) or right (``"r"``) hand boxes, N x 4 with -1 rows when not visible."""
        path = self.path / f"{side[0].lower()}h_rect.txt"
        return read_boxes(path, "hand boxes") if path.is_file() else None

    def contact_labels(self, kind: str) -> np.ndarray | None:
        """Per-frame 0/1 contact of the target with the left (``"lhi"``), right (``"rhi"``) or both
        (``"bhi"``) hands."""
        path = self.path / f"{kind.lower()}_labels.txt"
        return np.array(_ints(path, "contact label"), dtype=np.int64) if path.is_file() else None

    def load_frame(self, index: int):
        """Frame ``index`` as an RGB ``PIL.Image``, as the toolkit hands it to trackers; a damaged frame is
        an :class:`InputError` naming it (see :func:`load_image`)."""
        return load_image(self.img_files[index])

    def load_array(self, index: int) -> np.ndarray:
        """Frame ``index`` as an RGB uint8 array, the same pixels as :meth:`load_frame` (see
        :func:`load_array`): what our tracker takes."""
        return load_array(self.img_files[index])


class Trek150(SequenceABC):
    """A prepared TREK-150 root.

    The sequence set is ``TREK-150-annotations/sequences.txt`` when present (older roots: ``sequences.txt``
    at the root), else every folder with a ``groundtruth_rect.txt``; ``names`` restricts it. Sequences are
    in the toolkit's order. Folders that have ground truth but are not listed are ignored with a warning
    (the toolkit would score them).
    """

    def __init__(self, root: str | Path, names: list[str] | None = None):
        self.root = Path(root)
        if not self.root.is_dir():
            state = "is not a folder" if self.root.exists() else "does not exist"
            raise InputError(f"dataset root {self.root} {state}; pass the folder that holds the "
                             "TREK-150 sequences")
        found = sorted(p.parent.name for p in self.root.glob("*/groundtruth_rect.txt"))
        listed = self._listed_names()
        if listed is not None:
            missing = [n for n in listed if n not in set(found)]
            if missing:
                more = f" (and {len(missing) - 5} more)" if len(missing) > 5 else ""
                raise InputError(f"{len(missing)} sequences listed in sequences.txt have no "
                                 f"groundtruth_rect.txt under {self.root}: {', '.join(missing[:5])}{more}; "
                                 "extract the annotations (trek-track dataset prepare)")
            extra = sorted(set(found) - set(listed))
            if extra:
                log.warning("ignoring %d folders not listed in sequences.txt: %s", len(extra),
                            ", ".join(extra[:5]))
            all_names = listed
        else:
            all_names = found
        if not all_names:
            raise InputError(f"no TREK-150 sequences under {self.root} (no */groundtruth_rect.txt)")
        if names is not None:
            unknown = [n for n in names if n not in set(all_names)]
            if unknown:
                raise InputError(f"unknown sequence(s) {', '.join(unknown)} in {self.root}")
            all_names = list(names)
        self.names: list[str] = sorted(dict.fromkeys(all_names), key=sequence_order_key)
        self._cache: dict[str, Sequence] = {}

    def _listed_names(self) -> list[str] | None:
        for path in (self.root / ANNOTATIONS_DIR / SEQUENCES_FILE, self.root / SEQUENCES_FILE):
            if path.is_file():
                return [line.strip() for line in _read_text(path, "sequence list").splitlines() if line.strip()]
        return None

    def __len__(self) -> int:
        return len(self.names)

    def __iter__(self) -> Iterator[Sequence]:
        for name in self.names:
            yield self[name]

    def __getitem__(self, key):  # type: ignore[override]
        if isinstance(key, int):
            key = self.names[key]
        if key not in self._cache:
            if key not in self.names:
                raise InputError(f"sequence {key} is not in {self.root}")
            path = self.root / key
            gt = read_boxes(path / "groundtruth_rect.txt", "ground truth")
            if len(gt) == 0:
                raise InputError(f"{path / 'groundtruth_rect.txt'} is empty")
            self._cache[key] = Sequence(name=key, path=path, gt=gt)
        return self._cache[key]

    def validate(self, images: bool = True, decode: bool = False, progress: bool = False,
                 workers: int | None = None) -> CheckReport:
        """Check every sequence and every annotation value, going on past problems; see :class:`CheckReport`.

        Annotation values: box rows (NaN, width/height <= 0 on visible frames, boxes wholly outside the frame;
        boxes reaching more than 1 px beyond it are warnings), frame numbers (count, strictly increasing),
        MSE anchors and HOI intervals (in range, no repeated anchor; odd directions/types and starts on
        frames without the target are warnings), hand boxes and contact labels (row counts, values), and
        that every file is readable text. ``images``: frame names and counts, empty files. ``decode``: also
        decode every frame (``workers`` threads, a progress bar on stderr with ``progress``), finding
        truncated, undecodable and differently sized frames.
        """
        return _validate(self, images, decode, progress, workers)

    def check(self, images: bool = True) -> dict[str, int]:
        """Validate every sequence (annotations, and images unless ``images=False``); return counts:
        sequences, frames, sequences with MSE anchors and with HOI intervals, MSE runs, HOI runs."""
        counts = {"sequences": 0, "frames": 0, "with_anchors": 0, "with_hoi": 0, "mse_runs": 0, "hoi_runs": 0}
        for seq in self:
            counts["sequences"] += 1
            counts["frames"] += len(seq)
            if seq.anchors is not None:
                counts["with_anchors"] += 1
                counts["mse_runs"] += len(seq.anchors)
            if seq.hoi is not None:
                counts["with_hoi"] += 1
                counts["hoi_runs"] += len(seq.hoi)
            if seq.frame_ids is not None and len(seq.frame_ids) != len(seq):
                raise InputError(f"sequence {seq.name}: {len(seq.frame_ids)} rows in frames.txt but "
                                 f"{len(seq)} rows in groundtruth_rect.txt; extract the annotations again "
                                 "(trek-track dataset prepare)")
            if images:
                seq.img_files  # noqa: B018 - validates
        return counts


# ------------------------------------------------------------------------------------------ validation


@dataclass
class Finding:
    """One kind of problem in one file: what it is, how often, and the first places it occurs.

    ``path`` None: ``what`` is a whole message that names its file (an :class:`InputError` met while
    reading). ``fatal``: a problem (``dataset check`` fails); else a warning.
    """

    path: Path | None
    what: str
    unit: str = ""
    fatal: bool = True
    sequence: str | None = None
    count: int = 0
    places: list[str] = field(default_factory=list)

    def add(self, place: str | None = None) -> None:
        self.count += 1
        if place is not None and len(self.places) < 3:
            self.places.append(place)

    def line(self) -> str:
        """One line: ``<file>: <what> (<count> <units>: <first places>, ...)``."""
        text = self.what if self.path is None else f"{self.path}: {self.what}"
        if self.unit and (self.count > 1 or self.places):
            units = self.unit if self.count == 1 else self.unit + "s"
            shown = ", ".join(self.places) + (", ..." if self.count > len(self.places) else "")
            text += f" ({self.count} {units}: {shown})"
        return text


@dataclass
class CheckReport:
    """What :meth:`Trek150.validate` found: the counts :meth:`Trek150.check` returns, problems (the root
    cannot be used as it is) and warnings (usable, but worth a look), and how many frames were decoded."""

    counts: dict[str, int]
    problems: list[Finding] = field(default_factory=list)
    warnings: list[Finding] = field(default_factory=list)
    decoded: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def problem_count(self) -> int:
        return sum(max(f.count, 1) for f in self.problems)

    def sequences_with_problems(self) -> int:
        return len({f.sequence for f in self.problems})


class _Findings:
    """Findings keyed by (file, what), in the order first met."""

    def __init__(self) -> None:
        self.items: dict[tuple[str, str, bool], Finding] = {}
        self.sequence: str | None = None  # the sequence being checked

    def add(self, path: Path | None, what: str, place: str | None = None, unit: str = "",
            fatal: bool = True) -> None:
        key = (str(path), what, fatal)
        if key not in self.items:
            self.items[key] = Finding(path, what, unit, fatal, self.sequence)
        self.items[key].add(place)

    def error(self, err: InputError) -> None:
        self.add(None, " ".join(str(err).split()))


def _os_reason(err: OSError, path: Path) -> str:
    return os_error_message(err, path, "read").split(": ", 1)[-1]


def _frame_problem(path: Path) -> tuple[str | None, str | None, tuple[int, int] | None]:
    """``(problem, detail, (w, h))`` of one frame file, decoded as :func:`load_image` decodes it (entropy-
    coded data in full, the picture at 1/8 scale: as strict, and several times faster)."""
    from PIL import Image

    from trek_tracker.video import image_damage

    try:
        data = path.read_bytes()
    except OSError as err:
        return "unreadable frame", _os_reason(err, path), None
    damage = image_damage(data)
    if damage is not None:
        kind, _, why = damage.partition(" (")
        if kind == "truncated":  # the same reason for every file: part of the line, not of each place
            return f"truncated frame ({why}", None, None
        return f"{kind} frame", why.rstrip(")") or None, None
    try:
        with Image.open(io.BytesIO(data)) as im:
            size = im.size
            im.draft("RGB", (max(1, size[0] // 8), max(1, size[1] // 8)))
            im.load()
    except (OSError, ValueError, SyntaxError) as err:
        return "undecodable frame", " ".join(str(err).split())[:100], None
    return None, None, size


def _image_size(path: Path) -> tuple[int, int] | None:
    """``(w, h)`` from an image's header, or None when it cannot be read (the frame checks report why)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.size
    except (OSError, ValueError, SyntaxError):
        return None


def _check_boxes(found: _Findings, path: Path, lines: list[int], boxes: np.ndarray,
                 frame: tuple[int, int] | None) -> None:
    """Value checks of an N x 4 box file: NaN, sizes, position against the ``(w, h)`` frame."""
    for lineno, box in zip(lines, boxes, strict=True):
        place = f"line {lineno}"
        if not np.all(np.isfinite(box)):
            found.add(path, "box with NaN or infinite values", place, "row")
            continue
        if np.all(box < 0):
            continue  # absent target (or invisible hand)
        x, y, w, h = box
        if w <= 0 or h <= 0:
            found.add(path, "visible box with width or height <= 0 (an absent target is -1,-1,-1,-1)", place, "row")
            continue
        if frame is None:
            continue
        fw, fh = frame
        if x >= fw or y >= fh or x + w <= 0 or y + h <= 0:
            found.add(path, f"box wholly outside the {fw}x{fh} frame", place, "row")
        elif x < -1 or y < -1 or x + w > fw + 1 or y + h > fh + 1:
            found.add(path, f"box extends beyond the {fw}x{fh} frame by more than 1 pixel", place, "row",
                      fatal=False)


def _validate_sequence(found: _Findings, seq: Sequence, images: bool) -> tuple[list[Path], int, int]:
    """Annotation checks of one sequence; returns (frame files to decode, MSE runs, HOI runs)."""
    n = len(seq)
    gt_path = seq.path / "groundtruth_rect.txt"
    gt_lines = [lineno for lineno, _ in _numbered_rows(gt_path, 4, "ground truth")]
    try:
        ids = seq.frame_ids
    except InputError as err:
        found.error(err)
        ids = None
    if ids is not None:
        fpath = seq.path / "frames.txt"
        if len(ids) != n:
            found.add(fpath, f"{len(ids)} rows in frames.txt but {n} rows in groundtruth_rect.txt; extract the "
                             "annotations again (trek-track dataset prepare)")
        for k in range(1, len(ids)):
            if ids[k] <= ids[k - 1]:
                found.add(fpath, "frame numbers not strictly increasing", f"line {k + 1}", "row")
        if any(i < 0 for i in ids):
            found.add(fpath, "negative frame numbers")
    files: list[Path] = []
    frame = None
    if images:
        img_dir = seq.path / "img"
        files = sorted(img_dir.glob("*.jpg"))  # as Sequence.img_files lists them
        if not files:
            found.add(img_dir, "no frames; prepare the dataset first (trek-track dataset prepare)")
        elif len(files) != n:
            found.add(img_dir, f"{len(files)} frames but {n} rows in groundtruth_rect.txt"
                               + _count_detail(files, ids if ids is not None and len(ids) == n else None))
        elif ids is not None and len(ids) == n:
            for k, (f, fid) in enumerate(zip(files, ids, strict=True)):
                if f.name != frame_file_name(fid):
                    found.add(img_dir, "frame names that differ from frames.txt; prepare the dataset again "
                                       "(trek-track dataset prepare)",
                              f"{f.name} for {frame_file_name(fid)} (line {k + 1})", "frame")
        for f in files:
            try:
                empty = f.stat().st_size == 0
            except OSError as err:
                found.add(img_dir, "unreadable frame", f"{f.name} ({_os_reason(err, f)})", "frame")
                continue
            if empty:
                found.add(img_dir, "empty frame (0 bytes)", f.name, "frame")
        frame = _image_size(files[0]) if files else None
    if not (~seq.absent).any():
        found.add(gt_path, "the target is absent on every frame")
    elif seq.absent[0]:
        found.add(gt_path, "the target is absent on the first frame, where OPE starts from its box", "line 1")
    _check_boxes(found, gt_path, gt_lines, seq.gt, frame)


    runs = []
    for name, ncols, what, judge in (("anchors.txt", 2, "MSE anchors", _anchor_problems),
                                      ("anchors_hoi.txt", 3, "HOI intervals", _hoi_problems)):
        path = seq.path / name
        if not path.is_file():
            runs.append(0)
            continue
        try:
            rows = _int_rows(path, ncols, what)
        except InputError as err:
            found.error(err)
            runs.append(0)
            continue
        findings = judge(rows, n, seq.absent)
        for lineno, message, fatal in findings:
            found.add(path, f"line {lineno}: {message}", fatal=fatal)
        runs.append(len(rows) - sum(1 for _, _, fatal in findings if fatal))

    for side in ("l", "r"):
        path = seq.path / f"{side}h_rect.txt"
        if not path.is_file():
            continue
        try:
            numbered = _numbered_rows(path, 4, "hand boxes")
        except InputError as err:
            found.error(err)
            continue
        if len(numbered) != n:
            found.add(path, f"{len(numbered)} rows for {n} rows in groundtruth_rect.txt")
        _check_boxes(found, path, [ln for ln, _ in numbered],
                     np.array([r for _, r in numbered], dtype=np.float64).reshape(-1, 4), frame)
    for kind in ("lhi", "rhi", "bhi"):
        path = seq.path / f"{kind}_labels.txt"
        if not path.is_file():
            continue
        try:
            labels = _ints(path, "contact label")
        except InputError as err:
            found.error(err)
            continue
        if len(labels) != n:
            found.add(path, f"{len(labels)} labels for {n} rows in groundtruth_rect.txt")
        for k, v in enumerate(labels):
            if v not in (0, 1):
                found.add(path, "contact label other than 0 or 1", f"row {k + 1}", "row")
    for attr in ("action_target", "attributes"):
        try:
            getattr(seq, attr)
        except InputError as err:
            found.error(err)
    return files, runs[0], runs[1]


def _validate(ds: Trek150, images: bool, decode: bool, progress: bool, workers: int | None) -> CheckReport:
    found = _Findings()
    counts = {"sequences": 0, "frames": 0, "with_anchors": 0, "with_hoi": 0, "mse_runs": 0, "hoi_runs": 0}
    to_decode: list[Path] = []
    for name in ds.names:
        counts["sequences"] += 1
        found.sequence = name
        has_anchors, has_hoi = ((ds.root / name / f).is_file() for f in ("anchors.txt", "anchors_hoi.txt"))
        counts["with_anchors"] += has_anchors  # counted whether or not the sequence can be read (a problem)
        counts["with_hoi"] += has_hoi
        try:
            seq = ds[name]
        except InputError as err:
            found.error(err)
            continue
        counts["frames"] += len(seq)
        files, mse, hoi = _validate_sequence(found, seq, images)
        counts["mse_runs"] += mse if has_anchors else 0
        counts["hoi_runs"] += hoi if has_hoi else 0
        to_decode.extend(files)
    decoded = 0
    if decode and to_decode:
        from concurrent.futures import ThreadPoolExecutor

        from tqdm import tqdm

        first_size: dict[Path, tuple[int, int]] = {}
        from trek_tracker.device import usable_cpus

        n_workers = workers or min(8, usable_cpus())
        with ThreadPoolExecutor(n_workers) as pool, tqdm(total=len(to_decode), unit="frame", desc="decoding",
                                                          disable=None if progress else True, leave=False) as bar:
            for path, (problem, detail, size) in zip(to_decode, pool.map(_frame_problem, to_decode), strict=True):
                bar.update(1)
                decoded += 1
                found.sequence = path.parent.parent.name
                if problem is not None:
                    if not problem.startswith(("empty", "unreadable")):  # the cheap checks reported those
                        found.add(path.parent, problem, path.name + (f" ({detail})" if detail else ""), "frame")
                    continue
                ref = first_size.setdefault(path.parent, size)
                if size != ref:
                    found.add(path.parent, f"frame of another size than the first one ({size[0]}x{size[1]}, not "
                                           f"{ref[0]}x{ref[1]})", path.name, "frame")
    items = list(found.items.values())
    return CheckReport(counts, [f for f in items if f.fatal], [f for f in items if not f.fatal], decoded)
