"""The run folder: one run per folder, the manifest from start to end, reading back, probabilities files."""

from __future__ import annotations

import errno
import json
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from trek_tracker import run_folder
from trek_tracker.errors import InputError, UserError
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
        saver.save(14, {"tracker": {}})
    said = [r.getMessage() for r in caplog.records if "could not save the state" in r.getMessage()]
    assert len(said) == 1 and "no space left" in said[0]
    assert folder.resume_file.read_bytes() == before
    saved = run_folder.load_state_file(folder.resume_file)
    assert saved["frames"] == 5 and saved["state"]["tracker"]["t"].tolist() == [0, 1, 2]


def test_a_folder_is_locked_while_its_run_writes_it(tmp_path):
    first = RunFolder.create(tmp_path / "run")
    with pytest.raises(UserError, match="being written by another trek-track process"):
        RunFolder.create(tmp_path / "run", overwrite=True)
    first.release()
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

