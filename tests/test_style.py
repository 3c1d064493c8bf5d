"""The code base stays ruff-clean (the lint is part of the test command, so CI enforces it) and packageable."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO


def test_ruff_clean() -> None:
    ruff = shutil.which("ruff")
    if ruff is None:
        pytest.skip("ruff is not installed (pip install -e '.[dev]')")
    proc = subprocess.run([ruff, "check", str(REPO)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_every_package_folder_is_a_package():
    """``find_packages`` (setup.py) skips a folder without ``__init__.py``: a wheel would lack its modules."""
    root = Path(__file__).resolve().parents[1] / "trek_tracker"
    folders = {p.parent for p in root.rglob("*.py") if "__pycache__" not in p.parts}
    assert sorted(str(f.relative_to(root)) for f in folders if not (f / "__init__.py").is_file()) == []
