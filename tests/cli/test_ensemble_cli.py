"""``trek-track ensemble`` on saved runs with known answers, and ``run`` with TTA, ensembles, --save-probs."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch

from tests.cli.conftest import TINY
from trek_tracker.files import write_json
from trek_tracker.results import read_boxes, read_label_png, read_times, write_boxes, write_label_png
from trek_tracker.run_folder import load_probs, save_probs

H, W = 40, 60
BOX0 = [10.0, 5.0, 20.0, 10.0]


def _fake_run(path, object_probs: list[np.ndarray], times: list[float]):
    """A run folder as ``trek-track run --save-probs --save-masks`` writes it, for one object (value 255)."""
    (path / "masks").mkdir(parents=True)
    for t, p in enumerate(object_probs):
        probs = np.stack([1 - p, p]).astype(np.float32)
        save_probs(path / "probs" / f"{t:05d}.npz", probs)
        write_label_png(path / "masks" / f"{t:05d}.png", np.where(p > 0.5, 255, 0).astype(np.uint8))
    write_json(path / "probs" / "objects.json", {"values": [255]})
    write_boxes(path / "boxes.txt", [BOX0] * len(object_probs))
    (path / "times.txt").write_text("".join(f"{s:.8f}\n" for s in times))
    write_json(path / "run.json", {"status": "complete", "video": {"name": "clip", "size": [H, W],
                                                                   "frames": len(object_probs)},
                                   "objects": [255], "start": {"box": BOX0, "init_mask_ids": None},
                                   "files": ["boxes.txt", "times.txt", "masks/", "probs/", "run.json"],
                                   "tracker": {"settings": {"box": {"min_component_px": 0}}}})
    return path


def _halves(left: float, right: float) -> np.ndarray:
    p = np.full((H, W), right, np.float32)
    p[:, : W // 2] = left
    return p


def _rect(y0, y1, x0, x1) -> np.ndarray:
    p = np.zeros((H, W), np.float32)
    p[y0:y1, x0:x1] = 1.0
    return p


@pytest.fixture()
def mean_runs(tmp_path):
    first = _rect(5, 15, 10, 30)
    a = _fake_run(tmp_path / "a", [first, _halves(0.9, 0.2)], [0.5, 0.1])
    b = _fake_run(tmp_path / "b", [first, _halves(0.3, 0.4)], [0.25, 0.2])
    return a, b


def test_mean_of_probabilities_with_and_without_weights(cli, mean_runs, tmp_path):
    a, b = mean_runs
    result = cli("ensemble", a, b, "--mode", "mean", "--out", tmp_path / "eq")
    assert result.exit_code == 0, result.stderr
    mask = read_label_png(tmp_path / "eq" / "masks" / "00001.png")[0]
    assert (mask[:, : W // 2] == 255).all() and (mask[:, W // 2:] == 0).all()  # left 0.6, right 0.3
    boxes = read_boxes(tmp_path / "eq" / "boxes.txt")
    assert boxes.tolist() == [BOX0, [0, 0, W // 2, H]]
    assert np.allclose(read_times(tmp_path / "eq" / "times.txt"), [0.75, 0.3])
    # Weights 1,3: left (0.9 + 0.9)/4 = 0.45, right (0.2 + 1.2)/4 = 0.35: nothing left, the box is held.
    result = cli("ensemble", a, b, "--weights", "1,3", "--out", tmp_path / "w", "--save-probs")
    assert result.exit_code == 0, result.stderr
    assert not read_label_png(tmp_path / "w" / "masks" / "00001.png")[0].any()
    assert read_boxes(tmp_path / "w" / "boxes.txt")[1].tolist() == BOX0
    record = json.loads((tmp_path / "w" / "run.json").read_text())
    assert record["lost_frames"] == {"255": [1]} and record["ensemble"]["weights"] == [1.0, 3.0]
    p = load_probs(tmp_path / "w" / "probs" / "00001.npz")
    assert abs(float(p[1, 0, 0]) - 0.45) < 3 / 255 and abs(float(p[1, 0, -1]) - 0.35) < 3 / 255


def test_weighted_vote_of_masks(cli, tmp_path):
    r1, r2 = _rect(5, 15, 5, 15), _rect(20, 30, 30, 50)
    runs = [_fake_run(tmp_path / n, [r1, r], [0.1, 0.1]) for n, r in (("a", r1), ("b", r1), ("c", r2))]
    assert cli("ensemble", *runs, "--mode", "vote", "--out", tmp_path / "v").exit_code == 0
    assert read_boxes(tmp_path / "v" / "boxes.txt")[1].tolist() == [5, 5, 10, 10]
    assert cli("ensemble", *runs, "--mode", "vote", "--weights", "1,1,3", "--out", tmp_path / "v3").exit_code == 0
    assert read_boxes(tmp_path / "v3" / "boxes.txt")[1].tolist() == [30, 20, 20, 10]


def test_ensemble_errors(cli, mean_runs, tmp_path):
    a, b = mean_runs
    short = _fake_run(tmp_path / "short", [_rect(5, 15, 10, 30)], [0.1])
    cases = [
        ((a,), "at least two run folders"),
        ((a, short), "different frames"),
        ((a, b, "--weights", "1"), "one weight per member"),
        ((a, tmp_path / "nothing"), "not a run folder"),
    ]
    for args, message in cases:
        result = cli("ensemble", *args, "--out", tmp_path / "x")
        assert result.exit_code == 2 and message in result.stderr, result.stderr
    record = json.loads((a / "run.json").read_text())
    write_json(a / "run.json", {**record, "files": ["boxes.txt", "times.txt", "masks/", "run.json"]})
    result = cli("ensemble", a, b, "--out", tmp_path / "x")
    assert result.exit_code == 2 and "--save-probs" in result.stderr
    later = _fake_run(tmp_path / "later", [_rect(5, 15, 10, 30), _halves(0.3, 0.4)], [0.25, 0.2])
    record = json.loads((later / "run.json").read_text())
    write_json(later / "run.json", {**record, "video": {**record["video"], "start_frame": 7}})
    result = cli("ensemble", b, later, "--out", tmp_path / "x")  # as many frames, but not the same ones
    assert result.exit_code == 2 and "start at different frames of clip (0 and 7)" in result.stderr, result.stderr


def _edit(run, **changes):
    record = json.loads((run / "run.json").read_text())
    for key, value in changes.items():
        record[key] = {**record[key], **value}
    write_json(run / "run.json", record)
    return run


def test_ensemble_refuses_runs_of_other_frames_or_other_starts_under_the_same_name(cli, tmp_path):
    """Every TREK-150 sequence's frames are in a folder named img of one size: a name and a size do not make
    two runs the same video; nor do two runs of one video from different boxes follow the same object."""
    first = [_rect(5, 15, 10, 30), _halves(0.3, 0.4)]

    def pair(name, a_video, b_video, b_start=None):
        a = _edit(_fake_run(tmp_path / name / "a", first, [0.1, 0.1]), video=a_video)
        b = _edit(_fake_run(tmp_path / name / "b", first, [0.1, 0.1]), video=b_video, start=b_start or {})
        return cli("ensemble", a, b, "--mode", "vote", "--out", tmp_path / name / "ab")

    seq_a = {"path": str(tmp_path / "seqA" / "img"), "content": {"bytes": 1000, "names": ["00000.jpg", "00001.jpg"]}}
    seq_b = {"path": str(tmp_path / "seqB" / "img"), "content": {"bytes": 1001, "names": ["00000.jpg", "00001.jpg"]}}
    result = pair("content", seq_a, seq_b)
    assert result.exit_code == 2 and "are of different videos" in result.stderr and "differ in content" in \
        result.stderr, result.stderr
    moved = {**seq_a, "path": str(tmp_path / "moved" / "img")}  # the same frames in another place: accepted
    assert pair("moved", seq_a, moved).exit_code == 0
    old = {"path": str(tmp_path / "seqB" / "img")}  # a run that recorded no content: only its place can tell
    result = pair("old", seq_a, old)
    assert result.exit_code == 2 and "videos at different places" in result.stderr, result.stderr
    result = pair("box", seq_a, seq_a, {"box": [11.0, 5.0, 20.0, 10.0]})
    assert result.exit_code == 2 and "start from different boxes" in result.stderr, result.stderr
    a = _edit(_fake_run(tmp_path / "mask" / "a", first, [0.1, 0.1]), start={"box": None, "init_mask_ids": [255]})
    b = _edit(_fake_run(tmp_path / "mask" / "b", [_rect(5, 15, 12, 30), first[1]], [0.1, 0.1]),
              start={"box": None, "init_mask_ids": [255]})
    for mode in ("vote", "mean"):
        result = cli("ensemble", a, b, "--mode", mode, "--out", tmp_path / "mask" / mode)
        assert result.exit_code == 2 and "start from different init masks" in result.stderr, result.stderr


# ----------------------------------------------------------------------------- end to end with `run`
FAST = ("--model", TINY, "--max-long-edge", "120", "--quiet", "--device", "cpu", "--init", "box")
BOX = "20,15,40,30"


@pytest.fixture(scope="module")
def small_video(shared, tmp_path_factory):
    """Six frames of a real clip, shrunk to 107x60 so that each run takes a second or two."""
    out = tmp_path_factory.mktemp("video")
    for i, path in enumerate(sorted((shared / "data/davis/JPEGImages/480p/car-shadow").glob("*.jpg"))[:6]):
        cv2.imwrite(str(out / f"{i:05d}.jpg"), cv2.resize(cv2.imread(str(path)), (107, 60)))
    return out


def test_runs_of_two_folders_of_one_name_are_told_apart_by_their_frames(cli, small_video, tiny_checkpoint,
                                                                         tmp_path):
    """Each TREK-150 sequence's frames are in a folder named img: a run records its frames' content, so an
    ensemble of runs of two such folders is refused unless they hold the same frames."""
    import shutil

    first, same, other = (tmp_path / name / "img" for name in ("first", "same", "other"))
    for folder in (first, same, other):
        shutil.copytree(small_video, folder)
    frame = cv2.imread(str(other / "00003.jpg"))
    cv2.imwrite(str(other / "00003.jpg"), 255 - frame)
    runs = {}
    for name, video in (("a", first), ("same", same), ("other", other)):
        runs[name] = tmp_path / f"run_{name}"
        result = cli("run", "--video", video, "--box", BOX, "--checkpoint", tiny_checkpoint, "--out", runs[name],
                     "--save-masks", *FAST)
        assert result.exit_code == 0, result.stderr
    content = json.loads((runs["a"] / "run.json").read_text())["video"]["content"]
    assert content["names"] == ["00000.jpg", "00005.jpg"] and content["bytes"] > 0
    assert cli("ensemble", runs["a"], runs["same"], "--mode", "vote", "--out", tmp_path / "ok").exit_code == 0
    result = cli("ensemble", runs["a"], runs["other"], "--mode", "vote", "--out", tmp_path / "no")
    assert result.exit_code == 2 and "differ in content" in result.stderr, result.stderr


def test_run_saves_probs_and_offline_mean_of_identical_runs_is_the_run(cli, small_video, tiny_checkpoint, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for out in (a, b):
        result = cli("run", "--video", small_video, "--box", BOX, "--checkpoint", tiny_checkpoint, "--out", out,
                     "--save-probs", "--save-masks", *FAST)
        assert result.exit_code == 0, result.stderr
    probs = sorted((a / "probs").glob("*.npz"))
    assert len(probs) == 6 and json.loads((a / "probs" / "objects.json").read_text()) == {"values": [255]}
    first = load_probs(probs[0])
    assert first.shape == (2, 60, 107) and torch.equal(first[1] > 0.5, torch.from_numpy(
        read_label_png(a / "masks" / "00000.png")[0] > 0))  # frame 0: the reference mask itself
    result = cli("ensemble", a, b, "--out", tmp_path / "ab")
    assert result.exit_code == 0, result.stderr
    for t in range(6):
        ours = read_label_png(tmp_path / "ab" / "masks" / f"{t:05d}.png")[0]
        theirs = read_label_png(a / "masks" / f"{t:05d}.png")[0]
        assert (ours == theirs).mean() > 0.995  # equal up to uint8 quantisation at exact ties
    assert len(read_boxes(tmp_path / "ab" / "boxes.txt")) == 6


def test_run_with_tta_and_a_lock_step_ensemble(cli, small_video, tiny_checkpoint, tmp_path):
    single = tmp_path / "single"
    assert cli("run", "--video", small_video, "--box", BOX, "--checkpoint", tiny_checkpoint, "--out", single,
               *FAST).exit_code == 0
    duo = tmp_path / "duo"
    result = cli("run", "--video", small_video, "--box", BOX, "--checkpoint", tiny_checkpoint, "--model", TINY,
                 "--checkpoint", tiny_checkpoint, "--ensemble-mode", "vote", "--ensemble-weights", "1,2", "--out", duo,
                 *FAST)
    assert result.exit_code == 0, result.stderr
    record = json.loads((duo / "run.json").read_text())["tracker"]
    assert record["ensemble"]["mode"] == "vote" and len(record["ensemble"]["members"]) == 2
    # Two copies of one model vote like the model alone.
    assert (duo / "boxes.txt").read_text() == (single / "boxes.txt").read_text()

    tta = tmp_path / "tta"
    result = cli("run", "--video", small_video, "--box", BOX, "--checkpoint", tiny_checkpoint, "--out", tta,
                 "--tta-scales", "1.0,1.5", "--tta-flip", *FAST)
    assert result.exit_code == 0, result.stderr
    views = json.loads((tta / "run.json").read_text())["tracker"]["tta"]["views"]
    assert views == [{"scale": 1.0, "flip": False}, {"scale": 1.0, "flip": True}, {"scale": 1.5, "flip": False},
                     {"scale": 1.5, "flip": True}]
    assert len((tta / "boxes.txt").read_text().splitlines()) == 6

    bad = cli("run", "--video", small_video, "--box", BOX, "--checkpoint", tiny_checkpoint, "--model", TINY,
              "--model", TINY, "--checkpoint", tiny_checkpoint, "--checkpoint", tiny_checkpoint, "--out",
              tmp_path / "bad", *FAST[2:])
    assert bad.exit_code == 2 and "one --checkpoint per --model" in bad.stderr
    bad = cli("run", "--video", small_video, "--box", BOX, "--checkpoint", tiny_checkpoint, "--tta-scales", "0",
              "--out", tmp_path / "bad", *FAST)
    assert bad.exit_code == 2 and "TTA scales" in bad.stderr


def _runs(tmp_path):
    first = _rect(5, 15, 10, 30)
    return (_fake_run(tmp_path / "a", [first, _halves(0.9, 0.2)], [0.5, 0.1]),
            _fake_run(tmp_path / "b", [first, _halves(0.3, 0.4)], [0.25, 0.2]))


def test_ensemble_out_inside_an_input_run_is_refused(cli, tmp_path):
    a, b = _runs(tmp_path)
    before = sorted(p.name for p in a.iterdir())
    result = cli("ensemble", a, b, "--out", a / "ens")
    assert result.exit_code == 2 and "is inside the input run" in result.stderr, result.output
    assert sorted(p.name for p in a.iterdir()) == before


def test_ensemble_refuses_a_run_given_twice(cli, tmp_path):
    a, b = _runs(tmp_path)
    result = cli("ensemble", a, f"{a}/", b, "--out", tmp_path / "e")
    assert result.exit_code == 2 and "is given twice" in result.stderr, result.output
    assert not (tmp_path / "e").exists()


def test_ensemble_shows_progress_unless_quiet(cli, tmp_path):
    a, b = _runs(tmp_path)
    result = cli("ensemble", a, b, "--out", tmp_path / "e1")
    assert result.exit_code == 0, result.output
    assert "ensemble: 100%" in result.stderr and "2/2" in result.stderr
    result = cli("ensemble", a, b, "--out", tmp_path / "e2", "--quiet")
    assert result.exit_code == 0 and "ensemble:" not in result.stderr, result.output


def test_ensemble_out_that_is_a_file_is_refused_and_kept(cli, mean_runs, tmp_path):
    (tmp_path / "taken").write_text("mine")
    result = cli("ensemble", *mean_runs, "--out", tmp_path / "taken")
    assert result.exit_code == 2 and "Invalid value for '--out'" in result.stderr and "is a file" in result.stderr
    assert (tmp_path / "taken").read_text() == "mine"


def test_ensemble_weights_that_are_not_numbers_are_one_line(cli, mean_runs, tmp_path):
    result = cli("ensemble", *mean_runs, "--weights", "1,x", "--out", tmp_path / "e")
    assert result.exit_code == 2 and result.stderr == (
        "trek-track: error: --weights must be numbers separated by commas, e.g. 1,2; got '1,x'\n")
    assert not (tmp_path / "e").exists()
