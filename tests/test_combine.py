"""Saved runs as the loop's tracker: each frame is the members' combined result, as much of it as asked for."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from trek_tracker.combine import SavedRunsTracker
from trek_tracker.geometry import BoxConfig
from trek_tracker.pipeline import one_hot
from trek_tracker.results import ObjectIds


class _Run:
    """A saved run of one object (value 255) over frames of 6x8 pixels, from its label maps."""

    def __init__(self, maps: list[np.ndarray], seconds: float) -> None:
        self.maps, self.ids = maps, ObjectIds((255,))
        self.times = np.full(len(maps), seconds)

    def read_times(self) -> np.ndarray:
        return self.times

    def read_boxes(self, value: int) -> np.ndarray:
        return np.array([[1.0, 1.0, 3.0, 2.0]] * len(self.maps))

    def read_mask(self, index: int):
        return np.where(self.maps[index] == 1, 255, 0).astype(np.uint8), None

    def read_probs(self, index: int):
        return torch.from_numpy(one_hot(self.maps[index]))


def _maps(x0: int) -> list[np.ndarray]:
    maps = [np.zeros((6, 8), np.uint8) for _ in range(2)]
    maps[0][1:3, 1:4] = 1
    maps[1][2:4, x0:x0 + 3] = 1
    return maps


@pytest.mark.parametrize("mode", ["mean", "vote"])
def test_saved_runs_give_labels_and_probabilities_only_when_asked(mode):
    runs = [_Run(_maps(4), 0.5), _Run(_maps(4), 0.25)]
    tracker = SavedRunsTracker(runs, mode, [1.0, 1.0], BoxConfig())
    lean = tracker.init(0, keep_labels=False)
    assert lean.labels is None and lean.probs is None
    assert list(lean.boxes[1]) == [1.0, 1.0, 3.0, 2.0] and lean.seconds == pytest.approx(0.75)
    step = tracker.step(1, keep_labels=False)
    assert step.labels is None and step.probs is None
    assert list(step.boxes[1]) == [4, 2, 3, 2]  # boxes come from the combined map even when it is not returned
    full = tracker.init(0, keep_labels=True, keep_probs=True)
    expected = _maps(4)[0]
    np.testing.assert_array_equal(full.labels, expected)
    np.testing.assert_array_equal(np.asarray(full.probs).argmax(0), expected)
    np.testing.assert_array_equal(tracker.step(1, keep_probs=True).labels, _maps(4)[1])
