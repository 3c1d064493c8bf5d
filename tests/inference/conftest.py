"""Fixtures of the engine and memory tests: a small random video with one object, and each tiny family."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from trek_tracker.modeling.registry import build_model

H, W = 97, 129  # 16x grid 7x9 = 63 tokens


@pytest.fixture(scope="module")
def video():
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 255, (H, W, 3), dtype=np.uint8) for _ in range(12)]
    mask = np.zeros((H, W), np.int64)
    mask[30:60, 40:90] = 1
    return frames, mask


@pytest.fixture(scope="module", params=["test_deaot_tiny", "test_msdeaot_tiny"])
def model(request):
    torch.manual_seed(0)
    return build_model(request.param).eval()
