"""What happens when things go wrong, through real ``trek-track`` processes: a run folder belongs to one run,
a rejected command changes no file, an unusable or full output location is one line and the manifest
says what happened."""

from __future__ import annotations

import errno
import json
import shutil

import pytest

from tests.cli.conftest import TINY
from tests.damaged import assert_one_line_error, failing_fs, failing_memory, run_cli

FAST = ("--model", TINY, "--max-long-edge", "120", "--quiet", "--device", "cpu", "--init", "box")


@pytest.fixture(scope="module")
def clip(shared, tmp_path_factory):
    folder = tmp_path_factory.mktemp("clip")
    for i in range(4):
        shutil.copy(shared / f"data/davis/JPEGImages/480p/car-shadow/{i:05d}.jpg", folder / f"{i:05d}.jpg")
    return folder


def _run(clip, checkpoint, out, *extra, env=None):
    return run_cli("run", "--video", clip, "--box", "313,88,342,194", "--checkpoint", checkpoint, "--out", out,
                   *FAST, *extra, env=env)


def _snapshot(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_folder_holds_one_run(clip, tiny_checkpoint, tmp_path):
    out = tmp_path / "run"
    assert _run(clip, tiny_checkpoint, out, "--save-probs").returncode == 0
    before = _snapshot(out)
    assert_one_line_error(_run(clip, tiny_checkpoint, out), "not empty", "--overwrite")
    assert _snapshot(out) == before
    done = _run(clip, tiny_checkpoint, out, "--overwrite", "--save-masks")
    assert done.returncode == 0, done.stderr
    record = json.loads((out / "run.json").read_text())
    assert record["status"] == "complete" and "probs/" not in record["files"]
    assert not (out / "probs").exists() and len(list((out / "masks").glob("*.png"))) == 4


@pytest.mark.parametrize("extra,fragment", [
    (("--box", "1,2,3"), "four numbers"),
    (("--init", "ar", "--ar-checkpoint", "/nonexistent/ar.pth.tar"), "not found"),
    (("--memory-cap", "0"), "at least 1 frame"),
])
def test_a_rejected_command_changes_no_file(clip, tiny_checkpoint, tmp_path, extra, fragment):
    out = tmp_path / "run"
    assert _run(clip, tiny_checkpoint, out, "--save-probs", "--save-masks").returncode == 0
    before = _snapshot(out)
    args = [a for a in extra]
    if args[0] == "--box":  # replaces the good box
        proc = run_cli("run", "--video", clip, *args, "--checkpoint", tiny_checkpoint, "--out", out, "--overwrite",
                       *FAST)
    else:
        proc = _run(clip, tiny_checkpoint, out, "--overwrite", *args)
    line = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 2 and fragment in line and "Traceback" not in proc.stderr, proc.stderr
    assert _snapshot(out) == before


@pytest.mark.parametrize("code", [errno.EROFS, errno.EACCES, errno.ENOSPC])
def test_an_unwritable_output_location_is_one_line(clip, tiny_checkpoint, tmp_path, code):
    out = tmp_path / "locked" / "run"
    proc = _run(clip, tiny_checkpoint, out, env=failing_fs(tmp_path, tmp_path / "locked", code))
    assert_one_line_error(proc, str(out), "--out")


def test_a_disk_that_fills_during_the_run_is_one_line_and_the_manifest_says_failed(clip, tiny_checkpoint, tmp_path):
    out = tmp_path / "run"
    proc = _run(clip, tiny_checkpoint, out, "--save-masks", env=failing_fs(tmp_path, out / "masks", errno.ENOSPC))
    assert_one_line_error(proc, "no space left")
    record = json.loads((out / "run.json").read_text())
    assert record["status"] == "failed" and "No space" in record["error"]
    assert not (out / "boxes.txt").exists() and (out / "boxes.txt.part").exists()


def test_other_commands_on_unwritable_locations(clip, tiny_checkpoint, tmp_path):
    runs = []
    for name in ("a", "b"):
        assert _run(clip, tiny_checkpoint, tmp_path / name, "--save-probs").returncode == 0
        runs.append(tmp_path / name)
    env = failing_fs(tmp_path, tmp_path / "ro", errno.EROFS)
    assert_one_line_error(run_cli("ensemble", *runs, "--out", tmp_path / "ro" / "ab", env=env), "read-only")
    assert_one_line_error(run_cli("convert", tiny_checkpoint, "--model", TINY, "--out", tmp_path / "ro" / "c.pth",
                                  env=env), "read-only")


def test_ensemble_refuses_runs_of_different_videos(clip, tiny_checkpoint, tmp_path, shared):
    other = tmp_path / "other"
    other.mkdir()
    for i in range(4):
        shutil.copy(shared / f"data/davis/JPEGImages/480p/dog/{i:05d}.jpg", other / f"{i:05d}.jpg")
    assert _run(clip, tiny_checkpoint, tmp_path / "a", "--save-probs").returncode == 0
    assert run_cli("run", "--video", other, "--box", "300,100,100,100", "--checkpoint", tiny_checkpoint, "--out",
                   tmp_path / "b", "--save-probs", *FAST).returncode == 0
    proc = run_cli("ensemble", tmp_path / "a", tmp_path / "b", "--out", tmp_path / "ab")
    assert_one_line_error(proc, "different videos")
    assert not (tmp_path / "ab").exists()


def test_ensemble_on_a_damaged_member_ends_failed_not_complete(clip, tiny_checkpoint, tmp_path):
    for name in ("a", "b"):
        assert _run(clip, tiny_checkpoint, tmp_path / name, "--save-probs").returncode == 0
    (tmp_path / "b" / "probs" / "00002.npz").write_bytes(b"not an npz")
    proc = run_cli("ensemble", tmp_path / "a", tmp_path / "b", "--out", tmp_path / "ab", "--quiet")
    assert_one_line_error(proc, "00002.npz")
    record = json.loads((tmp_path / "ab" / "run.json").read_text())
    assert record["status"] == "failed" and not (tmp_path / "ab" / "boxes.txt").exists()


@pytest.mark.parametrize("kind, fragment", [("gpu", "the GPU ran out of memory while tracking"),
                                            ("host", "the machine ran out of memory (RAM) while tracking")])
def test_running_out_of_memory_is_one_line_and_keeps_the_frames_tracked(clip, tiny_checkpoint, tmp_path, kind,
                                                                        fragment):
    """A GPU (or the machine) out of memory at frame 3: one line naming what ran out and what needs less, the
    frames before kept, the manifest saying failed."""
    out = tmp_path / "run"
    env = failing_memory(tmp_path, "trek_tracker.pipeline:Tracker.step", after=2, kind=kind)
    line = assert_one_line_error(_run(clip, tiny_checkpoint, out, env=env), fragment, "--memory-cap",
                                 f"the frames tracked before are kept in {out}/")
    assert ("asked for 2.00 GiB with 1.50 GiB of 79.19 GiB free" in line) == (kind == "gpu")
    record = json.loads((out / "run.json").read_text())
    assert record["status"] == "failed" and record["video"]["frames"] == 3
    assert ("OutOfMemoryError" if kind == "gpu" else "can't allocate memory") in record["error"]
    assert len((out / "boxes.txt.part").read_text().splitlines()) == 3


def test_running_out_of_memory_before_tracking_is_one_line(clip, tiny_checkpoint, tmp_path):
    """Loading the model onto a full GPU: the command's own one line, and no run folder yet."""
    env = failing_memory(tmp_path, "trek_tracker.pipeline:prepare_model", after=0)
    assert_one_line_error(_run(clip, tiny_checkpoint, tmp_path / "run", env=env), "the GPU ran out of memory (GPU 0:",
                          "settings that need less memory")
    assert not (tmp_path / "run").exists()
