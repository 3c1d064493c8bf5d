"""Stopping between units of work: a tracked frame (the per-video loop) or an optimiser step (training).

A long run stopped by Ctrl-C, ``kill``, a Slurm time limit or a closed terminal should keep the state after
its last whole unit, so that the same command continues exactly. :class:`HeldSignals` holds a SIGINT,
SIGTERM or SIGHUP that arrives inside a unit until the unit is done; the caller then saves and calls
:meth:`HeldSignals.handle`, which does what the signal would have done (the CLI's handler raises an
interrupt; without one, SIGINT raises ``KeyboardInterrupt`` and the others end the process).

A stopped command says that its finished work was kept only once work has begun (:func:`work_started`);
worker processes die with the process that started them (:func:`child_of`). Only the standard library is
imported here: a worker arms its parent-death signal before it imports anything heavy.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))

_began = False


def work_started() -> None:
    """Say that this process has begun work that it keeps when stopped (a tracked frame, a result file, a
    training step), so that an interrupt may say that finished work was kept; one during start-up (imports,
    loading a model) may not."""
    global _began
    _began = True


def work_has_started(reset: bool = False) -> bool:
    """Whether :func:`work_started` was called (since the last ``reset``, which a command calls as it
    starts, so that in-process commands one after another each begin afresh)."""
    global _began
    began = _began
    if reset:
        _began = False
    return began


def die_with_parent(parent: int) -> None:
    """Exit as soon as the process ``parent`` (the one that started this one) is gone, so that no orphan keeps
    working: the kernel's parent-death signal on Linux, a check that it is not already gone (it may die before
    the signal is armed), and a watcher thread everywhere."""
    if sys.platform.startswith("linux"):
        import ctypes

        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent:  # it died before the signal was armed: this process is someone else's now
        os._exit(1)

    def watch() -> None:
        while True:
            time.sleep(0.5)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def child_of(parent: int, payload: bytes, *args: Any) -> None:
    """The target of a spawned worker process: ignore SIGINT (the parent decides what an interrupt means) and
    :func:`die_with_parent` first, and only then unpickle ``payload``, a ``(function, arguments)`` pair, and
    call ``function(*arguments, *args)``. Unpickling imports the function's module and its arguments' (torch,
    a tracker class), seconds of start-up; a parent killed meanwhile would otherwise leave the worker running
    for all of them. ``args``: what must travel as a process's own arguments (queues)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if hasattr(signal, "pthread_sigmask"):  # born with SIGINT blocked (born_ignoring_interrupts): ignored now
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    die_with_parent(parent)
    import pickle

    function, arguments = pickle.loads(payload)
    function(*arguments, *args)


@contextlib.contextmanager
def born_ignoring_interrupts() -> Iterator[None]:
    """Start child processes inside this block with SIGINT blocked, as the signal mask is inherited across
    fork and exec: a Ctrl-C, which a terminal sends to every process of its group, must not interrupt a worker
    while its interpreter starts (site's imports, before :func:`child_of` can ignore it), where it would print
    a traceback or a fatal error beside the parent's one line. An interrupt that reaches this process meanwhile
    acts when the block ends."""
    if not hasattr(signal, "pthread_sigmask") or threading.current_thread() is not threading.main_thread():
        yield
        return
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)


class HeldSignals:
    """Holds the stopping signals that arrive inside a :meth:`unit` (in the main thread; elsewhere it does
    nothing); outside one they act at once.

    ``repeats_act``: the signals whose repeat, while one is held, acts at once (a hung unit can still be
    stopped); the state is then :attr:`torn`, not one to save. Other repeats stay held: Slurm and torchrun
    each send a SIGTERM, and a terminal and torchrun each pass on a Ctrl-C. Signals ignored when it starts
    (``nohup``) stay ignored.
    """

    def __init__(self, repeats_act: tuple[int, ...] = SIGNALS) -> None:
        self.repeats_act = repeats_act
        self.inside = False
        self.held: int | None = None
        self.torn = False
        self.previous: dict[int, Any] = {}

    def __enter__(self) -> HeldSignals:
        work_started()
        if threading.current_thread() is threading.main_thread():
            previous = {sig: signal.getsignal(sig) for sig in SIGNALS}
            self.previous = {sig: h for sig, h in previous.items() if h != signal.SIG_IGN}
            for sig in self.previous:
                signal.signal(sig, self._arrived)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        self.previous = {}

    @contextlib.contextmanager
    def unit(self) -> Iterator[None]:
        """One unit of work: a signal arriving inside it is held (see :attr:`held`)."""
        self.inside = True
        try:
            yield
        except BaseException:
            self.torn = True  # whatever stopped the unit half-way, its state is not one to save
            raise
        finally:
            self.inside = False

    def _arrived(self, signum: int, frame: Any) -> None:
        if self.inside and (self.held is None or signum not in self.repeats_act):
            self.held = self.held or signum
            return
        if self.inside:
            self.torn = True
        self.handle(signum)

    def handle(self, signum: int | None = None) -> None:
        """Do what the signal (by default the held one, if any) would have done."""
        signum = signum or self.held
        self.held = None
        if signum is None:
            return
        handler = self.previous.get(signum, signal.SIG_DFL)
        if callable(handler):
            handler(signum, None)  # the CLI's (and Python's SIGINT) handler raises an interrupt
        elif handler == signal.SIG_DFL:
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            signal.signal(signum, signal.SIG_DFL)  # what the signal would have done: end the process
            os.kill(os.getpid(), signum)
