"""``benchmarks/gpu_report.py``: every stage's full-size command is one its benchmark accepts, and a smoke
report runs, records failures, refuses to mix with another report and resumes what did not finish."""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.damaged import REPO

sys.path.insert(0, str(REPO / "benchmarks"))

import gpu_report  # noqa: E402


class Parsed(Exception):
    pass


@pytest.mark.parametrize("quick", [False, True], ids=["full", "quick"])
@pytest.mark.parametrize("stage", [s for s in gpu_report.STAGES if s != "tests"])
def test_full_size_commands_parse(stage, quick, tmp_path, monkeypatch):
    """The commands a GPU session runs are checked here, where no GPU is: each benchmark's own parser
    accepts them (stopped right after parsing)."""
    original = argparse.ArgumentParser.parse_args

    def parse_then_stop(self, args=None, namespace=None):
        raise Parsed(original(self, args, namespace))

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
    commands = gpu_report.stage_commands(stage, tmp_path, device="cuda", smoke=False, official=tmp_path / "aotb",
                                         quick=quick)
    assert commands
    for cmd in commands:
        assert cmd[0] == sys.executable and Path(cmd[1]).parent == REPO / "benchmarks"
        spec = importlib.util.spec_from_file_location(f"bench_{stage}", cmd[1])
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        monkeypatch.setattr(sys, "argv", cmd[1:])
        with pytest.raises(Parsed) as parsed:
            module.main()
        ns = vars(parsed.value.args[0])
        assert str(ns["json"]).startswith(str(tmp_path))  # every stage leaves its figures as JSON
        if "device" in ns:
            assert ns["device"] == "cuda"
    if stage == "memory":
        assert "4640" in commands[0][commands[0].index("--lengths") + 1]
    if stage == "speed":  # the targets: 1080p, the default precision and the official evaluator's
        assert "--official" in commands[0] and "1080p" in commands[0] and "bf16" in commands[0]
    if quick:  # fewer frames than the full report, never more
        full = gpu_report.stage_commands(stage, tmp_path, device="cuda", smoke=False, official=tmp_path / "aotb")
        for option in ("--frames", "--budget-frames", "--steps"):
            if option in full[0]:
                assert int(commands[0][commands[0].index(option) + 1]) < int(full[0][full[0].index(option) + 1])


def _report(out: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_report.py"), "--out", str(out), "--smoke",
                           *args], capture_output=True, text=True, env=env, timeout=600)


def test_smoke_report_records_failures_refuses_mixing_and_resumes(tmp_path, shared):
    out = tmp_path / "report"
    # a device that is not there: the speed stage fails, the report goes on to the next stage
    first = _report(out, "--stages", "speed,train", "--device", "cuda:7")
    assert first.returncode == 1
    assert first.stderr.strip().splitlines()[-1] == "gpu_report: 1 stage(s) failed: speed"
    report = json.loads((out / "report.json").read_text())
    assert report["smoke"] and report["stages"]["speed"]["rc"] != 0 and report["stages"]["train"]["rc"] == 0
    assert "FAILED" in (out / "summary.md").read_text()

    again = _report(out, "--stages", "train", "--device", "cpu")
    assert again.returncode == 2 and "already holds a report" in again.stderr and again.stdout == ""

    train_log = (out / "train.log").read_text()
    resumed = _report(out, "--resume", "--stages", "speed,memory,outputs,train", "--device", "cpu")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "train: done before, kept" in resumed.stdout
    assert (out / "train.log").read_text() == train_log  # not run again
    report = json.loads((out / "report.json").read_text())
    assert {k: v["rc"] for k, v in report["stages"].items()} == {"speed": 0, "train": 0, "memory": 0, "outputs": 0}
    speed = json.loads((out / "speed.json").read_text())
    assert [r["model"] for r in speed["rows"]] == ["deaott"] and speed["rows"][0]["end_to_end_fps"] > 0
    memory = json.loads((out / "memory.json").read_text())
    assert sorted(r["frames"] for r in memory["rows"]) == [8, 16]
    (state,) = json.loads((out / "resume_state.json").read_text())["rows"]
    assert state["model"] == "deaott" and state["state_mib"] > 0 and not list(out.glob("resume-state-*"))
    text = (out / "summary.md").read_text()
    assert "smoke run" in text and "\ndevice: " in text
    # each benchmark's own table is in the summary
    for header in ("end-to-end", "peak RSS MiB", "samples/s", "file-writer threads"):
        assert header in text
    assert "python benchmarks/memory_long_video.py --model deaott" in text  # commands as a reader types them


def test_unknown_stage_foreign_or_unwritable_folder_are_one_line_errors(tmp_path):
    bad = _report(tmp_path / "r", "--stages", "speed,warp")
    assert bad.returncode == 2 and bad.stderr.strip() == (
        "gpu_report: unknown stage(s) warp; choose from " + ", ".join(gpu_report.STAGES))
    foreign = tmp_path / "theirs"
    foreign.mkdir()
    (foreign / "results.txt").write_text("someone else's")
    refused = _report(foreign, "--stages", "train")
    assert refused.returncode == 2 and "not empty and holds no report" in refused.stderr
    assert sorted(p.name for p in foreign.iterdir()) == ["results.txt"]
    blocked = _report(foreign / "results.txt" / "report", "--stages", "train")  # a file where a folder goes
    assert blocked.returncode == 2 and blocked.stderr.count("\n") == 1 and "is a file, not a folder" in blocked.stderr


def test_quick_picks_the_targets_stages_and_a_report_is_resumed_at_its_own_size(tmp_path):
    out = tmp_path / "r"
    smoke = _report(out, "--stages", "outputs", "--device", "cpu")
    assert smoke.returncode == 0, smoke.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["size"] == "smoke" and list(report["stages"]) == ["outputs"]
    quick = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_report.py"), "--out", str(out), "--quick",
                            "--resume", "--device", "cpu"], capture_output=True, text=True, timeout=300)
    assert quick.returncode == 2 and quick.stderr.strip() == f"gpu_report: {out} holds a smoke report; resume it the " \
                                                               "same way"
    assert set(gpu_report.QUICK_STAGES) < set(gpu_report.STAGES) and gpu_report.QUICK_STAGES[0] == "tests"


def test_a_deadline_bounds_the_report_and_leaves_the_rest_to_resume(tmp_path, monkeypatch, capsys):
    """A lease of a GPU ends at a fixed time: no command runs past ``--deadline``, a stage with too little
    time left is recorded as not run (and said so), and ``--resume`` runs exactly those stages."""
    import time

    timeouts = {}

    def fake_run(cmd, log, timeout):
        stage = log.stem
        timeouts[stage] = timeout
        time.sleep(0.4)
        return 0, 0.4

    monkeypatch.setattr(gpu_report, "run_command", fake_run)
    monkeypatch.setattr(gpu_report, "MIN_STAGE_SECONDS", 0.2)
    out = tmp_path / "r"
    args = ["--out", str(out), "--smoke", "--device", "cpu", "--stages", "outputs,train"]
    assert gpu_report.main([*args, "--deadline", "0.5"]) == 1
    assert list(timeouts) == ["outputs"] and timeouts["outputs"] <= 0.5
    stages = json.loads((out / "report.json").read_text())["stages"]
    assert stages["outputs"]["rc"] == 0 and stages["train"]["rc"] is None
    assert "## train: not run (the --deadline had passed)" in (out / "summary.md").read_text()
    err = capsys.readouterr().err.strip()
    assert err == "gpu_report: 1 not run before the deadline: train (--resume runs them)"

    timeouts.clear()
    assert gpu_report.main([*args, "--resume"]) == 0
    assert list(timeouts) == ["train"] and timeouts["train"] is None  # no deadline, no stage timeout
    stages = json.loads((out / "report.json").read_text())["stages"]
    assert {name: st["rc"] for name, st in stages.items()} == {"outputs": 0, "train": 0}


def test_junit_counts_read_pytests_junit_file(tmp_path):
    """The ``tests`` stage's counts (a skipped CUDA test fails a full report: every one must run on a GPU)."""
    junit = tmp_path / "tests.xml"
    junit.write_text('<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest" errors="1" '
                     'failures="2" skipped="3" tests="13" time="1.0"></testsuite></testsuites>')
    assert gpu_report.junit_counts(junit) == {"passed": 7, "failed": 2, "errors": 1, "skipped": 3}
    report = {"smoke": False, "device": {"cpus": 2, "torch": "2", "cuda": None, "python": "3"},
              "stages": {"tests": {"rc": 3, "seconds": 5.0, "commands": ["python -m pytest -m cuda"], "tail": [],
                                   "tests": gpu_report.junit_counts(junit)}}}
    assert "## tests: FAILED (exit 3) (7 passed, 2 failed, 1 errors, 3 skipped), 5 s" in gpu_report.summary(report)


def test_the_deadline_counts_from_the_start_and_official_is_the_callers_path(tmp_path, monkeypatch, capsys):
    """``--deadline`` bounds the whole report, opening the GPU (``device_info``) included; ``--official``
    is a path as the caller typed it (the stages run in the checkout), checked before any stage runs."""
    import time

    commands, timeouts = [], []

    def fake_run(cmd, log, timeout):
        commands.append(cmd)
        timeouts.append(timeout)
        return 0, 0.0

    def slow_device_info():
        time.sleep(0.3)  # importing torch and opening the GPU
        return {"cpus": 1, "torch": "2", "cuda": None, "python": "3"}

    monkeypatch.setattr(gpu_report, "run_command", fake_run)
    monkeypatch.setattr(gpu_report, "device_info", slow_device_info)
    monkeypatch.setattr(gpu_report, "MIN_STAGE_SECONDS", 0.01)
    (tmp_path / "aotb" / "configs").mkdir(parents=True)
    (tmp_path / "aotb" / "configs" / "pre_ytb_dav.py").write_text("")
    monkeypatch.chdir(tmp_path)
    args = ["--smoke", "--device", "cpu", "--stages", "speed"]
    assert gpu_report.main(["--out", "r", *args, "--official", "aotb", "--deadline", "1.0"]) == 0
    (cmd,) = commands
    assert cmd[cmd.index("--official") + 1] == str(tmp_path / "aotb")
    assert timeouts[0] <= 0.75  # what is left of the deadline after the 0.3 s
    capsys.readouterr()
    assert gpu_report.main(["--out", "r2", *args, "--official", "configs"]) == 2
    assert capsys.readouterr().err.strip() == (
        "gpu_report: --official configs is not an aot-benchmark checkout (no configs/pre_ytb_dav.py in it); give "
        "the folder of a clone of yoxu515/aot-benchmark")
    assert len(commands) == 1 and not (tmp_path / "r2").exists()


def test_a_stopped_command_leaves_no_scratch_folder_in_the_report(tmp_path, monkeypatch):
    """resume_state.py saves its states (hundreds of MiB at 1080p) in a scratch folder inside the report:
    stopped at a time limit it cannot remove it, and the report's folder is what is copied off the GPU."""
    def stopped(cmd, log, timeout):
        if "resume_state.py" in cmd[1]:
            scratch = tmp_path / "r" / "resume-state-x1y2"
            scratch.mkdir()
            (scratch / "resume.pt").write_bytes(b"\0" * 1000)
            return 124, 1.0
        return 0, 1.0

    monkeypatch.setattr(gpu_report, "run_command", stopped)
    assert gpu_report.main(["--out", str(tmp_path / "r"), "--smoke", "--device", "cpu", "--stages", "memory"]) == 1
    assert gpu_report.json.loads((tmp_path / "r" / "report.json").read_text())["stages"]["memory"]["rc"] == 124
    assert not list((tmp_path / "r").glob("resume-state-*"))
