"""Fixtures for the weights tests: an empty cache, a private registry and a local HTTP server."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.weights.server import LocalServer


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty ``$TREK_TRACK_HOME``."""
    path = tmp_path / "home"
    monkeypatch.setenv("TREK_TRACK_HOME", str(path))
    return path


@pytest.fixture
def registry_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Where a test writes its own registry (``$TREK_TRACK_REGISTRY`` points at it)."""
    path = tmp_path / "registry.toml"
    monkeypatch.setenv("TREK_TRACK_REGISTRY", str(path))
    return path


@pytest.fixture
def server():
    with LocalServer(lifetime=120) as srv:
        yield srv


@pytest.fixture
def payload() -> bytes:
    """Bytes that start like a torch zip checkpoint, large enough to span several read chunks."""
    return b"PK\x03\x04" + os.urandom(3 * (1 << 20) + 12345)
