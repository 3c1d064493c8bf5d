"""Fixtures for the DeAOT tests: official-keyed seeded weights rebuilt from the goldens' key lists."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest


def load_seeded_weights_module(golden: Path):
    spec = importlib.util.spec_from_file_location("seeded_weights", golden / "seeded_weights.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def seeded_state(golden: Path):
    """``seeded_state(name)`` -> the official-keyed seeded state dict of a DeAOT variant."""
    sw = load_seeded_weights_module(golden)

    def build(name: str):
        keys = json.loads((golden / "deaot" / name / "keys.json").read_text())
        return sw.seeded_state_dict(keys)

    return build
