"""``trek-track train-data check`` and ``trek-track train-data masks-from-boxes`` through the real CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
from click.testing import CliRunner

from tests.train import replicas
from trek_tracker.cli import main


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_check_prints_counts_and_problems(davis, tmp_path):
    replicas.youtubevos(davis, tmp_path)
    res = run("train-data", "check", "youtubevos", tmp_path)
    assert res.exit_code == 0, res.output
    assert res.output.strip().splitlines()[-1] == (f"youtubevos {tmp_path}: 1 sequences, 4 annotated frames, "
                                                   "2 objects; 0 problem(s)")
    replicas.save_png(tmp_path / "train" / "Annotations" / "vid0" / "00010.png", np.zeros((72, 128), np.int64))
    res = run("train-data", "check", "youtubevos", tmp_path)
    assert res.exit_code == 1
    problems = [line for line in res.output.splitlines() if line.startswith("problem: ")]
    assert len(problems) == 2, res.output  # empty, and meta.json lists object 1 there
    assert "00010.png: empty mask" in problems[0] and "meta.json lists [1]" in problems[1]


def test_check_user_mistakes_are_one_line(tmp_path):
    res = run("train-data", "check", "lasott", tmp_path)
    assert res.exit_code == 2 and "Traceback" not in res.output and "lasott" in res.output
    res = run("train-data", "check", "lasot", tmp_path / "missing")
    assert res.exit_code == 1 and "problem:" in res.output and "not found" in res.output
    res = run("train-data", "check", "davis", tmp_path, "--option", "resolution")
    assert res.exit_code == 2 and "key=value" in res.output
    res = run("train-data", "check", "davis", tmp_path, "--max-problems", "-1")  # printed all but one before
    assert res.exit_code == 2 and "--max-problems" in res.output and "Traceback" not in res.output


def test_masks_from_boxes_cli_box_method_and_shards(davis, tmp_path):
    replicas.got10k(davis, tmp_path / "GOT")
    out = tmp_path / "out"
    res = run("train-data", "masks-from-boxes", "got10k", tmp_path / "GOT", "--out", out, "--method", "box",
              "--shard", "0/1", "--no-progress", "--device", "cpu")
    assert res.exit_code == 0, res.output
    assert "1 sequences (0 done before), 3 masks written" in res.output
    assert len(list((out / "Annotations" / "GOT-10k_Train_000001").glob("*.png"))) == 3  # frame 2 absent
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["method"] == "box" and manifest["checkpoints"] == [] and manifest["root"].endswith("GOT")
    res = run("train-data", "masks-from-boxes", "got10k", tmp_path / "GOT", "--out", out, "--method", "box",
              "--no-progress", "--device", "cpu")
    assert res.exit_code == 0 and "(1 done before), 0 masks written" in res.output
    res = run("train-data", "check", "got10k", tmp_path / "GOT", "--mask-root", out)
    assert res.exit_code == 0 and "1 sequences with masks" in res.output
    for bad in (("--shard", "2/2"), ("--sam-checkpoint", tmp_path / "nope.pth", "--method", "sam"),
                ("--every", "0")):
        res = run("train-data", "masks-from-boxes", "got10k", tmp_path / "GOT", "--out", tmp_path / "o2",
                  "--no-progress", "--device", "cpu", *bad)
        assert res.exit_code == 2 and "Traceback" not in res.output, res.output
    res = run("train-data", "masks-from-boxes", "got10k", tmp_path / "GOT", "--out", tmp_path / "o3", "--method", "sam",
              "--no-progress", "--device", "cpu")
    assert res.exit_code == 2 and "--sam-checkpoint" in res.output


def test_data_command_is_registered_in_the_installed_entry_point(tmp_path):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(p) for p in sys.path if p]))
    proc = subprocess.run([sys.executable, "-m", "trek_tracker.cli", "train-data", "--help"], capture_output=True,
                          text=True, env=env, timeout=60)
    assert proc.returncode == 0 and "masks-from-boxes" in proc.stdout and "check" in proc.stdout


def test_data_is_an_unlisted_alias_of_train_data():
    listed = CliRunner().invoke(main, ["--help"]).output
    assert "train-data" in listed and not any(line.split()[:1] == ["data"] for line in listed.splitlines())
    res = run("data", "check", "--help")
    assert res.exit_code == 0 and "KIND" in res.output and "ROOT" in res.output


def test_check_prints_at_most_max_problems_and_counts_the_rest(davis, tmp_path):
    replicas.youtubevos(davis, tmp_path)
    replicas.save_png(tmp_path / "train" / "Annotations" / "vid0" / "00010.png", np.zeros((72, 128), np.int64))
    for most, shown, rest in ((2, 2, []), (1, 1, ["... and 1 more problems"]), (0, 0, ["... and 2 more problems"])):
        res = run("train-data", "check", "youtubevos", tmp_path, "--max-problems", most)
        assert res.exit_code == 1, res.output
        lines = res.output.splitlines()
        assert len([line for line in lines if line.startswith("problem: ")]) == shown
        assert [line for line in lines if line.startswith("...")] == rest
        assert lines[-1].endswith("; 2 problem(s)")


def test_masks_from_boxes_options_reach_the_job(davis, tmp_path):
    replicas.got10k(davis, tmp_path / "GOT")
    out = tmp_path / "out"
    res = run("train-data", "masks-from-boxes", "got10k", tmp_path / "GOT", "--out", out, "--method", "box",
              "--sequences", "GOT-10k_Train_000001", "--max-sequences", "1", "--every", "2", "--split", "train",
              "--sam-model", "vit_b", "--ar-model", "seg384", "--no-progress", "--device", "cpu")
    assert res.exit_code == 0, res.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert (manifest["sequences"], manifest["max_sequences"], manifest["every"], manifest["split"]) == (
        ["GOT-10k_Train_000001"], 1, 2, "train")
    assert (manifest["params"]["sam_model"], manifest["params"]["ar_model"]) == ("vit_b", "seg384")
    assert len(list((out / "Annotations" / "GOT-10k_Train_000001").glob("*.png"))) == 2  # visible frames 0, 2, 3


def test_every_reader_can_be_checked_and_every_box_reader_turned_into_masks():
    from trek_tracker.cli.data import BOX_KINDS, KINDS
    from trek_tracker.train.datasets import READERS

    assert sorted(KINDS) == sorted(READERS)
    assert sorted(BOX_KINDS) == sorted(kind for kind, r in READERS.items() if r.family == "boxes")


def test_check_reads_only_the_sequences_asked_for(davis, tmp_path):
    replicas.youtubevos(davis, tmp_path)
    res = run("train-data", "check", "youtubevos", tmp_path, "--sequences", "vid0,")
    assert res.exit_code == 0 and "1 sequences" in res.output, res.output
    res = run("train-data", "check", "youtubevos", tmp_path, "--sequences", "nope")
    assert res.exit_code == 1 and "sequences not found" in res.output and "nope" in res.output, res.output
