"""Building damaged and ambiguous input files inside tests (truncated videos and images, MP4 layouts).

Nothing here is read from disk except what a test passes in; results go to the test's ``tmp_path``.
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]


def _boxes(data: bytes | bytearray, start: int = 0, end: int | None = None):
    """Top-level (or nested) MP4 boxes as (type, offset, size, header size)."""
    end = len(data) if end is None else end
    i = start
    while i + 8 <= end:
        size, kind = struct.unpack(">I4s", data[i:i + 8])
        header = 8
        if size == 1:
            size, header = struct.unpack(">Q", data[i + 8:i + 16])[0], 16
        elif size == 0:
            size = end - i
        yield kind, i, size, header
        i += size


def box_types(data: bytes) -> list[bytes]:
    return [kind for kind, *_ in _boxes(data)]


def faststart(data: bytes) -> bytes:
    """The MP4 with its ``moov`` index moved before ``mdat`` (chunk offsets shifted), as streaming files
    and most cameras write it: cut short, such a file still opens and decodes up to the cut."""
    top = list(_boxes(data))
    moov_kind = next(b for b in top if b[0] == b"moov")
    moov = bytearray(data[moov_kind[1]:moov_kind[1] + moov_kind[2]])
    shift = len(moov)

    def patch(start: int, end: int) -> None:
        for kind, i, size, header in _boxes(moov, start, end):
            if kind in (b"trak", b"mdia", b"minf", b"stbl"):
                patch(i + header, i + size)
            elif kind in (b"stco", b"co64"):
                width, fmt = (4, ">I") if kind == b"stco" else (8, ">Q")
                count = struct.unpack(">I", moov[i + 12:i + 16])[0]
                for k in range(count):
                    o = i + 16 + width * k
                    moov[o:o + width] = struct.pack(fmt, struct.unpack(fmt, moov[o:o + width])[0] + shift)

    patch(8, len(moov))
    out = bytearray()
    for kind, i, size, _ in top:
        if kind == b"moov":
            continue
        if kind == b"mdat":
            out += moov
        out += data[i:i + size]
    return bytes(out)


def noise_frames(n: int, size: tuple[int, int] = (48, 64), seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (*size, 3), dtype=np.uint8) for _ in range(n)]


def write_video(path: Path, frames: list[np.ndarray], fourcc: str = "MJPG", fps: float = 10.0) -> Path:
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, (w, h))
    assert writer.isOpened(), f"no {fourcc} writer"
    for f in frames:
        writer.write(cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
    writer.release()
    return path


def truncate(src: Path | bytes, dst: Path, fraction: float) -> Path:
    data = src if isinstance(src, bytes) else Path(src).read_bytes()
    dst.write_bytes(data[: int(len(data) * fraction)])
    return dst


def run_cli(*args: str | os.PathLike, cwd: Path | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    """``trek-track args`` in a fresh interpreter (this checkout first on the path), capturing output."""
    full = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
            **(env or {})}
    full.pop("OPENCV_FFMPEG_LOGLEVEL", None)  # the package must silence FFmpeg by itself
    return subprocess.run([sys.executable, "-m", "trek_tracker.cli", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd, env=full, timeout=300)


def assert_one_line_error(proc: subprocess.CompletedProcess, *fragments: str) -> str:
    """Exit code 2, exactly one stderr line ``trek-track: error: ...`` holding ``fragments``, no traceback."""
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("trek-track: error: "), proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]
