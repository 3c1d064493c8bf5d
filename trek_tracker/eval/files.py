"""Result files in the official TREK-150 layout: formatting, atomic writing, validated reading.

Boxes are written as ``np.savetxt(fmt='%.3f', delimiter=',')`` writes them and times as ``%.8f``, byte for
byte, so the official toolkit reads our results unchanged. Every write goes to a temporary file in the
same folder and is renamed into place, so an interrupted run never leaves a half-written result that a
resume (ours or the toolkit's, which only checks existence) would accept.

(A small local helper until ``trek_tracker.results`` offers the same atomic writer.)
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

from trek_tracker.errors import InputError


def format_boxes(boxes: np.ndarray) -> str:
    """``x,y,w,h`` rows with 3 decimals and a trailing newline, identical to the toolkit's ``np.savetxt``."""
    arr = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return "".join(f"{x:.3f},{y:.3f},{w:.3f},{h:.3f}\n" for x, y, w, h in arr.tolist())


def format_times(times: np.ndarray) -> str:
    """One ``%.8f`` second value per line."""
    return "".join(f"{t:.8f}\n" for t in np.asarray(times, dtype=np.float64).reshape(-1).tolist())


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same folder and ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def read_result(path: str | Path, rows: int | None = None) -> np.ndarray:
    """Read a result file as an L x 4 float64 array, as the toolkit's ``np.loadtxt(delimiter=',')`` parses
    it, but always 2-D (a one-row file is one row, not a flat vector).

    Raises :class:`InputError` naming the file when it is missing, malformed or has the wrong row count.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"result file {path} is missing")
    try:
        arr = np.loadtxt(path, delimiter=",", dtype=np.float64, ndmin=2)
    except ValueError as err:
        raise InputError(f"result file {path} is malformed ({err}); delete it and run again") from None
    if arr.size == 0:
        arr = arr.reshape(0, 4)
    if arr.shape[1] != 4:
        raise InputError(f"result file {path} has {arr.shape[1]} values per row, expected 4 (x,y,w,h)")
    if rows is not None and arr.shape[0] != rows:
        raise InputError(f"result file {path} has {arr.shape[0]} rows, expected {rows}; "
                         "delete it and run again")
    return arr


def read_times(path: str | Path) -> np.ndarray | None:
    """Per-frame seconds, or None when the file is missing or unreadable (speed is then reported as -1)."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        return np.loadtxt(path, dtype=np.float64, ndmin=1)
    except ValueError:
        return None


def is_complete(path: str | Path, rows: int) -> bool:
    """True when ``path`` is a parseable result file with ``rows`` rows (resume check)."""
    try:
        read_result(path, rows)
    except InputError:
        return False
    return True
