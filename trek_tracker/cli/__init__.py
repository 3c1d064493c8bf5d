"""The ``trek-track`` command line: thin wrappers that parse options, call the API and turn
:class:`~trek_tracker.errors.UserError` into one line on stderr with exit code 2.

Sub-commands are imported lazily so that ``trek-track --help`` does not import torch.
"""

from __future__ import annotations

import importlib
import sys

import click

from trek_tracker import __version__
from trek_tracker.errors import UserError

# name -> "module:attribute" of a click command or group.
_COMMANDS: dict[str, str] = {
    "run": "trek_tracker.cli.run:run",
    "weights": "trek_tracker.cli.weights:weights",
    "eval": "trek_tracker.cli.eval:eval_cmd", "submit": "trek_tracker.cli.eval:submit",
    "dataset": "trek_tracker.cli.eval:dataset",
    "train": "trek_tracker.cli.train:train_cmd", "eval-vos": "trek_tracker.cli.train:eval_vos",
    "convert": "trek_tracker.cli.convert:convert", "ensemble": "trek_tracker.cli.ensemble:ensemble",
    "data": "trek_tracker.cli.data:data",
}


class _LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(_COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        target = _COMMANDS.get(name)
        if target is None:
            return None
        module, attr = target.split(":")
        return getattr(importlib.import_module(module), attr)

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        """Every user mistake, ours or click's, ends as one line on stderr and a non-zero exit code."""
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except UserError as err:
            _fail(str(err), err.exit_code)
        except click.UsageError as err:
            hint = f" (see '{err.ctx.command_path} --help')" if err.ctx is not None else ""
            _fail(err.format_message() + hint, err.exit_code)
        except click.ClickException as err:
            _fail(err.format_message(), err.exit_code)
        except (KeyboardInterrupt, click.Abort):
            _fail("interrupted", 130)
        sys.exit(rv if isinstance(rv, int) else 0)


def _fail(message: str, code: int) -> None:
    click.echo(f"trek-track: error: {' '.join(message.split())}", err=True)
    sys.exit(code)


@click.group("trek-track", cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="trek-track")
def main() -> None:
    """Track a box-initialised object through a video, and evaluate on TREK-150."""
