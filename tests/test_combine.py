"""Saved runs as the loop's tracker: each frame is the members' combined result, as much of it as asked for; and
the checks that the runs agree before they are combined."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

from trek_tracker.combine import SavedRunsTracker, _check_same, combine_runs
from trek_tracker.errors import InputError, UserError
from trek_tracker.geometry import BoxConfig
from trek_tracker.pipeline import one_hot
from trek_tracker.results import ObjectIds, read_boxes, read_label_png, write_label_png


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


class _Manifest:
    """What :func:`_check_same` reads of a saved run: its manifest, frame count, objects and files."""

    def __init__(self, path: str, video: dict, files=("probs/", "masks/", "times.txt")) -> None:
        self.path, self.files, self.frames, self.ids = path, files, 2, ObjectIds((255,))
        self.manifest = {"video": {"name": "img", "size": [6, 8], "content": "abc", "path": "v", **video},
                         "start": {"box": [1.0, 1.0, 3.0, 2.0]}}

    def has(self, name: str) -> bool:
        return name in self.files


def test_runs_of_another_name_or_size_are_refused_even_with_the_same_content():
    for video, said in (({"name": "other"}, "different videos (img [6, 8] and other [6, 8])"),
                        ({"size": [6, 9]}, "different videos (img [6, 8] and img [6, 9])")):
        with pytest.raises(InputError, match=re.escape(said)):
            _check_same([_Manifest("a", {}), _Manifest("b", video)], "mean")
    _check_same([_Manifest("a", {}), _Manifest("b", {})], "mean")


def test_runs_of_which_only_one_starts_from_a_box_are_refused():
    a = _Manifest("a", {})
    a.manifest["start"] = {"box": None, "init_mask_ids": [1]}
    with pytest.raises(InputError, match=re.escape("different boxes (None and [1.0, 1.0, 3.0, 2.0])")):
        _check_same([a, _Manifest("b", {})], "mean")


def test_runs_from_an_init_mask_are_compared_by_the_output_the_mode_reads():
    """Frame 0 of a run is its init mask, in its masks (vote) as in its probabilities (mean)."""
    init = np.zeros((6, 8), np.uint8)
    init[1:3, 1:4] = 1
    runs = [_Manifest("a", {}), _Manifest("b", {})]
    for run, mask in zip(runs, (init, np.zeros_like(init)), strict=True):
        run.manifest["start"] = {"box": None, "init_mask_ids": [1]}
        run.read_mask = lambda index, mask=mask: (mask * 255, None)
        run.read_probs = lambda index: torch.from_numpy(one_hot(init))
    _check_same(runs, "mean")  # the same probabilities
    with pytest.raises(InputError, match="different init masks"):
        _check_same(runs, "vote")  # different masks
    for run in runs:  # a manifest that records no start at all is compared by its init mask too
        del run.manifest["start"]
    with pytest.raises(InputError, match="different init masks"):
        _check_same(runs, "vote")


def test_a_run_without_times_is_refused_before_anything_is_read():
    with pytest.raises(InputError, match="run b has no times.txt"):
        _check_same([_Manifest("a", {}), _Manifest("b", {}, files=("probs/", "masks/"))], "vote")


def test_combined_probabilities_are_saved_only_for_a_mean(tmp_path):
    with pytest.raises(UserError, match="only --mode mean"):
        combine_runs([tmp_path / "a", tmp_path / "b"], tmp_path / "out", mode="vote", save_probs=True)
    assert not (tmp_path / "out").exists()


def test_a_combined_run_keeps_its_members_video_start_and_palette_and_can_be_combined_again(tmp_path, capfd):
    from tests.cli.test_ensemble_cli import BOX0, H, W, _fake_run, _rect

    palette = np.zeros((256, 3), np.uint8)
    palette[255] = (0, 200, 100)
    first = _rect(5, 15, 10, 30)
    # 120 pixels and a speck of 25 that the members' min_component_px 0 keeps in the box (the default 100 would not)
    later = _rect(5, 15, 10, 22) + _rect(20, 25, 40, 45)
    runs = [_fake_run(tmp_path / "a", [first, later], [0.5, 0.1]),
            _fake_run(tmp_path / "b", [first, later], [0.25, 0.2])]
    for run in runs:
        for t in range(2):
            mask = run / "masks" / f"{t:05d}.png"
            write_label_png(mask, read_label_png(mask)[0], palette)
    combine_runs(runs, tmp_path / "ab")  # a mean, without probabilities, into a new folder unless told otherwise
    assert not (tmp_path / "ab" / "probs").exists() and capfd.readouterr().err == ""  # and quietly
    with pytest.raises(UserError, match="is not empty"):
        combine_runs(runs, tmp_path / "ab")
    record = json.loads((tmp_path / "ab" / "run.json").read_text())
    assert record["video"]["name"] == "clip" and record["video"]["size"] == [H, W]
    assert record["start"]["box"] == BOX0 and record["tracker"]["settings"]["box"] == {"min_component_px": 0}
    assert read_boxes(tmp_path / "ab" / "boxes.txt").tolist() == [BOX0, [10, 5, 35, 20]]
    assert record["ensemble"]["mode"] == "mean" and record["ensemble"]["runs"] == [str(r) for r in runs]
    assert record["ensemble"]["members"] == [{"settings": {"box": {"min_component_px": 0}}}] * 2
    for t in range(2):
        labels, written = read_label_png(tmp_path / "ab" / "masks" / f"{t:05d}.png")
        assert written is not None and np.array_equal(written[255], palette[255]) and labels.max() == 255
    combine_runs([tmp_path / "ab", runs[0]], tmp_path / "again", mode="vote")  # the same video, frames and start
    assert json.loads((tmp_path / "again" / "run.json").read_text())["video"]["name"] == "clip"
