"""The command group: every registered command loads, shows help, and none imports torch at import time."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from tests.conftest import REPO
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


# Runs the CLI as `python -m trek_tracker.cli ARGS`, after making the first import of module NAME (in the CLI's
# own code or a command's) send this process signal SIGNUM: an interrupt at a known moment of start-up.
_INTERRUPT_AT_IMPORT = """
import builtins, os, runpy, sys
name, signum = sys.argv[1], int(sys.argv[2])
sys.argv[:] = ["trek-track", *sys.argv[3:]]
real = builtins.__import__

def hook(module, *args, **kwargs):
    if module == name or module.startswith(name + "."):
        builtins.__import__ = real
        os.kill(os.getpid(), signum)
    return real(module, *args, **kwargs)

builtins.__import__ = hook
runpy.run_module("trek_tracker.cli", run_name="__main__", alter_sys=True)
"""


def _interrupted_at_import(name: str, signum: int, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", _INTERRUPT_AT_IMPORT, name, str(int(signum)), *args],
                          capture_output=True, text=True, timeout=120, cwd=REPO)


@pytest.mark.parametrize("signum,line", [(signal.SIGINT, "interrupted"), (signal.SIGTERM, "interrupted by SIGTERM"),
                                         (signal.SIGHUP, "interrupted by SIGHUP")])
def test_an_interrupt_while_the_cli_starts_is_one_line(signum, line):
    """Ctrl-C (or a SIGTERM, a SIGHUP) in the first tenth of a second, while the CLI's own imports run: the
    signal's exit code and one line, not a traceback out of an import (nor a silent death); nothing had started
    to keep."""
    if signal.getsignal(signum) == signal.SIG_IGN:
        pytest.skip(f"{signal.Signals(signum).name} is ignored here (nohup?), and so in the command started")
    proc = _interrupted_at_import("click", signum, "--help")
    assert proc.returncode == 128 + signum, proc.stderr
    assert proc.stderr.splitlines() == [f"trek-track: error: {line}"] and proc.stdout == ""


def test_an_interrupt_while_a_command_imports_claims_no_kept_work(tmp_path):
    """Ctrl-C while `eval` imports torch: nothing was tracked or written, so the line does not say that finished
    work was kept."""
    from tests.eval.helpers import build_synthetic

    root = build_synthetic(tmp_path / "trek")
    proc = _interrupted_at_import("torch", signal.SIGINT, "eval", "--root", str(root), "--tracker", "t",
                                  "--results", str(tmp_path / "res"), "--device", "cpu", "--quiet")
    assert proc.returncode == 130, proc.stderr
    assert proc.stderr.splitlines() == ["trek-track: error: interrupted"]
    assert not (tmp_path / "res").exists()


def test_an_interrupt_once_work_has_begun_says_it_is_kept(tmp_path):
    """The other side: `eval` stopped while it tracks keeps its finished runs, and says so."""
    from tests.eval.helpers import build_synthetic

    root = build_synthetic(tmp_path / "trek")
    proc = subprocess.run([sys.executable, "-m", "trek_tracker.cli", "eval", "--root", str(root), "--tracker", "t",
                           "--results", str(tmp_path / "res"), "--device", "cpu", "--quiet", "--workers", "1",
                           "--protocol", "ope", "--tracker-class", "tests.cli.test_main:InterruptedTracker"],
                          capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 130, proc.stderr
    assert proc.stderr.splitlines() == ["trek-track: error: interrupted; finished work was kept"]
    assert len(list((tmp_path / "res" / "t" / "ope").glob("*.txt"))) == 1  # the first run, finished


class InterruptedTracker:
    """A toolkit-style tracker that gets a Ctrl-C on its second run (as a user would, mid-evaluation)."""

    runs = 0

    def init(self, image, box) -> None:
        type(self).runs += 1
        if type(self).runs == 2:
            os.kill(os.getpid(), signal.SIGINT)
        self.box = list(box)

    def update(self, image):
        return self.box


def test_an_interrupt_that_click_caught_itself_is_the_same_one_line(cli, monkeypatch):
    """Click turns a Ctrl-C that arrives in its own code (outside the command) into ``Abort``, a RuntimeError:
    it must not be taken for a RuntimeError of ours and escape as a traceback."""
    import click

    def aborted(self, ctx):
        raise click.Abort()

    monkeypatch.setattr(click.Group, "invoke", aborted)
    result = cli("weights", "--help")
    assert result.exit_code == 130
    assert result.stderr.splitlines() == ["trek-track: error: interrupted"]


def test_package_log_records_read_as_the_cli_s_own_lines():
    import logging

    from trek_tracker.cli import _Lines

    def line(level, message):
        return _Lines().format(logging.LogRecord("trek_tracker.eval", level, __file__, 1, message, None, None))

    assert line(logging.WARNING, "box  beyond\n   the frame") == "trek-track: warning: box beyond the frame"
    assert line(logging.INFO, "3 runs tracked") == "trek-track: 3 runs tracked"


def test_package_warnings_reach_the_stderr_of_every_call_once(cli, tmp_path):
    """The warning handler follows the stderr of the moment: a second call in one process (a test runner, a
    notebook) with another stderr in place still gets its warnings, each once."""
    from tests.eval.helpers import build_synthetic

    root = build_synthetic(tmp_path / "trek")
    (root / "extra").mkdir()
    (root / "extra" / "groundtruth_rect.txt").write_text("1,1,2,2\n")  # a sequence sequences.txt does not list
    for _ in range(2):
        result = cli("dataset", "check", "--root", root, "--no-images")
        assert result.exit_code == 0, result.output
        assert result.stderr == "trek-track: warning: ignoring 1 folders not listed in sequences.txt: extra\n"


@pytest.mark.parametrize("raised", [PermissionError(13, "Permission denied", "/data/out/sub.zip"),
                                    MemoryError(), RuntimeError("a bug of ours")])
def test_what_a_command_lets_through_is_one_line_with_exit_code_2_unless_it_is_a_bug(cli, monkeypatch, tmp_path,
                                                                                    raised):
    """The environment's failures (a file system, the memory) are one line; any other error stays a traceback."""
    from tests.eval.helpers import build_synthetic
    from trek_tracker.errors import out_of_memory_message
    from trek_tracker.eval import submission
    from trek_tracker.files import os_error_message

    def write_submission(*args, **kwargs):
        raise raised

    monkeypatch.setattr(submission, "write_submission", write_submission)
    args = ("submit", "--tracker", "t", "--root", build_synthetic(tmp_path / "trek"), "--out", tmp_path / "sub.zip")
    if isinstance(raised, RuntimeError):
        with pytest.raises(RuntimeError, match="a bug of ours"):
            cli(*args)
        return
    result = cli(*args)
    expected = (os_error_message(raised, action="use") if isinstance(raised, OSError) else out_of_memory_message(
        raised, hint="settings that need less memory (see the command's --help)"))
    assert (result.exit_code, result.stderr) == (2, f"trek-track: error: {expected}\n")
    assert result.stderr.startswith(("trek-track: error: cannot use /data/out/sub.zip: permission denied",
                                     "trek-track: error: the machine ran out of memory (RAM); use settings that"))


def test_a_program_that_imports_the_cli_keeps_its_own_ctrl_c():
    """Only `trek-track` itself keeps the start-up guard until its main runs; any other program importing the
    module gets its KeyboardInterrupt as before (not the CLI's exit)."""
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        pytest.skip("SIGINT is ignored here (a background job?), and so in the program started")
    code = ("import os, signal, time, trek_tracker.cli\n"
            "try:\n"
            "    os.kill(os.getpid(), signal.SIGINT)\n"
            "    time.sleep(30)\n"
            "except KeyboardInterrupt:\n"
            "    print('mine')\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "mine\n", "")
