"""The checkpoint cache: where files live, how they are checked, and how hand-copied files get in.

Layout: ``$TREK_TRACK_HOME/weights/<official file name>`` (default home ``~/.cache/trek-track``), with
``<file>.part`` for an unfinished download and ``<file>.sha256`` recording the hash seen at download or
import time.  A file only ever appears under its final name after it passed the checks (atomic rename), so
a present file is a complete one.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from trek_tracker.errors import CheckpointError
from trek_tracker.files import sha256_of, write_text
from trek_tracker.weights.registry import CheckpointEntry, Registry, default_registry

HOME_ENV = "TREK_TRACK_HOME"
_CHUNK = 1 << 20
# First bytes of the two torch.save formats: a zip archive (torch >= 1.6) or a bare pickle (legacy).
_CHECKPOINT_MAGIC = (b"PK\x03\x04", b"\x80")


def trek_home() -> Path:
    """``$TREK_TRACK_HOME``, or ``~/.cache/trek-track``."""
    env = os.environ.get(HOME_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "trek-track"


def weights_dir() -> Path:
    return trek_home() / "weights"


def cached_path(entry: CheckpointEntry) -> Path:
    """Where ``entry`` lives in the cache (whether or not it is there)."""
    return weights_dir() / entry.file_name


def part_path(entry: CheckpointEntry) -> Path:
    return weights_dir() / (entry.file_name + ".part")


def _record_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def recorded_sha256(path: Path) -> str | None:
    """The hash written beside ``path`` when it entered the cache, if any."""
    try:
        text = _record_path(path).read_text().split()
    except OSError:
        return None
    return text[0] if text else None


def write_record(path: Path, sha256: str) -> None:
    write_text(_record_path(path), f"{sha256}  {path.name}\n")


def looks_like_checkpoint(path: Path) -> bool:
    """True when the file starts like a torch checkpoint; catches saved HTML error pages (Drive quota)."""
    with open(path, "rb") as fh:
        head = fh.read(4)
    return any(head.startswith(magic) for magic in _CHECKPOINT_MAGIC)


def check_file(entry: CheckpointEntry, path: Path, sha256: str, what: str) -> None:
    """Raise if ``path`` (hash ``sha256``) is not ``entry``'s file; ``what`` names it in the message."""
    size = path.stat().st_size
    if entry.size is not None and size != entry.size:
        raise CheckpointError(
            f"{what} has {size:,} bytes but {entry.name} has {entry.size:,}; "
            f"get it again from {entry.manual_link}"
        )
    if entry.sha256 is not None and sha256 != entry.sha256:
        raise CheckpointError(
            f"{what} has sha256 {sha256} but {entry.name} has {entry.sha256}; "
            f"the file is corrupt or a different release, get it again from {entry.manual_link}"
        )
    if entry.sha256 is None and not looks_like_checkpoint(path):
        raise CheckpointError(
            f"{what} is not a torch checkpoint (an HTML page from Google Drive?); "
            f"download {entry.name} by hand from {entry.manual_link}"
        )


@contextlib.contextmanager
def download_lock(entry: CheckpointEntry) -> Iterator[None]:
    """Keep two processes from appending to the same ``.part`` file (POSIX only; a no-op elsewhere).

    The lock file is removed afterwards so the cache holds only checkpoints; the small race this opens
    (a third process locking a fresh file) can at worst corrupt a ``.part``, which the hash check rejects.
    """
    weights_dir().mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    lock = weights_dir() / (entry.file_name + ".lock")
    with open(lock, "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as err:
            raise CheckpointError(f"another process is already downloading {entry.name} ({lock})") from err
        try:
            yield
        finally:
            lock.unlink(missing_ok=True)
            fcntl.flock(fh, fcntl.LOCK_UN)


def install_verified(entry: CheckpointEntry, tmp: Path, what: str) -> Path:
    """Check ``tmp`` against ``entry`` and move it to its cache name; delete it when it fails."""
    try:
        digest = sha256_of(tmp)
        check_file(entry, tmp, digest, what)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    final = cached_path(entry)
    write_record(final, digest)
    os.replace(tmp, final)
    return final


@dataclass(frozen=True)
class CacheStatus:
    entry: CheckpointEntry
    path: Path
    present: bool
    size: int | None  # bytes on disk (final file, else the .part file), None when neither exists
    partial: bool

    @property
    def state(self) -> str:
        if self.present:
            if self.entry.size is not None and self.size != self.entry.size:
                return "wrong size"
            return "present"
        if self.partial:
            return "partial"
        return "missing"


def status(entry: CheckpointEntry) -> CacheStatus:
    """What the cache holds for ``entry`` (stat only, no hashing: cheap enough for ``list``)."""
    path = cached_path(entry)
    if path.is_file():
        return CacheStatus(entry, path, True, path.stat().st_size, False)
    part = part_path(entry)
    if part.is_file():
        return CacheStatus(entry, path, False, part.stat().st_size, True)
    return CacheStatus(entry, path, False, None, False)


@dataclass(frozen=True)
class VerifyResult:
    entry: CheckpointEntry
    path: Path
    ok: bool
    sha256: str
    against: str  # "registry", "recorded" or "none"
    message: str


def verify(entry: CheckpointEntry, progress: Callable[[int], None] | None = None) -> VerifyResult:
    """Hash the cached file and compare it with the registry, else with the hash recorded on arrival."""
    path = cached_path(entry)
    if not path.is_file():
        raise CheckpointError(f"{entry.name} is not downloaded; run `{entry.download_command}`")
    digest = sha256_of(path, progress)
    recorded = recorded_sha256(path)
    if entry.sha256 is not None:
        expected, against = entry.sha256, "registry"
    elif recorded is not None:
        expected, against = recorded, "recorded"
    else:
        expected, against = None, "none"
    size = path.stat().st_size
    if entry.size is not None and size != entry.size:
        ok, message = False, f"size {size:,} != {entry.size:,}"
    elif expected is not None and digest != expected:
        ok, message = False, f"sha256 {digest} != {expected} ({against})"
    elif expected is None:
        ok, message = looks_like_checkpoint(path), "no known sha256; recorded it now"
        if ok:
            write_record(path, digest)
        else:
            message = "not a torch checkpoint"
    else:
        ok, message = True, f"sha256 matches ({against})"
    return VerifyResult(entry, path, ok, digest, against, message)


def import_file(
    source: Path | str,
    name: str | None = None,
    *,
    registry: Registry | None = None,
    force: bool = False,
) -> Path:
    """Check a hand-downloaded file and copy it into the cache; returns the cached path.

    Without ``name`` the entry is found by the file's name, then by its sha256 among the known hashes.
    """
    registry = registry or default_registry()
    source = Path(source).expanduser()
    if not source.is_file():
        raise CheckpointError(f"cannot import {source}: no such file")
    entry = registry.get(name) if name is not None else registry.find(source.name)
    weights_dir().mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=".import-", suffix=".part", dir=weights_dir())
    tmp = Path(tmp_name)
    try:
        digest = hashlib.sha256()
        with os.fdopen(fd, "wb") as out, open(source, "rb") as src:
            while chunk := src.read(_CHUNK):
                digest.update(chunk)
                out.write(chunk)
        sha = digest.hexdigest()
        if entry is None:
            entry = next((e for e in registry if e.sha256 == sha), None)
        if entry is None:
            raise CheckpointError(
                f"cannot tell which checkpoint {source.name} is (unknown file name and sha256); "
                f"name it: `trek-track weights import {source} --name NAME` (see `trek-track weights list`)"
            )
        final = cached_path(entry)
        if final.exists() and not force:
            raise CheckpointError(
                f"{entry.name} is already in the cache at {final}; use --force to replace it"
            )
        check_file(entry, tmp, sha, str(source))
        write_record(final, sha)
        os.replace(tmp, final)
        return final
    finally:
        tmp.unlink(missing_ok=True)
