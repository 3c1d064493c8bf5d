"""``trek-track run`` end to end on real shared clips with a tiny seeded model: files, formats, errors."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys

import click
import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from tests.cli.conftest import TINY, official_checkpoint
from trek_tracker.modeling.checkpoints import sha256_of
from trek_tracker.results import read_label_png

FAST = ("--model", TINY, "--max-long-edge", "240", "--quiet", "--device", "cpu", "--init", "box")
BOX_LINE = re.compile(r"^-?\d+\.\d{3},-?\d+\.\d{3},-?\d+\.\d{3},-?\d+\.\d{3}$")


def test_blackswan_mp4_writes_50_boxes_and_times(cli, shared, tiny_checkpoint, tmp_path):
    video = shared / "data/videos/blackswan.mp4"
    out = tmp_path / "run"
    result = cli("run", "--video", video, "--box", "300.5,120,200,150", "--checkpoint", tiny_checkpoint,
                 "--out", out, "--save-masks", "--overlay", *FAST)
    assert result.exit_code == 0, result.stderr
    boxes = (out / "boxes.txt").read_text().splitlines()
    times = (out / "times.txt").read_text().splitlines()
    assert len(boxes) == 50 and len(times) == 50
    assert boxes[0] == "300.500,120.000,200.000,150.000"  # line 0 is the given box
    assert all(BOX_LINE.match(line) for line in boxes)
    assert all(float(t) > 0 for t in times)
    masks = sorted((out / "masks").glob("*.png"))
    assert [p.name for p in masks[:2]] == ["00000.png", "00001.png"] and len(masks) == 50
    labels, palette = read_label_png(masks[0])
    assert palette is None and set(np.unique(labels)) <= {0, 255}  # a box's mask is saved 0/255
    assert (out / "overlay.mp4").stat().st_size > 0
    record = json.loads((out / "run.json").read_text())
    assert record["status"] == "complete" and record["video"]["frames"] == 50
    assert record["tracker"]["checkpoint_sha256"] == sha256_of(tiny_checkpoint)
    assert record["tracker"]["model"] == TINY
    assert set(record["lost_frames"]) == {"255"}
    assert record["peak_memory"]["host_rss_mib"] > 50 and record["peak_memory"]["gpu_mib"] is None  # torch alone
    assert not list(out.glob("*.part"))
    # Each box is the tight box of its saved mask, or the held box on a lost frame.
    lost = set(record["lost_frames"]["255"])
    for i in (1, 25, 49):
        m = read_label_png(masks[i])[0] > 0
        if i in lost:
            continue
        ys, xs = np.nonzero(m)
        expected = [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
        assert np.allclose([float(v) for v in boxes[i].split(",")], expected)


def test_init_mask_with_two_palette_objects(cli, davis, tiny_checkpoint, tmp_path):
    """Each id is an object: one box file per object and masks with the init mask's values and palette."""
    frames = tmp_path / "frames"
    frames.mkdir()
    for i in range(4):
        shutil.copy(davis / f"JPEGImages/480p/car-shadow/{i:05d}.jpg", frames / f"{i}.jpg")
    gt = np.array(Image.open(davis / "Annotations/480p/car-shadow/00000.png")) > 0
    labels = np.zeros(gt.shape, np.uint8)
    labels[:, :480][gt[:, :480]] = 3
    labels[:, 480:][gt[:, 480:]] = 7
    palette = np.zeros((256, 3), np.uint8)
    palette[3], palette[7] = (200, 10, 10), (10, 200, 10)
    im = Image.fromarray(labels, mode="P")
    im.putpalette(palette.reshape(-1).tolist())
    im.save(tmp_path / "init.png")
    out = tmp_path / "run"
    result = cli("run", "--video", frames, "--init-mask", tmp_path / "init.png", "--checkpoint", tiny_checkpoint,
                 "--out", out, "--save-masks", *FAST)
    assert result.exit_code == 0, result.stderr
    assert not (out / "boxes.txt").exists()
    b3 = (out / "boxes_3.txt").read_text().splitlines()
    b7 = (out / "boxes_7.txt").read_text().splitlines()
    assert len(b3) == len(b7) == 4
    ys, xs = np.nonzero(labels == 3)
    assert b3[0] == f"{xs.min():.3f},{ys.min():.3f},{xs.max() - xs.min() + 1:.3f},{ys.max() - ys.min() + 1:.3f}"
    saved, saved_palette = read_label_png(out / "masks/00002.png")
    assert set(np.unique(saved)) <= {0, 3, 7}
    assert saved_palette is not None and (saved_palette[[3, 7]] == palette[[3, 7]]).all()
    first, _ = read_label_png(out / "masks/00000.png")
    assert (first == labels).all()


def test_a_range_of_frames_tracks_as_a_video_of_those_frames_would(cli, davis, tiny_checkpoint, tmp_path):
    """--start-frame/--last-frame on a folder give the run of a folder holding only those frames: the same
    boxes and masks, numbered from the start frame, with the range in run.json; a range outside the video is
    one line before anything is written."""
    folder = davis / "JPEGImages/480p/blackswan"
    alone = tmp_path / "alone"
    alone.mkdir()
    for i in range(20, 35):
        shutil.copy(folder / f"{i:05d}.jpg", alone / f"{i:05d}.jpg")
    args = ("--box", "360,150,220,140", "--checkpoint", tiny_checkpoint, "--save-masks", *FAST)
    ranged, whole = tmp_path / "ranged", tmp_path / "whole"
    result = cli("run", "--video", folder, "--start-frame", "20", "--last-frame", "34", "--out", ranged, *args)
    assert result.exit_code == 0, result.stderr
    assert cli("run", "--video", alone, "--out", whole, *args).exit_code == 0
    assert (ranged / "boxes.txt").read_text() == (whole / "boxes.txt").read_text()
    assert len((ranged / "boxes.txt").read_text().splitlines()) == 15
    masks = sorted(p.name for p in (ranged / "masks").glob("*.png"))
    assert masks[0] == "00000.png" and len(masks) == 15
    for name in (masks[0], masks[-1]):
        np.testing.assert_array_equal(read_label_png(ranged / "masks" / name)[0],
                                      read_label_png(whole / "masks" / name)[0])
    video = json.loads((ranged / "run.json").read_text())["video"]
    assert (video["start_frame"], video["last_frame"], video["frames"]) == (20, 34, 15)
    assert json.loads((whole / "run.json").read_text())["video"]["start_frame"] == 0

    out = tmp_path / "bad"
    before = r"--last-frame 8 comes before --start-frame 9$"
    for flags, pattern in [(("--start-frame", "50"), r"cannot start at frame 50: .* has 50 frames \(0-49\)"),
                           (("--last-frame", "50"), r"cannot track up to frame 50"),
                           (("--start-frame", "9", "--last-frame", "8"), before)]:
        _expect_user_error(cli("run", "--video", folder, *flags, "--out", out, *args), out, pattern)


def test_a_video_file_starts_at_its_start_frame(cli, shared, tiny_checkpoint, tmp_path):
    """In a video file the start frame is reached by decoding: the run from frame 45 of blackswan.mp4 tracks
    its last 5 frames, from the box given on frame 45."""
    out = tmp_path / "run"
    result = cli("run", "--video", shared / "data/videos/blackswan.mp4", "--start-frame", "45", "--box",
                 "400,160,200,140", "--checkpoint", tiny_checkpoint, "--out", out, *FAST)
    assert result.exit_code == 0, result.stderr
    boxes = (out / "boxes.txt").read_text().splitlines()
    assert len(boxes) == 5 and boxes[0] == "400.000,160.000,200.000,140.000"
    video = json.loads((out / "run.json").read_text())["video"]
    assert (video["start_frame"], video["last_frame"], video["frames"]) == (45, None, 5)


def _frames_dir(davis, tmp_path, n=2):
    d = tmp_path / "few"
    d.mkdir(exist_ok=True)
    for i in range(n):
        shutil.copy(davis / f"JPEGImages/480p/blackswan/{i:05d}.jpg", d / f"{i:05d}.jpg")
    return d


def _expect_user_error(result, out, pattern: str) -> None:
    assert result.exit_code == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("trek-track: error: ")
    assert re.search(pattern, lines[0], re.I), lines[0]
    assert not out.exists(), "no output may be written for bad input"


@pytest.mark.parametrize("box,pattern", [
    ("1,2,3", "four numbers"),
    ("a,b,c,d", "x,y,w,h"),
    ("10,10,0,20", "positive|zero|area"),
    ("2000,2000,10,10", "outside"),
])
def test_bad_boxes(cli, davis, tiny_checkpoint, tmp_path, box, pattern):
    out = tmp_path / "out"
    result = cli("run", "--video", _frames_dir(davis, tmp_path), "--box", box, "--checkpoint", tiny_checkpoint,
                 "--out", out, *FAST)
    _expect_user_error(result, out, pattern)


def test_bad_videos(cli, tiny_checkpoint, tmp_path):
    out = tmp_path / "out"
    args = ("--box", "1,1,5,5", "--checkpoint", tiny_checkpoint, "--out", out, *FAST)
    _expect_user_error(cli("run", "--video", tmp_path / "missing.mp4", *args), out, "no such|not found")
    empty = tmp_path / "empty"
    empty.mkdir()
    _expect_user_error(cli("run", "--video", empty, *args), out, "empty|no image")
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"\x00not a video\xff" * 100)
    _expect_user_error(cli("run", "--video", junk, *args), out, "decode|read|corrupt|video")


def test_bad_init_masks(cli, davis, tiny_checkpoint, tmp_path):
    out = tmp_path / "out"
    video = _frames_dir(davis, tmp_path)
    small = tmp_path / "small.png"
    Image.fromarray(np.full((10, 10), 255, np.uint8)).save(small)
    empty = tmp_path / "empty.png"
    Image.fromarray(np.zeros((480, 854), np.uint8)).save(empty)
    args = ("--checkpoint", tiny_checkpoint, "--out", out, *FAST)
    _expect_user_error(cli("run", "--video", video, "--init-mask", small, *args), out, "10x10")
    _expect_user_error(cli("run", "--video", video, "--init-mask", empty, *args), out, "empty")
    _expect_user_error(cli("run", "--video", video, "--init-mask", small, "--box", "1,1,4,4", *args), out,
                       "exactly one")


def test_checkpoint_problems(cli, davis, tmp_path, monkeypatch):
    out = tmp_path / "out"
    video = _frames_dir(davis, tmp_path)
    base = ("run", "--video", video, "--box", "300,120,200,150", "--out", out, "--quiet", "--device", "cpu")
    broken = official_checkpoint(tmp_path / "broken.pth", drop="LSTT.layers.1.")
    _expect_user_error(cli(*base, "--model", TINY, "--checkpoint", broken), out,
                       r"missing keys \(first: LSTT\.layers\.1\.")
    other = official_checkpoint(tmp_path / "deaott.pth", model_name="deaott")
    _expect_user_error(cli(*base, "--model", TINY, "--checkpoint", other), out, "unexpected keys|shape")
    # No checkpoint at all: the message says which file to get and how.
    monkeypatch.setenv("TREK_TRACK_HOME", str(tmp_path / "home"))
    _expect_user_error(cli(*base, "--model", "r50_deaotl"), out, r"trek-track weights download r50_deaotl")
    _expect_user_error(cli(*base, "--model", TINY), out, "no official checkpoint.*--checkpoint")


def test_pickled_code_is_refused(cli, davis, tmp_path):
    class Payload:
        def __reduce__(self):
            return (print, ("pwned",))

    evil = tmp_path / "evil.pth"
    torch.save({"state_dict": {"x": torch.zeros(1)}, "extra": Payload()}, evil)
    out = tmp_path / "out"
    result = cli("run", "--video", _frames_dir(davis, tmp_path), "--box", "1,1,5,5", "--model", TINY,
                 "--checkpoint", evil, "--out", out, "--quiet")
    _expect_user_error(result, out, "not loaded|execute")
    assert "pwned" not in result.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_requested_without_gpu(cli, davis, tiny_checkpoint, tmp_path):
    out = tmp_path / "out"
    result = cli("run", "--video", _frames_dir(davis, tmp_path), "--box", "1,1,5,5", "--model", TINY,
                 "--checkpoint", tiny_checkpoint, "--device", "cuda", "--out", out)
    _expect_user_error(result, out, "cuda")


def test_random_weights_warns(cli, davis, tmp_path):
    out = tmp_path / "out"
    result = cli("run", "--video", _frames_dir(davis, tmp_path, 3), "--box", "300,120,200,150",
                 "--random-weights", "--out", out, *FAST)
    assert result.exit_code == 0
    assert "meaningless" in result.stderr
    assert len((out / "boxes.txt").read_text().splitlines()) == 3


def test_real_process_prints_one_line_and_no_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "trek_tracker.cli", "run", "--video", str(tmp_path / "nope"),
                           "--box", "1,2,3,4"], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr


@pytest.mark.cuda
@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_run_on_cuda(cli, shared, tiny_checkpoint, tmp_path, precision):
    """`trek-track run --device cuda` end to end; fp32 agrees with the CPU run's boxes."""
    video = shared / "data/videos/blackswan.mp4"
    args = ("--box", "300.5,120,200,150", "--checkpoint", tiny_checkpoint, "--model", TINY, "--max-long-edge",
            "240", "--quiet", "--init", "box", "--save-masks")
    gpu = cli("run", "--video", video, "--out", tmp_path / "gpu", "--device", "cuda", "--precision", precision, *args)
    assert gpu.exit_code == 0, gpu.stderr
    record = json.loads((tmp_path / "gpu" / "run.json").read_text())
    assert record["status"] == "complete" and record["tracker"]["device"].startswith("cuda")
    assert record["tracker"]["precision"] == precision and record["video"]["frames"] == 50
    assert record["peak_memory"]["gpu_mib"] > 0 and "peak GPU memory" in gpu.stdout
    if precision == "fp32":
        assert cli("run", "--video", video, "--out", tmp_path / "cpu", "--device", "cpu", *args).exit_code == 0
        ours = np.loadtxt(tmp_path / "gpu" / "boxes.txt", delimiter=",")
        theirs = np.loadtxt(tmp_path / "cpu" / "boxes.txt", delimiter=",")
        assert np.abs(ours - theirs).max() <= 2.0


@pytest.mark.cuda
def test_run_on_cuda_compiled(cli, shared, tiny_checkpoint, tmp_path):
    """`--compile` on a GPU: recorded, and the boxes of the eager run (fp32, no TF32) within 2 pixels."""
    video = shared / "data/videos/blackswan.mp4"
    args = ("--video", video, "--box", "300.5,120,200,150", "--checkpoint", tiny_checkpoint, "--model", TINY,
            "--max-long-edge", "240", "--quiet", "--init", "box", "--device", "cuda", "--precision", "fp32")
    assert cli("run", *args, "--out", tmp_path / "eager").exit_code == 0
    compiled = cli("run", *args, "--out", tmp_path / "compiled", "--compile")
    assert compiled.exit_code == 0, compiled.stderr
    record = json.loads((tmp_path / "compiled" / "run.json").read_text())
    assert record["tracker"]["settings"]["compile"] is True
    ours = np.loadtxt(tmp_path / "compiled" / "boxes.txt", delimiter=",")
    theirs = np.loadtxt(tmp_path / "eager" / "boxes.txt", delimiter=",")
    assert np.abs(ours - theirs).max() <= 2.0


def test_a_box_reaching_outside_the_frame_starts_from_its_part_inside(cli, davis, tiny_checkpoint, tmp_path):
    out = tmp_path / "run"
    result = cli("run", "--video", _frames_dir(davis, tmp_path), "--box", "800,400,100,100", "--checkpoint",
                 tiny_checkpoint, "--out", out, *FAST)
    assert result.exit_code == 0, result.stderr
    inside = [800, 400, 854 - 800, 480 - 400]  # the frame is 854x480
    assert "reaches outside the 854x480 frame" in result.stderr
    assert (out / "boxes.txt").read_text().splitlines()[0] == ",".join(f"{v:.3f}" for v in inside)
    record = json.loads((out / "run.json").read_text())
    assert record["start"] == {"box": inside, "init_mask_ids": None}
    assert (record["video"]["name"], record["video"]["size"]) == ("few", [480, 854])
    frames = sorted((tmp_path / "few").iterdir())  # what --resume checks the folder against
    assert record["video"]["content"] == {"bytes": sum(f.stat().st_size for f in frames),
                                          "names": ["00000.jpg", "00001.jpg"]}


def test_without_out_the_run_goes_to_runs_and_the_video_name(cli, davis, tiny_checkpoint, tmp_path, monkeypatch):
    video = _frames_dir(davis, tmp_path, 3)
    monkeypatch.chdir(tmp_path)
    result = cli("run", "--video", video, "--box", "300,120,200,150", "--checkpoint", tiny_checkpoint, *FAST)
    assert result.exit_code == 0, result.stderr
    assert len((tmp_path / "runs/few/boxes.txt").read_text().splitlines()) == 3
    lost = sum(len(v) for v in json.loads((tmp_path / "runs/few/run.json").read_text())["lost_frames"].values())
    said = re.fullmatch(rf"3 frames in ([\d.]+) s \(([\d.]+) fps\), {lost} lost; results in \S*runs/few/\n",
                        result.stdout)
    seconds, fps = float(said.group(1)), float(said.group(2))
    assert abs(fps * seconds - 3) <= 0.05 * fps + 0.01  # frames per second, of the seconds said (to 0.1 s)


def test_a_last_frame_equal_to_the_start_frame_tracks_that_frame(cli, davis, tiny_checkpoint, tmp_path):
    out = tmp_path / "run"
    result = cli("run", "--video", _frames_dir(davis, tmp_path, 3), "--start-frame", "1", "--last-frame", "1",
                 "--box", "300,120,200,150", "--checkpoint", tiny_checkpoint, "--out", out, *FAST)
    assert result.exit_code == 0, result.stderr
    assert (out / "boxes.txt").read_text().splitlines() == ["300.000,120.000,200.000,150.000"]
    video = json.loads((out / "run.json").read_text())["video"]
    assert (video["start_frame"], video["last_frame"], video["frames"]) == (1, 1, 1)
    assert result.stderr == ""  # the range was there whole: no warning


def test_a_video_that_ends_before_the_last_frame_says_where_it_ended(cli, tiny_checkpoint, tmp_path, monkeypatch):
    """A video file whose container does not state its length is tracked to its end, and the run says that
    it ended before --last-frame (a folder, whose length is known, refuses such a range at once)."""
    from tests.test_video import _frame, _report_properties, _write_video

    video, out = tmp_path / "clip.mp4", tmp_path / "run"
    _write_video(video, [_frame(40 * i, size=(96, 128)) for i in range(3)])
    _report_properties(monkeypatch, {cv2.CAP_PROP_FRAME_COUNT: -1.0})
    result = cli("run", "--video", video, "--start-frame", "1", "--last-frame", "3", "--box", "10,10,40,30",
                 "--checkpoint", tiny_checkpoint, "--out", out, *FAST)
    assert result.exit_code == 0, result.stderr
    assert len((out / "boxes.txt").read_text().splitlines()) == 2  # frames 1 and 2 of 0..2
    said = "trek-track: warning: the video ended at frame 2, before --last-frame 3"  # one frame short of it
    assert result.stderr.splitlines() == [said]


def test_missing_inputs_are_one_line(cli, davis, tiny_checkpoint, tmp_path):
    out = tmp_path / "out"
    args = ("--checkpoint", tiny_checkpoint, "--out", out, *FAST)
    _expect_user_error(cli("run", "--box", "1,1,4,4", *args), out, "give --video")
    video = _frames_dir(davis, tmp_path)
    _expect_user_error(cli("run", "--video", video, *args), out, "exactly one of --box")
    _expect_user_error(cli("run", "--video", video, "--init-mask", tmp_path / "nope.png", *args), out,
                       "init mask not found: .*nope.png")


@pytest.mark.parametrize("flag,value", [("--save-state-every", "-1"), ("--start-frame", "-1"),
                                        ("--last-frame", "-1")])
def test_negative_numbers_are_usage_errors(cli, davis, tiny_checkpoint, tmp_path, flag, value):
    out = tmp_path / "out"
    result = cli("run", "--video", _frames_dir(davis, tmp_path), "--box", "1,1,4,4", "--checkpoint", tiny_checkpoint,
                 "--out", out, flag, value, *FAST)
    assert result.exit_code == 2 and f"Invalid value for '{flag}'" in result.stderr
    assert not out.exists()


def test_every_file_option_is_made_absolute_for_a_resumed_run():
    from trek_tracker.cli.run import PATHS, run

    files = {p.name for p in run.params if p.name.endswith("checkpoint") or isinstance(p.type, click.Path)}
    assert set(PATHS) == (files | {"video"}) - {"out", "resume"}


def test_each_of_a_repeated_path_option_is_made_absolute_and_a_registry_name_kept(tmp_path, monkeypatch):
    from trek_tracker.cli.run import _absolute

    (tmp_path / "a.pth").write_bytes(b"")
    monkeypatch.chdir(tmp_path)
    assert _absolute(("a.pth", "r50_deaotl")) == (str(tmp_path.resolve() / "a.pth"), "r50_deaotl")
    assert _absolute(["a.pth"]) == [str(tmp_path.resolve() / "a.pth")] and _absolute(None) is None


def test_the_progress_bar_counts_the_frames_of_the_range(cli, davis, tiny_checkpoint, tmp_path):
    out = tmp_path / "run"
    result = cli("run", "--video", _frames_dir(davis, tmp_path, 4), "--start-frame", "1", "--last-frame", "2",
                 "--box", "300,120,200,150", "--checkpoint", tiny_checkpoint, "--out", out,
                 *(a for a in FAST if a != "--quiet"))
    assert result.exit_code == 0, result.stderr
    assert re.search(r"few: 100%.*\b2/2\b", result.stderr), result.stderr


def test_an_out_that_is_a_file_is_refused_and_left_alone(cli, davis, tiny_checkpoint, tmp_path):
    out = tmp_path / "out"
    out.write_text("mine")
    result = cli("run", "--video", _frames_dir(davis, tmp_path), "--box", "1,1,4,4", "--checkpoint", tiny_checkpoint,
                 "--out", out, *FAST)
    assert result.exit_code == 2 and "Invalid value for '--out'" in result.stderr and "is a file" in result.stderr
    assert out.read_text() == "mine"


@pytest.mark.parametrize("extra", [("--video", "elsewhere"), ("--device", "cpu"), ("--precision", "fp32"),
                                   ("--compile",), ("--quiet",), ("--save-state-every", "10")])
def test_resume_takes_the_options_that_do_not_change_the_result(cli, tmp_path, extra):
    result = cli("run", "--resume", tmp_path, *extra)
    assert result.exit_code == 2 and "trek-track: error:" in result.stderr
    assert "leave out" not in result.stderr  # refused for the folder (no run in it), not for the option


@pytest.mark.parametrize(("option", "kind"), [("--init-mask", "folder"), ("--resume", "file")])
def test_a_path_of_the_wrong_kind_is_refused_before_the_video_is_opened(cli, tiny_checkpoint, tmp_path, option,
                                                                        kind):
    out, wrong = tmp_path / "out", tmp_path / "wrong"
    wrong.mkdir() if kind == "folder" else wrong.write_text("")
    args = ("--video", tmp_path / "missing.mp4", "--checkpoint", tiny_checkpoint, "--out", out, *FAST)
    result = cli("run", option, wrong, *(args if option == "--init-mask" else ()))
    _expect_user_error(result, out, f"Invalid value for '{option}'.*is a {'directory' if kind == 'folder' else 'file'}")


def test_a_new_run_says_which_method_made_its_first_mask_when_auto_had_to_fall_back(cli, davis, tiny_checkpoint,
                                                                                     tmp_path):
    from trek_tracker.init.api import InitConfig, choose_method

    method, said = choose_method(InitConfig(method="auto"))  # no SAM nor Alpha-Refine checkpoint given
    out = tmp_path / "run"
    result = cli("run", "--video", _frames_dir(davis, tmp_path), "--box", "300,120,200,150", "--checkpoint",
                 tiny_checkpoint, "--out", out, *FAST[:-2], "--init", "auto")
    assert result.exit_code == 0, result.stderr
    init = json.loads((out / "run.json").read_text())["tracker"]["init"]
    assert init["message"].startswith(said) and method == "grabcut"
    assert result.stderr.splitlines() == [f"trek-track: {init['message']}"]  # the one line, what run.json records
