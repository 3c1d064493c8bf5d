"""Stopping between units of work (trek_tracker.signals): what the loop and training rely on."""

from __future__ import annotations

import ctypes
import os
import pickle
import signal
import sys
import time

import pytest

from trek_tracker.signals import SIGNALS, HeldSignals, born_ignoring_interrupts, child_of


@pytest.fixture()
def calls():
    seen: list[int] = []
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGHUP)}
    signal.signal(signal.SIGTERM, lambda signum, frame: seen.append(signum))
    yield seen
    for sig, handler in before.items():
        signal.signal(sig, handler)


def test_a_signal_inside_a_unit_waits_for_its_end(calls):
    with HeldSignals() as held:
        with held.unit():
            os.kill(os.getpid(), signal.SIGTERM)
            assert calls == [] and held.held == signal.SIGTERM
        held.handle()
        assert calls == [signal.SIGTERM] and held.held is None and not held.torn
        os.kill(os.getpid(), signal.SIGTERM)  # outside a unit: at once
        assert calls == [signal.SIGTERM] * 2
    assert signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, held._arrived)  # the caller's, back


def test_the_stopping_signals_are_ctrl_c_kill_and_a_closed_terminal():
    assert set(SIGNALS) == {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}


def test_of_two_signals_held_in_one_unit_the_first_acts(calls):
    signal.signal(signal.SIGHUP, lambda signum, frame: calls.append(signum))  # the fixture restores it
    with HeldSignals(repeats_act=()) as held:
        with held.unit():
            os.kill(os.getpid(), signal.SIGTERM)
            os.kill(os.getpid(), signal.SIGHUP)
        assert held.held == signal.SIGTERM
        held.handle()
    assert calls == [signal.SIGTERM]


def test_a_signal_before_the_first_unit_acts_at_once(calls):
    with HeldSignals() as held:
        os.kill(os.getpid(), signal.SIGTERM)
        assert calls == [signal.SIGTERM] and held.held is None and not held.torn


def test_a_repeat_acts_at_once_only_where_asked(calls):
    with HeldSignals(repeats_act=()) as held:  # several processes: Slurm and torchrun each send a SIGTERM
        with held.unit():
            os.kill(os.getpid(), signal.SIGTERM)
            os.kill(os.getpid(), signal.SIGTERM)
            assert calls == [] and not held.torn
        held.handle()
        assert calls == [signal.SIGTERM]
    with HeldSignals() as held:  # one process: a second one stops a hung unit, and its state is torn
        with held.unit():
            os.kill(os.getpid(), signal.SIGTERM)
            os.kill(os.getpid(), signal.SIGTERM)
            assert calls == [signal.SIGTERM] * 2 and held.torn


def _held_then_handled(answers) -> None:
    """With no handler of its own (SIGTERM's default), a held SIGTERM waits for the unit's end, then ends
    the process as it would have."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    with HeldSignals() as held:
        with held.unit():
            os.kill(os.getpid(), signal.SIGTERM)
        answers.put("saved")
        held.handle()
        answers.put("went on")


@pytest.mark.skipif(sys.platform != "linux", reason="forks")
def test_a_held_signal_without_a_handler_does_what_it_would_have_done():
    code, said = _start(os.getpid(), _held_then_handled)
    assert code == -signal.SIGTERM and said == ["saved"]
    before = signal.signal(signal.SIGINT, signal.SIG_DFL)
    try:
        with HeldSignals() as held:
            with held.unit():
                os.kill(os.getpid(), signal.SIGINT)
            with pytest.raises(KeyboardInterrupt):
                held.handle()
    finally:
        signal.signal(signal.SIGINT, before)


def test_an_error_inside_a_unit_passes_through_and_leaves_its_state_torn():
    with HeldSignals() as held:
        with held.unit():
            pass
        assert not held.torn and not held.inside
        with pytest.raises(ZeroDivisionError), held.unit():
            1 / 0  # noqa: B018
        assert held.torn and not held.inside


def test_an_ignored_signal_stays_ignored(calls):
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # nohup
    with HeldSignals() as held:
        assert signal.getsignal(signal.SIGHUP) == signal.SIG_IGN
        with held.unit():
            os.kill(os.getpid(), signal.SIGHUP)
        assert held.held is None
        held.handle()  # nothing held: nothing happens
    assert calls == []


def test_work_has_started_once_a_unit_boundary_is_set_up():
    """The CLI says that finished work was kept only after work began: a loop or training that holds signals
    between units has begun; a command starts afresh (reset)."""
    from trek_tracker.signals import work_has_started

    work_has_started(reset=True)
    assert not work_has_started()
    with HeldSignals():
        pass
    assert work_has_started(reset=True) and not work_has_started()


def test_asking_whether_work_has_started_does_not_forget_it():
    from trek_tracker.signals import work_has_started, work_started

    work_started()
    assert work_has_started() and work_has_started()  # only a command's start resets it
    work_has_started(reset=True)


def _report(said: str, answers) -> None:
    """A worker's function: what it was given, and how SIGINT reaches it."""
    answers.put((said, signal.getsignal(signal.SIGINT) == signal.SIG_IGN,
                 signal.SIGINT in signal.pthread_sigmask(signal.SIG_BLOCK, [])))


def _start(parent: int, function, *arguments) -> tuple[int, list]:
    """Fork a worker that runs ``function(*arguments, answers)`` through child_of(``parent``, ...), started as
    the runner starts one (SIGINT blocked); return its exit code and what it said."""
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    answers = ctx.SimpleQueue()  # written at once: what a worker said before it was killed is there
    proc = ctx.Process(target=child_of, args=(parent, pickle.dumps((function, arguments)), answers))
    with born_ignoring_interrupts():
        assert signal.SIGINT in signal.pthread_sigmask(signal.SIG_BLOCK, [])
        proc.start()
    assert signal.SIGINT not in signal.pthread_sigmask(signal.SIG_BLOCK, [])  # this process's mask, back
    proc.join(60)
    said = []
    while not answers.empty():
        said.append(answers.get())
    return proc.exitcode, said


@pytest.mark.skipif(not hasattr(signal, "pthread_sigmask") or sys.platform != "linux", reason="forks; POSIX masks")
def test_a_worker_ignores_ctrl_c_unblocked_then_runs_its_function_with_its_own_arguments_last():
    code, said = _start(os.getpid(), _report, "given")
    assert code == 0 and said == [("given", True, False)]  # ignored, and no longer held back


@pytest.mark.skipif(sys.platform != "linux", reason="forks")
def _count_looks(answers) -> None:
    time.sleep(1.2)
    answers.put(os.getppid.calls)


class _CountedGetppid:
    def __init__(self, real) -> None:
        self.real, self.calls = real, 0

    def __call__(self) -> int:
        self.calls += 1
        return self.real()


@pytest.mark.skipif(sys.platform != "linux", reason="forks")
def test_a_worker_looks_for_its_parent_about_twice_a_second_not_busily(monkeypatch):
    monkeypatch.setattr(os, "getppid", _CountedGetppid(os.getppid))  # the forked worker's copy counts
    code, said = _start(os.getpid(), _count_looks)
    assert code == 0 and len(said) == 1 and said[0] <= 5  # once at the start, then every 0.5 s


def test_a_worker_whose_parent_is_already_gone_exits_before_its_work():
    code, said = _start(os.getpid() + 10**6, _report, "given")  # not its parent: the parent died meanwhile
    assert code == 1 and said == []


@pytest.mark.skipif(not hasattr(signal, "pthread_sigmask"), reason="signal masks are POSIX")
def test_interrupts_are_held_back_only_from_the_main_thread():
    import threading

    seen = []

    def start():
        with born_ignoring_interrupts():
            seen.append(signal.SIGINT in signal.pthread_sigmask(signal.SIG_BLOCK, []))

    thread = threading.Thread(target=start)
    thread.start()
    thread.join()
    assert seen == [False]  # another thread's mask would not be the one a process is started with


def _wait_for(fd: int, _answers=None) -> None:
    os.write(fd, b"x")
    time.sleep(30)


def _no_library(*args, **kwargs):
    raise OSError("cannot load the C library")


def _orphan_end(kernel: bool = True) -> str:
    """Start a worker (through child_of) from a process that then dies; in a third process that takes in the
    orphan, say how the worker ended: killed by a signal, or exited with a code. ``kernel=False``: without the
    kernel's parent-death signal (as on other systems)."""
    r, w = os.pipe()
    keeper = os.fork()
    if keeper == 0:  # takes in the orphan (a subreaper), so that its end can be seen
        said = "?"
        try:
            ctypes.CDLL(None).prctl(36, 1)  # PR_SET_CHILD_SUBREAPER
            armed_r, armed_w = os.pipe()
            pid_r, pid_w = os.pipe()
            parent = os.fork()
            if parent == 0:
                worker = os.fork()
                if worker == 0:
                    if not kernel:
                        ctypes.CDLL = _no_library  # in this process only
                    child_of(os.getppid(), pickle.dumps((_wait_for, (armed_w,))))
                    os._exit(0)
                os.read(armed_r, 1)  # armed to die with its parent
                os.write(pid_w, str(worker).encode())
                os._exit(0)
            worker = int(os.read(pid_r, 32))
            os.waitpid(parent, 0)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                pid, status = os.waitpid(worker, os.WNOHANG)
                if pid:
                    said = (f"signal {os.WTERMSIG(status)}" if os.WIFSIGNALED(status)
                            else f"code {os.WEXITSTATUS(status)}")
                    break
                time.sleep(0.01)
            else:
                os.kill(worker, signal.SIGKILL)
                said = "still running"
        finally:
            os.write(w, said.encode())
            os._exit(0)
    os.close(w)
    said = os.read(r, 64).decode()
    os.waitpid(keeper, 0)
    return said


@pytest.mark.skipif(sys.platform != "linux", reason="the parent-death signal is Linux's")
def test_a_worker_is_killed_by_the_kernel_as_its_parent_dies():
    """PR_SET_PDEATHSIG: at once, by SIGKILL (the watcher thread, everywhere else, exits with code 1 within
    half a second)."""
    assert _orphan_end() == f"signal {signal.SIGKILL}"


@pytest.mark.skipif(sys.platform != "linux", reason="forks, and sees the orphan as Linux's subreaper")
def test_without_the_kernels_signal_a_worker_exits_soon_after_its_parent():
    assert _orphan_end(kernel=False) == "code 1"
