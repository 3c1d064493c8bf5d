"""Toolkit adapter: always four finite numbers with positive size; the toolkit's ``track`` contract."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from tests.eval.helpers import ConstantTracker, OracleTracker, build_synthetic
from trek_tracker.errors import InputError
from trek_tracker.eval.adapter import ToolkitTracker
from trek_tracker.eval.dataset import Trek150


class Scripted:
    name = "scripted"

    def __init__(self, outputs):
        self.outputs = list(outputs)

    def init(self, image, box) -> None:
        self.init_box = box

    def update(self, image):
        return self.outputs.pop(0)


def test_invalid_boxes_hold_the_last_valid_one() -> None:
    inner = Scripted([[1, 2, 3, 4], [np.nan] * 4, [5, 5, 0, 4], [5, 5, -2, 4], [7, 8, 9, 10]])
    t = ToolkitTracker(inner)
    assert t.name == "scripted"
    t.init(None, [10, 10, 20, 20])
    outs = [t.update(None).tolist() for _ in range(5)]
    assert outs == [[1, 2, 3, 4], [1, 2, 3, 4], [1, 2, 3, 4], [1, 2, 3, 4], [7, 8, 9, 10]]
    assert t.held == 3


def test_track_matches_the_toolkit_contract(tmp_path: Path) -> None:
    seq = Trek150(build_synthetic(tmp_path / "trek"))["P01-P01_01-2"]
    t = ToolkitTracker(OracleTracker(), name="o")
    boxes, times = t.track([str(p) for p in seq.img_files], seq.gt[0])
    assert boxes.shape == (8, 4) and times.shape == (8,) and np.all(times >= 0)
    np.testing.assert_array_equal(boxes[0], seq.gt[0])
    visible = ~seq.absent
    np.testing.assert_array_equal(boxes[visible], seq.gt[visible])
    np.testing.assert_array_equal(boxes[2], boxes[1])  # absent frame: no white box, last box held


def test_track_writes_the_start_box_as_given_where_ours_starts_from_it_clipped(tmp_path: Path) -> None:
    """The toolkit's ``track`` writes its init box as row 0; our tracker clips a box that reaches outside
    the frame before it starts, but the row stays the toolkit's."""
    import torch

    from trek_tracker.init.api import InitConfig
    from trek_tracker.pipeline import TrackerConfig

    seq = Trek150(build_synthetic(tmp_path / "trek"))["P01-P01_01-2"]
    torch.manual_seed(0)
    t = ToolkitTracker(config=TrackerConfig(model="test_deaot_tiny", random_weights=True, device="cpu",
                                            max_long_edge=64, init=InitConfig(method="box")))
    start = [-6.0, 3.0, 30.0, 20.0]
    boxes, _ = t.track([str(p) for p in seq.img_files[:3]], start)
    assert boxes[0].tolist() == start
    assert t.held == 0  # our tracker never has a box replaced
    assert boxes[1][0] >= 0  # tracking itself went on from the clipped box


class NeedsArguments:
    def __init__(self, model_path):
        self.model_path = model_path


class RaisesInUpdate:
    name = "raiser"

    def init(self, image, box) -> None:
        self.box = box

    def update(self, image):
        return self.box[7]  # an IndexError in the user's own code


def test_a_toolkit_trackers_own_errors_are_one_line_naming_its_code(tmp_path: Path) -> None:
    """--tracker-class runs code that is not ours: a name that is not a class, a constructor that needs
    arguments, an exception in update() -- each one line saying which call raised what, where in that
    code, and what to do (never a traceback from inside the runner)."""
    from trek_tracker.cli.eval import _class_tracker
    from trek_tracker.errors import UserError
    from trek_tracker.eval.protocols import plan
    from trek_tracker.eval.runner import execute

    with pytest.raises(InputError, match=r"'os:path' is a module, not a class"):
        _class_tracker("os:path")
    with pytest.raises(UserError, match=r"NeedsArguments\(\) raised TypeError: .*model_path.*give it defaults"):
        _class_tracker("tests.eval.test_adapter:NeedsArguments")
    ds = Trek150(build_synthetic(tmp_path / "trek"))
    with pytest.raises(UserError, match=r"^raiser.update\(\) raised IndexError: .* at test_adapter.py:\d+; fix the "
                                        r"tracker$"):
        execute(ds, plan(ds, "ope")[:1], tmp_path / "r", RaisesInUpdate, progress=False)


def test_zero_negative_or_infinite_height_and_infinite_values_are_held_too(caplog) -> None:
    inner = Scripted([[1, 2, 3, 4], [5, 5, 4, 0], [5, 5, 4, -1], [np.inf, 5, 4, 4], [5, 5, np.inf, 4],
                      [0, 0, 0.5, 0.25]])
    t = ToolkitTracker(inner)
    t.init(None, [10, 10, 20, 20])
    outs = [t.update(None).tolist() for _ in range(6)]
    assert outs == [[1, 2, 3, 4]] * 5 + [[0, 0, 0.5, 0.25]]
    assert t.held == 4
    warned = [r for r in caplog.records if "holding the last valid box" in r.getMessage()]
    assert len(warned) == 1 and "[5, 5, 4, 0]" in warned[0].getMessage()  # once, at the first
    t.init(None, [10, 10, 20, 20])
    assert t.held == 0  # counted per run


class Sleeper(ConstantTracker):
    """Takes 30 ms per call, so that its times can be checked."""

    def init(self, image, box) -> None:
        time.sleep(0.03)
        super().init(image, box)

    def update(self, image):
        time.sleep(0.03)
        return super().update(image)


def test_track_times_are_the_duration_of_each_call(tmp_path: Path) -> None:
    seq = Trek150(build_synthetic(tmp_path / "trek"))["P01-P01_01-2"]
    boxes, times = ToolkitTracker(Sleeper(), name="s").track([str(p) for p in seq.img_files[:3]], seq.gt[0])
    assert np.all(times >= 0.03) and np.all(times < 5), times
    assert boxes.tolist() == [seq.gt[0].tolist()] * 3


def test_a_box_tracker_starts_only_from_a_box() -> None:
    from trek_tracker.eval.adapter import StepAdapter

    adapter = StepAdapter(Scripted([]))
    with pytest.raises(InputError, match="scripted is a box tracker: start it from a box"):
        adapter.init(None, [1, 2, 3, 4], mask=np.ones((4, 4), bool))
    with pytest.raises(InputError, match="box tracker"):
        adapter.init(None, None)


def test_frames_decoded_as_arrays_reach_a_toolkit_tracker_as_pil_images() -> None:
    from PIL import Image

    from trek_tracker.eval.adapter import StepAdapter

    seen = []

    class Records(ConstantTracker):
        def init(self, image, box) -> None:
            seen.append(image)
            super().init(image, box)

        def update(self, image):
            seen.append(image)
            return super().update(image)

    frame = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    adapter = StepAdapter(Records())
    adapter.init(frame, [0, 0, 1, 1])
    adapter.step(frame)
    assert len(seen) == 2
    for image in seen:  # init's and update's
        assert isinstance(image, Image.Image) and np.array_equal(np.asarray(image), frame)


def test_init_reaches_the_tracker_and_its_box_is_the_first_held() -> None:
    inner = Scripted([[np.nan] * 4])
    t = ToolkitTracker(inner)
    assert t.is_deterministic is True  # the toolkit's Tracker attribute
    t.init(None, [10, 10, 20, 20])
    assert list(inner.init_box) == [10, 10, 20, 20]
    assert t.update(None).tolist() == [10, 10, 20, 20]
