"""Stopping between units of work: a tracked frame (the per-video loop) or an optimiser step (training).

A long run stopped by Ctrl-C, ``kill``, a Slurm time limit or a closed terminal should keep the state after
its last whole unit, so that the same command continues exactly. :class:`HeldSignals` holds a SIGINT,
SIGTERM or SIGHUP that arrives inside a unit until the unit is done; the caller then saves and calls
:meth:`HeldSignals.handle`, which does what the signal would have done (the CLI's handler raises an
interrupt; without one, SIGINT raises ``KeyboardInterrupt`` and the others end the process).
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator
from typing import Any

SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))


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
