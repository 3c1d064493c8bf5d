"""An interrupt in the moment between the import of the command line and its ``main``, which the console script
pip writes for ``trek-track`` runs one after the other."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from tests.conftest import REPO

# setup.cfg's entry point as pip writes it
_CONSOLE_SCRIPT = """
import re
import sys
from trek_tracker.cli import main
if __name__ == "__main__":
    sys.argv[0] = re.sub(r"(-script\\\\.pyw|\\\\.exe)?$", "", sys.argv[0])
    sys.exit(main())
"""

# Sends this process a signal as soon as the console script's import of trek_tracker.cli has returned.
_SIGNAL_AFTER_IMPORT = """
import builtins, os
real = builtins.__import__

def after(name, globals=None, *args, **kwargs):
    module = real(name, globals, *args, **kwargs)
    if name == "trek_tracker.cli" and (globals or {}).get("__name__") == "__main__":
        builtins.__import__ = real
        os.kill(os.getpid(), int(os.environ["TREK_TEST_SIGNAL"]))
    return module

builtins.__import__ = after
"""


@pytest.mark.parametrize("signum,line", [(signal.SIGINT, "interrupted"), (signal.SIGTERM, "interrupted by SIGTERM")])
def test_an_interrupt_just_after_the_cli_is_imported_is_one_line(tmp_path, signum, line):
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(_SIGNAL_AFTER_IMPORT)
    (tmp_path / "trek-track").write_text(_CONSOLE_SCRIPT)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(REPO)]), "TREK_TEST_SIGNAL": str(int(signum))}
    proc = subprocess.run([sys.executable, str(tmp_path / "trek-track"), "--help"], capture_output=True, text=True,
                          cwd=REPO, env=env, timeout=120)
    assert proc.returncode == 128 + signum and proc.stderr.splitlines() == [f"trek-track: error: {line}"], proc.stderr
    assert proc.stdout == ""
