"""The checkpoint cache: where files live, how they are checked, and how hand-copied files get in.

Layout: ``$TREK_TRACK_HOME/weights/<official file name>`` (default home ``~/.cache/trek-track``), with
``<file>.part`` for an unfinished download and ``<file>.sha256`` recording the hash seen at download or
import time.  A file only ever appears under its final name after it passed the checks (atomic rename), so
a present file is a complete one, and it has the permissions a plain ``open`` gives (0666 minus umask).

The checks (:func:`check_file`): the registry's size and sha256 where it knows them; where it has no
sha256, the file must load safely as the named kind of checkpoint with exactly its model's keys and shapes
(:mod:`trek_tracker.weights.content`), so that a saved web page or another model's file never enters the
cache, and ``verify`` repeats that check. File-system failures (an unwritable, read-only or full
``$TREK_TRACK_HOME``, a path under a file) are one :class:`~trek_tracker.errors.UserError` line naming the
path (:func:`trek_tracker.files.os_errors`).
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
from trek_tracker.files import normal_permissions, os_error_message, os_errors, sha256_of, write_text
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


HOME_HINT = f"set {HOME_ENV} to another folder"


def cache_errors(action: str = "write"):
    """``os_errors`` for the cache folder: one line naming it, with the ``$TREK_TRACK_HOME`` hint."""
    return os_errors(weights_dir(), action, hint=HOME_HINT)


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
    """Raise if ``path`` (hash ``sha256``) is not ``entry``'s file; ``what`` names it in the message.

    Size and sha256 where the registry knows them; without a sha256, the content check of
    :func:`trek_tracker.weights.content.check_content` (the file loads safely and its keys are the model's).
    """
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
    if entry.sha256 is None:
        if not looks_like_checkpoint(path):
            raise CheckpointError(
                f"{what} is not a torch checkpoint (an HTML page from Google Drive?); "
                f"download {entry.name} by hand from {entry.manual_link}"
            )
        from trek_tracker.weights.content import check_content

        check_content(entry, path, what)


@contextlib.contextmanager
def download_lock(entry: CheckpointEntry) -> Iterator[None]:
    """Keep two processes from appending to the same ``.part`` file (POSIX only; a no-op elsewhere).

    The lock file is removed afterwards so the cache holds only checkpoints; the small race this opens
    (a third process locking a fresh file) can at worst corrupt a ``.part``, which the hash check rejects.
    """
    with cache_errors():
        weights_dir().mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    lock = weights_dir() / (entry.file_name + ".lock")
    with cache_errors():
        fh = open(lock, "a")  # noqa: SIM115 - closed by the with below
    with fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as err:
            raise CheckpointError(f"another process is already downloading {entry.name} ({lock}); wait for it to "
                                  f"finish, then run `{entry.download_command}` again (it is then in the cache)"
                                  ) from err
        try:
            yield
        finally:
            lock.unlink(missing_ok=True)
            fcntl.flock(fh, fcntl.LOCK_UN)


def install_verified(entry: CheckpointEntry, tmp: Path, what: str) -> Path:
    """Check ``tmp`` against ``entry`` and move it to its cache name; delete it when it fails the check.

    An interrupt (Ctrl-C or a signal while a large file is hashed or loaded) or a read error keeps ``tmp``:
    it is not known to be bad, and the next download resumes from it instead of fetching it all again.
    """
    with cache_errors("read"):
        digest = sha256_of(tmp)
    try:
        check_file(entry, tmp, digest, what)
    except Exception:  # not KeyboardInterrupt / SystemExit
        tmp.unlink(missing_ok=True)
        raise
    final = cached_path(entry)
    with cache_errors():
        write_record(final, digest)
        normal_permissions(tmp)
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
    with cache_errors("read"):
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
    """Check the cached file as it was checked on arrival: the registry's size and sha256; without a pinned
    sha256, the hash recorded on arrival (catches later corruption) *and* the content check (a file imported
    before that check existed may be any zip), recording the hash when none was."""
    path = cached_path(entry)
    if not path.is_file():
        raise CheckpointError(f"{entry.name} is not downloaded; run `{entry.download_command}`")
    with os_errors(path, "read"):
        digest = sha256_of(path, progress)
        size = path.stat().st_size
    recorded = recorded_sha256(path)
    if entry.sha256 is not None:
        expected, against = entry.sha256, "registry"
    elif recorded is not None:
        expected, against = recorded, "recorded"
    else:
        expected, against = None, "none"
    if entry.size is not None and size != entry.size:
        return VerifyResult(entry, path, False, digest, against, f"size {size:,} != {entry.size:,}")
    if expected is not None and digest != expected:
        return VerifyResult(entry, path, False, digest, against, f"sha256 {digest} != {expected} ({against})")
    if entry.sha256 is not None:
        return VerifyResult(entry, path, True, digest, against, "sha256 matches (registry)")
    from trek_tracker.weights.content import check_content

    try:
        if not looks_like_checkpoint(path):
            raise CheckpointError("not a torch checkpoint (an HTML page?)")
        summary = check_content(entry, path, path.name)
    except CheckpointError as err:
        return VerifyResult(entry, path, False, digest, against, str(err).split("; get ")[0])
    if recorded is not None:
        return VerifyResult(entry, path, True, digest, against,
                            f"sha256 matches the one recorded on arrival; {summary}")
    try:
        write_record(path, digest)
        note = "no known sha256; recorded it now"
    except OSError as err:
        note = f"no known sha256; could not record it ({os_error_message(err, _record_path(path))})"
    return VerifyResult(entry, path, True, digest, against, f"{note}; {summary}")


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
        what = "it is a folder" if source.is_dir() else "no such file"
        raise CheckpointError(f"cannot import {source}: {what}")
    entry = registry.get(name) if name is not None else registry.find(source.name)
    with cache_errors():
        weights_dir().mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=".import-", suffix=".part", dir=weights_dir())
    tmp = Path(tmp_name)
    try:
        digest = hashlib.sha256()
        with cache_errors(), os.fdopen(fd, "wb") as out:
            try:  # errors of the source are the source's, not the cache's
                src = open(source, "rb")  # noqa: SIM115 - closed by the with below
            except OSError as err:
                raise CheckpointError(os_error_message(err, source, "read")) from None
            with src:
                while True:
                    try:
                        chunk = src.read(_CHUNK)
                    except OSError as err:
                        raise CheckpointError(os_error_message(err, source, "read")) from None
                    if not chunk:
                        break
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
        with cache_errors():
            write_record(final, sha)
            normal_permissions(tmp)
            os.replace(tmp, final)
        return final
    finally:
        tmp.unlink(missing_ok=True)
