"""A tiny CPU training config on the shared DAVIS clips, for the loop tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from trek_tracker.train.config import TrainConfig, load_config

REPO = Path(__file__).resolve().parents[2]
TINY_VIDEO = REPO / "configs" / "train" / "tiny_cpu_video.toml"


@pytest.fixture()
def tiny_config(davis, tmp_path):
    """Returns a builder: ``tiny_config(name, "train.steps=6", ...) -> TrainConfig`` writing under tmp_path."""

    def build(name: str, *overrides: str) -> TrainConfig:
        base = [f'data.0.root="{davis}"', f'val.root="{davis}"', f'out="{tmp_path / name}"']
        return load_config(TINY_VIDEO, base + list(overrides))

    return build


@pytest.fixture(autouse=True, scope="package")
def one_thread():
    """Tiny models run fastest single-threaded; several threads on a shared 2-core box thrash."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
