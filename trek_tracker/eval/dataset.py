"""Reader for a prepared TREK-150 root in the official layout.

``<root>/<seq>/`` holds ``groundtruth_rect.txt``, ``frames.txt``, ``img/frame_XXXXXXXXXX.jpg``,
``anchors.txt`` (MSE), optionally ``anchors_hoi.txt`` (HOI), ``attributes.txt``, ``action_target.txt``
and hand annotations. Reading never downloads, unzips or runs ffmpeg (that is ``trek-track dataset
prepare``), and every file is checked with an error that names the file and line, because the official
toolkit either asserts or silently scores the wrong thing on a damaged root.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from collections.abc import Sequence as SequenceABC
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

from trek_tracker.errors import InputError

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


def _rows(path: Path, ncols: int | tuple[int, ...], what: str) -> list[list[float]]:
    """Parse a comma-separated numeric file into rows of floats, naming the file and line on error."""
    allowed = (ncols,) if isinstance(ncols, int) else ncols
    try:
        text = path.read_text()
    except OSError as err:
        raise InputError(f"cannot read {what} {path}: {err.strerror}") from None
    rows = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split(",")
        try:
            row = [float(p) for p in parts]
        except ValueError:
            raise InputError(f"{path}:{lineno}: malformed row {line.strip()!r} in {what}: expected "
                             f"{' or '.join(map(str, allowed))} comma-separated numbers") from None
        if len(row) not in allowed:
            raise InputError(f"{path}:{lineno}: {len(row)} values in {what}, expected "
                             f"{' or '.join(map(str, allowed))}")
        rows.append(row)
    return rows


def read_boxes(path: Path, what: str = "box file") -> np.ndarray:
    """Read an N x 4 ``x,y,w,h`` file (ground truth, hand boxes)."""
    rows = _rows(Path(path), 4, what)
    return np.array(rows, dtype=np.float64).reshape(-1, 4)


def _ints(path: Path, what: str) -> list[int]:
    """One integer per line (``frames.txt``, contact labels). Parsed by hand: the toolkit's
    ``np.loadtxt(delimiter='\\n')`` fails on numpy >= 1.23."""
    out = []
    for lineno, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            value = float(line.strip())
        except ValueError:
            raise InputError(f"{path}:{lineno}: malformed {what} value {line.strip()!r}") from None
        if value != int(value):
            raise InputError(f"{path}:{lineno}: {what} value {line.strip()!r} is not an integer")
        out.append(int(value))
    return out


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
        if len(files) != len(self):
            raise InputError(f"sequence {self.name}: {len(files)} images in {img_dir} but {len(self)} rows "
                             f"in groundtruth_rect.txt")
        ids = self.frame_ids
        if ids is not None:
            if len(ids) != len(self):
                raise InputError(f"sequence {self.name}: {len(ids)} rows in frames.txt but {len(self)} rows "
                                 "in groundtruth_rect.txt")
            expected = [frame_file_name(i) for i in ids]
            for i, (f, e) in enumerate(zip(files, expected, strict=True)):
                if f.name != e:
                    raise InputError(f"sequence {self.name}: image {i} is {f.name} but frames.txt "
                                     f"row {i + 1} says {e}")
        return files

    @cached_property
    def anchors(self) -> list[tuple[int, int]] | None:
        """MSE anchors ``(row index, direction)`` in file order (direction 0 forward, else backward),
        or None when ``anchors.txt`` is missing."""
        path = self.path / "anchors.txt"
        if not path.is_file():
            return None
        out: list[tuple[int, int]] = []
        seen: set[int] = set()
        for lineno, (a, d) in enumerate(_rows(path, 2, "MSE anchors"), 1):
            idx, direction = int(a), int(d)
            if not 0 <= idx < len(self):
                raise InputError(f"{path}:{lineno}: anchor {idx} is outside the sequence "
                                 f"(0..{len(self) - 1})")
            if idx in seen:
                # The official file names omit the direction: a repeated index would overwrite a run.
                raise InputError(f"{path}:{lineno}: anchor {idx} appears twice; result files are named by "
                                 "anchor index only, so each index may appear once")
            seen.add(idx)
            out.append((idx, direction))
        return out

    @cached_property
    def hoi(self) -> list[tuple[int, int, int]] | None:
        """HOI intervals ``(start, end, type)`` (inclusive, 0-based; type 0 LHI, 1 RHI, 2 BHI) in file
        order, or None when the sequence has no ``anchors_hoi.txt``."""
        path = self.path / "anchors_hoi.txt"
        if not path.is_file():
            return None
        out: list[tuple[int, int, int]] = []
        for lineno, (s, e, t) in enumerate(_rows(path, 3, "HOI intervals"), 1):
            start, end, kind = int(s), int(e), int(t)
            if not 0 <= start <= end < len(self):
                raise InputError(f"{path}:{lineno}: interval {start}-{end} is not inside the sequence "
                                 f"(0..{len(self) - 1})")
            out.append((start, end, kind))
        return out

    @cached_property
    def attributes(self) -> list[str]:
        """Attribute acronyms (e.g. ``SC``, ``POC``); empty when the file is missing."""
        path = self.path / "attributes.txt"
        if not path.is_file():
            return []
        return [line.strip() for line in path.read_text().splitlines() if line.strip()]

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
        """Frame ``index`` as an RGB ``PIL.Image``, as the toolkit hands it to trackers."""
        from PIL import Image

        with Image.open(self.img_files[index]) as im:
            return im.convert("RGB")


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
            raise InputError(f"dataset root {self.root} does not exist; pass the folder that holds the "
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
                return [line.strip() for line in path.read_text().splitlines() if line.strip()]
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
                                 f"{len(seq)} rows in groundtruth_rect.txt")
            if images:
                seq.img_files  # noqa: B018 - validates
        return counts
