"""A run that dies midway keeps every finished frame, marks itself failed and leaves no complete-looking file."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.cli.conftest import TINY, official_checkpoint
from trek_tracker.pipeline import Tracker, TrackerConfig
from trek_tracker.video import open_frames
from trek_tracker.video_tracking import RunOutputs, track_video


def test_crash_keeps_finished_frames(tmp_path, monkeypatch):
    frames = [np.full((64, 96, 3), 40 * i, np.uint8) for i in range(6)]
    ckpt = official_checkpoint(tmp_path / "tiny.pth")
    tracker = Tracker(TrackerConfig(model=TINY, checkpoint=str(ckpt), device="cpu", init="box", max_long_edge=64))
    real_step = tracker.step
    calls = {"n": 0}

    def failing_step(image, **kw):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("simulated crash")
        return real_step(image, **kw)

    monkeypatch.setattr(tracker, "step", failing_step)
    out = tmp_path / "run"
    with pytest.raises(RuntimeError, match="simulated crash"):
        track_video(open_frames(frames), tracker, RunOutputs(out, progress=False), box=np.array([10, 10, 20, 20.0]))
    assert not (out / "boxes.txt").exists() and not (out / "times.txt").exists()
    kept = (out / "boxes.txt.part").read_text().splitlines()
    assert len(kept) == 3 and kept[0] == "10.000,10.000,20.000,20.000"  # frames 0, 1, 2 finished
    record = json.loads((out / "run.json").read_text())
    assert record["status"] == "failed" and "simulated crash" in record["error"]
    assert record["video"]["frames"] == 3 and "boxes.txt" not in record["files"]
