"""``trek_tracker.files.os_errors``: environment failures become one line naming the path and the reason."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from trek_tracker.errors import CheckpointError, UserError
from trek_tracker.files import atomic_write, naming, os_error_message, os_errors, write_text


def _message(func, path=None, action="write", hint=None) -> str:
    with pytest.raises(UserError) as info, os_errors(path, action, hint):
        func()
    assert "\n" not in str(info.value)
    return str(info.value)


def test_path_under_a_file_names_the_file_in_the_way(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("x")
    target = tmp_path / "afile" / "sub" / "out.txt"
    msg = _message(lambda: write_text(target, "x"), target)
    assert msg == f"cannot write {target}: {tmp_path / 'afile'} is a file, not a folder; remove or rename that file"
    msg = _message(lambda: (tmp_path / "afile").mkdir(exist_ok=True), tmp_path / "afile", "create")
    assert msg == f"cannot create {tmp_path / 'afile'}: it is a file, not a folder; remove or rename it"


def test_folder_where_a_file_is_expected(tmp_path: Path) -> None:
    msg = _message(lambda: open(tmp_path, "w"), hint="choose another --out")
    assert msg == (f"cannot write {tmp_path}: it is a folder, not a file; remove or rename the folder, "
                   "or choose another --out")


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_full_disk() -> None:
    def fill() -> None:
        with open("/dev/full", "w") as f:
            f.write("x" * 100_000)

    assert _message(fill, "/dev/full") == "cannot write /dev/full: no space left on the device; free some space"


@pytest.mark.parametrize(("code", "reason"), [
    (errno.EACCES, "permission denied; check its permissions"),
    (errno.EROFS, "read-only file system; use a writable location"),
    (errno.ENOSPC, "no space left on the device; free some space"),
    (errno.EDQUOT, "disk quota exceeded; free some space"),
])
def test_reasons_by_errno(code: int, reason: str, tmp_path: Path) -> None:
    err = OSError(code, os.strerror(code), str(tmp_path / ".hidden.tmp"))
    # the path the user chose is named, not the temporary file the OS complained about
    assert os_error_message(err, tmp_path / "home") == f"cannot write {tmp_path / 'home'}: {reason}"
    assert os_error_message(err) == f"cannot write {tmp_path / '.hidden.tmp'}: {reason}"
    assert os_error_message(err, "x", "read", "set X").endswith(", or set X")


def test_real_permission_error(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("root ignores file permissions")
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    msg = _message(lambda: write_text(locked / "a.txt", "x"), locked)
    assert msg == f"cannot write {locked}: permission denied; check its permissions"


def test_unknown_errno_keeps_the_system_reason_and_other_errors_pass(tmp_path: Path) -> None:
    err = OSError(errno.EBUSY, "Device or resource busy")
    assert os_error_message(err, tmp_path, "delete") == f"cannot delete {tmp_path}: device or resource busy"
    with pytest.raises(KeyError), os_errors(tmp_path):
        raise KeyError("not an OSError")
    with pytest.raises(CheckpointError, match="no such file"), os_errors(tmp_path / "x", "read", error=CheckpointError):
        open(tmp_path / "x")


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_a_full_disk_names_the_file_the_os_did_not_name(tmp_path: Path, monkeypatch) -> None:
    """Data written to an open file on a full disk fails with ENOSPC and no file name; the line names the file
    written (never "it", nor the hidden temporary file of an atomic write), with no temporary left behind."""
    target = tmp_path / "out" / "boxes.txt"
    with pytest.raises(OSError) as info, naming(target):
        with open("/dev/full", "w") as f:  # a real full device
            f.write("x" * 100_000)
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(target)
    assert os_error_message(info.value) == f"cannot write {target}: no space left on the device; free some space"

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # as a full disk says it: no file name

    monkeypatch.setattr(os, "fsync", full)
    assert _message(lambda: write_text(target, "x"), action="use") == (f"cannot use {target}: no space left on "
                                                                       "the device; free some space")
    assert list(target.parent.iterdir()) == []


def test_an_atomic_write_onto_a_folder_names_the_folder_not_its_temporary_file(tmp_path: Path) -> None:
    (tmp_path / "results").mkdir()
    msg = _message(lambda: write_text(tmp_path / "results", "x"))
    assert msg == f"cannot write {tmp_path / 'results'}: it is a folder, not a file; remove or rename the folder"
    assert [p.name for p in tmp_path.iterdir()] == ["results"]
    with pytest.raises(OSError) as info, atomic_write(tmp_path / "results"):
        pass
    assert info.value.filename == str(tmp_path / "results") and info.value.filename2 is None


def test_an_error_that_names_nothing_never_says_it() -> None:
    msg = os_error_message(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)), action="use")
    assert msg == ("cannot use a file or folder (the system did not say which): no space left on the device; "
                   "free some space")


def test_a_torch_save_that_runs_out_of_space_is_the_os_error_naming_the_file(tmp_path: Path) -> None:
    """``torch.save`` into a file that reaches the size the system allows reports it as a ``RuntimeError`` of
    its zip writer (the ``OSError`` is only its context): ``atomic_write`` raises the ``OSError``, naming the
    file asked for, so every caller's one line for a failed write holds (and nothing is left behind). A real
    write, in a process whose file-size limit is 100 kB."""
    import subprocess
    import sys

    target = tmp_path / "state.pth"
    code = f"""
import resource, signal, torch
from trek_tracker.files import atomic_write
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))
try:
    with atomic_write({str(target)!r}, "wb") as f:
        torch.save({{"x": torch.zeros(1_000_000)}}, f)
except OSError as err:
    print(type(err).__name__, err.errno, err.filename)
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["OSError", str(errno.EFBIG), str(target)]
    assert list(tmp_path.iterdir()) == []
