"""The engine's own rules, beside the memory's: which model it tracks with, and where a later reference
frame goes in the video's frame count."""

from __future__ import annotations

import pytest

from trek_tracker.inference.engine import EngineConfig, VOSEngine
from trek_tracker.inference.memory import MemoryConfig
from trek_tracker.modeling.registry import build_model


def test_a_model_in_training_mode_is_refused():
    """Dropout and drop-path would make two runs on the same frames differ, with nothing said."""
    model = build_model("test_deaot_tiny")
    with pytest.raises(ValueError, match=r"model.eval\(\)"):
        VOSEngine(model)
    VOSEngine(model.eval())


def test_a_later_reference_is_a_frame_of_its_own_or_replaces_the_commit_of_the_one_predicted(model, video):
    """Re-anchoring on a frame not predicted counts it as the next frame; re-anchoring on the frame just
    predicted (the official evaluator's new objects) puts the reference in that frame's place, and the
    engine's state can be saved right after either."""
    frames, mask = video
    engine = VOSEngine(model, EngineConfig(memory=MemoryConfig(gap=1)))
    engine.add_reference(frames[0], mask)
    engine.step(frames[1])
    engine.step(frames[2])
    engine.add_reference(frames[3], mask)  # not predicted: frame 3
    assert engine.frame_step == 3 and engine.memory.frames == [3, 2, 1, 0]
    engine.state()
    engine.predict(frames[4])
    engine.add_reference(frames[4], mask)  # predicted, then re-anchored: frame 4, stored once
    assert engine.frame_step == 4 and engine.memory.frames == [4, 3, 2, 1, 0]
    assert engine.memory.reference_frames == [0, 3, 4]
    engine.state()  # nothing left pending
    engine.step(frames[5])
    assert engine.memory.frames == [5, 4, 3, 2, 1, 0]
