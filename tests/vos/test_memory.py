"""Bounded long-term memory: token count capped, reference frames never evicted, oldest others first."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from trek_tracker.errors import InputError
from trek_tracker.vos.engine import EngineConfig, MemoryConfig, VOSEngine
from trek_tracker.vos.models import build_model

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


def _run(model, video, memory: MemoryConfig, steps: int = 11):
    frames, mask = video
    engine = VOSEngine(model, EngineConfig(memory=memory))
    engine.add_reference(frames[0], mask)
    ref_keys = [k.clone() for k in engine.groups[0].long_term[0].keys]
    counts = []
    for frame in frames[1:steps + 1]:
        engine.step(frame)
        counts.append(len(engine.groups[0].long_term))
    return engine, ref_keys, counts


def test_uncapped_memory_grows_with_the_gap(model, video):
    engine, _, counts = _run(model, video, MemoryConfig(long_term_gap=2))
    assert counts == [1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6]  # reference + every 2nd frame
    assert engine.long_term_tokens() == 6 * 63


def test_cap_bounds_tokens_and_keeps_the_reference(model, video):
    engine, ref_keys, counts = _run(model, video, MemoryConfig(long_term_gap=1, max_long_term=3))
    assert counts == [2, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3]
    assert engine.long_term_tokens() == 3 * 63
    frames = engine.groups[0].long_term  # newest first
    assert [f.reference for f in frames] == [False, False, True]
    for layer, key in enumerate(ref_keys):  # the reference itself, every layer, untouched
        assert torch.equal(frames[-1].keys[layer], key)
    # Every layer holds the same frames (eviction is per frame, across layers).
    lengths = {len(engine.groups[0].long_term_tokens()[i][0]) // frames[0].keys[i].shape[0]
               for i in range(len(ref_keys))}
    assert lengths == {3}


def test_newest_frames_are_the_ones_kept(model, video):
    frames, mask = video
    engine = VOSEngine(model, EngineConfig(memory=MemoryConfig(long_term_gap=1, max_long_term=3)))
    engine.add_reference(frames[0], mask)
    reference = engine.groups[0].long_term[0]
    added = []
    for frame in frames[1:7]:
        engine.step(frame)
        added.append(engine.groups[0].long_term[0])  # the frame this step appended (newest first)
    kept = engine.groups[0].long_term
    assert kept[0] is added[-1] and kept[1] is added[-2] and kept[2] is reference


def test_re_anchoring_adds_a_reference_that_is_also_kept(model, video):
    frames, mask = video
    engine = VOSEngine(model, EngineConfig(memory=MemoryConfig(long_term_gap=1, max_long_term=3)))
    engine.add_reference(frames[0], mask)
    for frame in frames[1:4]:
        engine.step(frame)
    engine.add_reference(frames[4], mask)
    for frame in frames[5:10]:
        engine.step(frame)
    refs = [f.reference for f in engine.groups[0].long_term]
    assert refs.count(True) == 2 and len(refs) == 3


def test_cap_and_gap_are_validated():
    with pytest.raises(InputError, match="cap"):
        MemoryConfig(max_long_term=0)
    with pytest.raises(InputError, match="gap"):
        MemoryConfig(long_term_gap=0)
