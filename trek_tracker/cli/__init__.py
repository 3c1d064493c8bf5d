"""The ``trek-track`` command line: thin wrappers that parse options, call the API and turn
:class:`~trek_tracker.errors.UserError` into one line on stderr with exit code 2.

Sub-commands are imported lazily so that ``trek-track --help`` does not import torch.
"""

from __future__ import annotations

import _signal  # the C module under ``signal``, loaded with the interpreter: ``signal`` takes a while to import
import os
import sys

_NAMES = {getattr(_signal, name): name for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(_signal, name)}


def _stopped_starting(signum: int, frame) -> None:
    """A stopping signal while this module's imports run, before ``main`` handles interrupts: one line and
    the signal's exit code, not a traceback from inside an import. Nothing has started to keep."""
    how = "" if signum == _signal.SIGINT else f" by {_NAMES[signum]}"
    os.write(2, f"trek-track: error: interrupted{how}\n".encode())
    os._exit(128 + signum)


def _guard_start() -> dict[int, object]:
    """Point the stopping signals that still act as Python's defaults at :func:`_stopped_starting` (only in the
    main thread; a program that set its own keeps them); return what to put back. Not in a worker process
    (``eval --workers``), which imports this module with its tracker's factory, or, started from the console
    script, with that script (spawn's ``--multiprocessing-fork``, before ``parent_process`` is set): it ends as
    its parent says."""
    mp = sys.modules.get("multiprocessing.process")
    if mp is not None and mp.parent_process() is not None or "--multiprocessing-fork" in getattr(sys, "orig_argv", ()):
        return {}
    defaults = {sig: _signal.default_int_handler if sig == _signal.SIGINT else _signal.SIG_DFL for sig in _NAMES}
    try:
        return {sig: _signal.signal(sig, _stopped_starting) for sig, default in defaults.items()
                if _signal.getsignal(sig) == default}
    except ValueError:  # not the main thread
        return {}


def _the_command() -> bool:
    """Whether this module is being imported to run ``trek-track`` (its console script, or ``python -m
    trek_tracker.cli``), whose ``main`` follows at once: the guard then stays until ``main`` handles interrupts
    (:func:`_end_start_guard`), leaving no moment between the two for a traceback."""
    name = os.path.basename(sys.argv[0]) if sys.argv else ""
    return name in ("trek-track", "trek-track.exe", "trek-track-script.py") or (
        name == "-m" and "trek_tracker.cli" in getattr(sys, "orig_argv", ()))


def _end_start_guard() -> None:
    """Give the stopping signals back to what they were before :func:`_guard_start`."""
    while _STARTING:
        sig, handler = _STARTING.popitem()
        _signal.signal(sig, handler)


_STARTING = _guard_start()

import contextlib  # noqa: E402 - the imports below take most of start-up, which a Ctrl-C may cut short
import importlib  # noqa: E402
import logging  # noqa: E402
import signal  # noqa: E402
import threading  # noqa: E402

import click  # noqa: E402

from trek_tracker import __version__  # noqa: E402
from trek_tracker.errors import UserError, out_of_memory_message  # noqa: E402
from trek_tracker.signals import work_has_started  # noqa: E402

# name -> "module:attribute" of a click command or group.
_COMMANDS: dict[str, str] = {
    "run": "trek_tracker.cli.run:run",
    "weights": "trek_tracker.cli.weights:weights",
    "eval": "trek_tracker.cli.eval:eval_cmd", "submit": "trek_tracker.cli.eval:submit",
    "dataset": "trek_tracker.cli.eval:dataset",
    "train": "trek_tracker.cli.train:train_cmd", "eval-vos": "trek_tracker.cli.eval_vos:eval_vos",
    "convert": "trek_tracker.cli.convert:convert", "ensemble": "trek_tracker.cli.ensemble:ensemble",
    "train-data": "trek_tracker.cli.data:data",
}
# Other spellings that work but are not listed: ``data`` was the training-data group's first name (too
# close to ``dataset``, which is TREK-150's).
_ALIASES: dict[str, str] = {"data": "train-data"}


class _LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(_COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        target = _COMMANDS.get(_ALIASES.get(name, name))
        if target is None:
            return None
        module, attr = target.split(":")
        return getattr(importlib.import_module(module), attr)

    def make_context(self, *args, **kwargs) -> click.Context:
        with _stopped():
            return super().make_context(*args, **kwargs)

    def invoke(self, ctx: click.Context):
        with _stopped():
            return super().invoke(ctx)

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        """Every user mistake, ours or click's, ends as one line on stderr and a non-zero exit code."""
        work_has_started(reset=True)
        try:
            _end_start_guard()
            _log_to_stderr()
            with _signals_interrupt():
                rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except (_Stopped, Interrupted) as err:
            _interrupted(err.signum, getattr(err, "hint", None))
        except (KeyboardInterrupt, click.Abort):  # before RuntimeError, which click's Abort is
            _interrupted(None, None)
        except UserError as err:
            _fail(str(err), err.exit_code)
        except click.UsageError as err:
            hint = f" (see '{err.ctx.command_path} --help')" if err.ctx is not None else ""
            _fail(err.format_message() + hint, err.exit_code)
        except click.ClickException as err:
            _fail(err.format_message(), err.exit_code)
        except OSError as err:  # the environment (permissions, a full or read-only disk, a path under a file)
            from trek_tracker.files import os_error_message

            _fail(os_error_message(err, action="use"), 2)
        except (MemoryError, RuntimeError) as err:  # out of memory is the machine's limit, said in one line
            message = out_of_memory_message(err, hint="settings that need less memory (see the command's --help)")
            if message is None:
                raise
            _fail(message, 2)
        sys.exit(rv if isinstance(rv, int) else 0)


def _interrupted(signum: int | None, hint: str | None) -> None:
    """An interrupt's one line and exit code (128 + the signal). That finished work was kept is said only once
    work had begun (:func:`~trek_tracker.signals.work_started`; a command's ``hint`` on the interrupt says
    what it kept): not of a command stopped while it starts (imports, loading a model)."""
    how = "" if signum is None else f" by {signal.Signals(signum).name}"
    kept = "; finished work was kept" if hint or work_has_started() else ""
    _fail(f"interrupted{how}{kept}" + (f" ({hint})" if hint else ""), 128 + (signum or signal.SIGINT))


class Interrupted(KeyboardInterrupt):
    """A termination signal, handled like Ctrl-C: whatever runs stops as interrupted and keeps what is done.

    A command may set ``hint`` on any interrupt it lets through (how to continue); the line says it."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


class _Stopped(Exception):
    """An interrupt on its way out of click (which would otherwise make it an ``Abort``)."""

    def __init__(self, signum: int | None, hint: str | None = None) -> None:
        super().__init__(signum)
        self.signum, self.hint = signum, hint


@contextlib.contextmanager
def _stopped():
    """Click would turn an interrupt into ``Abort``, after a blank line on stderr; keep its cause (the signal,
    the command's hint) and say it once."""
    try:
        yield
    except KeyboardInterrupt as err:
        raise _Stopped(getattr(err, "signum", None), getattr(err, "hint", None)) from None


def _raise_interrupted(signum: int, frame) -> None:
    raise Interrupted(signum)


@contextlib.contextmanager
def _signals_interrupt():
    """SIGTERM and SIGHUP (``kill``, ``timeout``, Slurm, ``docker stop``, a closed terminal) raise
    :class:`Interrupted` in the main thread while the command runs."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, _raise_interrupted) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class _Lines(logging.Formatter):
    """The package's log lines as the CLI's own: ``trek-track: warning: ...`` and ``trek-track: ...``."""

    def format(self, record: logging.LogRecord) -> str:
        kind = "warning: " if record.levelno >= logging.WARNING else ""
        return f"trek-track: {kind}{' '.join(record.getMessage().split())}"


class _Stderr(logging.StreamHandler):
    """Writes to ``sys.stderr`` as it is at each line, not as it was at the first call: a program that calls
    :func:`main` again with another stderr in place (a test runner, a notebook) gets that call's warnings."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def _log_to_stderr() -> None:
    """Warnings of the package reach stderr once, as ``trek-track: warning: ...`` (commands such as ``eval``
    lower the level to show progress lines)."""
    logger = logging.getLogger("trek_tracker")
    if not any(isinstance(h.formatter, _Lines) for h in logger.handlers):
        handler = _Stderr()
        handler.setFormatter(_Lines())
        logger.addHandler(handler)
    logger.setLevel(logging.WARNING)
    logger.propagate = False


def _fail(message: str, code: int) -> None:
    click.echo(f"trek-track: error: {' '.join(message.split())}", err=True)
    sys.exit(code)


@click.group("trek-track", cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="trek-track")
def main() -> None:
    """Track a box-initialised object through a video, and evaluate on TREK-150."""


if not _the_command():  # imported by a program of its own, which handles its interrupts from here on
    _end_start_guard()
