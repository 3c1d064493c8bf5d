"""``trek-track run --resume``: a run stopped by a signal, or killed outright, continues from its saved state
to the files an uninterrupted run writes; what cannot be resumed exactly is refused in one line."""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image

from tests.cli.conftest import TINY
from tests.damaged import REPO, assert_one_line_error, run_cli
from trek_tracker.errors import UserError
from trek_tracker.pipeline import Tracker
from trek_tracker.run_folder import RunFolder

FAST = ("--model", TINY, "--max-long-edge", "160", "--quiet", "--device", "cpu", "--init", "box",
        "--memory-cap", "3", "--memory-gap", "4")  # a full long-term memory, evicting, by the time it stops


def _outputs(folder):
    """Every result file of a run (what an uninterrupted run and a resumed one must share), times aside."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name not in ("run.json", "times.txt")}


def _stop_at(monkeypatch, frame: int) -> None:
    """Ctrl-C while the tracker computes ``frame`` (counted from the start frame)."""
    step, calls = Tracker.step, []

    def stepped(self, image, **kw):
        calls.append(1)
        if len(calls) == frame:
            os.kill(os.getpid(), signal.SIGINT)
        return step(self, image, **kw)

    monkeypatch.setattr(Tracker, "step", stepped)


def _two_objects(davis, tmp_path):
    gt = np.array(Image.open(davis / "Annotations/480p/dog/00000.png")) > 0
    labels = np.zeros(gt.shape, np.uint8)
    labels[:, :420][gt[:, :420]] = 3
    labels[:, 420:][gt[:, 420:]] = 7
    Image.fromarray(labels).save(tmp_path / "init.png")
    return ("--init-mask", tmp_path / "init.png")


@pytest.mark.parametrize("start", ["box", "mask"])
def test_a_run_stopped_by_ctrl_c_resumes_to_the_uninterrupted_result(cli, davis, tiny_checkpoint, tmp_path,
                                                                    monkeypatch, start):
    """Stopped during frame 23: that frame is finished, its state saved; --resume tracks the rest and the
    boxes, masks and probabilities are byte for byte those of a run never stopped."""
    video = davis / "JPEGImages/480p/dog"
    first = ("--box", "130,60,260,260") if start == "box" else _two_objects(davis, tmp_path)
    args = ("run", "--video", video, *first, "--checkpoint", tiny_checkpoint, "--save-masks", "--save-probs",
            "--start-frame", "5", *FAST)
    assert cli(*args, "--out", tmp_path / "full").exit_code == 0
    out = tmp_path / "part"
    with monkeypatch.context() as m:
        _stop_at(m, 23)
        stopped = cli(*args, "--out", out)
    assert stopped.exit_code == 130, stopped.stderr
    assert stopped.stderr.splitlines() == [f"trek-track: error: interrupted; finished work was kept (continue with: "
                                           f"trek-track run --resume {out})"]
    record = json.loads((out / "run.json").read_text())
    assert record["status"] == "interrupted" and record["video"]["frames"] == 24
    assert "resume.pt" in record["files"] and record["resume"] == {"save_state_every": 300.0, "resumed_at": []}
    assert torch.load(out / "resume.pt", weights_only=True)["frames"] == 24

    resumed = cli("run", "--resume", out, "--quiet")
    assert resumed.exit_code == 0, resumed.stderr
    assert "31 frames after the 24 tracked before" in resumed.stdout
    assert _outputs(out) == _outputs(tmp_path / "full") and len(_outputs(out)) > 100
    assert len((out / "times.txt").read_text().splitlines()) == 55
    record, full = (json.loads((f / "run.json").read_text()) for f in (out, tmp_path / "full"))
    assert record["status"] == "complete" and record["resume"]["resumed_at"] == [24]
    assert record["lost_frames"] == full["lost_frames"] and record["video"] == full["video"]
    assert record["tracker"]["init"] == full["tracker"]["init"]
    assert not (out / "resume.pt").exists() and "resume.pt" not in record["files"]


def test_a_killed_run_resumes_from_its_last_saved_state(cli, shared, tiny_checkpoint, tmp_path):
    """SIGKILL (out of memory, a lost node): the last periodic state is a few frames behind the files; those
    frames are tracked again, to the same result. While the run lives, its folder is nobody else's."""
    args = ("run", "--video", shared / "data/videos/bedroom.mp4", "--box", "300,200,200,150", "--checkpoint",
            tiny_checkpoint, "--save-masks", *FAST)
    assert cli(*args, "--out", tmp_path / "full").exit_code == 0
    out = tmp_path / "part"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)}
    proc = subprocess.Popen([sys.executable, "-m", "trek_tracker.cli", *map(str, args), "--out", str(out),
                             "--save-state-every", "0.5"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if (out / "resume.pt").is_file() and len((out / "boxes.txt.part").read_bytes().splitlines()) >= 40:
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the run ended before it could be killed"
        for take in (RunFolder.reopen, lambda path: RunFolder.create(path, overwrite=True)):  # --resume, --overwrite
            with pytest.raises(UserError, match="being written by another trek-track process"):
                take(out)
        assert proc.poll() is None, "the run ended before it could be killed"
    finally:
        proc.kill()
        proc.communicate()
    saved = torch.load(out / "resume.pt", weights_only=True)["frames"]
    assert 0 < saved <= len((out / "boxes.txt.part").read_bytes().splitlines())
    assert json.loads((out / "run.json").read_text())["status"] == "running"
    resumed = cli("run", "--resume", out, "--quiet", "--precision", "fp32")  # fp32 is what auto gave on the CPU
    assert resumed.exit_code == 0, resumed.stderr
    assert _outputs(out) == _outputs(tmp_path / "full")


def test_a_run_stopped_while_committing_its_files_resumes_to_its_result(cli, davis, tiny_checkpoint, tmp_path,
                                                                     monkeypatch):
    """A full disk (or a kill) after boxes.txt is committed but before the run completes: the run is not
    complete, its state is kept, and once there is space --resume completes it to the uninterrupted result
    (boxes.txt is no longer a .part file, which must not make the run look tampered with)."""
    from trek_tracker import run_folder

    args = ("run", "--video", davis / "JPEGImages/480p/car-shadow", "--box", "313,88,342,194", "--checkpoint",
            tiny_checkpoint, "--last-frame", "9", "--save-masks", *FAST)
    assert cli(*args, "--out", tmp_path / "full").exit_code == 0
    out = tmp_path / "part"
    close = run_folder.TimesFile.close

    def full_disk(self, status, error=None):
        if status == "complete":
            raise OSError(errno.ENOSPC, "No space left on device", str(self.writer.part_path))
        close(self, status, error)

    with monkeypatch.context() as m:
        m.setattr(run_folder.TimesFile, "close", full_disk)
        failed = cli(*args, "--out", out, "--save-state-every", "0.000001")  # a state after every frame
    assert failed.exit_code != 0 and "no space left" in failed.stderr
    assert (out / "boxes.txt").is_file() and (out / "times.txt.part").is_file()
    assert json.loads((out / "run.json").read_text())["status"] == "failed"
    resumed = cli("run", "--resume", out, "--quiet")
    assert resumed.exit_code == 0, resumed.stderr
    assert _outputs(out) == _outputs(tmp_path / "full")
    assert len((out / "times.txt").read_text().splitlines()) == 10
    assert json.loads((out / "run.json").read_text())["status"] == "complete"


@pytest.mark.parametrize("failure", ["disk", "memory"])
def test_a_run_that_fails_for_want_of_disk_or_memory_says_how_to_continue(cli, davis, tiny_checkpoint, tmp_path,
                                                                          monkeypatch, failure):
    """A full disk or memory at frame 6 of an hours-long run: the line says to continue with --resume (once
    space is freed), and that gives the uninterrupted result."""
    from trek_tracker import run_folder

    args = ("run", "--video", davis / "JPEGImages/480p/car-shadow", "--box", "313,88,342,194", "--checkpoint",
            tiny_checkpoint, "--last-frame", "9", *FAST)
    assert cli(*args, "--out", tmp_path / "full").exit_code == 0
    out = tmp_path / "part"
    write, step = run_folder.BoxFiles.frame, Tracker.step

    def full_disk(self, index, image, result):
        if index == 6:
            raise OSError(errno.ENOSPC, "No space left on device", str(out / "boxes.txt.part"))
        write(self, index, image, result)

    def no_memory(self, image, **kw):
        if self.engine.frame_step == 6:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return step(self, image, **kw)

    with monkeypatch.context() as m:
        if failure == "disk":
            m.setattr(run_folder.BoxFiles, "frame", full_disk)
        else:
            m.setattr(Tracker, "step", no_memory)
        failed = cli(*args, "--out", out, "--save-state-every", "0.000001")  # a state after every frame
    assert failed.exit_code == 2
    said = failed.stderr.splitlines()[-1]
    assert said.endswith(f"(to continue with the same settings: trek-track run --resume {out})"), said
    resumed = cli("run", "--resume", out, "--quiet")
    assert resumed.exit_code == 0, resumed.stderr
    assert _outputs(out) == _outputs(tmp_path / "full")


def test_damaged_input_found_before_the_saved_state_is_recorded_by_the_resumed_run(cli, davis, tiny_checkpoint,
                                                                                  tmp_path, monkeypatch):
    """A truncated frame before the point a run stopped is not read again by --resume: the state carries it,
    so the completed run records it and warns of it as an uninterrupted run does."""
    video = tmp_path / "frames"
    video.mkdir()
    for i in range(12):
        shutil.copy(davis / f"JPEGImages/480p/car-shadow/{i:05d}.jpg", video / f"{i:05d}.jpg")
    data = (video / "00002.jpg").read_bytes()
    (video / "00002.jpg").write_bytes(data[: len(data) // 2])
    args = ("run", "--video", video, "--box", "313,88,342,194", "--checkpoint", tiny_checkpoint, *FAST)
    full = cli(*args, "--out", tmp_path / "full")
    assert full.exit_code == 0 and "the input is damaged (1 problem(s)" in full.stderr
    with monkeypatch.context() as m:
        _stop_at(m, 7)
        assert cli(*args, "--out", tmp_path / "part").exit_code == 130
    resumed = cli("run", "--resume", tmp_path / "part", "--quiet")
    assert resumed.exit_code == 0, resumed.stderr
    assert "the input is damaged (1 problem(s)" in resumed.stderr
    damage = [json.loads((tmp_path / f / "run.json").read_text())["input_damage"] for f in ("part", "full")]
    assert damage[0] == damage[1] and [d["frame"] for d in damage[0]] == [2]


@pytest.fixture()
def stopped(cli, davis, tiny_checkpoint, tmp_path, monkeypatch):
    """A run of 12 frames stopped at frame 6, on a copy of its frames and checkpoint (so both can change)."""
    video = tmp_path / "frames"
    video.mkdir()
    for i in range(12):
        shutil.copy(davis / f"JPEGImages/480p/car-shadow/{i:05d}.jpg", video / f"{i:05d}.jpg")
    checkpoint = shutil.copy(tiny_checkpoint, tmp_path / "weights.pth")
    out = tmp_path / "stopped"
    with monkeypatch.context() as m:
        _stop_at(m, 6)
        m.chdir(tmp_path)  # relative paths: a run may be resumed from anywhere
        assert cli("run", "--video", "frames", "--box", "313,88,342,194", "--checkpoint", "weights.pth", "--out",
                   "stopped", *FAST).exit_code == 130
    return out, video, checkpoint


def _refused(out, *fragments, extra=()):
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert_one_line_error(run_cli("run", "--resume", out, *extra), *fragments)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # a refused resume changes nothing


def test_resume_keeps_the_runs_own_settings(stopped, tmp_path):
    out, _, _ = stopped
    (out / ".resume.pt.k1ll3d.tmp").write_bytes(b"half a state")  # what a process killed while saving leaves
    _refused(out, "leave out --box, --memory-cap", extra=("--box", "1,2,3,4", "--memory-cap", "5"))
    done = run_cli("run", "--resume", out.name, "--quiet", "--save-state-every", "0", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    record = json.loads((out / "run.json").read_text())
    assert record["status"] == "complete" and record["video"]["frames"] == 12
    assert record["resume"] == {"save_state_every": None, "resumed_at": [7]}
    assert sorted(p.name for p in out.iterdir()) == ["boxes.txt", "run.json", "times.txt"]


def test_resume_refuses_a_changed_checkpoint_or_video(stopped, tiny_checkpoint):
    out, video, checkpoint = stopped
    state = torch.load(checkpoint, weights_only=False)
    state["state_dict"] = {k: v + 0.01 if v.is_floating_point() else v for k, v in state["state_dict"].items()}
    torch.save(state, checkpoint)  # the same file name, other weights
    _refused(out, "another configuration", "checkpoint_sha256")
    shutil.copy(tiny_checkpoint, checkpoint)
    (video / "00011.jpg").unlink()
    _refused(out, "is not the video")


def test_a_video_that_moved_is_given_with_video_and_checked(stopped, davis, tmp_path):
    out, video, _ = stopped
    moved = video.rename(tmp_path / "moved")
    _refused(out, "is not there any more", "give --video where it is now")
    _refused(out, "is not the video run", str(video), extra=("--video", davis / "JPEGImages/480p/car-shadow"))
    done = run_cli("run", "--resume", out, "--video", moved, "--quiet")
    assert done.returncode == 0, done.stderr
    record = json.loads((out / "run.json").read_text())
    assert record["status"] == "complete" and record["video"]["path"] == str(moved)
    assert len((out / "boxes.txt").read_text().splitlines()) == 12


def test_resume_refuses_a_run_without_a_state_a_complete_run_and_a_damaged_state(stopped, cli, tmp_path):
    out, _, _ = stopped
    part = (out / "boxes.txt.part").read_bytes()
    (out / "boxes.txt.part").write_bytes(part[: part.index(b"\n") + 1])
    _refused(out, "boxes.txt.part holds 1 frame, fewer than the 7 the saved state follows", "--overwrite")
    (out / "boxes.txt.part").write_bytes(part)
    (out / "resume.pt").write_bytes(b"not a state")
    _refused(out, "cannot read the saved state")
    (out / "resume.pt").unlink()
    _refused(out, "holds no saved state", "--overwrite")
    assert_one_line_error(run_cli("run", "--resume", tmp_path), "not a run folder")
    record = json.loads((out / "run.json").read_text())
    (out / "run.json").write_text(json.dumps({**record, "status": "complete"}))
    _refused(out, "is complete")


def test_a_run_with_save_state_every_0_or_an_overlay_saves_no_state(cli, davis, tiny_checkpoint, tmp_path,
                                                                     monkeypatch):
    for extra in (("--save-state-every", "0"), ("--overlay",)):
        out = tmp_path / extra[0].strip("-")
        with monkeypatch.context() as m:
            _stop_at(m, 3)
            assert cli("run", "--video", davis / "JPEGImages/480p/car-shadow", "--box", "313,88,342,194",
                       "--checkpoint", tiny_checkpoint, "--out", out, *FAST, *extra).exit_code == 130
        assert not (out / "resume.pt").exists()
        record = json.loads((out / "run.json").read_text())
        assert record["status"] == "interrupted" and record["resume"] == {"save_state_every": None, "resumed_at": []}


@pytest.mark.cuda
def test_a_run_on_cuda_resumes_on_cuda(cli, davis, tiny_checkpoint, tmp_path, monkeypatch):
    """The state of a GPU run (bf16 memories) continues on the GPU: the boxes of the uninterrupted run, within
    2 pixels (kernels may be chosen differently in another process)."""
    args = ("run", "--video", davis / "JPEGImages/480p/dog", "--box", "130,60,260,260", "--checkpoint",
            tiny_checkpoint, *FAST, "--device", "cuda")
    assert cli(*args, "--out", tmp_path / "full").exit_code == 0
    with monkeypatch.context() as m:
        _stop_at(m, 20)
        assert cli(*args, "--out", tmp_path / "part").exit_code == 130
    resumed = cli("run", "--resume", tmp_path / "part", "--device", "cuda")
    assert resumed.exit_code == 0, resumed.stderr
    record = json.loads((tmp_path / "part" / "run.json").read_text())
    assert record["tracker"]["precision"] == "bf16" and record["resume"]["resumed_at"] == [21]
    ours, theirs = (np.loadtxt(tmp_path / f / "boxes.txt", delimiter=",") for f in ("part", "full"))
    assert ours.shape == theirs.shape == (60, 4) and np.abs(ours - theirs).max() <= 2.0


def test_resume_refuses_a_manifest_without_what_it_carries_over_in_one_line(stopped, cli):
    out, _, _ = stopped
    record = json.loads((out / "run.json").read_text())
    for key in ("start", "tracker", "resume"):
        (out / "run.json").write_text(json.dumps({k: v for k, v in record.items() if k != key}))
        before = {p.name: p.read_bytes() for p in out.iterdir()}
        result = cli("run", "--resume", out)
        assert result.exit_code == 2 and result.stderr.count("\n") == 1, result.stderr
        assert f"has no {key!r}" in result.stderr and "Traceback" not in result.output, result.stderr
        assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_resume_compares_every_setting_but_the_precision_asked_for_which_counts_once_resolved(tmp_path):
    from trek_tracker.cli.run import _check_same_tracker
    from trek_tracker.inference.memory import MemoryConfig
    from trek_tracker.pipeline import TrackerConfig, tracker_identity

    def identity(**kw):
        return tracker_identity(TrackerConfig(model=TINY, random_weights=True, **kw), "cpu")

    saved = identity(precision="auto", memory=MemoryConfig(cap=3))
    _check_same_tracker(tmp_path, identity(precision="fp32", memory=MemoryConfig(cap=3)), saved)  # auto is fp32 here
    with pytest.raises(UserError, match="another configuration \\(settings differ"):
        _check_same_tracker(tmp_path, identity(precision="auto", memory=MemoryConfig(cap=4)), saved)


def test_a_resumed_run_shows_its_progress_unless_quiet_is_given_again(stopped, cli):
    out, _, _ = stopped  # it ran with --quiet
    shutil.copytree(out, out.with_name("copy"))
    quiet = cli("run", "--resume", out.with_name("copy"), "--quiet")
    assert quiet.exit_code == 0 and "100%" not in quiet.stderr, quiet.stderr
    loud = cli("run", "--resume", out)
    assert loud.exit_code == 0 and re.search(r"frames: 100%.*\b12/12\b", loud.stderr), loud.stderr
