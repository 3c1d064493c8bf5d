"""The parent's half of `eval --workers N` (trek_tracker.eval.runner._run_workers) against scripted workers: what it
starts, how it reads their messages, when a dead worker ends the evaluation and what is said, and that no worker
is left behind. The workers here are a script of the messages real ones send, so every order of events can be
played at once; tests/eval/test_workers.py runs the real processes."""

from __future__ import annotations

import errno
import os
import pickle
import queue
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.damaged import allocation_failure
from tests.eval.helpers import ConstantTracker, build_synthetic
from tests.eval.test_runner import _work, worker_threads_kept  # noqa: F401 - a fixture
from tests.eval.test_workers import GreedyTracker
from trek_tracker.errors import TRACKING_MEMORY_HINT, CheckpointError, InputError, OutOfMemory, UserError
from trek_tracker.eval import runner
from trek_tracker.eval.adapter import StepAdapter
from trek_tracker.eval.protocols import Run, RunGroup
from trek_tracker.signals import child_of


def _run(name: str, length: int) -> Run:
    return Run("ope", name, "", range(length), f"ope/{name}.txt")


GROUPS = [RunGroup(r, (r,)) for r in (_run("P01-P01_01-1", 30), _run("P01-P01_01-2", 20), _run("P01-P01_01-3", 10))]
PEAK = {"host_rss_mib": 100.0, "gpu_mib": None}


class _Tasks(list):
    put = list.append

    def cancel_join_thread(self) -> None:
        self.cancelled = True


class _Messages:
    """The parent's message queue, played from ``script``: each entry is a message, or a function of the
    workers (a worker dying meanwhile) that returns the next message, or None for a wait that times out."""

    def __init__(self, ctx: _Context, script: list) -> None:
        self.ctx, self.script, self.waits = ctx, list(script), 0

    def _next(self, wait: bool):
        if not self.script:
            if not wait:
                raise queue.Empty
            raise AssertionError("the parent waited for a message past the end of the workers' script")
        if not wait and callable(self.script[0]):  # what happens later cannot be read without waiting
            raise queue.Empty
        item = self.script.pop(0)
        message = item(self.ctx.procs) if callable(item) else item
        if message is None:
            raise queue.Empty
        return message

    def get(self, timeout=None):
        assert timeout is not None  # the parent must look at its workers now and then, whatever they say
        self.waits += 1
        return self._next(wait=True)

    def get_nowait(self):
        return self._next(wait=False)


def _sigint_blocked() -> bool | None:
    """Whether SIGINT is blocked in this thread now (None where there are no signal masks)."""
    if not hasattr(signal, "pthread_sigmask"):
        return None
    return signal.SIGINT in signal.pthread_sigmask(signal.SIG_BLOCK, [])


class _Process:
    def __init__(self, target, daemon, name, args) -> None:
        self.target, self.daemon, self.name, self.args = target, daemon, name, args
        self.pid = self.exitcode = None
        self.terminated = self.joined = False

    def start(self) -> None:
        self.pid = 4000 + len(_Context.started)
        self.blocked = _sigint_blocked()
        _Context.started.append(self)

    def is_alive(self) -> bool:
        return self.pid is not None and self.exitcode is None

    def terminate(self) -> None:
        self.terminated = True
        self.exitcode = -signal.SIGTERM

    def join(self, timeout=None) -> None:
        assert timeout is not None  # a worker that ignores SIGTERM must not hang the parent
        self.joined = True


class _Context:
    started: list[_Process] = []

    def __init__(self, script: list) -> None:
        self.queues = [_Tasks(), _Messages(self, script)]
        self.procs: list[_Process] = []
        _Context.started = []

    def Queue(self):  # noqa: N802 - multiprocessing's name
        return self.queues.pop(0)

    def Process(self, target, daemon, name, args):  # noqa: N802
        proc = _Process(target, daemon, name, args)
        self.procs.append(proc)
        return proc


class _Bar:
    def __init__(self) -> None:
        self.frames, self.said = 0, []

    def update(self, n: int = 1) -> None:
        self.frames += n

    def set_description(self, text: str) -> None:
        self.said.append(text)


class _Dataset:
    root = Path("/data/trek")


def _play(monkeypatch, script: list, workers: int = 2, todo: list[RunGroup] = GROUPS, devices=None, summary=None):
    """Run the parent's loop against ``script``; return the context, the bar, the summary, the claims and what
    it raised (None if it returned)."""
    ctx = _Context(script)
    monkeypatch.setattr(runner, "get_context", lambda method: ctx if method == "spawn" else None)
    monkeypatch.setattr(runner, "usable_cpus", lambda: 8)
    bar, summary, claims = _Bar(), summary or runner.RunSummary(planned=len(todo)), []
    raised = None
    try:
        runner._run_workers(_Dataset(), todo, Path("/results/t"), "factory", workers, devices, 3, bar, summary,
                            lambda: claims.append(1))
    except Exception as err:  # noqa: BLE001 - each test says what it expects
        raised = err
    return ctx, bar, summary, claims, raised


def _died(i: int, exitcode: int, then=None):
    """Worker ``i`` dies with ``exitcode`` while the parent waits; ``then``: the message that arrives then."""
    def die(procs):
        procs[i].exitcode = exitcode
        return then
    return die


def _idle(i: int):
    return lambda procs: ("idle", procs[i].pid)


def _exit(i: int, exitcode: int = 0):
    return _died(i, exitcode)


def _later(message):
    """``message``, sent after the parent has looked (it cannot be read without waiting)."""
    return lambda procs: message


def test_as_many_workers_start_as_there_are_runs_each_with_its_device_and_share_of_threads(monkeypatch):
    done = [("done", g, PEAK) for g in GROUPS[:2]]
    ctx, *_, raised = _play(monkeypatch, done, workers=4, todo=GROUPS[:2], devices=["cuda:0", "cuda:1", "cuda:2"])
    assert raised is None and len(ctx.procs) == 2  # two runs: two workers, not four
    tasks, messages = ctx.procs[0].args[2:]
    assert list(tasks) == [*GROUPS[:2], None, None]  # the plan, then one end for each worker
    payloads = []
    for i, proc in enumerate(ctx.procs):
        assert proc.target is child_of and proc.daemon and proc.name == f"trek-track-worker-{i}"
        parent, payload, *queues = proc.args
        assert parent == os.getpid() and queues == [tasks, messages]
        payloads.append(pickle.loads(payload))
    names = ["P01-P01_01-1", "P01-P01_01-2"]
    assert payloads == [(runner._worker, ("factory", device, "/data/trek", names, "/results/t", 3, 4))
                        for device in ("cuda:0", "cuda:1")]  # 8 CPUs shared by two workers
    if hasattr(signal, "pthread_sigmask"):
        assert all(p.blocked for p in ctx.procs)  # started with Ctrl-C held off (born_ignoring_interrupts)
        assert not _sigint_blocked()  # and it acts again afterwards


@pytest.mark.parametrize("cpus, workers, each", [(8, 3, 2), (8, 8, 1), (2, 3, 1)])
def test_each_worker_gets_its_share_of_the_cpus_and_at_least_one(monkeypatch, cpus, workers, each):
    monkeypatch.setattr(runner, "usable_cpus", lambda: cpus)
    assert runner.worker_threads(workers) == each


def test_devices_are_taken_in_turn_and_none_leaves_the_device_to_the_factory(monkeypatch):
    done = [("done", g, PEAK) for g in GROUPS]
    ctx, *_ = _play(monkeypatch, done, workers=3, devices=["cuda:0", "cuda:1"])
    assert [pickle.loads(p.args[1])[1][1] for p in ctx.procs] == ["cuda:0", "cuda:1", "cuda:0"]
    ctx, *_ = _play(monkeypatch, done, workers=3)
    assert [pickle.loads(p.args[1])[1][1] for p in ctx.procs] == [None, None, None]


def test_the_messages_of_every_worker_feed_the_bar_the_summary_and_the_claim(monkeypatch):
    script = [("ready",), ("frames", 7), ("ready",), None, ("frames", 23), ("done", GROUPS[0], PEAK),
              ("frames", 20), ("done", GROUPS[1], {"host_rss_mib": 300.0, "gpu_mib": 50.0}), _idle(1),
              ("frames", 10), ("done", GROUPS[2], {"host_rss_mib": 200.0, "gpu_mib": None})]
    ctx, bar, summary, claims, raised = _play(monkeypatch, script)
    assert raised is None and ctx.procs[0].args[3].script == []
    assert bar.frames == 60 and bar.said == [g.carrier.label for g in GROUPS]
    assert summary.done == [g.carrier for g in GROUPS] and summary.peak_memory == {"host_rss_mib": 300.0,
                                                                                     "gpu_mib": 50.0}
    assert claims == [1, 1]  # once for each worker whose tracker loaded
    assert ctx.procs[0].args[3].waits == len(script)  # it returned as soon as the last run was done


def test_runs_done_before_the_workers_start_are_not_counted_as_theirs(monkeypatch):
    summary = runner.RunSummary(planned=4)
    earlier = RunGroup(_run("P01-P01_01-9", 5), (_run("P01-P01_01-9", 5),))
    summary.finished(earlier)  # tracked before (as the runs of a command in the same process)
    script = [("done", g, PEAK) for g in GROUPS]
    _, _, summary, _, raised = _play(monkeypatch, script, summary=summary)
    assert raised is None and len(summary.done) == 4


@pytest.mark.parametrize("kind, error", [("InputError", InputError), ("CheckpointError", CheckpointError),
                                         ("UserError", UserError), ("AnotherError", UserError)])
def test_a_workers_user_error_is_raised_as_its_kind_with_its_own_line(monkeypatch, kind, error):
    script = [("done", GROUPS[0], PEAK), ("user-error", kind, "checkpoint /nope.pth not found")]
    ctx, _, _, _, raised = _play(monkeypatch, script)
    assert type(raised) is error and str(raised) == "checkpoint /nope.pth not found"


def test_a_worker_out_of_memory_says_what_the_others_finished(monkeypatch):
    script = [("done", GROUPS[1], PEAK), ("user-error", "OutOfMemory", "the GPU ran out of memory while tracking X")]
    _, _, _, _, raised = _play(monkeypatch, script)
    assert type(raised) is OutOfMemory
    assert str(raised) == "the GPU ran out of memory while tracking X; " + runner._kept(
        runner.RunSummary(done=[GROUPS[1].carrier], planned=3))


def test_a_worker_crash_is_raised_with_its_traceback(monkeypatch):
    script = [("crash", "ZeroDivisionError: division by zero", "Traceback (most recent call last):\n  ...\n")]
    _, _, _, _, raised = _play(monkeypatch, script)
    assert type(raised) is RuntimeError
    assert str(raised) == ("a worker failed: ZeroDivisionError: division by zero\n"
                           "Traceback (most recent call last):\n  ...\n")


def test_a_worker_that_dies_is_said_with_what_it_and_the_others_finished_before(monkeypatch):
    """Its death is seen while the others still talk (not only when all are quiet), and the runs whose end
    was said before it died, still in the queue, count as kept."""
    script = [("done", GROUPS[0], PEAK), _died(0, -signal.SIGKILL, then=("frames", 3)), ("done", GROUPS[1], PEAK),
              ("frames", 1), _later(("frames", 1)), *[("frames", 1)] * 50]
    ctx, _, summary, _, raised = _play(monkeypatch, script)
    assert type(raised) is UserError
    assert str(raised) == ("a worker process was killed by SIGKILL (out of memory?); 2 of the 3 runs of this "
                           "command are finished and kept: run the same command again to resume")
    assert summary.done == [GROUPS[0].carrier, GROUPS[1].carrier]
    assert len(ctx.procs[0].args[3].script) == 51  # the queue was read up to the end of what was said, no more


def test_a_worker_that_said_it_finished_may_die_in_its_teardown(monkeypatch):
    script = [("done", GROUPS[0], PEAK), _idle(0), _exit(0, -signal.SIGSEGV), None, ("done", GROUPS[1], PEAK),
              ("done", GROUPS[2], PEAK)]
    _, _, summary, _, raised = _play(monkeypatch, script)
    assert raised is None and len(summary.done) == 3


def test_a_worker_ended_by_the_lowest_signal_is_said_killed_by_it(monkeypatch):
    script = [_died(1, -signal.SIGHUP)]  # a closed terminal's
    _, _, _, _, raised = _play(monkeypatch, script)
    assert str(raised).startswith("a worker process was killed by SIGHUP; 0 of the 3 runs")


def test_a_worker_that_exits_cleanly_is_not_lost_while_the_others_work(monkeypatch):
    script = [("done", GROUPS[0], PEAK), _exit(0, 0), ("done", GROUPS[1], PEAK), None, ("done", GROUPS[2], PEAK)]
    _, _, summary, _, raised = _play(monkeypatch, script)
    assert raised is None and len(summary.done) == 3


def test_workers_that_all_stopped_before_every_run_was_done_end_the_evaluation(monkeypatch):
    script = [("done", GROUPS[0], PEAK), _idle(0), _idle(1), _exit(0), _exit(1)]
    _, _, _, _, raised = _play(monkeypatch, script)
    assert type(raised) is UserError and str(raised) == ("the worker processes stopped before every run was done; "
                                                         "run the same command again to resume")


def test_messages_still_queued_when_every_worker_has_exited_are_read(monkeypatch):
    def all_exit(procs):
        for proc in procs:
            proc.exitcode = 0
        return ("done", GROUPS[0], PEAK)

    script = [all_exit, ("done", GROUPS[1], PEAK), _idle(0), ("done", GROUPS[2], PEAK), _idle(1)]
    _, _, summary, _, raised = _play(monkeypatch, script)
    assert raised is None and len(summary.done) == 3


def test_a_worker_still_running_keeps_the_parent_waiting(monkeypatch):
    script = [("done", GROUPS[0], PEAK), _idle(0), _exit(0), None, None, None, ("done", GROUPS[1], PEAK),
              ("done", GROUPS[2], PEAK)]
    _, _, summary, _, raised = _play(monkeypatch, script)
    assert raised is None and len(summary.done) == 3


@pytest.mark.parametrize("ending", ["returns", "raises"])
def test_no_worker_is_left_running_and_the_queued_runs_do_not_hold_the_parent(monkeypatch, ending):
    script = [("done", GROUPS[0], PEAK), _exit(1), ("done", GROUPS[1], PEAK), ("done", GROUPS[2], PEAK)]
    if ending == "raises":
        script = [("done", GROUPS[0], PEAK), ("user-error", "UserError", "stop")]
    ctx, *_, raised = _play(monkeypatch, script)
    assert (raised is None) == (ending == "returns")
    assert [p.terminated for p in ctx.procs] == [True, ending == "raises"]  # only those still running are ended
    assert all(p.joined for p in ctx.procs) and ctx.procs[0].args[2].cancelled


def test_the_resource_trackers_warnings_are_quieted_once_for_every_worker_start(monkeypatch):
    monkeypatch.setattr(sys, "warnoptions", [w for w in sys.warnoptions if w != runner._QUIET_TRACKER])
    for _ in range(2):  # two evaluations in one process
        _play(monkeypatch, [("done", g, PEAK) for g in GROUPS])
    assert sys.warnoptions.count(runner._QUIET_TRACKER) == 1
    # what multiprocessing gives the resource tracker it starts with the first queue
    assert subprocess._args_from_interpreter_flags().count(f"-W{runner._QUIET_TRACKER}") == 1


# --------------------------------------------------------------------------- a worker, in this process
def test_a_worker_shares_out_the_cpus_it_is_given_to_torch_and_opencv(tmp_path, worker_threads_kept):  # noqa: F811
    import cv2
    import torch

    root = build_synthetic(tmp_path / "trek")
    tasks = queue.Queue()
    tasks.put(None)
    messages = _Bag()
    for threads in (3, 2):  # whatever this process had before
        runner._worker(ConstantTracker, None, str(root), [], str(tmp_path / "t"), 2, threads, tasks, messages)
        assert (torch.get_num_threads(), cv2.getNumThreads()) == (threads, threads)
        tasks.put(None)
    assert [m[0] for m in messages] == ["ready", "idle", "ready", "idle"]


def test_a_tracker_is_built_on_the_device_given_and_without_one_as_its_factory_chooses():
    built = []

    def factory(device="its own"):
        built.append(device)
        return ConstantTracker()

    for device in ("cuda:1", None):
        runner._make_tracker(factory, device)
    assert built == ["cuda:1", "its own"]
    assert isinstance(runner._make_tracker(ConstantTracker, None), StepAdapter)  # a factory that takes none


class _Bag(list):
    put = list.append


def test_a_worker_whose_tracker_fails_says_what_failed_with_its_traceback(tmp_path, worker_threads_kept):  # noqa: F811
    def broken():
        return 1 / 0

    messages, _ = _work(tmp_path, broken, tmp_path / "t")
    assert len(messages) == 1 and messages[0][:2] == ("crash", "ZeroDivisionError: division by zero")
    assert messages[0][2].startswith("Traceback (most recent call last):") and "1 / 0" in messages[0][2]


@pytest.mark.parametrize("stage", ["loading", "tracking"])
def test_a_worker_out_of_memory_names_its_stage_and_the_workers_remedy(tmp_path, worker_threads_kept, stage):  # noqa: F811
    def greedy_at_load():
        raise allocation_failure("gpu")

    messages, _ = _work(tmp_path, greedy_at_load if stage == "loading" else GreedyTracker, tmp_path / "t")
    kind, error, said = messages[-1]
    assert (kind, error) == ("user-error", "OutOfMemory") and "\n" not in said
    where = "loading the tracker" if stage == "loading" else "tracking ope P01-P01_01-10"
    assert f"the GPU ran out of memory while {where} " in said
    assert f"; use {TRACKING_MEMORY_HINT}, fewer --workers, or free the GPU" in said  # where several share it
    assert "P01-P01_01-10" not in [m[1].carrier.sequence for m in messages if m[0] == "done"]


def test_a_workers_peak_memory_is_measured_where_its_tracker_runs(monkeypatch):
    import torch

    asked = []
    monkeypatch.setattr(runner, "peak_memory", lambda device: asked.append(device) or PEAK)

    class OnGpu(ConstantTracker):
        device = torch.device("cuda", 1)

    assert runner._peak(OnGpu()) == PEAK and runner._peak(ConstantTracker()) == PEAK
    assert asked == [torch.device("cuda", 1), torch.device("cpu")]  # a toolkit tracker's: this process's


def test_a_worker_that_cannot_write_a_result_says_why_in_the_systems_words(tmp_path, monkeypatch,
                                                                         worker_threads_kept):  # noqa: F811
    (tmp_path / "file").write_text("not a folder")
    messages, _ = _work(tmp_path / "a", ConstantTracker, tmp_path / "file" / "t")
    assert messages[-1] == ("user-error", "UserError",
                            f"cannot write results in {tmp_path / 'file' / 't'}: {os.strerror(errno.ENOTDIR)}")

    def unwritable(*args):
        raise OSError("the results' disk is gone (simulated)")  # an OSError without an errno

    monkeypatch.setattr(runner, "write_group", unwritable)
    messages, _ = _work(tmp_path / "b", ConstantTracker, tmp_path / "t")
    assert messages[-1] == ("user-error", "UserError", f"cannot write results in {tmp_path / 't'}: the results' "
                                                       "disk is gone (simulated)")
