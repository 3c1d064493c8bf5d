"""Writing files so that they are either absent or whole, and reading JSON; shared by every module.

Every whole-file write in the package goes through :func:`atomic_write`: a hidden temporary file in the
destination's folder, flushed and synced, then ``os.replace``. A crash, a signal or a full disk therefore
never leaves a half-written file under its final name, and a reader (the evaluation's resume check, the
official toolkit) can trust any file it finds.

Environment failures (permissions, a read-only or full file system, a path under a file, a folder where a
file is expected) are the user's to fix, so they must reach the user as one line, not a traceback:
:func:`os_errors` turns any ``OSError`` raised in its block into a :class:`~trek_tracker.errors.UserError`
whose message is built by :func:`os_error_message`::

    with os_errors(out_dir, "write", hint="choose another --out"):
        out_dir.mkdir(parents=True, exist_ok=True)
        write_json(out_dir / "run.json", record)
    # -> trek-track: error: cannot write runs/x: read-only file system; use a writable location,
    #    or choose another --out

Wrap only local file operations with it: network errors are ``OSError`` too.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import hashlib
import json
import os
import re
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from trek_tracker.errors import InputError, UserError

_UMASK: int | None = None


def _umask() -> int:
    global _UMASK
    if _UMASK is None:
        _UMASK = os.umask(0)
        os.umask(_UMASK)
    return _UMASK


def normal_permissions(path: str | os.PathLike) -> None:
    """Give a file the permissions a plain ``open`` would (0666 minus umask), not ``mkstemp``'s 0600."""
    os.chmod(path, 0o666 & ~_umask())


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w") -> Iterator[IO]:
    """Open a temporary file beside ``path``; on success it replaces ``path``, on error it is removed.

    Parent folders are created. The file gets the usual permissions (0666 minus umask). An ``OSError`` that
    names no file (a write or sync that fails on a full disk) or names the temporary file is made to name
    ``path``, the file the caller asked for. ``torch.save`` reports a write that failed under it (a full disk
    while it writes a tensor's data) as a ``RuntimeError`` of its zip writer whose context is the
    ``OSError``: that ``OSError`` is what is raised, so callers handle every failed write one way.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{path.name}."
    try:
        fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=".tmp", dir=path.parent)
    except OSError as err:  # it names the temporary file it tried
        if err.filename is None or Path(os.fsdecode(err.filename)).name.startswith(prefix):
            err.filename, err.filename2 = os.fspath(path), None
        raise
    try:
        with naming(path, instead_of=tmp):
            kwargs = {} if "b" in mode else {"encoding": "utf-8", "newline": "\n"}
            with os.fdopen(fd, mode, **kwargs) as f:
                try:
                    yield f
                except RuntimeError as err:
                    if isinstance(err.__context__, OSError):
                        raise err.__context__ from err
                    raise
                f.flush()
                os.fsync(f.fileno())
            normal_permissions(tmp)
            os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def remove_temporaries(*folders: str | os.PathLike) -> int:
    """Remove from ``folders`` (not below them) the hidden temporary files ``.<name>.*.tmp`` that
    :func:`atomic_write` leaves when its process is killed mid-write (SIGKILL, a lost node): a checkpoint's can
    be hundreds of MB. Only for folders this process alone writes (it holds their lock), before it writes
    again; another process's write in progress looks the same. Returns how many were removed."""
    removed = 0
    for folder in map(Path, folders):
        if folder.is_dir():
            for entry in folder.iterdir():
                if entry.name.startswith(".") and entry.name.endswith(".tmp") and entry.is_file():
                    entry.unlink(missing_ok=True)
                    removed += 1
    return removed


def remove_stale_temporaries(path: str | os.PathLike, older_than: float) -> int:
    """Remove the temporaries :func:`atomic_write` left for ``path`` (``.<name>.XXXXXXXX.tmp`` beside it) that
    nothing has written to for ``older_than`` seconds: what a killed write of that file left, in a folder that
    other processes write at the same time (an eval's tracker folder, where ranks write their runs side by
    side), so that :func:`remove_temporaries` would remove their writes in progress too. A live write of a
    result file touches its temporary within moments of creating it. Returns how many were removed."""
    path = Path(path)
    pattern = re.compile(rf"\.{re.escape(path.name)}\.[a-z0-9_]{{8}}\.tmp")
    before = time.time() - older_than
    removed = 0
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        for entry in os.scandir(path.parent):
            if pattern.fullmatch(entry.name) and entry.is_file(follow_symlinks=False):
                with contextlib.suppress(FileNotFoundError):
                    if entry.stat(follow_symlinks=False).st_mtime < before:
                        os.unlink(entry.path)
                        removed += 1
    return removed


@contextlib.contextmanager
def naming(path: str | os.PathLike, instead_of: str | os.PathLike | None = None) -> Iterator[None]:
    """Make an ``OSError`` raised in the block that names no file (or names ``instead_of``, e.g. a hidden
    temporary file) name ``path``, so that its one line says which file or folder failed: writing to an open
    file on a full disk raises ``ENOSPC`` with no file name."""
    try:
        yield
    except OSError as err:
        hidden = {os.fspath(instead_of)} if instead_of is not None else set()
        if err.filename is None or os.fspath(err.filename) in hidden:
            err.filename, err.filename2 = os.fspath(path), None
        elif err.filename2 is not None and os.fspath(err.filename2) in hidden:
            err.filename2 = os.fspath(path)
        raise


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically (UTF-8, ``\\n`` line ends)."""
    with atomic_write(path) as f:
        f.write(text)


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_write(path, "wb") as f:
        f.write(data)


def _to_json(obj: Any) -> Any:
    import numpy as np

    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    raise TypeError(f"cannot write {type(obj).__name__} to JSON")


def plain(obj: Any) -> Any:
    """``obj`` as JSON holds it: nested dicts, lists, strings, numbers, booleans and None (converted like
    :func:`write_json` converts)."""
    return json.loads(json.dumps(obj, default=_to_json))


def write_json(path: str | os.PathLike, obj: Any, indent: int = 2) -> None:
    """Write ``obj`` as JSON atomically; numpy scalars/arrays, paths, dataclasses and sets are converted.

    NaN is written as ``NaN`` like ``json.dump`` does (the official report does the same).
    """
    write_text(path, json.dumps(obj, indent=indent, default=_to_json) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    """Read a JSON file; a missing or malformed file raises :class:`InputError`."""
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise InputError(f"JSON file not found: {path}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(f"cannot read JSON file {path}: {err}") from None


# errno -> (reason, what to do). The advice is generic; callers add their own with ``hint``.
_OS_REASONS: dict[int, tuple[str, str]] = {
    errno.EACCES: ("permission denied", "check its permissions"),
    errno.EPERM: ("operation not permitted", "check its permissions"),
    errno.EROFS: ("read-only file system", "use a writable location"),
    errno.ENOSPC: ("no space left on the device", "free some space"),
    errno.EDQUOT: ("disk quota exceeded", "free some space"),
    errno.EFBIG: ("file too large for the file system", "use another disk"),
    errno.EISDIR: ("it is a folder, not a file", "remove or rename the folder"),
    errno.ENOENT: ("no such file or folder", "check the path"),
    errno.ENAMETOOLONG: ("the name is too long", "use a shorter path"),
    errno.ELOOP: ("too many levels of symbolic links", "check the links in the path"),
    errno.EIO: ("input/output error (a failing disk or network share?)", "check the disk"),
    errno.EMFILE: ("too many open files", "raise the limit (ulimit -n)"),
    errno.ENFILE: ("too many open files in the system", "close other programs"),
}


def _file_in_the_way(path: Path) -> Path | None:
    """The nearest existing ancestor of ``path`` (or ``path`` itself) that is not a folder."""
    for candidate in (path, *path.parents):
        try:
            if candidate.exists():
                return None if candidate.is_dir() else candidate
        except OSError:
            return None
    return None


def os_error_message(err: OSError, path: str | os.PathLike | None = None, action: str = "write",
                     hint: str | None = None) -> str:
    """One line for an environment failure: ``cannot <action> <path>: <reason>; <what to do>``.

    ``path`` is the file or folder the user can act on (default: the one the error names). ``hint`` is
    advice of the caller's own, added after the generic one (``"..., or <hint>"``), e.g.
    ``"set TREK_TRACK_HOME to a writable folder"``. A path under a file (``ENOTDIR``) or a file where a
    folder is needed (``EEXIST`` from ``mkdir``) names the file in the way.
    """
    where = Path(path) if path is not None else Path(err.filename) if err.filename is not None else None
    shown = str(where) if where is not None else "a file or folder (the system did not say which)"
    code = err.errno
    if code in (errno.ENOTDIR, errno.EEXIST):
        blocker = None
        for candidate in (Path(err.filename) if err.filename is not None else None, where):
            if candidate is not None and (blocker := _file_in_the_way(candidate)) is not None:
                break
        if blocker is not None:
            reason = f"{blocker} is a file, not a folder" if blocker != where else "it is a file, not a folder"
            advice = "remove or rename that file" if blocker != where else "remove or rename it"
        elif code == errno.EEXIST:
            reason, advice = "it already exists", "remove it or use another path"
        else:
            reason, advice = "a part of the path is not a folder", "check the path"
    elif code in _OS_REASONS:
        reason, advice = _OS_REASONS[code]
    else:
        reason, advice = (err.strerror or type(err).__name__).lower(), ""
    if hint:
        advice = f"{advice}, or {hint}" if advice else hint
    return f"cannot {action} {shown}: {reason}" + (f"; {advice}" if advice else "")


@contextlib.contextmanager
def os_errors(path: str | os.PathLike | None = None, action: str = "write", hint: str | None = None,
              error: type[UserError] = UserError) -> Iterator[None]:
    """Turn an ``OSError`` raised in the block into ``error`` (a :class:`UserError`) with one line from
    :func:`os_error_message`; the CLI prints it as ``trek-track: error: ...`` and exits with code 2.

    ``path``: what to name (default: the file the error names; pass the folder the user chose rather than
    a hidden temporary file in it). ``action``: a verb, ``"write"``, ``"read"``, ``"create"``...
    ``error``: e.g. :class:`~trek_tracker.errors.CheckpointError` or :class:`InputError` where callers
    catch those. Other exceptions pass through unchanged.
    """
    try:
        yield
    except OSError as err:
        raise error(os_error_message(err, path, action, hint)) from err


def hold_folder(path: str | os.PathLike) -> int:
    """Hold the folder ``path`` for this process: the one-writer rule of a run folder and of a training's
    ``--out`` (two processes writing one would mix two runs' files). Released when the returned descriptor is
    closed or the process ends, however it ends; held by another process, it is a :class:`UserError`."""
    import fcntl

    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise UserError(f"{path} is being written by another trek-track process; wait for it to end, or choose "
                        "another --out folder") from None
    return fd


def sha256_of(path: str | os.PathLike, progress: Callable[[int], None] | None = None,
              chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks; ``progress`` is called with the size of each chunk read."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
            if progress is not None:
                progress(len(block))
    return digest.hexdigest()
