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
    """``trek-track args`` in a fresh interpreter (this checkout first on the path), capturing output.

    ``env`` adds variables; a ``PYTHONPATH`` in it goes after the checkout (e.g. :func:`failing_fs`).
    """
    env = dict(env or {})
    paths = [str(REPO), env.pop("PYTHONPATH", ""), os.environ.get("PYTHONPATH", "")]
    full = {**os.environ, **env, "PYTHONPATH": os.pathsep.join(p for p in paths if p)}
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


_FAILING_FS = """
import builtins, errno, io, os

_PREFIX, _CODE = os.environ["FAILING_FS_PREFIX"], int(os.environ["FAILING_FS_ERRNO"])
_mkdir, _os_open, _open = os.mkdir, os.open, builtins.open


def _hit(path):
    try:
        return os.path.abspath(os.fsdecode(path)).startswith(_PREFIX)
    except TypeError:
        return False


def _fail(path):
    raise OSError(_CODE, os.strerror(_CODE), os.fsdecode(path))


def mkdir(path, *args, **kwargs):
    if _hit(path) and not os.path.isdir(path):
        _fail(path)
    return _mkdir(path, *args, **kwargs)


def os_open(path, flags, *args, **kwargs):
    if _hit(path) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
        _fail(path)
    return _os_open(path, flags, *args, **kwargs)


def open_(file, mode="r", *args, **kwargs):
    if not isinstance(file, int) and _hit(file) and any(c in mode for c in "wax+"):
        _fail(file)
    return _open(file, mode, *args, **kwargs)


os.mkdir, os.open, builtins.open, io.open = mkdir, os_open, open_, open_
"""


def failing_fs(tmp_path: Path, prefix: Path, code: int) -> dict[str, str]:
    """Environment for :func:`run_cli` in which creating or writing anything under ``prefix`` fails with
    ``errno`` ``code`` (EROFS, ENOSPC, EACCES even for root), via a ``sitecustomize`` module."""
    site = tmp_path / "failing-fs-site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(_FAILING_FS)
    return {"PYTHONPATH": str(site), "FAILING_FS_PREFIX": str(Path(prefix).absolute()), "FAILING_FS_ERRNO": str(code)}


# A CUDA allocator's message, as PyTorch words it (the one line quotes its numbers).
CUDA_OOM = ("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 79.19 GiB of which "
            "1.50 GiB is free. Including non-PyTorch memory, this process has 77.60 GiB memory in use.")


def allocation_failure(kind: str) -> BaseException:
    """What a failed allocation raises: ``gpu`` the CUDA allocator's error (simulated: no GPU needed), ``host``
    PyTorch's CPU allocator's, from a real allocation of a pebibyte."""
    import torch

    if kind == "gpu":
        return torch.OutOfMemoryError(CUDA_OOM)
    try:
        torch.empty(1 << 50, dtype=torch.uint8)
    except RuntimeError as err:
        return err
    raise AssertionError("allocating a pebibyte succeeded")


_FAILING_MEMORY = """
import importlib, os

_MODULE, _ATTR = os.environ["FAILING_MEMORY_TARGET"].split(":")
_AFTER, _KIND = int(os.environ["FAILING_MEMORY_AFTER"]), os.environ["FAILING_MEMORY_KIND"]
_owner = importlib.import_module(_MODULE)
*_path, _method = _ATTR.split(".")
for _name in _path:
    _owner = getattr(_owner, _name)
_original, _calls = getattr(_owner, _method), [0]


def _failing(*args, **kwargs):
    _calls[0] += 1
    if _calls[0] > _AFTER:
        from tests.damaged import allocation_failure

        raise allocation_failure(_KIND)
    return _original(*args, **kwargs)


setattr(_owner, _method, _failing)
"""


def failing_memory(tmp_path: Path, target: str, after: int, kind: str = "gpu") -> dict[str, str]:
    """Environment for :func:`run_cli` in which ``target`` (``module:function`` or ``module:Class.method``) runs
    ``after`` times and then fails as an allocation does (:func:`allocation_failure`), in the process and in
    its workers."""
    site = tmp_path / "failing-memory-site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(_FAILING_MEMORY)
    return {"PYTHONPATH": str(site), "FAILING_MEMORY_TARGET": target, "FAILING_MEMORY_AFTER": str(after),
            "FAILING_MEMORY_KIND": kind}
