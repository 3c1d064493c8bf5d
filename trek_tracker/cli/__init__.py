"""The ``trek-track`` command line: thin wrappers that parse options, call the API and turn
:class:`~trek_tracker.errors.UserError` into one line on stderr with exit code 2.

Sub-commands are imported lazily so that ``trek-track --help`` does not import torch.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import signal
import sys
import threading

import click

from trek_tracker import __version__
from trek_tracker.errors import UserError, out_of_memory_message

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

    def invoke(self, ctx: click.Context):
        # Click would turn an interrupt into Abort and print a blank line; keep its cause and say it once.
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt as err:
            raise _Stopped(getattr(err, "signum", None), getattr(err, "hint", None)) from None

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        """Every user mistake, ours or click's, ends as one line on stderr and a non-zero exit code."""
        _log_to_stderr()
        try:
            with _signals_interrupt():
                rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
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
        except (_Stopped, Interrupted) as err:
            how = "" if err.signum is None else f" by {signal.Signals(err.signum).name}"
            hint = getattr(err, "hint", None)
            _fail(f"interrupted{how}; finished work was kept" + (f" ({hint})" if hint else ""),
                  128 + (err.signum or signal.SIGINT))
        except (KeyboardInterrupt, click.Abort):
            _fail("interrupted; finished work was kept", 130)
        sys.exit(rv if isinstance(rv, int) else 0)


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


def _log_to_stderr() -> None:
    """Warnings of the package reach stderr once, as ``trek-track: warning: ...`` (commands such as ``eval``
    lower the level to show progress lines)."""
    logger = logging.getLogger("trek_tracker")
    if not any(isinstance(h.formatter, _Lines) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stderr)
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
