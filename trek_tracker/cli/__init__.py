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

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except UserError as err:
            click.echo(f"trek-track: error: {err}", err=True)
            sys.exit(err.exit_code)
        except KeyboardInterrupt:
            click.echo("trek-track: interrupted", err=True)
            sys.exit(130)


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="trek-track")
def main() -> None:
    """Track a box-initialised object through a video, and evaluate on TREK-150."""
