"""Test-time augmentation: view order and sizes, flip consistency, averaging, each view's own memory."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from tests.conftest import two_object_video
from trek_tracker.errors import InputError
from trek_tracker.inference.engine import EngineConfig, VOSEngine
from trek_tracker.inference.tta import TTAConfig, TTAEngine, parse_scales, tta_engine, tta_views, view_configs
from trek_tracker.modeling.registry import build_model

H, W = 129, 161  # already 16k + 1: no resize, so mirror symmetry is exact


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model("test_deaot_tiny").eval()


def _symmetric_video(n: int = 4, seed: int = 0) -> tuple[list[np.ndarray], np.ndarray]:
    rng = np.random.default_rng(seed)
    frames = []
    for _ in range(n):
        half = rng.integers(0, 255, (H, W // 2 + 1, 3), dtype=np.uint8)
        frames.append(np.concatenate([half, half[:, -2::-1]], axis=1))
    mask = np.zeros((H, W), np.int64)
    mask[40:90, 50:111] = 1  # centred: 50 + 110 = 160 = W - 1
    assert np.array_equal(frames[0], frames[0][:, ::-1]) and np.array_equal(mask, mask[:, ::-1])
    return frames, mask


def test_views_and_scale_parsing():
    assert parse_scales("1.2,1.3,1.4") == [1.2, 1.3, 1.4]
    assert tta_views([1.2, 1.3], True) == [(1.2, False), (1.2, True), (1.3, False), (1.3, True)]
    for bad in ("1.2,x", "0,1", "1.2,1.2"):
        with pytest.raises(InputError):
            parse_scales(bad)
    configs = view_configs(EngineConfig(), [1.2, 1.3, 1.4], True)
    assert [(c.scale, f) for c in configs for f in c.flips] == tta_views([1.2, 1.3, 1.4], True)
    assert all(c.max_short_edge == 624 for c in configs)  # official: multi-scale caps the short edge
    assert view_configs(EngineConfig(), [1.0], True)[0].max_short_edge is None


def test_views_without_flip_and_a_single_scale_follow_the_official_evaluator():
    """No flip unless asked: every view plain. The scale list ``[1.0]`` (None or empty text) is the plain
    engine; a single scale other than 1 is multi-scale, so it caps the short edge at 624; scales stay
    below 10 (docs/inference.md#test-time-augmentation)."""
    assert parse_scales(None) == parse_scales("") == [1.0]
    with pytest.raises(InputError, match="below 10"):
        parse_scales("1.2,10")
    assert TTAConfig().views() == [(1.0, False)] and not TTAConfig().active
    assert TTAConfig("1.2,1.3").scales == (1.2, 1.3) and not TTAConfig([1.0]).active  # parsed, as a tuple
    assert tta_views([1.2, 1.3], False) == [(1.2, False), (1.3, False)]
    (config,) = view_configs(EngineConfig(), [1.2], False)
    assert config.flips == (False,) and config.scale == 1.2 and config.max_short_edge == 624


def test_official_sizes_for_1080p(model):
    # docs/inference.md#network-input-size worked sizes for 1920x1080 (R50/MobileNet, 16k+1):
    # 705x1249, 753x1345, 817x1457.
    from trek_tracker.inference.preprocess import input_size

    sizes = [input_size(1080, 1920, max_long_edge=c.max_long_edge, max_short_edge=c.max_short_edge,
                        scale=c.scale, align_corners=True) for c in view_configs(EngineConfig(), [1.2, 1.3, 1.4],
                                                                                 False)]
    assert sizes == [(705, 1249), (753, 1345), (817, 1457)]


def test_flip_view_mirrors_the_plain_view_on_a_symmetric_video(model):
    frames, mask = _symmetric_video()
    engine = tta_engine(model, EngineConfig(), TTAConfig((1.0,), flip=True))
    assert isinstance(engine, TTAEngine) and len(engine.engines) == 1 and engine.engines[0].views == 2
    engine.add_reference(frames[0], mask)
    for frame in frames[1:]:
        out = engine.predict(frame)
        plain, flipped = engine.view_outputs
        # The flipped view sees the same pixels; un-flipped, its answer is the mirror of the plain view's.
        assert torch.allclose(flipped.probs, torch.flip(plain.probs, dims=[-1]), atol=1e-5)
        assert torch.allclose(out.probs, torch.flip(out.probs, dims=[-1]), atol=1e-5)
        assert not torch.allclose(plain.probs, torch.flip(plain.probs, dims=[-1]), atol=1e-3)
        engine.commit(out.labels)


def test_average_of_independent_engines_with_their_own_memory(model):
    rng = np.random.default_rng(1)
    frames = [rng.integers(0, 255, (120, 150, 3), dtype=np.uint8) for _ in range(4)]
    mask = np.zeros((120, 150), np.int64)
    mask[20:70, 30:100] = 1
    mask[80:110, 10:40] = 2
    base = EngineConfig(max_long_edge=None)
    engine = tta_engine(model, base, TTAConfig((1.0, 1.25), flip=True))
    # One engine per view, as the official evaluator runs them; the TTA engine batches each flip pair.
    solo = [VOSEngine(model, replace(c, flips=(f,))) for c in view_configs(base, [1.0, 1.25], True)
            for f in c.flips]
    engine.add_reference(frames[0], mask)
    for s in solo:
        s.add_reference(frames[0], mask)
    for frame in frames[1:]:
        out = engine.step(frame)
        # Each standalone engine remembers its own prediction: exactly what each TTA view must do.
        views = [s.step(frame) for s in solo]
        expected = torch.stack([v.probs for v in views]).mean(0)
        assert out.probs.shape == (3, 120, 150)
        assert torch.allclose(out.probs, expected, atol=1e-6)
        assert torch.equal(out.labels, expected.argmax(0))
        assert not all(torch.equal(views[0].labels, v.labels) for v in views[1:])  # views really differ


def test_one_group_resizes_only_its_live_channels_with_the_same_probabilities(model):
    """The masked ids of a single group carry exactly zero probability, so resizing only the live channels
    gives the probabilities of the official all-channel path, bit for bit."""
    import torch.nn.functional as F

    frames, mask = _symmetric_video(3)
    engine = VOSEngine(model, EngineConfig(max_long_edge=None))
    engine.add_reference(frames[0], mask)
    out = engine.predict(frames[1])
    (raw,) = out.logits
    full = raw.clone()
    full[:, 2:] = -1e10  # one object: ids 2..10 unused
    full = F.interpolate(full, size=(H, W), mode="bilinear", align_corners=model.align_corners)
    expected = torch.softmax(full, dim=1)[0]
    assert out.probs.shape == (2, H, W)
    assert torch.equal(out.probs, expected[:2]) and torch.equal(expected[2:], torch.zeros_like(expected[2:]))
    assert torch.equal(out.labels, expected.argmax(0))


def test_three_scales_average_is_the_official_torch_mean_exactly(model):
    # Official: pred_prob = torch.mean(torch.cat(all_preds), dim=0) over the views; with 3 views 1/3 is inexact.
    rng = np.random.default_rng(2)
    frames = [rng.integers(0, 255, (100, 130, 3), dtype=np.uint8) for _ in range(2)]
    mask = np.zeros((100, 130), np.int64)
    mask[20:70, 30:100] = 1
    engine = tta_engine(model, EngineConfig(max_long_edge=None), TTAConfig((1.0, 1.2, 1.4)))
    engine.add_reference(frames[0], mask)
    out = engine.predict(frames[1])
    official = torch.mean(torch.cat([v.probs[None] for v in engine.view_outputs]), dim=0)
    assert torch.equal(out.probs, official) and torch.equal(out.labels, official.argmax(0))


def _two_object_video(n: int = 4) -> tuple[list[np.ndarray], np.ndarray]:
    return two_object_video(n, seed=1)


def test_ensemble_memory_label_feeds_every_view_the_averaged_label(model):
    """``memory_label="ensemble"`` (docs/inference.md#test-time-augmentation, step 5): every view remembers the
    arg-max of the averaged probabilities, not its own; one standalone engine per view fed that label computes
    the same."""
    frames, mask = _two_object_video()
    base = EngineConfig(max_long_edge=None)
    engine = tta_engine(model, base, TTAConfig((1.0, 1.25), flip=True), memory_label="ensemble")
    own = tta_engine(model, base, TTAConfig((1.0, 1.25), flip=True))
    solo = [VOSEngine(model, replace(c, flips=(f,))) for c in view_configs(base, [1.0, 1.25], True)
            for f in c.flips]
    for e in (engine, own, *solo):
        e.add_reference(frames[0], mask)
    differs = False
    for frame in frames[1:]:
        out = engine.step(frame)
        views = [s.predict(frame) for s in solo]
        expected = torch.stack([v.probs for v in views]).mean(0)
        label = expected.argmax(0)
        for s in solo:
            s.commit(label)
        assert torch.allclose(out.probs, expected, atol=1e-6) and torch.equal(out.labels, label)
        differs |= not torch.allclose(own.step(frame).probs, out.probs, atol=1e-4)
    assert differs  # the views' own labels would have given other memories


def test_commit_twice_and_resuming_from_the_state(model):
    """A commit needs a fresh prediction; the engines' saved state (docs/inference.md#saved-state-resuming-a-run)
    lets a new TTA engine continue exactly as the first one does."""
    import copy

    frames, mask = _two_object_video(6)
    tta = TTAConfig((1.0, 1.25), flip=True)
    first = tta_engine(model, EngineConfig(max_long_edge=None), tta)
    first.add_reference(frames[0], mask)
    out = first.predict(frames[1])
    assert len(first.view_outputs) == 4
    first.commit(out.labels)
    assert first.view_outputs == []  # the views' outputs last until the commit
    with pytest.raises(RuntimeError, match="must follow predict"):
        first.commit(out.labels)
    first.step(frames[2])
    state = copy.deepcopy(first.state())
    assert len(state) == 2 and [s["frame_step"] for s in state] == [2, 2]
    second = tta_engine(model, EngineConfig(max_long_edge=None), tta)
    second.load_state(state)
    for frame in frames[3:]:
        a, b = first.step(frame), second.step(frame)
        assert torch.equal(a.probs, b.probs) and torch.equal(a.labels, b.labels)
    with pytest.raises(ValueError, match="2 TTA scales, this engine 1"):
        tta_engine(model, EngineConfig(), TTAConfig(flip=True)).load_state(state)


def test_tta_engine_defaults(model):
    """No TTA asked: a plain engine with the default config; TTA without a base config starts from the default
    one (long edge 1040) and caps the short edge at 624 for a scale other than 1."""
    plain = tta_engine(model)
    assert type(plain) is VOSEngine and plain.config == EngineConfig()
    engine = tta_engine(model, tta=TTAConfig((1.2,), flip=True))
    assert isinstance(engine, TTAEngine) and engine.memory_label == "own" and engine.members is engine.engines
    (config,) = [e.config for e in engine.engines]
    assert config == EngineConfig(scale=1.2, flips=(False, True), max_short_edge=624)
    assert tta_engine(model, tta=TTAConfig((1.2,)), max_resolution=500).engines[0].config.max_short_edge == 500
    with pytest.raises(InputError, match="memory_label"):
        TTAEngine([plain], memory_label="mean")
