"""Shared fixtures. Tests that need ``../shared`` (real clips, goldens) skip with a reason when it
is absent, so the suite still runs for users outside the project."""

from __future__ import annotations

import logging
import os
import signal
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]

# OpenCV resizes uint8 images through Intel IPP where it can, and IPP's AVX-512 kernels round a few near-tie
# pixels of a bicubic resize differently from its AVX2 kernels, which computed the VMOS goldens
# (docs/vmos.md#resizing-uint8-frames). Every test process, and every process a test starts, uses the goldens'
# kernels; this must be set before OpenCV is first imported.
os.environ.setdefault("OPENCV_IPP", "avx2")


def two_object_video(n: int, seed: int) -> tuple[list[np.ndarray], np.ndarray]:
    """``n`` random 120 x 150 RGB frames and a first-frame mask of two rectangles (ids 1 and 2): input for the
    tests that compare two ways of tracking the same video."""
    rng = np.random.default_rng(seed)
    frames = [rng.integers(0, 255, (120, 150, 3), dtype=np.uint8) for _ in range(n)]
    mask = np.zeros((120, 150), np.int64)
    mask[20:70, 30:100] = 1
    mask[80:110, 10:40] = 2
    return frames, mask


@pytest.fixture
def fsync_sizes(monkeypatch) -> list[int]:
    """The size of each file as ``os.fsync`` syncs it, in order: whether the data reached it first."""
    sizes: list[int] = []
    real = os.fsync

    def fsync(fd: int) -> None:
        sizes.append(os.fstat(fd).st_size)
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return sizes


def _shared_root() -> Path:
    env = os.environ.get("TREK_TRACK_SHARED")
    return Path(env) if env else REPO.parent / "shared"


@pytest.fixture(scope="session")
def shared() -> Path:
    """The project's shared folder (real data and goldens); skips when it is not beside the repo."""
    root = _shared_root()
    if not (root / "data").is_dir():
        pytest.skip(f"shared test data not found at {root} (set TREK_TRACK_SHARED to its path)")
    return root


@pytest.fixture(scope="session")
def davis(shared: Path) -> Path:
    return shared / "data" / "davis"


@pytest.fixture(scope="session")
def golden(shared: Path) -> Path:
    path = shared / "golden"
    if not path.is_dir():
        pytest.skip(f"goldens not found at {path}")
    return path


@pytest.fixture(autouse=True)
def _package_logger_restored():
    """Every in-process CLI call points the package's logger at stderr and stops its propagation; restore
    it after each test, so that later tests' ``caplog`` still sees the package's warnings."""
    logger = logging.getLogger("trek_tracker")
    state = (list(logger.handlers), logger.level, logger.propagate)
    yield
    logger.handlers[:], logger.level, logger.propagate = state


@pytest.fixture(autouse=True)
def _kernel_flags_restored():
    """A test that builds a mixed-precision Tracker on a GPU turns TF32 and cuDNN autotuning on for the
    process (as a command should); restore them after each test, so a later float32 parity test runs with
    the kernels it asks for."""
    from trek_tracker.device import kernel_flags_kept

    with kernel_flags_kept():
        yield


def pytest_configure(config):
    """Started with SIGINT ignored (``nohup``, or ``&`` in a script: a shell's background job), every process
    the tests start would inherit that, and the tests of what Ctrl-C does would see it do nothing. Take
    Python's usual handler back, so those children start with the default action as from a terminal."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def pytest_collection_modifyitems(config, items):
    """Tests marked ``cuda`` run on a machine with a CUDA GPU and skip, saying so, everywhere else."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (none is available to PyTorch here)")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
