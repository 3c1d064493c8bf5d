"""``--compile``: every family's per-frame calls trace as single graphs and compute what eager mode does."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.conftest import two_object_video
from trek_tracker.inference.engine import EngineConfig, VOSEngine
from trek_tracker.inference.memory import MemoryConfig
from trek_tracker.modeling import base
from trek_tracker.modeling.registry import build_model


def _video(n: int = 7) -> tuple[list[np.ndarray], np.ndarray]:
    return two_object_video(n, seed=0)


def _track(model, frames, mask) -> list[torch.Tensor]:
    """Two objects, a flip pair and a memory that fills its cap: every shape the calls meet in a video."""
    engine = VOSEngine(model, EngineConfig(max_long_edge=None, flips=(False, True),
                                           memory=MemoryConfig(gap=1, cap=3)))
    engine.add_reference(frames[0], mask)
    out = []
    for frame in frames[1:]:
        views = engine.predict_views(frame)
        engine.commit_views([v.labels for v in views])
        out += [v.probs for v in views]
    return out


@pytest.mark.parametrize("name", ["test_deaot_tiny", "test_msdeaot_tiny", "test_vmos_tiny"])
def test_traced_calls_have_no_graph_break_and_match_eager(name):
    """``fullgraph=True`` fails on any graph break; the eager backend runs the traced graphs as they are."""
    torch.manual_seed(0)
    model = build_model(name).eval()
    frames, mask = _video()
    expected = _track(model, frames, mask)
    torch._dynamo.reset()
    assert model.compile_inference(backend="eager", fullgraph=True)
    assert not model.compile_inference()  # once per model
    got = _track(model, frames, mask)
    for a, b in zip(got, expected, strict=True):
        assert torch.equal(a, b)
    assert sorted(model.state_dict()) == sorted(build_model(name).state_dict())  # weight names untouched


def test_tracker_compiles_its_models_and_records_it(monkeypatch):
    from trek_tracker.init.api import InitConfig
    from trek_tracker.pipeline import Tracker, TrackerConfig

    monkeypatch.setattr(base, "COMPILE_BACKEND", "eager")
    torch._dynamo.reset()
    config = TrackerConfig(model="test_deaot_tiny", random_weights=True, device="cpu", compile=True,
                           max_long_edge=160, init=InitConfig(method="box"))
    tracker = Tracker(config)
    assert tracker.loaded.model._compiled
    frames, _ = _video(3)
    tracker.init(frames[0], [30, 20, 70, 50])
    assert tracker.step(frames[1]).box.shape == (4,)
    assert tracker.describe()["settings"]["compile"] is True
    plain = Tracker(TrackerConfig(model="test_deaot_tiny", random_weights=True, device="cpu"))
    assert not getattr(plain.loaded.model, "_compiled", False)


@pytest.mark.cuda
def test_inductor_on_cuda_matches_eager():
    torch.manual_seed(0)
    model = build_model("test_deaot_tiny").eval().cuda()
    frames, mask = _video()
    expected = _track(model, frames, mask)
    torch._dynamo.reset()
    model.compile_inference(fullgraph=True)
    got = _track(model, frames, mask)
    for a, b in zip(got, expected, strict=True):
        assert (a - b).abs().max() <= 1e-3
