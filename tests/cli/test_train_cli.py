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
    last = [r for r in records if r["kind"] == "train"][-1]
    assert res.stderr.splitlines()[-3:] == [f"step 3: loss {last['loss']:.4f}",
                                            f"validation at step 3: J&F {final_val['J&F']:.4f}", f"run folder: {out}"]
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
    n = len(np.unique(np.array(Image.open(gt / "00000.png")))) - 1  # the objects of the first frame, numbered from 1
    assert n >= 1 and res.stdout.splitlines()[:-1] == [
        f"{'car-shadow':<24} obj {k:<3} J 1.0000  F 1.0000  (1/1)" for k in range(1, n + 1)]  # a row per object
    assert res.stdout.splitlines()[-1].startswith("J&F 1.0000  J 1.0000  F 1.0000  ")

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


def test_a_checkpoint_that_does_not_fit_on_the_disk_is_one_line(davis, tmp_path):
    """A write that fails for want of space (here the file-size limit, EFBIG, as a full disk gives ENOSPC):
    torch.save reports it as a RuntimeError of its zip writer, which must still reach the user as one line
    naming the file, leaving no half-written file behind."""
    resource = pytest.importorskip("resource")
    out = tmp_path / "full"
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (3_000_000, hard))  # the log files fit, a 6 MB state does not
    try:
        res = run("train", TINY, "--out", out, "--no-progress", "--set", f'data.0.root="{davis}"', "--set",
                  'val.root=""', "--set", "train.batch_size=2", "--set", "train.steps=2")
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert res.exit_code == 2, res.output
    assert f"trek-track: error: cannot write {out / 'checkpoints' / 'step_0000002.state.pth'}: file too large " \
           "for the file system" in " ".join(res.output.split()), res.output
    assert "Traceback" not in res.output
    assert list((out / "checkpoints").iterdir()) == []


def test_the_torchrun_entry_point_fails_in_one_line(davis, tmp_path):
    """``python -m trek_tracker.train`` (what torchrun starts) reports an unwritable run folder as
    ``trek-track train`` does: one line and exit code 2, not a traceback."""
    import os
    import subprocess
    import sys

    blocker = tmp_path / "file"
    blocker.write_text("")
    env = dict(os.environ, OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p))
    proc = subprocess.run([sys.executable, "-m", "trek_tracker.train", str(TINY), "--out", str(blocker / "run"),
                           "--no-progress", "--set", f'data.0.root="{davis}"', "--set", 'val.root=""',
                           "--set", "train.batch_size=2", "--set", "train.steps=1"],
                          capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines() == [
        f"trek-track: error: cannot write {blocker / 'run'}: {blocker} is a file, not a folder; remove or rename "
        "that file, or choose another --out"], proc.stderr[-2000:]


def test_the_torchrun_entry_points_usage_is_a_command_that_works():
    """click names a sub-command after its group: the usage must not read ``python -m trek_tracker.train train``."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "trek_tracker.train", "--help"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0].startswith("Usage: python -m trek_tracker.cli train "), proc.stdout


def test_eval_vos_scores_at_the_network_size_of_the_training_validation_by_default():
    """So that `eval-vos` on a run's checkpoint reproduces its logged validation without size options."""
    import inspect

    from trek_tracker.cli.eval_vos import eval_vos
    from trek_tracker.train.config import ValSection
    from trek_tracker.train.validate import evaluate_model

    default = next(p.default for p in eval_vos.params if p.name == "max_long_edge")
    library = inspect.signature(evaluate_model).parameters["max_long_edge"].default
    assert default == ValSection().max_long_edge == library


def test_eval_vos_names_every_model_option_given_with_predictions(davis, tmp_path):
    (tmp_path / "pred").mkdir()
    res = run("eval-vos", davis, "--predictions", tmp_path / "pred", "--save-masks", tmp_path / "masks")
    assert res.exit_code == 2 and "error: --save-masks applies to a model's run, not to --predictions" in res.output
    res = run("eval-vos", davis, "--predictions", tmp_path / "pred", "--save-masks", tmp_path / "masks",
              "--max-frames", 2)
    assert res.exit_code == 2 and "error: --max-frames and --save-masks apply to a model's run" in res.output
    assert not (tmp_path / "masks").exists()


def test_train_config_that_is_a_folder_is_a_usage_error(tmp_path):
    res = run("train", tmp_path)
    assert res.exit_code == 2 and "Invalid value for 'CONFIG'" in res.output and "is a directory" in res.output
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("option", "kind"), [(None, "file"), (None, "missing"), ("--predictions", "file"),
                                              ("--predictions", "missing"), ("--save-masks", "file"),
                                              ("--json", "folder")])
def test_eval_vos_paths_of_the_wrong_kind_are_usage_errors_before_any_work(tmp_path, option, kind):
    (tmp_path / "data").mkdir()
    wrong = tmp_path / "wrong"
    if kind != "missing":
        wrong.mkdir() if kind == "folder" else wrong.write_text("")
    args = [wrong] if option is None else [tmp_path / "data", option, wrong]
    res = run("eval-vos", *args)
    named = "'DATA'" if option is None else f"'{option}'"
    said = {"folder": "is a directory", "file": "is a file", "missing": "does not exist"}[kind]
    assert res.exit_code == 2 and res.stderr.count("\n") == 1 and "Traceback" not in res.output, res.output
    assert f"Invalid value for {named}" in res.stderr and said in res.stderr, res.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"] + ["wrong"] * (kind != "missing")
    assert not any((tmp_path / "data").iterdir())


def test_eval_vos_on_annotations_without_any_object_is_one_line_not_a_score(davis, tmp_path):
    data = tmp_path / "davis"
    for sub in ("JPEGImages/480p/car-shadow", "Annotations/480p/car-shadow"):
        (data / sub).mkdir(parents=True)
    for i in range(3):
        shutil.copy(davis / f"JPEGImages/480p/car-shadow/{i:05d}.jpg", data / "JPEGImages/480p/car-shadow")
        Image.fromarray(np.zeros((480, 854), np.uint8)).save(data / f"Annotations/480p/car-shadow/{i:05d}.png")
    shutil.copytree(data / "Annotations/480p", tmp_path / "pred")
    res = run("eval-vos", data, "--predictions", tmp_path / "pred", "--json", tmp_path / "scores.json")
    assert res.exit_code == 2, res.output
    assert res.stdout.splitlines() == [f"{'car-shadow':<24} no object in its annotations (1/1)"]
    assert res.stderr.splitlines() == [f"trek-track: error: no annotation in {data} holds an object (every mask is "
                                       "background): nothing to score"]
    assert not (tmp_path / "scores.json").exists()
