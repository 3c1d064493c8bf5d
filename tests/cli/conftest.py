"""Fixtures for CLI tests: a tiny model saved as an official-format checkpoint of seeded weights."""

from __future__ import annotations

import math
import zlib
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from trek_tracker.cli import main
from trek_tracker.modeling.deaot import DeAOT
from trek_tracker.modeling.registry import build_model

TINY = "test_deaot_tiny"


def _seeded(key: str, shape: tuple[int, ...]) -> torch.Tensor:
    """Deterministic weights from the key name (the rule of ../shared/golden/seeded_weights.py)."""
    gen = torch.Generator().manual_seed(zlib.crc32(key.encode()))
    leaf = key.rsplit(".", 1)[-1]
    if leaf == "running_var":
        return 0.5 + torch.rand(shape, generator=gen)
    if leaf == "running_mean":
        return 0.1 * torch.randn(shape, generator=gen)
    if len(shape) <= 1:
        return (1.0 + 0.1 * torch.randn(shape, generator=gen)) if leaf == "weight" else 0.02 * torch.randn(
            shape, generator=gen)
    return torch.randn(shape, generator=gen) / math.sqrt(math.prod(shape[1:]))


def official_checkpoint(path: Path, model_name: str = TINY, drop: str | None = None) -> Path:
    """Write ``{'state_dict', 'optimizer'}`` with official key names, as the released files are."""
    state = {}
    for key, value in build_model(model_name).state_dict().items():
        official = DeAOT.official_key(key)
        if drop is not None and official.startswith(drop):
            continue
        state[official] = _seeded(official, tuple(value.shape)) if value.is_floating_point() else value
    torch.save({"state_dict": state, "optimizer": {"state": {}, "param_groups": []}}, path)
    return path


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    return official_checkpoint(tmp_path_factory.mktemp("ckpt") / "TEST_DeAOT_tiny_PRE_YTB_DAV.pth")


@pytest.fixture()
def cli():
    """``cli(*args)`` -> click Result (exit_code, stdout, stderr) of ``trek-track args``."""
    runner = CliRunner()

    def invoke(*args: str):
        return runner.invoke(main, [str(a) for a in args], catch_exceptions=False)

    return invoke
