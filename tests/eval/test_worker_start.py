"""A Ctrl-C while `eval`'s worker processes start: the terminal sends it to every process of its group, and
only the parent may speak for the command."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.eval.helpers import build_synthetic

# Loaded by every interpreter that starts with this folder on its path, during its site start-up, before any
# code of ours: a spawned worker leaves a file named by its pid and stays there a while, as a slow start-up
# (site's .pth imports, a busy disk) would. An interrupt there is noted (``<pid>.interrupted``) before it ends
# the worker with a traceback; the parent's SIGTERM waits for the end of the stay, so that it cannot end the
# worker before the interrupt has shown.
_SITECUSTOMIZE = """
import os, signal, sys, time
if "--multiprocessing-fork" in sys.orig_argv:
    marker = os.path.join(os.environ["TREK_TEST_MARKERS"], str(os.getpid()))
    terminated = []
    signal.signal(signal.SIGTERM, lambda signum, frame: terminated.append(signum))
    open(marker, "w").close()
    try:
        time.sleep(1.5)
    except KeyboardInterrupt:
        open(marker + ".interrupted", "w").close()
        raise
    if terminated:
        os._exit(128 + signal.SIGTERM)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
"""


def _ctrl_c_while_the_workers_start(tmp_path, sitecustomize: str, command: list[str]) -> tuple[int, str, Path]:
    """Run `eval --workers 2` (``command`` starts the CLI) with ``sitecustomize`` on every interpreter's path,
    send its process group SIGINT (Ctrl-C in a terminal) once both workers have left their marker, and return
    the exit code, stderr and the markers' folder."""
    root = build_synthetic(tmp_path / "trek")
    site, markers = tmp_path / "site", tmp_path / "markers"
    site.mkdir()
    markers.mkdir()
    (site / "sitecustomize.py").write_text(sitecustomize)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(REPO)]), "TREK_TEST_MARKERS": str(markers)}
    args = ["eval", "--root", str(root), "--tracker", "t", "--results", str(tmp_path / "res"), "--workers", "2",
            "--quiet", "--device", "cpu", "--protocol", "ope", "--tracker-class", "tests.eval.helpers:ConstantTracker"]
    proc = subprocess.Popen([*command, *args],
                            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and len(list(markers.iterdir())) < 2 and proc.poll() is None:
            time.sleep(0.02)
        assert len(list(markers.iterdir())) == 2 and proc.poll() is None  # both workers are starting
        os.killpg(proc.pid, signal.SIGINT)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    return proc.returncode, stderr, markers


@pytest.mark.skipif(not hasattr(signal, "pthread_sigmask"), reason="signal masks are POSIX")
def test_ctrl_c_while_the_workers_start_is_the_parent_s_one_line(tmp_path):
    code, stderr, markers = _ctrl_c_while_the_workers_start(tmp_path, _SITECUSTOMIZE,
                                                            [sys.executable, "-m", "trek_tracker.cli"])
    assert code == 130 and stderr.splitlines() == ["trek-track: error: interrupted"], stderr
    assert sorted(p.suffix for p in markers.iterdir()) == ["", ""]  # neither worker was interrupted


# The console script pip writes for `trek-track` (setup.cfg's entry point): a worker that multiprocessing
# spawns imports its parent's main script again, so this one imports trek_tracker.cli in every worker too.
_CONSOLE_SCRIPT = """
import sys
from trek_tracker.cli import main
if __name__ == "__main__":
    sys.exit(main())
"""

# As above, but the worker stays a while in the import of click, which trek_tracker.cli imports after arming its
# start-up guard, while it imports the console script.
_SLOW_CLICK = """
import builtins, os, sys, time
if "--multiprocessing-fork" in sys.orig_argv:
    real = builtins.__import__

    def slow(name, *args, **kwargs):
        if name == "click":
            builtins.__import__ = real
            open(os.path.join(os.environ["TREK_TEST_MARKERS"], str(os.getpid())), "w").close()
            time.sleep(3)
        return real(name, *args, **kwargs)

    builtins.__import__ = slow
"""


@pytest.mark.skipif(not hasattr(signal, "pthread_sigmask"), reason="signal masks are POSIX")
def test_a_worker_stopped_while_it_imports_the_command_line_says_nothing(tmp_path):
    """`trek-track eval --workers 2` (the console script) and a Ctrl-C while a worker imports it: the workers
    neither take the interrupt nor, ended by the parent, say a line of their own."""
    script = tmp_path / "trek-track"
    script.write_text(_CONSOLE_SCRIPT)
    code, stderr, _ = _ctrl_c_while_the_workers_start(tmp_path, _SLOW_CLICK, [sys.executable, str(script)])
    assert code == 130 and stderr.splitlines() == ["trek-track: error: interrupted"], stderr
