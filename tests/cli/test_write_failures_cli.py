"""Outputs that cannot be written, through the command line: a full disk names the file or folder (never "it"),
``submit --out`` a folder says so, and a run killed outright is replaced whole by ``--overwrite``."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from tests.cli.conftest import TINY
from tests.damaged import REPO
from tests.eval.helpers import build_synthetic

ORACLE = "tests.eval.helpers:OracleTracker"
RUN = ("--model", TINY, "--random-weights", "--init", "box", "--save-state-every", "0",
       "--max-long-edge", "64", "--quiet", "--device", "cpu")
BEDROOM = ("--box", "300,200,200,150")


def _one_line(result, *fragments: str) -> str:
    lines = result.stderr.splitlines()
    errors = [line for line in lines if not line.startswith("trek-track: warning:")]
    assert result.exit_code == 2, result.output
    assert len(errors) == 1 and errors[0].startswith("trek-track: error: "), result.stderr
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in errors[0], (fragment, errors[0])
    return errors[0]


def _disk_full_under(monkeypatch, prefix: Path) -> None:
    """A file system that is full under ``prefix`` as a real one is: data written to an open file fails when it
    is synced, with ENOSPC and no file name (the OS does not say which file)."""
    fsync, prefix = os.fsync, str(prefix.absolute())

    def full(fd: int) -> None:
        if os.readlink(f"/proc/self/fd/{fd}").startswith(prefix):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        fsync(fd)

    monkeypatch.setattr(os, "fsync", full)


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc/self/fd")
def test_a_run_that_fills_the_disk_names_the_file(cli, shared, tmp_path, monkeypatch):
    out = tmp_path / "run"
    _disk_full_under(monkeypatch, out / "masks")
    r = cli("run", "--video", shared / "data/videos/blackswan.mp4", "--box", "330,130,250,170", *RUN, "--out", out,
            "--save-masks",
            "--last-frame", "3")
    line = _one_line(r, f"cannot write {out / 'masks'}{os.sep}", ".png: no space left on the device; free some "
                     "space, or choose another --out folder")
    assert ".tmp" not in line and " it:" not in line
    assert "--resume" not in line  # it saved no state (--save-state-every 0): it cannot be resumed
    record = json.loads((out / "run.json").read_text())
    assert record["status"] == "failed" and str(out / "masks") in record["error"]


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc/self/fd")
def test_eval_on_a_full_disk_names_the_file(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from trek_tracker.cli import main

    root, res = build_synthetic(tmp_path / "trek"), tmp_path / "results"
    _disk_full_under(monkeypatch, res)
    r = CliRunner().invoke(main, [str(a) for a in ("eval", "--root", root, "--tracker", "o", "--tracker-class",
                                                    ORACLE, "--results", res, "--protocol", "ope", "--quiet",
                                                    "--no-plots", "--report-dir", tmp_path / "rep")])
    line = _one_line(r, f"{res / 'o'}{os.sep}", "no space left on the device; free some space")
    assert ".tmp" not in line and " it:" not in line


def test_submit_to_a_folder_names_out_and_says_what_to_do(tmp_path):
    from click.testing import CliRunner

    from trek_tracker.cli import main

    def run(*args):
        return CliRunner().invoke(main, [str(a) for a in args])

    root, res = build_synthetic(tmp_path / "trek"), tmp_path / "results"
    assert run("eval", "--root", root, "--tracker", "o", "--tracker-class", ORACLE, "--results", res, "--protocol",
               "all", "--quiet", "--no-plots", "--report-dir", tmp_path / "rep").exit_code == 0
    before = sorted(res.rglob("*"))
    line = _one_line(run("submit", "--results", res, "--tracker", "o", "--root", root, "--out", res),
                     f"--out {res} is a folder", f"--out {res / 'challenge-submission.zip'}")
    assert ".tmp" not in line and sorted(res.rglob("*")) == before  # nothing written, nothing left behind
    out = res / "challenge-submission.zip"
    assert run("submit", "--results", res, "--tracker", "o", "--root", root, "--out", out).exit_code == 0
    with zipfile.ZipFile(out) as z:
        assert z.namelist() == ["challenge-submission.json"]


def _killed_run(video: Path, out: Path, *extra: str) -> None:
    """``trek-track run`` killed with SIGKILL once it has written a few masks."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p),
           "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "trek_tracker.cli", "run", "--video", str(video), *BEDROOM, *RUN,
                             "--out", str(out), *extra], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if len(list((out / "masks").glob("*.png"))) >= 3:
                break
            time.sleep(0.02)
        assert proc.poll() is None, "the run ended before it could be killed"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.communicate()
    assert proc.returncode == -signal.SIGKILL


def test_a_killed_run_is_replaced_whole_by_overwrite(cli, shared, tmp_path):
    """SIGKILL while masks and probabilities are written: the manifest still says ``running`` with no
    ``files``, but it says from the start what the run writes, so --overwrite removes exactly that (the
    temporary files of a write cut short included) and still refuses a file no run wrote."""
    video, out = shared / "data/videos/bedroom.mp4", tmp_path / "km"  # 200 frames: time to kill it
    _killed_run(video, out, "--save-masks", "--save-probs")
    record = json.loads((out / "run.json").read_text())
    assert record["status"] == "running" and record["files"] == []
    assert {"masks/", "masks/*.png", "probs/", "boxes.txt.part"} <= set(record["writes"])
    (out / "masks" / ".00099.png.k1ll3d.tmp").write_bytes(b"half a mask")  # what a write cut short leaves
    (out / ".run.json.k1ll3d.tmp").write_bytes(b"{")
    (out / "masks" / "notes.txt").write_text("mine")
    kept = sorted(out.rglob("*"))
    refused = cli("run", "--video", video, *BEDROOM, *RUN, "--out", out, "--overwrite", "--last-frame", "3")
    _one_line(refused, "previous run did not write (masks/notes.txt)")
    assert sorted(out.rglob("*")) == kept  # refused before anything was removed
    (out / "masks" / "notes.txt").unlink()
    done = cli("run", "--video", video, *BEDROOM, *RUN, "--out", out, "--overwrite", "--last-frame", "3")
    assert done.exit_code == 0, done.output
    assert sorted(p.name for p in out.iterdir()) == ["boxes.txt", "run.json", "times.txt"]
    assert json.loads((out / "run.json").read_text())["status"] == "complete"


def test_a_run_whose_files_cannot_be_opened_names_the_file_and_says_to_choose_another_out(cli, shared, tmp_path,
                                                                                          monkeypatch):
    import builtins

    out, real_open = tmp_path / "run", builtins.open

    def full(file, *args, **kw):  # a disk that fills as the run opens its first output file (after run.json)
        if str(file) == str(out / "boxes.txt.part"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(file))
        return real_open(file, *args, **kw)

    monkeypatch.setattr(builtins, "open", full)
    r = cli("run", "--video", shared / "data/videos/blackswan.mp4", *BEDROOM, *RUN, "--out", out, "--last-frame", "1")
    _one_line(r, f"cannot write {out / 'boxes.txt.part'}: no space left on the device; free some space, or choose "
              "another --out folder")
    assert json.loads((out / "run.json").read_text())["status"] == "failed"


def test_only_a_failure_on_a_file_of_the_run_itself_is_said_as_a_write(tmp_path):
    from trek_tracker.cli.run import _writing
    from trek_tracker.errors import UserError

    out = tmp_path / "run"
    for elsewhere in (tmp_path / "frames" / "00001.jpg", tmp_path / "run-old" / "boxes.txt", None):
        err = OSError(errno.EIO, os.strerror(errno.EIO), *([] if elsewhere is None else [str(elsewhere)]))
        with pytest.raises(OSError) as raised, _writing(out, new=True):
            raise err
        assert raised.value is err  # reading the video, say: not this run's write, let through as it is
    with pytest.raises(UserError, match=f"^cannot write {out / 'boxes.txt.part'}: .*choose another --out folder$"), \
            _writing(out, new=True):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(out / "boxes.txt.part"))
