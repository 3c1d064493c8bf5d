"""The command group: every registered command loads, shows help, and none imports torch at import time."""

from __future__ import annotations

import subprocess
import sys

import pytest

from trek_tracker.cli import _COMMANDS, main


def test_help_lists_every_command(cli):
    result = cli("--help")
    assert result.exit_code == 0
    for name in _COMMANDS:
        assert name in result.stdout


@pytest.mark.parametrize("name", sorted(_COMMANDS))
def test_each_command_has_help(cli, name):
    result = cli(name, "--help")
    assert result.exit_code == 0, result.stderr
    assert "Usage:" in result.stdout


def test_command_modules_do_not_import_torch():
    """`trek-track --help` must stay fast: command modules import heavy libraries inside their functions."""
    modules = sorted({target.split(":")[0] for target in _COMMANDS.values()})
    code = ("import sys, importlib\n"
            f"for m in {modules!r}: importlib.import_module(m)\n"
            "print('torch' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False"


def test_usage_errors_are_one_line(cli):
    result = cli("run")
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [
        "trek-track: error: give --video (a video file or a folder of frames), or --resume RUN_FOLDER"]
    result = cli("run", "--start-frame", "-1")
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [
        "trek-track: error: Invalid value for '--start-frame': -1 is not in the range x>=0. "
        "(see 'trek-track run --help')"]
    assert main.name == "trek-track"
