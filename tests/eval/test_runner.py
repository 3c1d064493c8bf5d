"""The runner's parts on their own: run files and when a run is done, the summary and its kept-work line, the
configuration record, a worker's progress messages and a dead worker's end in words."""

from __future__ import annotations

import errno
import json
import os
import signal
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from tests.eval.helpers import ABSENT, write_sequence
from trek_tracker.errors import InputError, UserError
from trek_tracker.eval import runner
from trek_tracker.eval.dataset import Trek150
from trek_tracker.eval.protocols import Run, RunGroup, plan
from trek_tracker.eval.runner import (
    IDENTITY_FILE,
    RunSummary,
    check_identity,
    claim_identity,
    launcher_shard,
    run_done,
    under_launcher,
    write_group,
    write_run,
)


def _ope(length: int) -> Run:
    return Run("ope", "P01-P01_01-1", "", range(length), "ope/P01-P01_01-1.txt")


def _hoi(start: int, end: int) -> Run:
    return Run("hoi", "P01-P01_01-1", f"hoi-{start}-{end}-0", range(start, end + 1),
               f"hoi/P01-P01_01-1-hoi-{start}-{end}-0.txt")


def _rows(n: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` distinct boxes and times: row i is (i, i + 1, 10, 20), i / 100 s."""
    boxes = np.array([[i, i + 1, 10, 20] for i in range(n)], float)
    return boxes, np.arange(n) / 100


def test_every_run_of_a_group_is_written_from_its_first_rows_and_the_carrier_last(tmp_path, monkeypatch):
    carrier, short = _ope(6), _hoi(0, 3)
    boxes, times = _rows(6)
    written = []
    write_boxes = runner.write_boxes
    monkeypatch.setattr(runner, "write_boxes", lambda path, rows: (written.append(path.name),
                                                                   write_boxes(path, rows)))
    write_group(tmp_path, RunGroup(carrier, (short, carrier)), boxes, times)
    assert written == [Path(short.relpath).name, Path(carrier.relpath).name]  # a finished carrier: all finished
    assert run_done(tmp_path, carrier) and run_done(tmp_path, short)
    back = np.loadtxt(tmp_path / short.relpath, delimiter=",")
    np.testing.assert_allclose(back, boxes[:4])
    times_back = np.loadtxt(tmp_path / carrier.times_relpath)
    np.testing.assert_allclose(times_back, times, atol=1e-8)


def test_an_ope_result_without_its_times_file_is_not_a_finished_run(tmp_path):
    run = _ope(5)
    boxes, times = _rows(5)
    write_run(tmp_path, run, boxes, None)
    assert (tmp_path / run.relpath).is_file() and not run_done(tmp_path, run)
    write_run(tmp_path, run, boxes, times)
    assert run_done(tmp_path, run)
    write_run(tmp_path, run, boxes, np.where(np.arange(5) == 2, np.inf, times))
    assert not run_done(tmp_path, run)
    write_run(tmp_path, run, boxes, times)
    (tmp_path / run.times_relpath).write_text("")  # an empty file has no last line at all
    assert not run_done(tmp_path, run)
    assert not runner._whole_last_line(tmp_path / run.times_relpath)


def test_the_summary_holds_each_measures_largest_value_over_the_workers_and_skips_unmeasured_ones():
    summary = RunSummary()
    for peak in ({"gpu_mib": None, "host_rss_mib": 300.0}, {"gpu_mib": None, "host_rss_mib": 700.0},
                 {"gpu_mib": 50.0, "host_rss_mib": 200.0}, {"gpu_mib": 20.0, "host_rss_mib": None}):
        summary.saw(peak)
    assert summary.peak_memory == {"host_rss_mib": 700.0, "gpu_mib": 50.0}


def test_the_kept_work_counts_the_runs_finished_before_shared_and_tracked_now():
    a, b, c, d = _hoi(0, 1), _hoi(0, 2), _hoi(1, 3), _hoi(2, 3)
    summary = RunSummary(skipped=[a], done=[b, c], shared=[d], planned=7)
    assert runner._kept(summary) == ("4 of the 7 runs of this command are finished and kept: run the same command "
                                     "again to resume")
    summary.overwrite = True
    assert runner._kept(summary).startswith("4 of the 7 runs of this command are redone and kept: run it again "
                                            "without --overwrite")
    assert runner._kept(RunSummary(done=[b], planned=3)).startswith("1 of the 3 runs of this command is finished")
    assert runner._kept(RunSummary(done=[b], planned=3, overwrite=True)).startswith(
        "1 of the 3 runs of this command is redone")


@pytest.mark.parametrize("exitcode, said", [
    (3, "exited with code 3"),
    (-signal.SIGKILL, "was killed by SIGKILL (out of memory?)"),
    (-signal.SIGSEGV, "was killed by SIGSEGV"),
    (-signal.SIGTERM, "was killed by SIGTERM"),
])
def test_a_dead_workers_end_is_its_exit_code_or_the_signal_that_killed_it(exitcode, said):
    assert runner._how_it_ended(exitcode) == said


@pytest.mark.skipif(not hasattr(signal, "SIGRTMIN"), reason="real-time signals are Linux's")
def test_a_worker_killed_by_a_signal_without_a_name_is_said_by_its_number():
    number = signal.SIGRTMIN + 3
    with pytest.raises(ValueError):  # what the fallback is for
        signal.Signals(number)
    assert runner._how_it_ended(-number) == f"was killed by signal {number}"


class _Messages(list):
    put = list.append


def test_a_workers_progress_is_sent_at_most_every_fifth_of_a_second_and_none_when_nothing_is_new(monkeypatch):
    clock = [0.0]
    monkeypatch.setattr(runner.time, "monotonic", lambda: clock[0])
    sent = _Messages()
    progress = runner._Progress(sent)
    for t in (0.0, 0.1, 0.2):  # not more than 0.2 s after the start
        clock[0] = t
        progress(0)
    assert sent == []
    clock[0] = 0.25
    progress(0)
    assert sent == [("frames", 4)]
    clock[0] = 0.4  # 0.15 s after that message
    progress(0)
    assert sent == [("frames", 4)]
    progress.flush()
    progress.flush()  # nothing new since
    assert sent == [("frames", 4), ("frames", 1)]


@pytest.mark.parametrize("start", [ABSENT, (10, 10, 0, 8), (10, 10, 16, 0)])
def test_a_run_of_ours_without_a_start_box_still_counts_every_frame_on_the_progress_bar(tmp_path, start):
    from trek_tracker.pipeline import Tracker

    root = tmp_path / "root"
    (root / "TREK-150-annotations").mkdir(parents=True)
    (root / "TREK-150-annotations" / "sequences.txt").write_text("P01-P01_01-1\n")
    gt = [(10, 10, 16, 8), start, (12, 10, 16, 8), (14, 10, 16, 8), (16, 10, 16, 8)]
    write_sequence(root, "P01-P01_01-1", gt, hoi=[(1, 4, 0)], extra=False)
    ds = Trek150(root)
    run = plan(ds, "hoi")[0]
    counted = []
    ours = Tracker.__new__(Tracker)  # never started: the run has no box to start it from
    boxes, times = runner.track_run(ours, ds[run.sequence], run, on_frame=counted.append)
    assert len(counted) == run.length == 4
    np.testing.assert_array_equal(boxes, np.tile(start, (4, 1)))
    assert not times.any()


# --------------------------------------------------------------------------- the configuration record
def test_the_record_names_only_the_settings_that_differ_and_a_tuple_is_its_list(tmp_path):
    claim_identity(tmp_path, {"model": "deaot", "size": [480, 640], "cap": 10})
    claim_identity(tmp_path, {"model": "deaot", "size": (480, 640), "cap": 10})  # as the record reads back
    check_identity(tmp_path, {"model": "deaot", "size": (480, 640), "cap": 10}, overwrite=False)
    with pytest.raises(UserError, match=r"\(differs in: extra, model; see "):
        claim_identity(tmp_path, {"model": "other", "size": (480, 640), "cap": 10, "extra": 1})
    with pytest.raises(UserError, match=r"\(differs in: cap, size; see "):
        check_identity(tmp_path, {"model": "deaot", "size": (480, 600)}, overwrite=False)


def test_a_setting_only_one_configuration_holds_is_named_even_when_it_is_null(tmp_path):
    claim_identity(tmp_path, {"tracker_class": "x:A", "checkpoint": None})
    with pytest.raises(UserError, match=r"\(differs in: checkpoint; see "):
        claim_identity(tmp_path, {"tracker_class": "x:A"})
    with pytest.raises(UserError, match=r"\(differs in: refine; see "):
        check_identity(tmp_path, {"tracker_class": "x:A", "checkpoint": None, "refine": None}, overwrite=False)


def test_overwrite_under_the_same_configuration_keeps_the_results_of_the_runs_it_does_not_redo(tmp_path, caplog,
                                                                                                 monkeypatch):
    import logging

    monkeypatch.setattr(logging.getLogger("trek_tracker"), "propagate", True)  # the CLI's handler may be set
    caplog.set_level("INFO", logger="trek_tracker")
    (tmp_path / "mse").mkdir()
    result = tmp_path / "mse" / "P01-P01_01-1-anchor-3.txt"
    result.write_text("1.000,2.000,3.000,4.000\n")
    claim_identity(tmp_path, {"size": [480, 640]})
    check_identity(tmp_path, {"size": (480, 640)}, overwrite=True)
    assert result.is_file() and (tmp_path / IDENTITY_FILE).is_file()
    assert "removed" not in caplog.text
    check_identity(tmp_path, {"size": (480, 600)}, overwrite=True)
    assert not result.exists() and not (tmp_path / IDENTITY_FILE).exists()
    assert f"removed 1 result files of the previous configuration of tracker {tmp_path.name!r}" in caplog.text


def test_without_a_configuration_nothing_is_checked_or_recorded(tmp_path):
    (tmp_path / IDENTITY_FILE).write_text("[1, 2]")  # damaged: checking it would refuse
    check_identity(tmp_path, None, overwrite=False)
    claim_identity(tmp_path / "fresh", None)
    assert not (tmp_path / "fresh").exists()


@pytest.mark.parametrize("code", [errno.EPERM, errno.EOPNOTSUPP, errno.ENOSYS])
def test_on_a_file_system_without_hard_links_the_record_is_still_created_once(tmp_path, monkeypatch, code):
    def no_links(src, dst):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, "link", no_links)
    path = tmp_path / IDENTITY_FILE
    assert runner._create_once(path, {"size": [480, 640]})
    assert not runner._create_once(path, {"size": [480, 600]})
    assert json.loads(path.read_text()) == {"size": [480, 640]}
    with pytest.raises(UserError, match=r"differs in: size"):
        claim_identity(tmp_path, {"size": [480, 600]})
    assert [p.name for p in tmp_path.iterdir()] == [IDENTITY_FILE]  # no temporary file left


def test_a_record_that_cannot_be_written_is_named_not_its_hidden_temporary_file(tmp_path, monkeypatch):
    def full(path, record):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))  # as a full disk says it

    monkeypatch.setattr(runner, "write_json", full)
    with pytest.raises(OSError) as err:
        claim_identity(tmp_path, {"size": [480, 640]})
    assert err.value.filename == str(tmp_path / IDENTITY_FILE)
    assert list(tmp_path.iterdir()) == []


def test_a_failure_to_link_the_record_that_is_not_a_missing_feature_is_raised(tmp_path, monkeypatch):
    def failing(src, dst):
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(os, "link", failing)
    with pytest.raises(OSError, match="Input/output error"):
        runner._create_once(tmp_path / IDENTITY_FILE, {"size": [480, 640]})
    assert list(tmp_path.iterdir()) == []


def test_the_record_is_created_once_read_once_its_writer_is_done_and_none_when_missing(tmp_path):
    path = tmp_path / IDENTITY_FILE
    assert runner._read_record(path) is runner._NONE
    assert runner._create_once(path, {"size": [480, 640]}) and not runner._create_once(path, {"size": [1, 2]})
    assert runner._read_record(path) == {"size": [480, 640]}
    path.unlink()
    path.write_text("")  # created with O_EXCL, its writer not done yet
    writer = threading.Timer(0.2, path.write_text, args=('{"size": [480, 640]}\n',))
    writer.start()
    try:
        assert runner._read_record(path) == {"size": [480, 640]}
    finally:
        writer.join()
    path.write_text('"deaot"')
    with pytest.raises(InputError, match="holds a JSON str, not a tracker configuration"):
        runner._read_record(path)


# --------------------------------------------------------------------------- launchers
@pytest.mark.parametrize("env, shared", [
    ({}, False),
    ({"WORLD_SIZE": "1", "RANK": "0"}, False),
    ({"WORLD_SIZE": "2", "RANK": "1"}, True),  # torchrun
    ({"SLURM_STEP_NUM_TASKS": "3", "SLURM_PROCID": "0"}, True),  # srun -n 3
    ({"SLURM_NTASKS": "4"}, False),  # a batch script of a job of 4 tasks: one process
    ({"SLURM_ARRAY_TASK_COUNT": "4", "SLURM_ARRAY_TASK_ID": "1"}, False),  # an array task: a job of its own
])
def test_only_processes_of_one_launch_share_the_machines_gpus(env, shared):
    assert under_launcher(env) is shared


def test_each_task_of_an_array_of_two_takes_its_half():
    assert [launcher_shard({"SLURM_ARRAY_TASK_ID": str(t), "SLURM_ARRAY_TASK_COUNT": "2"}) for t in (0, 1)] == [
        (0, 2), (1, 2)]


def test_an_array_whose_step_is_not_set_steps_by_one():
    array = {"SLURM_ARRAY_TASK_MIN": "2", "SLURM_ARRAY_TASK_MAX": "5", "SLURM_ARRAY_TASK_COUNT": "4"}  # --array=2-5
    assert [launcher_shard({**array, "SLURM_ARRAY_TASK_ID": str(t)}) for t in range(2, 6)] == [(i, 4) for i in range(4)]


@pytest.mark.parametrize("task", ["3", "12"])
def test_a_task_id_outside_the_array_is_refused(task):
    array = {"SLURM_ARRAY_TASK_MIN": "4", "SLURM_ARRAY_TASK_MAX": "11", "SLURM_ARRAY_TASK_COUNT": "8"}  # --array=4-11
    with pytest.raises(UserError, match="not an evenly spaced range"):
        launcher_shard({**array, "SLURM_ARRAY_TASK_ID": task})


@pytest.mark.parametrize("rank", ["-1", "3"])
def test_a_rank_below_or_past_the_world_is_refused(rank):
    with pytest.raises(UserError, match=f"^RANK={rank} is not one of the 3 processes of WORLD_SIZE"):
        launcher_shard({"RANK": rank, "WORLD_SIZE": "3"})


def test_unfinished_runs_of_other_protocols_answer_nothing_and_the_runs_asked_for_are_tracked(tmp_path):
    from tests.eval.helpers import OracleTracker, build_shared_starts

    ds = Trek150(build_shared_starts(tmp_path / "trek"))
    ope, rest = plan(ds, "ope"), plan(ds, ["mse", "hoi"])
    summary = runner.execute(ds, rest, tmp_path / "t", OracleTracker, progress=False, share=True, others=ope)
    # among the runs asked for, HOI 0-2, 3-5 and 7-7 are the first frames of MSE runs (build_shared_starts)
    assert sorted(r.key for r in summary.shared) == ["hoi-0-2-0", "hoi-3-5-1", "hoi-7-7-0"]
    assert len(summary.done) == len(rest) - 3 and all(run_done(tmp_path / "t", r) for r in rest)
    assert not any(run_done(tmp_path / "t", r) for r in ope)  # others are read, never tracked


def test_an_eval_removes_the_old_temporaries_of_the_runs_it_tracks_and_no_others(tmp_path):
    from tests.eval.helpers import OracleTracker, build_synthetic

    ds = Trek150(build_synthetic(tmp_path / "trek"))
    first, second = plan(ds, "ope")
    out = tmp_path / "t"
    runner.execute(ds, [second], out, OracleTracker, progress=False)

    def temporary(relpath: str, age: float) -> Path:
        path = out / relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        os.utime(tmp, (time.time() - age,) * 2)
        return Path(tmp)

    killed = [temporary(first.relpath, 2 * runner.STALE_TEMPORARY_SECONDS),
              temporary(first.times_relpath, 2 * runner.STALE_TEMPORARY_SECONDS)]
    live = temporary(first.relpath, 1)  # another command's write in progress
    finished = temporary(second.relpath, 2 * runner.STALE_TEMPORARY_SECONDS)  # its run is not tracked again
    summary = runner.execute(ds, [first, second], out, OracleTracker, progress=False)
    assert summary.done == [first] and summary.skipped == [second]
    assert not any(p.exists() for p in killed) and live.exists() and finished.exists()


# --------------------------------------------------------------------------- a worker, in this process
@pytest.fixture
def worker_threads_kept():
    """A worker sets torch's and OpenCV's threads for its process: restore this one's."""
    import cv2
    import torch

    kept = torch.get_num_threads(), cv2.getNumThreads()
    yield
    torch.set_num_threads(kept[0])
    cv2.setNumThreads(kept[1])


def _work(tmp_path: Path, factory, tracker_dir: Path) -> tuple[list, list[RunGroup]]:
    """What a worker says, given the synthetic dataset's OPE runs, each a group of its own."""
    import queue

    from tests.eval.helpers import build_synthetic

    ds = Trek150(build_synthetic(tmp_path / "trek"))
    groups = [RunGroup(r, (r,)) for r in plan(ds, "ope")]
    tasks = queue.Queue()
    for group in [*groups, None]:
        tasks.put(group)
    messages = _Messages()
    runner._worker(factory, None, str(ds.root), ds.names, str(tracker_dir), 2, 1, tasks, messages)
    return messages, groups


def test_a_worker_says_it_is_ready_then_each_runs_frames_and_its_end_then_it_is_idle(tmp_path, worker_threads_kept):
    from tests.eval.helpers import ConstantTracker

    messages, groups = _work(tmp_path, ConstantTracker, tmp_path / "t")
    kinds = [m[0] for m in messages]
    assert kinds[0] == "ready" and kinds[-1] == "idle" and messages[-1][1] == os.getpid()
    assert [m[1] for m in messages if m[0] == "done"] == groups
    assert sum(m[1] for m in messages if m[0] == "frames") == sum(g.carrier.length for g in groups)
    assert set(kinds[1:-1]) == {"frames", "done"} and all(run_done(tmp_path / "t", g.carrier) for g in groups)


def test_a_workers_user_error_keeps_its_kind_and_a_folder_it_cannot_write_is_one_line(tmp_path, worker_threads_kept):
    from tests.eval.helpers import ConstantTracker
    from trek_tracker.errors import CheckpointError

    def missing():
        raise CheckpointError("checkpoint /nope.pth not found (simulated)")

    messages, _ = _work(tmp_path / "a", missing, tmp_path / "t")
    assert messages == [("user-error", "CheckpointError", "checkpoint /nope.pth not found (simulated)")]
    (tmp_path / "file").write_text("not a folder")
    messages, _ = _work(tmp_path / "b", ConstantTracker, tmp_path / "file" / "t")
    assert messages[0] == ("ready",) and messages[-1][:2] == ("user-error", "UserError")
    said = messages[-1][2]
    assert str(tmp_path / "file") in said and "\n" not in said and "Not a directory" in said, said


def test_the_images_of_every_sequence_are_checked_before_any_run_is_tracked(tmp_path):
    from tests.eval.helpers import ConstantTracker, build_synthetic

    ds = Trek150(build_synthetic(tmp_path / "trek"))
    runs = plan(ds, "ope")
    images = sorted((ds.root / runs[-1].sequence / "img").glob("*.jpg"))
    images[-1].unlink()  # the last run's sequence lost a frame
    with pytest.raises(InputError, match=f"sequence {runs[-1].sequence}: {len(images) - 1} images"):
        runner.execute(ds, runs, tmp_path / "t", ConstantTracker, progress=False)
    assert not any(run_done(tmp_path / "t", r) for r in runs)


def test_runs_answered_only_from_a_run_finished_before_record_the_configuration(tmp_path):
    from tests.eval.helpers import OracleTracker, build_shared_starts

    ds = Trek150(build_shared_starts(tmp_path / "trek"))
    ope = plan(ds, "ope")
    runner.execute(ds, ope, tmp_path / "t", OracleTracker, progress=False)  # a tracker without a configuration
    prefix = [r for r in plan(ds, "hoi") if r.key == "hoi-0-2-0"]  # the first frames of OPE's run
    summary = runner.execute(ds, prefix, tmp_path / "t", OracleTracker, progress=False, share=True, others=ope,
                             identity={"size": [480, 640]})
    assert summary.shared == prefix and summary.done == [] and run_done(tmp_path / "t", prefix[0])
    assert json.loads((tmp_path / "t" / IDENTITY_FILE).read_text()) == {"size": [480, 640]}
