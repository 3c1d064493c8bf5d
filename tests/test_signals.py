"""Stopping between units of work (trek_tracker.signals): what the loop and training rely on."""

from __future__ import annotations

import os
import signal

import pytest

from trek_tracker.signals import HeldSignals


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
