"""The run folder: one run per folder, the manifest from start to end, reading back, probabilities files."""

from __future__ import annotations

import collections
import concurrent.futures
import errno
import json
import os
import platform
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import trek_tracker
from trek_tracker import run_folder
from trek_tracker.errors import InputError, UserError
from trek_tracker.files import hold_folder
from trek_tracker.loop import Start, track_video
from trek_tracker.pipeline import FrameResult
from trek_tracker.results import ObjectIds, write_label_png
from trek_tracker.run_folder import Outputs, RunFolder, load_probs, quantise, save_probs


class _Scripted:
    """A tracker whose object 1 is a 4x4 square moving 1 px right per frame; frame 3 raises when asked."""

    def __init__(self, fail_at: int | None = None, interrupt_at: int | None = None) -> None:
        self.fail_at, self.interrupt_at, self.t = fail_at, interrupt_at, 0

    def _result(self) -> FrameResult:
        labels = np.zeros((20, 30), np.uint8)
        labels[5:9, self.t:self.t + 4] = 1
        probs = torch.from_numpy(np.stack([labels == 0, labels == 1]).astype(np.float32))
        return FrameResult({1: np.array([self.t, 5, 4, 4], float)}, {1: False}, labels, 0.01, probs)

    def init(self, image, box=None, *, mask=None, keep_probs=False, keep_labels=True):
        return self._result()

    def step(self, image, *, keep_probs=False, keep_labels=True):
        self.t += 1
        if self.t == self.fail_at:
            raise RuntimeError("simulated crash")
        if self.t == self.interrupt_at:
            raise KeyboardInterrupt
        return self._result()


def _run(folder: RunFolder, tracker, n=5, outputs: Outputs | None = None):
    outputs = outputs or Outputs(masks=True, probs=True)
    ids = ObjectIds((255,))
    sinks = folder.sinks(outputs, ids=ids, palette=None, record={"video": {"name": "v", "size": [20, 30]}},
                         fps=None, size=(20, 30))
    return track_video(tracker, range(n), Start(box=None, mask=np.ones((1, 1), np.uint8)), sinks, prefetch_depth=0)


def test_a_complete_run_lists_what_it_wrote_and_reads_back(tmp_path):
    folder = RunFolder.create(tmp_path / "run")
    _run(folder, _Scripted())
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert record["status"] == "complete" and record["video"]["frames"] == 5 and record["objects"] == [255]
    assert set(record["files"]) == {"boxes.txt", "times.txt", "masks/", "probs/", "run.json"}
    back = RunFolder.open(tmp_path / "run")
    assert back.frames == 5 and back.ids == ObjectIds((255,))
    assert back.read_boxes(255)[3].tolist() == [3, 5, 4, 4]
    assert back.read_mask(2)[0][5, 2] == 255 and back.read_probs(4).shape == (2, 20, 30)


@pytest.mark.parametrize("stop,status", [({"fail_at": 3}, "failed"), ({"interrupt_at": 3}, "interrupted")])
def test_a_stopped_run_keeps_finished_frames_and_says_so(tmp_path, stop, status):
    folder = RunFolder.create(tmp_path / "run")
    error = RuntimeError if "fail_at" in stop else KeyboardInterrupt
    with pytest.raises(error):
        _run(folder, _Scripted(**stop))
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert record["status"] == status and record["video"]["frames"] == 3
    assert not (tmp_path / "run" / "boxes.txt").exists()  # never a complete-looking file
    assert len((tmp_path / "run" / "boxes.txt.part").read_text().splitlines()) == 3
    assert len(list((tmp_path / "run" / "masks").glob("*.png"))) == 3
    with pytest.raises(InputError, match="did not complete"):
        RunFolder.open(tmp_path / "run")


def test_masks_are_written_in_threads_and_the_last_ones_error_still_fails_the_run(tmp_path, monkeypatch):
    """Per-frame files go to a pool of threads; an error in writing the very last one (after the loop has
    handed over every frame) still ends the run as failed, never complete."""
    threads = set()

    def write(path, labels, palette=None):
        threads.add(threading.current_thread().name)
        if path.name == "00004.png":
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        write_label_png(path, labels, palette)

    monkeypatch.setattr(run_folder, "write_label_png", write)
    folder = RunFolder.create(tmp_path / "run")
    with pytest.raises(OSError, match="No space"):
        _run(folder, _Scripted(), outputs=Outputs(masks=True))
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert record["status"] == "failed" and "No space" in record["error"] and record["video"]["frames"] == 5
    assert sorted(p.name for p in (tmp_path / "run" / "masks").glob("*.png")) == [f"{i:05d}.png" for i in range(4)]
    assert threads and all(name.startswith("run-files") for name in threads)


def test_the_manifest_says_running_while_the_run_goes(tmp_path):
    folder = RunFolder.create(tmp_path / "run")
    seen = []

    class Peek(_Scripted):
        def step(self, image, *, keep_probs=False, keep_labels=True):
            seen.append(json.loads((tmp_path / "run" / "run.json").read_text())["status"])
            return super().step(image, keep_probs=keep_probs, keep_labels=keep_labels)

    _run(folder, Peek())
    assert seen and set(seen) == {"running"}


def test_one_run_per_folder(tmp_path):
    out = tmp_path / "run"
    _run(RunFolder.create(out), _Scripted(), n=6)
    with pytest.raises(UserError, match="not empty.*--overwrite"):
        RunFolder.create(out)
    assert len((out / "boxes.txt").read_text().splitlines()) == 6  # the refused command changed nothing
    # --overwrite removes every file of the previous run before the new one writes
    _run(RunFolder.create(out, overwrite=True), _Scripted(), n=2, outputs=Outputs())
    assert len((out / "boxes.txt").read_text().splitlines()) == 2
    assert not (out / "masks").exists() and not (out / "probs").exists()  # nothing of the old run is left
    # files no run wrote are never removed
    (out / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="previous run did not write.*notes.txt"):
        RunFolder.create(out, overwrite=True)
    assert (out / "boxes.txt").exists() and (out / "notes.txt").read_text() == "mine"
    stranger = tmp_path / "stranger"
    stranger.mkdir()
    (stranger / "data.csv").write_text("x")
    with pytest.raises(UserError, match="no trek-track run wrote"):
        RunFolder.create(stranger, overwrite=True)


def test_a_killed_run_never_leaves_an_older_complete_manifest(tmp_path):
    out = tmp_path / "run"
    _run(RunFolder.create(out), _Scripted())
    folder = RunFolder.create(out, overwrite=True)
    with pytest.raises(RuntimeError):
        _run(folder, _Scripted(fail_at=2))
    assert json.loads((out / "run.json").read_text())["status"] == "failed"
    assert not (out / "boxes.txt").exists()


@pytest.mark.parametrize("error", [PermissionError(13, "Permission denied"), OSError(30, "Read-only file system"),
                                   OSError(28, "No space left on device")])
def test_an_unusable_output_location_is_one_line(tmp_path, monkeypatch, error):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(UserError, match=r"cannot write .*file.*is a file, not a folder"):
        RunFolder.create(blocker / "run")

    def refuse(self, *args, **kwargs):
        raise error

    monkeypatch.setattr("pathlib.Path.write_bytes", refuse)
    with pytest.raises(UserError, match=rf"cannot write .*run: {error.strerror.lower().split()[0]}.*--out"):
        RunFolder.create(tmp_path / "run")


def test_saved_probabilities_round_trip_within_quantisation(tmp_path):
    torch.manual_seed(0)
    p = torch.softmax(torch.randn(3, 17, 23), dim=0)
    save_probs(tmp_path / "probs" / "00001.npz", p)
    back = load_probs(tmp_path / "probs" / "00001.npz")
    assert back.shape == p.shape and (back - p).abs().max() <= 0.5 / 255 + 1e-6
    assert quantise(torch.tensor([0.0, 1.0, 0.5])).tolist() == [0, 255, 128]
    assert not list((tmp_path / "probs").glob(".*"))  # no temporary left behind
    with pytest.raises(InputError, match="not found"):
        load_probs(tmp_path / "missing.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    np.savez_compressed(tmp_path / "other.npz", labels=np.zeros(3))
    for name in ("junk.npz", "other.npz"):
        with pytest.raises(InputError, match=f"cannot read probability file .*{name}"):
            load_probs(tmp_path / name)


def test_a_state_that_cannot_be_saved_is_said_once_and_the_last_one_stays(tmp_path, monkeypatch, caplog):
    folder = RunFolder.create(tmp_path / "run")
    saver = run_folder.StateFile(folder, every=0, context={"command": {}})
    saver.save(4, {"tracker": {"t": torch.arange(3)}})
    before = folder.resume_file.read_bytes()

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(folder.resume_file))

    monkeypatch.setattr(run_folder, "atomic_write", full)
    with caplog.at_level("WARNING"):
        saver.save(9, {"tracker": {}})
        first = [r.getMessage() for r in caplog.records if "could not save the state" in r.getMessage()]
        saver.save(14, {"tracker": {}})
    said = [r.getMessage() for r in caplog.records if "could not save the state" in r.getMessage()]
    assert len(first) == 1 and said == first and f"cannot write {folder.resume_file}: no space left" in said[0]
    assert folder.resume_file.read_bytes() == before
    saved = run_folder.load_state_file(folder.resume_file)
    assert saved["frames"] == 5 and saved["state"]["tracker"]["t"].tolist() == [0, 1, 2]


def test_a_folder_is_locked_while_its_run_writes_it(tmp_path):
    first = RunFolder.create(tmp_path / "run")
    with pytest.raises(UserError, match="being written by another trek-track process"):
        RunFolder.create(tmp_path / "run", overwrite=True)
    first.release()
    RunFolder.create(tmp_path / "run")  # dropped without release: its lock goes with it
    RunFolder.create(tmp_path / "run").release()


def test_the_probe_of_another_process_starting_on_the_folder_is_no_file_of_a_run(tmp_path):
    """Two commands started on one --out at once: each checks that the folder can be written (an empty probe
    file, removed at once) before it asks for the lock. The one that gets the lock may list the other's
    probe: it must not take it for a file of a run (and refuse, or try to remove it) while the other one
    refuses for the lock: that would leave both refused."""
    out = tmp_path / "run"
    out.mkdir()
    probe = out / run_folder.PROBE.replace("*", "123456789")
    probe.write_bytes(b"")
    RunFolder.create(out).release()
    _run(RunFolder.create(out), _Scripted(), n=2, outputs=Outputs())
    probe.write_bytes(b"")
    with pytest.raises(UserError, match=r"not empty \(it holds boxes.txt, run.json, times.txt\)"):
        RunFolder.create(out)
    _run(RunFolder.create(out, overwrite=True), _Scripted(), n=3, outputs=Outputs())
    assert probe.is_file() and len((out / "boxes.txt").read_text().splitlines()) == 3


def _killed(out, outputs: Outputs, frames: int = 3) -> None:
    """The folder a run killed outright (SIGKILL, a full disk) leaves: its files written so far, its manifest
    still ``running``, no sink closed."""
    folder = RunFolder.create(out, overwrite=True)
    ids = ObjectIds((3, 7))
    sinks = folder.sinks(outputs, ids=ids, palette=None, record={"video": {"name": "v", "size": [20, 30]}},
                         fps=None, size=(20, 30))
    labels = np.zeros((20, 30), np.uint8)
    probs = torch.zeros(3, 20, 30)
    for i in range(frames):
        result = FrameResult({1: np.array([i, 5, 4, 4], float), 2: np.array([i, 9, 4, 4], float)},
                             {1: False, 2: False}, labels, 0.01, probs)
        for sink in sinks:
            sink.frame(i, None, result)
    for sink in sinks:
        sink.flush()
    folder.release()  # the process is gone, and its lock with it


def test_a_run_killed_outright_is_replaced_whole_by_overwrite(tmp_path):
    """Its manifest lists no ``files`` yet, but says from the start what the run writes: --overwrite removes
    exactly that (unfinished and temporary files included), and nothing when anything else is there."""
    out = tmp_path / "run"
    _killed(out, Outputs(masks=True, probs=True))
    record = json.loads((out / "run.json").read_text())
    assert record["status"] == "running" and record["files"] == []
    assert {"boxes_3.txt.part", "boxes_7.txt.part", "times.txt.part", "masks/", "masks/*.png", "probs/",
            "probs/objects.json", "run.json"} <= set(record["writes"])
    assert len(list((out / "masks").glob("*.png"))) == 3 and (out / "boxes_7.txt.part").is_file()
    for name in ("masks/.00003.png.abcd1234.tmp", "probs/.00003.npz.abcd1234.tmp", ".run.json.abcd1234.tmp",
                 ".resume.pt.abcd1234.tmp"):
        (out / name).write_bytes(b"cut short")
    for stranger, shown in (("notes.txt", "notes.txt"), ("masks/notes.txt", "masks/notes.txt"),
                            ("probs/mine/x.npz", "probs/mine/"), ("masks.bak/00000.png", "masks.bak/")):
        (out / stranger).parent.mkdir(parents=True, exist_ok=True)
        (out / stranger).write_text("mine")
        before = sorted(out.rglob("*"))
        with pytest.raises(UserError, match=f"previous run did not write \\({shown}\\)"):
            RunFolder.create(out, overwrite=True)
        assert sorted(out.rglob("*")) == before  # refused before anything was removed
        (out / stranger).unlink()
        if (out / stranger).parent.name in ("mine", "masks.bak"):
            (out / stranger).parent.rmdir()
    RunFolder.create(out, overwrite=True).release()
    assert list(out.iterdir()) == []


def test_a_stopped_run_that_saved_its_state_is_pointed_to_resume_not_overwrite(tmp_path):
    """The command of a killed or interrupted run given again (a requeued job), or its folder read by
    ``ensemble``: the refusal says how to continue it, not only how to throw hours of tracking away."""
    out = tmp_path / "run"
    _killed(out, Outputs())
    with pytest.raises(InputError, match=r"status 'running'\); run it again first"):
        RunFolder.open(out)
    run_folder.StateFile(RunFolder(out), every=0, context={}).save(2, {"tracker": {}})
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(UserError, match=f"status running.*continue it with: trek-track run --resume {out}, or add "
                                        "--overwrite"):
        RunFolder.create(out)
    with pytest.raises(InputError, match=f"continue it with: trek-track run --resume {out} first"):
        RunFolder.open(out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    _run(RunFolder.create(out, overwrite=True), _Scripted(), n=2, outputs=Outputs())
    with pytest.raises(UserError, match="not empty.*--overwrite to replace"):  # a complete run: nothing to resume
        RunFolder.create(out)


def test_an_older_manifest_without_writes_is_still_read(tmp_path):
    """A manifest written before ``writes`` existed: a finished run's ``files`` (and the unfinished files beside
    them) are replaced as before; an unfinished one lists no files, so its folders are not taken for its own."""
    out = tmp_path / "run"
    _run(RunFolder.create(out), _Scripted(), n=3)
    record = json.loads((out / "run.json").read_text())
    del record["writes"]
    (out / "run.json").write_text(json.dumps(record))
    (out / "boxes.txt.part").write_text("0,0,1,1\n")
    RunFolder.create(out, overwrite=True).release()
    assert list(out.iterdir()) == []
    _killed(out, Outputs(masks=True))
    record = json.loads((out / "run.json").read_text())
    del record["writes"]
    (out / "run.json").write_text(json.dumps(record))
    with pytest.raises(UserError, match=r"previous run did not write \(masks/\)"):
        RunFolder.create(out, overwrite=True)
    assert (out / "masks").is_dir()


def test_a_refused_create_lets_the_folder_go(tmp_path: Path) -> None:
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="not empty") as info:
        RunFolder.create(tmp_path / "run")
    (tmp_path / "run" / "notes.txt").unlink()
    # the refusal (still referenced, as a caller that reports it keeps it) holds no lock on the folder
    folder = RunFolder.create(tmp_path / "run")
    folder.release()
    assert info.value is not None


def _saved(out, frames: int = 3, **context) -> None:
    """The state a run saved after ``frames`` frames (what ``trek-track run --resume`` continues from)."""
    run_folder.StateFile(RunFolder(out), every=0, context=context).save(frames - 1, {"tracker": {"t": torch.arange(2)}})


def test_reopen_hands_back_the_saved_state_and_holds_the_folder_until_released(tmp_path):
    out = tmp_path / "run"
    _killed(out, Outputs())
    _saved(out, command={"video": "v"})
    folder, saved = RunFolder.reopen(out)
    assert saved["frames"] == 3 and saved["command"] == {"video": "v"}
    assert saved["state"]["tracker"]["t"].tolist() == [0, 1]
    assert folder.manifest["status"] == "running" and folder.manifest["objects"] == [3, 7]
    with pytest.raises(UserError, match="being written by another"):
        RunFolder.reopen(out)
    folder.release()
    RunFolder.reopen(out)[0].release()


def test_reopen_refuses_what_cannot_be_continued_and_lets_the_folder_go(tmp_path):
    with pytest.raises(UserError, match="not a run folder"):
        RunFolder.reopen(tmp_path / "nowhere")
    assert not (tmp_path / "nowhere").exists()  # a mistyped path is not created
    out = tmp_path / "run"
    _killed(out, Outputs())
    with pytest.raises(UserError, match="holds no saved state"):
        RunFolder.reopen(out)
    (out / "resume.pt").write_bytes(b"not a state")
    with pytest.raises(UserError, match="cannot read the saved state"):
        RunFolder.reopen(out)
    for foreign in ({"format": "another/1", "frames": 3}, [run_folder.STATE_FORMAT, 3]):
        torch.save(foreign, out / "resume.pt")
        with pytest.raises(UserError, match="not a state saved by this version"):
            RunFolder.reopen(out)
    _saved(out)
    record = json.loads((out / "run.json").read_text())
    (out / "run.json").write_text(json.dumps({**record, "status": "complete"}))
    with pytest.raises(UserError, match="is complete: there is nothing to resume") as refused:
        RunFolder.reopen(out)
    RunFolder.create(out, overwrite=True).release()  # no refusal keeps the folder locked, even one still held
    assert refused.value is not None


def test_reopen_refuses_a_folder_it_could_not_write(tmp_path, monkeypatch):
    out = tmp_path / "run"
    _killed(out, Outputs())
    _saved(out)

    def refuse(self, *args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(self))

    monkeypatch.setattr(Path, "write_bytes", refuse)
    with pytest.raises(UserError, match=f"cannot write {out}: permission denied"):
        RunFolder.reopen(out)


def _both(out, committed: str, part: str) -> None:
    """boxes_3.txt and its .part file side by side."""
    (out / "boxes_3.txt").write_text(committed)
    (out / "boxes_3.txt.part").write_text(part)


@pytest.mark.parametrize("change,refused", [
    (None, None),
    (lambda out: (out / "boxes_3.txt.part").rename(out / "boxes_3.txt"), None),  # stopped while committing
    (lambda out: (out / "times.txt.part").write_text("0.1\n0.1\n0.1\n0.1\n"), None),  # later lines: tracked again
    (lambda out: (out / "boxes_7.txt.part").write_text("1,2,3,4\n1,2,3,4\n"), "boxes_7.txt.part holds 2 frames,"),
    (lambda out: (out / "times.txt.part").write_text("0.1\n0.1\n0.1"), "times.txt.part holds 2 frames,"),  # torn
    (lambda out: (out / "times.txt.part").write_text("0.1\n"), "times.txt.part holds 1 frame,"),
    (lambda out: (out / "boxes_3.txt.part").unlink(), "boxes_3.txt.part holds 0 frames,"),  # neither there
    (lambda out: _both(out, "1,2,3,4\n" * 5, ""), "boxes_3.txt.part holds 0 frames,"),  # the unfinished one counts
], ids=["as-saved", "committed", "more-lines", "fewer", "torn-line", "one-frame", "missing", "both"])
def test_reopen_checks_each_text_file_holds_the_frames_the_state_follows(tmp_path, change, refused):
    out = tmp_path / "run"
    _killed(out, Outputs(), frames=3)
    _saved(out, frames=3)
    if change is not None:
        change(out)
    if refused is None:
        RunFolder.reopen(out)[0].release()
        return
    with pytest.raises(UserError, match=f"{refused} fewer than the 3 the saved state follows.*--overwrite"):
        RunFolder.reopen(out)


def test_remove_temporaries_removes_only_half_written_files_of_the_run_and_its_file_folders(tmp_path):
    out = tmp_path / "run"
    _killed(out, Outputs(masks=True, probs=True))
    temporaries = [".run.json.ab12.tmp", ".resume.pt.ab12.tmp", "masks/.00003.png.ab12.tmp",
                   "probs/.00003.npz.ab12.tmp", "probs/.objects.json.ab12.tmp"]
    others = [".hidden", "notes.tmp", "masks/.00004.png", "elsewhere/.x.tmp"]
    for name in temporaries + others:
        (out / name).parent.mkdir(exist_ok=True)
        (out / name).write_bytes(b"x")
    (out / "masks" / ".folder.tmp").mkdir()
    before = {p for p in out.rglob("*") if p.relative_to(out).as_posix() not in temporaries}
    RunFolder(out).remove_temporaries()
    assert set(out.rglob("*")) == before


def test_a_resumed_run_keeps_its_first_frames_and_the_lost_frames_among_them(tmp_path, monkeypatch):
    """Frames 0-1 kept from the stopped run (which had also written frame 2, tracked again now); lost frames are
    listed by object value, those at or after the resume point dropped, and new ones added as tracked."""
    out = tmp_path / "run"
    _killed(out, Outputs(), frames=3)
    _saved(out, frames=2)
    folder, saved = RunFolder.reopen(out)
    now = [100.0]
    monkeypatch.setattr(time, "perf_counter", lambda: now[0])
    sinks = folder.sinks(Outputs(), ids=ObjectIds((3, 7)), palette=None, record={"video": {"name": "v"}}, fps=None,
                         size=(20, 30), kept=saved["frames"], lost={1: [0, 1, 2], 2: [1]})
    labels = np.zeros((20, 30), np.uint8)
    for i in range(2, 5):
        result = FrameResult({1: np.array([10 + i, 5, 4, 4], float), 2: np.array([10 + i, 9, 4, 4], float)},
                             {1: i == 3, 2: False}, labels, 0.5, None)
        for sink in sinks:
            sink.frame(i, None, result)
    for sink in sinks:
        sink.flush()
    now[0] = 100.12345
    for sink in sinks:
        sink.close("complete")
    record = json.loads((out / "run.json").read_text())
    assert record["status"] == "complete" and record["video"] == {"name": "v", "frames": 5}
    assert record["seconds"] == 0.123 and record["fps"] == 24.301  # 3 frames tracked in this process, to 3 decimals
    assert record["lost_frames"] == {"3": [0, 1, 3], "7": [1]}
    assert sorted(record["files"]) == ["boxes_3.txt", "boxes_7.txt", "run.json", "times.txt"]
    back = RunFolder.open(out)
    assert back.read_boxes(3)[:, 0].tolist() == [0, 1, 12, 13, 14] and back.read_boxes(7)[:, 1].tolist() == [9] * 5
    assert back.read_times().tolist() == [0.01, 0.01, 0.5, 0.5, 0.5]
    assert sorted(p.name for p in out.iterdir()) == ["boxes_3.txt", "boxes_7.txt", "run.json", "times.txt"]
    RunFolder.create(out, overwrite=True).release()  # the completed run let the folder go


def test_a_run_with_an_overlay_is_not_resumed_and_its_manifest_is_left_alone(tmp_path):
    out = tmp_path / "run"
    _killed(out, Outputs(), frames=3)
    before = (out / "run.json").read_bytes()
    with pytest.raises(UserError, match="--overlay cannot be resumed.*--overwrite"):
        RunFolder(out).sinks(Outputs(overlay=True), ids=ObjectIds((3, 7)), palette=None, record={}, fps=25.0,
                             size=(20, 30), kept=3)
    assert (out / "run.json").read_bytes() == before and (out / "boxes_3.txt.part").is_file()


def test_a_run_whose_writers_cannot_start_is_recorded_as_failed(tmp_path, monkeypatch):
    def refuse(self, threads=None):
        raise RuntimeError("can't start new thread")

    monkeypatch.setattr(run_folder.FileWriters, "__init__", refuse)
    monkeypatch.setattr(time, "perf_counter", lambda: 7.0)  # a clock too coarse to see it take any time
    folder = RunFolder.create(tmp_path / "run")
    with pytest.raises(RuntimeError, match="can't start"):
        folder.sinks(Outputs(masks=True), ids=ObjectIds((255,)), palette=None, record={"video": {"name": "v"}},
                     fps=None, size=(20, 30))
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert record["status"] == "failed" and record["error"] == "RuntimeError: can't start new thread"
    assert record["video"]["frames"] == 0 and "masks/*.png" in record["writes"] and record["files"] == ["run.json"]
    assert record["seconds"] == 0 and record["fps"] is None
    assert not (tmp_path / "run" / "boxes.txt").exists() and (tmp_path / "run" / "boxes.txt.part").read_text() == ""
    RunFolder.create(tmp_path / "run", overwrite=True).release()  # nothing holds the folder


def test_open_reads_only_a_complete_manifest_of_this_version(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(InputError, match="not a run folder"):
        RunFolder.open(out)
    _run(RunFolder.create(out), _Scripted(), n=4, outputs=Outputs(masks=True))
    back = RunFolder.open(out)
    assert back.has("masks/") and back.has("times.txt") and not back.has("probs/") and not back.has("masks")
    assert back.read_times().tolist() == [0.01] * 4
    (out / "boxes.txt").write_text("".join((out / "boxes.txt").read_text().splitlines(keepends=True)[:3]))
    with pytest.raises(InputError, match="has 3 boxes, expected 4"):
        back.read_boxes(255)
    (out / "times.txt").write_text("0.01\n" * 5)
    with pytest.raises(InputError, match="expected 4"):
        back.read_times()
    record = json.loads((out / "run.json").read_text())
    for key in ("video", "objects", "files"):
        (out / "run.json").write_text(json.dumps({k: v for k, v in record.items() if k != key}))
        with pytest.raises(InputError, match=f"has no '{key}'.*run it again"):
            RunFolder.open(out)
    (out / "run.json").write_text("[]")
    with pytest.raises(InputError, match=r"did not complete \(status None\); run it again first"):
        RunFolder.open(out)
    for key, value in (("objects", ["1"]), ("objects", []), ("objects", [0]), ("objects", [256]),
                       ("video", {"frames": "4"}), ("video", [4]), ("resume", {"resumed_at": 3})):
        (out / "run.json").write_text(json.dumps({**record, key: value}))
        with pytest.raises(InputError, match=f"its '{key}' .* is not what trek-track writes.*run it again"):
            RunFolder.open(out)


def _older(out) -> None:
    """Make the manifest in ``out`` one written before ``writes`` existed."""
    record = json.loads((out / "run.json").read_text())
    del record["writes"]
    (out / "run.json").write_text(json.dumps(record))


def test_an_older_manifest_claims_the_unfinished_and_temporary_files_beside_its_own_and_nothing_else(tmp_path):
    out = tmp_path / "run"
    _run(RunFolder.create(out), _Scripted(), n=3)
    _older(out)
    for name in ("boxes.txt.part", ".run.json.ab12.tmp", ".overlay.ab12.tmp.mp4", "resume.pt",
                 "masks/.00001.png.ab12.tmp", "probs/.00002.npz.ab12.tmp"):
        (out / name).write_bytes(b"x")
    (out / "notes.txt").write_text("mine")
    before = sorted(out.rglob("*"))
    with pytest.raises(UserError, match=r"previous run did not write \(notes.txt\)"):
        RunFolder.create(out, overwrite=True)
    assert sorted(out.rglob("*")) == before
    (out / "notes.txt").unlink()
    RunFolder.create(out, overwrite=True).release()
    assert list(out.iterdir()) == []


def test_overwrite_never_follows_a_link_nor_takes_a_folder_for_a_file_or_a_file_for_a_folder(tmp_path):
    out, elsewhere = tmp_path / "run", tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "00000.png").write_bytes(b"not the run's")
    _killed(out, Outputs(masks=True), frames=0)  # no mask written yet: a file may stand where its folder goes
    strangers = (("masks", "masks/", lambda p: p.symlink_to(elsewhere, target_is_directory=True)),
                 ("masks", "masks", lambda p: p.write_text("mine")),
                 ("masks/00007.png", "masks/00007.png/", lambda p: (p.mkdir(parents=True), (p / "x").write_text("x"))))
    for name, shown, make in strangers:
        make(out / name)
        before = sorted(out.rglob("*"))
        with pytest.raises(UserError, match=f"previous run did not write \\({shown}\\)"):
            RunFolder.create(out, overwrite=True)
        assert sorted(out.rglob("*")) == before and (elsewhere / "00000.png").is_file()
        target = out / "masks"
        target.unlink() if target.is_symlink() or target.is_file() else shutil.rmtree(target)
    (out / "masks").mkdir()
    (out / "masks" / "00008.png").symlink_to(elsewhere, target_is_directory=True)  # a link is removed, not followed
    RunFolder.create(out, overwrite=True).release()
    assert list(out.iterdir()) == [] and (elsewhere / "00000.png").is_file()


def test_a_removal_cut_short_keeps_the_manifest_so_overwrite_can_finish_it(tmp_path, monkeypatch):
    out = tmp_path / "run"
    _run(RunFolder.create(out), _Scripted(), n=2, outputs=Outputs())
    unlink = Path.unlink

    def refuse(self, missing_ok=False):
        if self.name == "times.txt":
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        unlink(self, missing_ok)

    with monkeypatch.context() as m:
        m.setattr(Path, "unlink", refuse)
        with pytest.raises(UserError, match=f"cannot remove the previous run in {out}: permission denied; check its "
                                            "permissions, or choose another --out folder"):
            RunFolder.create(out, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ["run.json", "times.txt"]
    RunFolder.create(out, overwrite=True).release()
    assert list(out.iterdir()) == []


@pytest.mark.parametrize("count,shown", [(4, "a, b, c, d"), (5, "a, b, c, d and 1 more"),
                                         (7, "a, b, c, d and 3 more")])
def test_a_refusal_names_the_first_four_files_and_counts_the_rest(tmp_path, count, shown):
    for name in "abcdefg"[:count]:
        (tmp_path / name).write_text("mine")
    with pytest.raises(UserError, match=rf"not empty \(it holds {shown}\);"):
        RunFolder.create(tmp_path)


def test_a_complete_run_whose_state_was_left_behind_is_not_offered_to_resume(tmp_path):
    """Killed after its manifest said complete but before the state was removed: --resume would refuse it."""
    out = tmp_path / "run"
    _run(RunFolder.create(out), _Scripted(), n=2, outputs=Outputs())
    _saved(out, frames=2)
    with pytest.raises(UserError, match="not empty.*--overwrite to replace") as refused:
        RunFolder.create(out)
    assert "--resume" not in str(refused.value)


def test_reopen_refuses_a_manifest_that_is_not_a_json_object_in_one_line(tmp_path):
    out = tmp_path / "run"
    _killed(out, Outputs())
    _saved(out)
    (out / "run.json").write_text("[]")
    with pytest.raises(UserError, match=r"run.json is not a run's manifest \(not a JSON object\)"):
        RunFolder.reopen(out)
    os.close(hold_folder(out))  # the refusal let the folder go


@pytest.mark.parametrize("change", [{"objects": ["a"]}, {"video": {}}, {"resume": {"resumed_at": None}},
                                    {"resume": None}, {"tracker": None}])
def test_reopen_refuses_a_manifest_changed_by_hand_in_one_line(tmp_path, change):
    out = tmp_path / "run"
    _killed(out, Outputs())
    _saved(out)
    record = json.loads((out / "run.json").read_text())
    record = {k: v for k, v in {**record, **change}.items() if v is not None}
    (out / "run.json").write_text(json.dumps(record))
    with pytest.raises(InputError, match=r"run.json(: its| has no) '(objects|video|resume|tracker)'.*run it again"):
        RunFolder.reopen(out, needs=("tracker", "resume"))
    os.close(hold_folder(out))


def test_the_folder_layout(tmp_path):
    folder = RunFolder(tmp_path)
    names = [folder.box_file(3, True), folder.box_file(3, False), folder.times_file, folder.mask_file(7),
             folder.probs_file(12345), folder.overlay_file, folder.resume_file, folder.manifest_file]
    assert [p.relative_to(tmp_path).as_posix() for p in names] == [
        "boxes_3.txt", "boxes.txt", "times.txt", "masks/00007.png", "probs/12345.npz", "overlay.mp4", "resume.pt",
        "run.json"]
    assert folder.box_files(ObjectIds((3, 7))) == {3: tmp_path / "boxes_3.txt", 7: tmp_path / "boxes_7.txt"}
    assert folder.box_files(ObjectIds((255,))) == {255: tmp_path / "boxes.txt"}


def test_a_new_run_may_go_in_a_folder_not_made_yet_and_its_manifest_says_what_wrote_it(tmp_path):
    out = tmp_path / "results" / "clip" / "run"
    _run(RunFolder.create(out), _Scripted(), n=2, outputs=Outputs(probs=True))
    record = json.loads((out / "run.json").read_text())
    assert record["format"] == run_folder.FORMAT and record["video"] == {"name": "v", "size": [20, 30], "frames": 2}
    assert record["software"]["trek_tracker"] == trek_tracker.__version__
    assert record["software"]["torch"] == torch.__version__
    assert record["software"]["python"] == platform.python_version()
    assert json.loads((out / "probs" / "objects.json").read_text()) == {"values": [255]}


class _Lazy(_Scripted):
    """Hands over label maps and probabilities only when asked to (as the real tracker keeps them on its
    device otherwise)."""

    def _kept(self, result, keep_probs, keep_labels):
        return FrameResult(result.boxes, result.lost, result.labels if keep_labels else None, result.seconds,
                           result.probs if keep_probs else None)

    def init(self, image, box=None, *, mask=None, keep_probs=False, keep_labels=True):
        return self._kept(super().init(image), keep_probs, keep_labels)

    def step(self, image, *, keep_probs=False, keep_labels=True):
        return self._kept(super().step(image), keep_probs, keep_labels)


@pytest.mark.parametrize("outputs", [Outputs(masks=True), Outputs(probs=True)], ids=["masks", "probs"])
def test_mask_and_probability_files_ask_the_tracker_for_what_they_write(tmp_path, outputs):
    out = tmp_path / "run"
    _run(RunFolder.create(out), _Lazy(), n=3, outputs=outputs)
    back = RunFolder.open(out)
    if outputs.masks:
        assert (back.read_mask(2)[0] == 255).sum() == 16 and not (out / "probs").exists()
    else:
        assert back.read_probs(2)[1].sum() == 16 and not (out / "masks").exists()


def _slow_files(monkeypatch) -> None:
    """Mask and probability files that take 0.1 s each to write (in the writers' threads)."""
    def slowly(write):
        def slow(*args):
            time.sleep(0.1)
            write(*args)

        return slow

    for name in ("write_label_png", "save_probs"):
        monkeypatch.setattr(run_folder, name, slowly(getattr(run_folder, name)))


@pytest.mark.parametrize("kind", ["masks", "probs"])
def test_a_stopped_run_still_writes_the_files_of_the_frames_it_tracked(tmp_path, monkeypatch, kind):
    """A file write still in its thread when Ctrl-C ends the loop is finished before the command returns."""
    _slow_files(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        _run(RunFolder.create(tmp_path / "run"), _Scripted(interrupt_at=3), outputs=Outputs(**{kind: True}))
    written = sorted(p.stem for p in (tmp_path / "run" / kind).iterdir() if p.suffix in (".png", ".npz"))
    assert written == [f"{i:05d}" for i in range(3)]


@pytest.mark.parametrize("kind", ["masks", "probs"])
def test_flush_returns_once_every_frame_handed_over_is_on_disk(tmp_path, monkeypatch, kind):
    _slow_files(monkeypatch)
    out = tmp_path / "run"
    _killed(out, Outputs(**{kind: True}), frames=3)  # each frame handed over, then every sink flushed
    assert len([p for p in (out / kind).iterdir() if p.suffix in (".png", ".npz")]) == 3


def test_file_writers_keep_at_most_twice_their_threads_waiting_and_hand_results_over_in_order():
    writers = run_folder.FileWriters(threads=2)
    release = [threading.Event() for _ in range(7)]
    handed: list[int] = []

    def work(i):
        release[i].wait(10)
        return i

    for i in range(4):
        writers.submit(work, i, then=handed.append)
    assert handed == [] and len(writers.pending) == 4
    threading.Timer(0.2, release[0].set).start()
    writers.submit(work, 4, then=handed.append)  # a fifth would exceed 2 x 2: it waits for the oldest
    assert handed == [0] and len(writers.pending) == 4
    for i in (4, 2, 1, 3):
        release[i].set()
    writers.wait()
    assert handed == [0, 1, 2, 3, 4] and not writers.pending
    release[5].set()
    writers.submit(work, 5, then=handed.append)
    concurrent.futures.wait([writers.pending[0][0]])
    writers.submit(work, 6, then=handed.append)  # a finished frame is handed over at the next one
    assert handed[-1] == 5
    release[6].set()
    writers.wait()

    def fail(i):
        raise OSError(errno.ENOSPC, "No space left on device")

    writers.submit(fail, 3)
    with pytest.raises(OSError, match="No space"):
        writers.close("complete")
    writers = run_folder.FileWriters(threads=1)
    writers.submit(fail, 3)
    writers.close("interrupted")  # the loop's own error is the story
    assert not writers.pending


def test_flush_syncs_every_text_file_of_the_run(tmp_path, fsync_sizes):
    out = tmp_path / "run"
    _killed(out, Outputs(), frames=3)
    parts = [out / name for name in ("boxes_3.txt.part", "boxes_7.txt.part", "times.txt.part")]
    synced, final = collections.Counter(fsync_sizes), collections.Counter(p.stat().st_size for p in parts)
    assert all(synced[size] >= n for size, n in final.items())


def test_quantising_clips_to_the_uint8_range_and_takes_arrays_or_tensors():
    assert quantise(np.array([1.01, -0.01, 0.2])).tolist() == [255, 0, 51]
    assert quantise(torch.tensor([0.2, 1.0], requires_grad=True)).tolist() == [51, 255]


def test_a_state_is_due_every_so_many_seconds_after_the_last_one_saved(tmp_path):
    saver = run_folder.StateFile(RunFolder.create(tmp_path / "run"), every=60, context={}, live=lambda: {"seen": [2]})
    assert not saver.due(0)
    saver.last -= 61
    assert saver.due(1)
    saver.save(1, {})
    assert not saver.due(2) and run_folder.load_state_file(saver.folder.resume_file)["seen"] == [2]


def test_a_stopped_run_lists_the_state_it_saved_among_its_files(tmp_path):
    out = tmp_path / "run"
    folder = RunFolder.create(out)
    sinks = folder.sinks(Outputs(), ids=ObjectIds((255,)), palette=None, record={}, fps=None, size=(20, 30))
    run_folder.StateFile(folder, every=0, context={}).save(0, {})
    for sink in sinks:
        sink.close("interrupted")
    record = json.loads((out / "run.json").read_text())
    assert record["status"] == "interrupted" and record["files"] == ["resume.pt", "run.json"]
    assert folder.resume_file.is_file()


def _frames_of(video: Path) -> list[np.ndarray]:
    import cv2

    capture = cv2.VideoCapture(str(video))
    frames = []
    while (read := capture.read())[0]:
        frames.append(read[1])
    capture.release()
    return frames


class _LeftHalf(_Lazy):
    """Object 1 is the left half of the frame, its box a corner of the right half."""

    def _result(self) -> FrameResult:
        labels = np.zeros((20, 30), np.uint8)
        labels[:, :15] = 1
        return FrameResult({1: np.array([26, 16, 2, 2], float)}, {1: False}, labels, 0.01, None)


def test_an_overlay_is_moved_into_place_only_when_the_run_completes(tmp_path):
    out = tmp_path / "run"
    frames = [np.full((20, 30, 3), 40 * i, np.uint8) for i in range(4)]

    def run(folder, tracker):
        sinks = folder.sinks(Outputs(overlay=True), ids=ObjectIds((255,)), palette=None, record={}, fps=10.0,
                             size=(20, 30))
        track_video(tracker, frames, Start(box=None, mask=np.ones((1, 1), np.uint8)), sinks, prefetch_depth=0)

    run(RunFolder.create(out), _LeftHalf())
    record = json.loads((out / "run.json").read_text())
    assert record["status"] == "complete" and "overlay.mp4" in record["files"]
    drawn = _frames_of(out / "overlay.mp4")
    colour = [np.ptp(frame.astype(int), axis=2) for frame in drawn]  # 0 for a grey pixel
    assert len(drawn) == 4 and all(c[4:16, 2:12].mean() > 30 > c[4:16, 18:24].mean() for c in colour)  # tinted
    assert ".overlay.*.tmp.mp4" in record["writes"] and not [p for p in out.iterdir() if p.name.startswith(".")]
    with pytest.raises(KeyboardInterrupt):
        run(RunFolder.create(out, overwrite=True), _Scripted(interrupt_at=2))
    assert json.loads((out / "run.json").read_text())["status"] == "interrupted"
    assert not (out / "overlay.mp4").exists() and not [p for p in out.iterdir() if p.name.startswith(".")]
    frames[3] = np.zeros((20, 31, 3), np.uint8)
    with pytest.raises(InputError, match="does not match the overlay's size"):
        run(RunFolder.create(out, overwrite=True), _Scripted())
