"""Atomic writes, JSON, sha256 and one-line OS errors (trek_tracker.files)."""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

from trek_tracker import files
from trek_tracker.files import (
    atomic_write,
    naming,
    os_error_message,
    plain,
    sha256_of,
    write_json,
    write_text,
)


def test_atomic_write_gives_the_usual_permissions_and_keeps_the_umask(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(files, "_UMASK", None)
    old = os.umask(0o027)
    try:
        write_text(tmp_path / "a.txt", "x")
        after = os.umask(0o027)
    finally:
        os.umask(old)
    assert after == 0o027  # reading the umask does not change it
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o640  # 0666 minus umask, not mkstemp's 0600


def test_atomic_write_creates_missing_parent_folders(tmp_path: Path) -> None:
    write_text(tmp_path / "a" / "b" / "c.txt", "x")
    assert (tmp_path / "a" / "b" / "c.txt").read_text() == "x"


def test_atomic_write_flushes_before_it_syncs(tmp_path: Path, fsync_sizes: list[int]) -> None:
    synced = fsync_sizes
    write_text(tmp_path / "a.txt", "x" * 1000)
    assert synced == [1000]  # the data reached the file before it was synced


@pytest.mark.parametrize("named", ["none", "temporary", "other"])
def test_a_temporary_file_that_cannot_be_made_names_the_file_asked_for(tmp_path: Path, monkeypatch, named) -> None:
    target = tmp_path / "out.txt"
    other = str(tmp_path / "elsewhere")
    filename = {"none": None, "temporary": str(tmp_path / ".out.txt.abc123.tmp"), "other": other}[named]

    def mkstemp(**kwargs):
        raise OSError(errno.EMFILE, os.strerror(errno.EMFILE), filename)

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    with pytest.raises(OSError) as info, atomic_write(target):
        pass
    assert info.value.filename == (other if named == "other" else str(target))


def test_naming_renames_a_hidden_second_file_and_only_that(tmp_path: Path) -> None:
    target, hidden, other = tmp_path / "out.txt", str(tmp_path / ".out.txt.x.tmp"), str(tmp_path / "src")
    for filename2, expected in ((hidden, str(target)), (other, other), (None, None)):
        with pytest.raises(OSError) as info, naming(target, instead_of=hidden):
            raise OSError(errno.EXDEV, os.strerror(errno.EXDEV), other, None, filename2)
        assert (info.value.filename, info.value.filename2) == (other, expected)


@dataclasses.dataclass
class _Point:
    x: int
    y: float


def test_write_json_converts_dataclasses_and_sets_and_refuses_other_objects(tmp_path: Path) -> None:
    write_json(tmp_path / "x.json", {"p": _Point(1, 0.5), "s": {3, 1, 2}, "f": frozenset({"b", "a"})})
    assert json.loads((tmp_path / "x.json").read_text()) == {"p": {"x": 1, "y": 0.5}, "s": [1, 2, 3], "f": ["a", "b"]}
    for bad in (_Point, object()):  # a dataclass's class is no record of it
        with pytest.raises(TypeError, match="cannot write"):
            write_json(tmp_path / "bad.json", {"v": bad})
    assert not (tmp_path / "bad.json").exists()


def test_plain_is_what_json_holds() -> None:
    assert plain({"a": np.int64(1), "b": np.arange(2), "p": Path("x/y"), 3: (1, 2)}) == {
        "a": 1, "b": [0, 1], "p": "x/y", "3": [1, 2]}


def test_a_path_under_a_file_names_the_file_the_error_names_not_only_the_folder_given(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "sub").write_text("")
    err = OSError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(tmp_path / "out" / "sub" / "x.txt"))
    assert os_error_message(err, tmp_path / "out") == (f"cannot write {tmp_path / 'out'}: {tmp_path / 'out' / 'sub'} "
                                                       "is a file, not a folder; remove or rename that file")
    nameless = OSError(errno.ENOTDIR, os.strerror(errno.ENOTDIR))
    assert os_error_message(nameless) == ("cannot write a file or folder (the system did not say which): a part of "
                                          "the path is not a folder; check the path")
    assert os_error_message(nameless, tmp_path / "out") == (f"cannot write {tmp_path / 'out'}: a part of the path "
                                                            "is not a folder; check the path")


def test_a_folder_that_exists_where_one_is_made_is_said_to_exist(tmp_path: Path) -> None:
    err = OSError(errno.EEXIST, os.strerror(errno.EEXIST), str(tmp_path))
    assert os_error_message(err, action="create") == (f"cannot create {tmp_path}: it already exists; remove it or "
                                                      "use another path")


def test_sha256_of_a_file_larger_than_a_chunk(tmp_path: Path) -> None:
    data = np.random.default_rng(0).bytes(3 * (1 << 20) + 5)
    (tmp_path / "w.bin").write_bytes(data)
    seen = []
    assert sha256_of(tmp_path / "w.bin", seen.append) == hashlib.sha256(data).hexdigest()
    assert sum(seen) == len(data) and len(seen) == 4
    assert sha256_of(tmp_path / "w.bin", chunk=1000) == hashlib.sha256(data).hexdigest()



def test_the_temporary_a_killed_atomic_write_leaves_is_what_remove_temporaries_removes(tmp_path: Path) -> None:
    target = tmp_path / "ckpt" / "step_2.state.pth"
    pid = os.fork()
    if pid == 0:  # the child is killed in the middle of the write: no handler, no cleanup runs
        try:
            with atomic_write(target, "wb") as f:
                f.write(b"half a checkpoint")
                f.flush()
                os.kill(os.getpid(), 9)
        finally:
            os._exit(1)
    os.waitpid(pid, 0)
    (left,) = (target.parent).iterdir()
    assert left.name.startswith(".step_2.state.pth.") and left.name.endswith(".tmp") and not target.exists()
    (tmp_path / "ckpt" / "kept.tmp").write_bytes(b"")  # not hidden: not one of atomic_write's
    (tmp_path / "ckpt" / "below").mkdir()
    (tmp_path / "ckpt" / "below" / ".x.tmp").write_bytes(b"")  # below the folder given: not looked at
    assert files.remove_temporaries(tmp_path / "missing", target.parent) == 1
    assert sorted(p.name for p in target.parent.iterdir()) == ["below", "kept.tmp"]
    assert files.remove_temporaries(target.parent) == 0


def test_only_the_old_temporaries_of_the_one_file_named_are_stale(tmp_path: Path) -> None:
    target = tmp_path / "ope" / "P01.txt"
    target.parent.mkdir()

    def temporary(name: str, age: float) -> Path:  # made as atomic_write makes them
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=target.parent)
        os.close(fd)
        os.utime(tmp, (time.time() - age,) * 2)
        return Path(tmp)

    killed = temporary("P01.txt", 7200)
    live = temporary("P01.txt", 5)  # a write in progress, e.g. another command's
    other = temporary("P01.txt.bak", 7200)  # another file whose name starts with this one's
    (target.parent / ".P01.txt.tmp").write_text("")  # not mkstemp's shape
    assert files.remove_stale_temporaries(target, older_than=3600) == 1
    assert not killed.exists() and live.exists() and other.exists() and (target.parent / ".P01.txt.tmp").exists()
    assert files.remove_stale_temporaries(tmp_path / "missing" / "P01.txt", older_than=0) == 0

