"""``trek-track train`` and ``trek-track eval-vos`` end to end on the shared DAVIS clips."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from trek_tracker.cli import main

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "configs" / "train" / "tiny_cpu_video.toml"


def run(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_train_config_errors_are_one_line(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[train]\nstepz = 3\n[[data]]\nroot = "x"\n')
    res = run("train", bad)
    assert res.exit_code == 2
    assert "unknown key(s) in config section [train]: stepz" in res.output
    assert "Traceback" not in res.output
    res = run("train", tmp_path / "missing.toml")
    assert res.exit_code == 2 and "config file not found" in res.output
    res = run("train", TINY, "--set", "train.steps")
    assert res.exit_code == 2 and "section.key=value" in res.output
    res = run("train", TINY, "--set", f'data.0.root="{tmp_path}"', "--out", tmp_path / "o")
    assert res.exit_code == 2 and "DAVIS / YouTube-VOS layout" in res.output


def test_train_failures_found_at_the_start_or_on_the_way_are_one_line(davis, tmp_path):
    """An override through a value, more objects per clip than the model identifies, and a run that
    diverges: each one line and exit 2, the diverging run stopping before its weights take the NaN."""
    res = run("train", TINY, "--set", "train.steps.x=1")
    assert res.exit_code == 2 and "train.steps is a value, not a section" in res.output, res.output
    common = ("--no-progress", "--set", f'data.0.root="{davis}"', "--set", "val.every=0", "--set",
              'val.root=""', "--set", "train.batch_size=2")
    res = run("train", TINY, "--out", tmp_path / "many", *common, "--set", "augment.max_objects=20")
    assert res.exit_code == 2 and "augment.max_objects 20 is more objects per clip than test_deaot_tiny " \
        "identifies (10)" in " ".join(res.output.split()), res.output
    out = tmp_path / "nan"
    res = run("train", TINY, "--out", out, *common, "--set", "train.steps=2", "--set", "optim.lr=1e12",
              "--set", "optim.warmup_ratio=0.0", "--set", "optim.grad_clip=1e30")
    assert res.exit_code == 2 and "training diverged at step" in res.output, res.output
    assert "Traceback" not in res.output


def test_train_then_eval_vos_reproduces_the_logged_validation(davis, tmp_path):
    out = tmp_path / "run"
    res = run("train", TINY, "--out", out, "--no-progress", "--set", f'data.0.root="{davis}"',
              "--set", f'val.root="{davis}"', "--set", "train.steps=3", "--set", "train.batch_size=2",
              "--set", "val.max_frames=6")
    assert res.exit_code == 0, res.output
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    final_val = [r for r in records if r["kind"] == "val"][-1]
    assert final_val["step"] == 3
    header = (out / "log.csv").read_text().splitlines()[0].split(",")
    assert {"step", "loss", "lr", "samples_per_s"} <= set(header)

    res = run("eval-vos", davis, "--checkpoint", out / "ema_final.pth", "--sequences", "car-shadow",
              "--max-long-edge", 209, "--max-frames", 6, "--json", tmp_path / "res.json",
              "--save-masks", tmp_path / "masks", "--device", "cpu")
    assert res.exit_code == 0, res.output
    got = json.loads((tmp_path / "res.json").read_text())
    assert got["J&F"] == pytest.approx(final_val["J&F"], abs=1e-9)
    assert len(list((tmp_path / "masks" / "car-shadow").glob("*.png"))) == 6

    # The EMA checkpoint is what `trek-track run` tracks with.
    clip = tmp_path / "clip"
    clip.mkdir()
    for f in sorted((davis / "JPEGImages" / "480p" / "car-shadow").glob("*.jpg"))[:4]:
        shutil.copy(f, clip / f.name)
    res = run("run", "--video", clip, "--init-mask", davis / "Annotations" / "480p" / "car-shadow" / "00000.png",
              "--checkpoint", out / "ema_final.pth", "--out", tmp_path / "tracked", "--device", "cpu",
              "--max-long-edge", 209, "--quiet")
    assert res.exit_code == 0, res.output
    assert len((tmp_path / "tracked" / "boxes.txt").read_text().split()) == 4


def test_eval_vos_on_saved_predictions(davis, tmp_path):
    gt = davis / "Annotations" / "480p" / "car-shadow"
    pred = tmp_path / "pred" / "car-shadow"
    shutil.copytree(gt, pred)
    res = run("eval-vos", davis, "--predictions", tmp_path / "pred", "--sequences", "car-shadow",
              "--json", tmp_path / "perfect.json")
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "perfect.json").read_text())["J&F"] == 1.0

    frames = sorted(pred.glob("*.png"))
    scored = len(frames) - 2  # first and last frame are not scored
    Image.fromarray(np.zeros((480, 854), np.uint8)).save(frames[5])  # object lost on one frame
    res = run("eval-vos", davis, "--predictions", tmp_path / "pred", "--sequences", "car-shadow",
              "--json", tmp_path / "one_lost.json")
    got = json.loads((tmp_path / "one_lost.json").read_text())
    assert got["J_mean"] == pytest.approx((scored - 1) / scored)
    assert got["F_mean"] == pytest.approx((scored - 1) / scored)

    frames[7].unlink()
    res = run("eval-vos", davis, "--predictions", tmp_path / "pred", "--sequences", "car-shadow")
    assert res.exit_code == 2 and "prediction missing" in res.output
    res = run("eval-vos", davis, "--predictions", tmp_path / "pred", "--checkpoint", tmp_path / "x.pth")
    assert res.exit_code == 2 and "not both" in res.output
