"""``trek-track eval``, ``submit`` and ``dataset check`` end to end on a synthetic TREK-150 root."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.cli.conftest import TINY
from tests.eval.helpers import build_shared_starts, build_synthetic
from trek_tracker.cli import main

ORACLE = "tests.eval.helpers:OracleTracker"
CONSTANT = "tests.eval.helpers:ConstantTracker"


@pytest.fixture()
def root(tmp_path: Path) -> Path:
    return build_synthetic(tmp_path / "trek")


def run(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def test_eval_runs_scores_and_reports(root: Path, tmp_path: Path) -> None:
    res, rep = tmp_path / "results", tmp_path / "reports"
    r = run("eval", "--root", root, "--tracker", "oracle", "--tracker-class", ORACLE, "--results", res,
            "--report-dir", rep, "--json", tmp_path / "perf.json", "--quiet")
    assert r.exit_code == 0, r.output
    assert r.stdout.count(f"{20 / 21:.10f}") >= 3  # OPE, MSE, HOI overall success, and per sequence
    assert "TREK-150 MSE" in r.stdout and "recall" in r.stdout
    assert (res / "oracle" / "mse" / "P01-P01_01-2-anchor-7.txt").is_file()
    for p in ("ope", "mse", "hoi"):
        perf = json.loads((tmp_path / f"perf-{p}.json").read_text())
        assert perf["oracle"]["overall"]["success_score"] == pytest.approx(20 / 21)
        assert (rep / f"performance-{p}.json").read_text() == (tmp_path / f"perf-{p}.json").read_text()
    assert (rep / "success_plots.png").is_file()
    assert (rep / "generalized_success_robustness_plots.png").is_file()


def test_our_tracker_tracks_a_run_that_starts_a_longer_one_once(tiny_checkpoint, tmp_path: Path) -> None:
    """Our tracker is causal and deterministic, so eval writes a run that is the first frames of a longer run
    from that run's rows: the same result files as with --track-every-run, for 5 of 9 runs tracked. A
    toolkit tracker (--tracker-class) tracks every run."""
    root, res = build_shared_starts(tmp_path / "trek"), tmp_path / "results"
    ours = ("--root", root, "--results", res, "--report-dir", tmp_path / "reports", "--no-plots", "--model", TINY,
            "--checkpoint", tiny_checkpoint, "--max-long-edge", "96", "--init", "box", "--device", "cpu")
    shared = run("eval", "--tracker", "shared", *ours)
    assert shared.exit_code == 0, shared.output
    assert "5 runs tracked, 4 written from a longer run's first rows, 0 already finished" in shared.stderr
    every = run("eval", "--tracker", "every", "--track-every-run", *ours)
    assert every.exit_code == 0 and "9 runs tracked, 0 already finished" in every.stderr, every.output
    files = sorted(p.relative_to(res / "every") for p in (res / "every").rglob("*.txt") if "times" not in p.parts)
    assert len(files) == 9
    assert all((res / "shared" / f).read_bytes() == (res / "every" / f).read_bytes() for f in files)
    first = run("eval", "--tracker", "split", "--protocol", "ope", *ours)
    later = run("eval", "--tracker", "split", "--protocol", "mse", *ours)  # the run from frame 0 is OPE's
    assert first.exit_code == 0 and later.exit_code == 0, later.output
    assert "3 runs tracked, 1 written from a longer run's first rows, 0 already finished" in later.stderr
    from_ope = (res / "split/mse/P01-P01_01-2-anchor-0.txt").read_bytes()
    assert from_ope == (res / "every/ope/P01-P01_01-2.txt").read_bytes()
    toolkit = run("eval", "--root", root, "--tracker", "constant", "--tracker-class", CONSTANT, "--results", res,
                  "--report-dir", tmp_path / "reports", "--no-plots")
    assert toolkit.exit_code == 0 and "9 runs tracked, 0 already finished" in toolkit.stderr, toolkit.output


def test_report_only_compares_trackers(root: Path, tmp_path: Path) -> None:
    res = tmp_path / "results"
    for name, cls in (("oracle", ORACLE), ("constant", CONSTANT)):
        r = run("eval", "--root", root, "--tracker", name, "--tracker-class", cls, "--results", res,
                "--protocol", "ope", "--quiet", "--no-plots", "--report-dir", tmp_path / "x")
        assert r.exit_code == 0
    r = run("eval", "--report-only", "--protocol", "ope", "--root", root, "--tracker", "oracle", "--tracker",
            "constant", "--results", res, "--report-dir", tmp_path / "rep", "--overall-only", "--quiet")
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    assert lines[3].startswith("oracle") and lines[4].startswith("constant")
    assert "per sequence" not in r.stdout
    perf = json.loads((tmp_path / "rep" / "performance-ope.json").read_text())
    assert list(perf) == ["oracle", "constant"]
    assert perf["constant"]["overall"]["success_score"] < perf["oracle"]["overall"]["success_score"]


def test_report_only_without_results_is_a_user_error(root: Path, tmp_path: Path) -> None:
    r = run("eval", "--report-only", "--protocol", "mse", "--root", root, "--tracker", "ghost", "--results",
            tmp_path, "--report-dir", tmp_path / "rep")
    assert r.exit_code == 2
    assert r.stderr.startswith("trek-track: error: 4 MSE result file(s) of ghost are missing")
    assert "Traceback" not in r.output


def test_shards_then_report(root: Path, tmp_path: Path) -> None:
    res = tmp_path / "results"
    for i in range(2):
        r = run("eval", "--root", root, "--tracker", "c", "--tracker-class", CONSTANT, "--results", res,
                "--shard", f"{i}/2", "--quiet")
        assert r.exit_code == 0 and "shard" in r.stderr and r.stdout == ""
    assert len(list((res / "c").rglob("*.txt"))) == 2 + 2 + 4 + 2  # ope (+times), mse, hoi
    r = run("eval", "--report-only", "--root", root, "--tracker", "c", "--results", res, "--no-plots",
            "--report-dir", tmp_path / "rep", "--quiet")
    assert r.exit_code == 0, r.output
    assert run("eval", "--root", root, "--tracker", "c", "--tracker-class", CONSTANT, "--results", res,
               "--shard", "2/2").exit_code == 2


def test_report_only_before_every_shard_is_done_names_every_missing_file_in_one_line(root: Path,
                                                                                   tmp_path: Path) -> None:
    """Scoring after one shard of two: one line that names what is missing of every protocol (not only of
    the first incomplete one), and no report written."""
    from trek_tracker.eval import protocols as P
    from trek_tracker.eval.dataset import Trek150

    res, rep = tmp_path / "results", tmp_path / "rep"
    r = run("eval", "--root", root, "--tracker", "c", "--tracker-class", CONSTANT, "--results", res,
            "--shard", "0/2", "--quiet")
    assert r.exit_code == 0, r.output
    missing = [run_.relpath for run_ in P.plan(Trek150(root), "all") if not (res / "c" / run_.relpath).is_file()]
    assert {m.split("/")[0] for m in missing} == {"ope", "mse"}  # two protocols incomplete
    r = run("eval", "--report-only", "--root", root, "--tracker", "c", "--results", res, "--report-dir", rep,
            "--no-plots")
    assert r.exit_code == 2 and "Traceback" not in r.output
    assert r.stdout == "" and r.stderr.count("\n") == 1, r.output
    assert r.stderr.startswith(f"trek-track: error: {len(missing)} result file(s) of c (1 OPE, 3 MSE) are missing")
    assert all(m in r.stderr for m in missing) and "every shard must finish" in r.stderr
    assert not rep.exists()


def test_submit(root: Path, tmp_path: Path) -> None:
    res = tmp_path / "results"
    assert run("eval", "--root", root, "--tracker", "o", "--tracker-class", ORACLE, "--results", res,
               "--protocol", "ope", "--quiet", "--no-plots", "--report-dir", tmp_path / "rep").exit_code == 0
    out = tmp_path / "challenge-submission.zip"
    r = run("submit", "--results", res, "--tracker", "o", "--root", root, "--out", out)
    assert r.exit_code == 2 and "6 problem(s)" in r.stderr
    assert "P01-P01_01-2-anchor-7.txt is missing" in r.stderr
    assert not out.exists()
    assert run("eval", "--root", root, "--tracker", "o", "--tracker-class", ORACLE, "--results", res,
               "--protocol", "all", "--quiet", "--no-plots", "--report-dir", tmp_path / "rep").exit_code == 0
    r = run("submit", "--results", res, "--tracker", "o", "--root", root, "--out", out, "--sls-pt", "2",
            "--tracker-name", "Our Tracker")
    assert r.exit_code == 0, r.output
    with zipfile.ZipFile(out) as z:
        assert z.namelist() == ["challenge-submission.json"]
        sub = json.loads(z.read("challenge-submission.json"))
    assert (sub["tracker_name"], sub["sls_pt"], sub["sls_tl"]) == ("Our Tracker", 2, -1)
    assert list(sub["results"]["hoi"]) == ["P01-P01_01-2"] and len(sub["results"]["ope"]["P01-P01_01-2"]) == 8


def test_dataset_check(root: Path) -> None:
    r = run("dataset", "check", "--root", root)
    assert r.exit_code == 0
    assert "2 sequences, 13 frames" in r.stdout and "1 with anchors_hoi.txt (2 HOI runs)" in r.stdout
    (root / "P01-P01_01-10" / "frames.txt").write_text("1\n2\n")
    r = run("dataset", "check", "--root", root)
    assert r.exit_code == 2 and "2 rows in frames.txt but 5 rows" in r.stderr


def test_dataset_check_refuses_to_decode_frames_it_is_told_to_skip(root: Path) -> None:
    r = run("dataset", "check", "--root", root, "--decode", "--no-images")
    assert r.exit_code == 2 and r.stdout == "" and r.stderr == "trek-track: error: --decode decodes the frames, " \
        "--no-images skips them: give one of them\n", r.output


def test_dataset_check_lists_every_problem_on_stdout_before_failing(root: Path) -> None:
    from trek_tracker.eval.dataset import Trek150

    (root / "P01-P01_01-10" / "frames.txt").write_text("1\n2\n")
    (root / "P01-P01_01-2" / "frames.txt").write_text("1\n")
    problems = [f"problem: {f.line()}" for f in Trek150(root).validate().problems]
    r = run("dataset", "check", "--root", root)
    assert r.exit_code == 2 and len(problems) == 2, r.output
    assert [line for line in r.stdout.splitlines() if line.startswith("problem: ")] == problems
    assert r.stderr.startswith(f"trek-track: error: dataset check found 2 problems in 2 sequences of {root} ")


def test_eval_module_does_not_import_torch() -> None:
    code = ("import sys, trek_tracker.cli.eval\n"
            "sys.exit('torch' in sys.modules or 'matplotlib' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_dataset_prepare_without_annotations_is_a_user_error(tmp_path: Path) -> None:
    r = run("dataset", "prepare", "--root", tmp_path / "trek")
    assert r.exit_code == 2 and "TREK-150-annotations.zip" in r.stderr and "Traceback" not in r.output


def test_a_report_of_some_sequences_never_replaces_the_whole_benchmarks(root: Path, tmp_path: Path,
                                                                          monkeypatch) -> None:
    """The default report folder holds the whole benchmark's report; ``--sequences`` reports into a folder of
    that subset's own below it (the subset's scores written over the full ones would pass for them)."""
    monkeypatch.chdir(tmp_path)
    res = tmp_path / "results"
    args = ("eval", "--root", root, "--tracker", "oracle", "--results", res, "--protocol", "ope", "--no-plots",
            "--quiet")
    assert run(*args, "--tracker-class", ORACLE).exit_code == 0
    full = Path("reports/TREK-150/oracle/performance-ope.json")
    before = json.loads(full.read_text())
    assert sorted(before["oracle"]["seq_wise"]) == ["P01-P01_01-10", "P01-P01_01-2"]
    r = run(*args, "--report-only", "--sequences", "P01-P01_01-10")
    assert r.exit_code == 0, r.output
    assert json.loads(full.read_text()) == before
    (subset,) = Path("reports/TREK-150/oracle").glob("sequences-1-*/performance-ope.json")
    assert list(json.loads(subset.read_text())["oracle"]["seq_wise"]) == ["P01-P01_01-10"]
    assert run(*args, "--report-only", "--sequences", "P01-P01_01-2,P01-P01_01-10").exit_code == 0
    assert len(list(Path("reports/TREK-150/oracle").glob("sequences-*"))) == 2


LAUNCHER_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_STEP_NUM_TASKS",
                 "SLURM_LOCALID", "SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_MIN", "SLURM_ARRAY_TASK_MAX",
                 "SLURM_ARRAY_TASK_STEP", "SLURM_ARRAY_TASK_COUNT")


@pytest.fixture()
def no_launcher(monkeypatch):
    for name in LAUNCHER_VARS:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.mark.parametrize("env", [{"SLURM_NTASKS": "4", "SLURM_PROCID": "0"},  # sbatch -n 4's batch script
                                 {"SLURM_NTASKS": "4"}])  # an salloc -n 4 shell
def test_one_command_in_a_job_of_several_tasks_runs_the_whole_plan(root: Path, tmp_path: Path, no_launcher,
                                                                   env) -> None:
    """The job's SLURM_NTASKS is in the environment of its batch script (and of an salloc shell) too, where
    `trek-track eval` is one process: it runs every run (on every GPU it sees), not shard 0 of 4."""
    for name, value in env.items():
        no_launcher.setenv(name, value)
    res = tmp_path / "results"
    r = run("eval", "--root", root, "--tracker", "c", "--tracker-class", CONSTANT, "--results", res,
            "--report-dir", tmp_path / "rep", "--no-plots")
    assert r.exit_code == 0, r.output
    assert "8 runs tracked, 0 already finished" in r.stderr and "shard" not in r.stderr
    assert len(list((res / "c").rglob("*.txt"))) == 2 + 2 + 4 + 2  # ope (+times), mse, hoi


def test_a_stray_launcher_variable_is_one_line(root: Path, tmp_path: Path, no_launcher) -> None:
    no_launcher.setenv("WORLD_SIZE", "2")  # exported for another program, without RANK
    r = run("eval", "--root", root, "--tracker", "c", "--tracker-class", CONSTANT, "--results", tmp_path / "res")
    assert r.exit_code == 2 and "Traceback" not in r.output
    assert r.stderr.splitlines() == ["trek-track: error: environment variable RANK is not set, so this process "
                                     "cannot tell its share of the evaluation; run it under torchrun, srun or a "
                                     "Slurm array as they set it, or unset the launcher's variables and give "
                                     "--shard I/N"]


@pytest.mark.parametrize("env,devices", [
    ({}, [f"cuda:{i}" for i in range(4)]),
    ({"SLURM_ARRAY_TASK_ID": "3", "SLURM_ARRAY_TASK_COUNT": "8"}, [f"cuda:{i}" for i in range(4)]),  # a job of its own
    ({"RANK": "1", "WORLD_SIZE": "4", "LOCAL_RANK": "1"}, None),  # each process on its LOCAL_RANK's GPU
    ({"SLURM_PROCID": "1", "SLURM_STEP_NUM_TASKS": "4", "SLURM_NTASKS": "4"}, None),  # srun: SLURM_LOCALID's
    ({"SLURM_PROCID": "0", "SLURM_NTASKS": "4"}, [f"cuda:{i}" for i in range(4)]),  # the batch script itself
])
def test_auto_uses_every_gpu_unless_a_launcher_started_a_process_per_gpu(no_launcher, env, devices) -> None:
    import torch

    from trek_tracker.cli.eval import _devices

    no_launcher.setattr(torch.cuda, "is_available", lambda: True)
    no_launcher.setattr(torch.cuda, "device_count", lambda: 4)
    for name, value in env.items():
        no_launcher.setenv(name, value)
    assert _devices("auto") == devices


def test_listed_gpus_are_used_in_their_order_and_one_that_is_not_there_is_refused_at_once(root: Path, tmp_path: Path,
                                                                                          monkeypatch) -> None:
    import torch

    from trek_tracker.cli.eval import _devices

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    assert _devices("cuda:2, cuda:0") == ["cuda:2", "cuda:0"]
    r = run("eval", "--root", root, "--tracker", "o", "--tracker-class", ORACLE, "--results", tmp_path / "res",
            "--device", "cuda:0,cuda:4", "--quiet")
    assert r.exit_code == 2 and r.stderr == "trek-track: error: --device cuda:4: this machine has 4 CUDA GPU(s), " \
        "numbered 0..3\n", r.output
    assert not (tmp_path / "res").exists()


def test_cuda_asked_for_without_a_gpu_is_refused_and_auto_runs_on_the_cpu(monkeypatch) -> None:
    import torch

    from trek_tracker.cli.eval import _devices
    from trek_tracker.errors import UserError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert _devices("auto") is None and _devices("cpu") is None
    with pytest.raises(UserError, match="^--device cuda was asked for but no CUDA GPU is available"):
        _devices("cuda")


def test_attributes_are_scored_for_ope_and_mse_not_hoi(root: Path, tmp_path: Path) -> None:
    """Every synthetic sequence carries SC and POC, so each attribute's row is the overall score."""
    r = run("eval", "--root", root, "--tracker", "oracle", "--tracker-class", ORACLE, "--results", tmp_path / "res",
            "--report-dir", tmp_path / "rep", "--no-plots", "--quiet", "--attributes", "--overall-only")
    assert r.exit_code == 0, r.output
    titles = [line for line in r.stdout.splitlines() if "per attribute" in line]
    assert titles == ["oracle: OPE per attribute", "oracle: MSE per attribute"]
    rows = [line.split() for line in r.stdout.splitlines() if line.split()[:1] in (["SC"], ["POC"])]
    assert len(rows) == 4 and all(row[1] == "2" and row[2] == f"{20 / 21:.4f}" for row in rows), r.stdout
    r = run("eval", "--report-only", "--root", root, "--tracker", "oracle", "--results", tmp_path / "res",
            "--report-dir", tmp_path / "rep", "--no-plots", "--quiet", "--protocol", "ope")
    assert r.exit_code == 0 and "per attribute" not in r.stdout, r.output


def test_json_of_one_protocol_is_the_path_given_and_a_template_names_each(root: Path, tmp_path: Path) -> None:
    res, rep = tmp_path / "results", tmp_path / "rep"
    r = run("eval", "--root", root, "--tracker", "oracle", "--tracker-class", ORACLE, "--results", res,
            "--report-dir", rep, "--no-plots", "--protocol", "hoi", "--json", tmp_path / "hoi.json")
    assert r.exit_code == 0, r.output
    assert (tmp_path / "hoi.json").read_text() == (rep / "performance-hoi.json").read_text()
    assert sorted(p.name for p in tmp_path.glob("*.json")) == ["hoi.json"]
    assert r.stderr.splitlines()[-1] == f"reports written to {rep}"  # said unless --quiet
    r = run("eval", "--report-only", "--root", root, "--tracker", "oracle", "--results", res, "--report-dir", rep,
            "--no-plots", "--protocol", "hoi", "--json", tmp_path / "{protocol}" / "perf", "--quiet")
    assert r.exit_code == 0 and r.stderr == "", r.output
    assert (tmp_path / "hoi" / "perf").read_text() == (rep / "performance-hoi.json").read_text()


def test_running_names_exactly_one_tracker(root: Path, tmp_path: Path) -> None:
    r = run("eval", "--root", root, "--tracker", "a", "--tracker", "b", "--tracker-class", CONSTANT, "--results",
            tmp_path / "res")
    assert r.exit_code == 2 and r.stderr == ("trek-track: error: name exactly one --tracker to run (several names "
                                             "are for --report-only)\n")
    assert not (tmp_path / "res").exists()


@pytest.mark.parametrize(("text", "shard"), [(None, (0, 1)), ("", (0, 1)), ("0/1", (0, 1)), ("2/3", (2, 3))])
def test_a_shard_is_i_of_n_counted_from_zero(text, shard) -> None:
    from trek_tracker.cli.eval import _parse_shard

    assert _parse_shard(text) == shard


@pytest.mark.parametrize(("text", "message"), [
    ("1", "expected i/n"), ("a/2", "expected i/n"), ("0/1/2", "expected i/n"),
    ("-1/2", "need 0 <= i < n"), ("2/2", "need 0 <= i < n"), ("0/0", "need 0 <= i < n"),
])
def test_a_shard_that_is_not_i_of_n_is_refused(text, message) -> None:
    from trek_tracker.cli.eval import _parse_shard
    from trek_tracker.errors import InputError

    with pytest.raises(InputError, match=f"^--shard '{text}': {message}"):
        _parse_shard(text)


def test_json_paths_of_several_protocols_are_told_apart() -> None:
    from trek_tracker.cli.eval import _json_path

    assert _json_path(Path("out/perf.json"), "mse", several=False) == Path("out/perf.json")
    assert _json_path(Path("out/perf.json"), "mse", several=True) == Path("out/perf-mse.json")
    assert _json_path(Path("out/perf"), "mse", several=True) == Path("out/perf-mse.json")
    assert _json_path(Path("out/perf.txt"), "mse", several=True) == Path("out/perf-mse.txt")  # the suffix given
    assert _json_path(Path("out/{protocol}/perf.json"), "hoi", several=True) == Path("out/hoi/perf.json")
    assert _json_path(Path("out/{protocol}.json"), "ope", several=False) == Path("out/ope.json")


def test_a_subset_reports_into_one_folder_whatever_the_order_or_repeats_of_its_names() -> None:
    from trek_tracker.cli.eval import DEFAULT_REPORTS, default_report_dir

    assert default_report_dir("t", None) == default_report_dir("t", []) == DEFAULT_REPORTS / "t"
    one = default_report_dir("t", ["B", "A"])
    assert one == default_report_dir("t", ["A", "B", "A"]) and one.parent == DEFAULT_REPORTS / "t"
    assert one.name.startswith("sequences-2-") and one != default_report_dir("t", ["A"])


def test_submit_names_the_tracker_by_its_folder_unless_told_and_a_json_path_is_the_bare_json(root: Path,
                                                                                              tmp_path: Path,
                                                                                              monkeypatch) -> None:
    res = tmp_path / "results"
    assert run("eval", "--root", root, "--tracker", "o", "--tracker-class", ORACLE, "--results", res, "--quiet",
               "--no-plots", "--report-dir", tmp_path / "rep").exit_code == 0
    out = tmp_path / "sub.json"
    r = run("submit", "--results", res, "--tracker", "o", "--root", root, "--out", out, "--sls-tl", "1")
    assert r.exit_code == 0 and r.stdout == f"wrote {out}\n", r.output
    sub = json.loads(out.read_text())
    assert (sub["tracker_name"], sub["sls_pt"], sub["sls_tl"], sub["sls_td"]) == ("o", -1, 1, -1)  # -1: not given
    monkeypatch.chdir(tmp_path)  # without --out: challenge-submission.zip here
    r = run("submit", "--results", res, "--tracker", "o", "--root", root)
    assert r.exit_code == 0 and r.stdout == "wrote challenge-submission.zip\n", r.output
    with zipfile.ZipFile(tmp_path / "challenge-submission.zip") as z:
        assert json.loads(z.read("challenge-submission.json")) == {**sub, "sls_tl": -1}


@pytest.mark.parametrize(("device", "devices", "precision"), [("cpu", None, "fp32"), ("auto", None, "bf16"),
                                                              ("cuda:0", ["cuda:0"], "bf16")])
def test_the_identity_of_our_tracker_has_the_precision_of_the_device_it_runs_on(tiny_checkpoint, monkeypatch,
                                                                                device, devices, precision) -> None:
    """With a GPU present, ``--device cpu`` runs in fp32 (auto precision), and the results must say so."""
    import torch

    from trek_tracker.cli.eval import _pipeline_identity

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    options = {"model": TINY, "checkpoint": str(tiny_checkpoint), "init": "box", "device": device}
    assert _pipeline_identity(options, devices)[0]["precision"] == precision


def test_dataset_check_warns_of_sequences_without_anchors_and_still_passes(root: Path) -> None:
    (root / "P01-P01_01-10" / "anchors.txt").unlink()
    r = run("dataset", "check", "--root", root, "--no-images")
    assert r.exit_code == 0, r.output
    assert "1 with anchors.txt (3 MSE runs)" in r.stdout  # the other sequence's three anchors
    assert "warning: 1 sequence(s) lack anchors.txt; MSE cannot run on them" in r.stdout.splitlines()
    assert "frame files were not decoded" not in r.stdout  # said only when frames were checked


@pytest.mark.parametrize(("spec", "message"), [
    ("tests.eval.helpers", "expected module:Class"), (":ConstantTracker", "expected module:Class"),
    ("tests.eval.nowhere:T", "cannot import it (No module named 'tests.eval.nowhere')"),
    ("tests.eval.helpers:Nothing", "cannot import it"),
])
def test_a_tracker_class_that_cannot_be_found_is_one_line(root: Path, tmp_path: Path, spec: str, message: str) -> None:
    r = run("eval", "--root", root, "--tracker", "t", "--tracker-class", spec, "--results", tmp_path / "res",
            "--protocol", "ope", "--quiet")
    assert r.exit_code == 2 and r.stderr.count("\n") == 1, r.output
    assert r.stderr.startswith(f"trek-track: error: --tracker-class '{spec}': {message}")


def test_eval_hands_its_options_to_the_runner(root: Path, tmp_path: Path, tiny_checkpoint, monkeypatch) -> None:
    """What reaches the runner: the tracker's folder, workers (one per GPU listed unless told), the GPUs, progress,
    --overwrite, the identity, and whether a run may be written from a longer run's rows."""
    import types

    import torch

    from trek_tracker.eval import runner

    calls = []

    def execute(dataset, runs, tracker_dir, factory, **options):
        calls.append((tracker_dir, options))
        return types.SimpleNamespace(done=runs, skipped=[], shared=[])

    monkeypatch.setattr(runner, "execute", execute)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 3)
    res = tmp_path / "res"
    r = run("eval", "--root", root, "--tracker", "c", "--tracker-class", CONSTANT, "--results", res, "--shard", "0/2",
            "--device", "cuda:0,cuda:2", "--overwrite")
    assert r.exit_code == 0, r.output
    (tracker_dir, options), = calls
    assert tracker_dir == res / "c"
    assert {k: options[k] for k in ("workers", "devices", "progress", "overwrite", "identity", "share")} == {
        "workers": 2, "devices": ["cuda:0", "cuda:2"], "progress": True, "overwrite": True,
        "identity": {"tracker_class": CONSTANT}, "share": False}
    ours = ("--root", root, "--tracker", "o", "--results", res, "--shard", "1/2", "--model", TINY, "--checkpoint",
            tiny_checkpoint, "--init", "box", "--device", "cpu", "--quiet", "--workers", "3")
    for extra, share in (((), True), (("--track-every-run",), False)):
        calls.clear()
        assert run("eval", *ours, *extra).exit_code == 0
        (_, options), = calls
        got = (options["share"], options["workers"], options["devices"], options["progress"], options["overwrite"])
        assert got == (share, 3, None, False, False)
        assert options["identity"]["tracker"] == "trek-track" and options["identity"]["precision"] == "fp32"


def test_dataset_prepare_hands_its_options_to_prepare(tmp_path: Path, monkeypatch) -> None:
    from trek_tracker.eval import prepare

    configs = []
    monkeypatch.setattr(prepare, "prepare", lambda config, echo: configs.append(config))
    (tmp_path / "videos").mkdir()
    common = ("dataset", "prepare", "--root", tmp_path / "trek", "--videos", tmp_path / "videos")
    assert run(*common, "--annotations", tmp_path / "a.zip", "--ffmpeg", "/opt/ff", "--keep-frames", "--jobs",
               "3").exit_code == 0
    assert run(*common).exit_code == 0
    assert [(c.root, c.annotations_zip, c.videos, c.ffmpeg, c.keep_frames, c.jobs) for c in configs] == [
        (tmp_path / "trek", tmp_path / "a.zip", tmp_path / "videos", "/opt/ff", True, 3),
        (tmp_path / "trek", None, tmp_path / "videos", "ffmpeg", False, 1)]
    r = run(*common, "--annotations", tmp_path / "videos")  # a folder, not the zip
    assert r.exit_code == 2 and "Invalid value for '--annotations'" in r.stderr and len(configs) == 2


def test_missing_required_options_are_usage_errors(root: Path) -> None:
    for args, option in ((("dataset", "check"), "--root"), (("eval", "--report-only", "--root", root), "--tracker"),
                         (("eval", "--tracker", "t"), "--root"), (("submit", "--tracker", "t"), "--root")):
        r = run(*args)
        assert r.exit_code == 2 and f"Missing option '{option}'" in r.stderr, r.output


def test_dataset_check_decodes_every_frame_with_one_worker(root: Path) -> None:
    r = run("dataset", "check", "--root", root, "--decode", "--workers", "1")
    assert r.exit_code == 0, r.output
    assert r.stdout.splitlines()[0] == "2 sequences, 13 frames, 13 decoded"


@pytest.mark.parametrize(("option", "kind"), [("--videos", "file"), ("--annotations", "folder")])
def test_dataset_prepare_refuses_a_path_of_the_wrong_kind_before_any_work(tmp_path: Path, option, kind) -> None:
    wrong = tmp_path / "wrong"
    wrong.mkdir() if kind == "folder" else wrong.write_text("")
    r = run("dataset", "prepare", "--root", tmp_path / "trek", option, wrong)
    said = "is a directory" if kind == "folder" else "is a file"
    assert r.exit_code == 2 and f"Invalid value for '{option}'" in r.stderr and said in r.stderr, r.output
    assert [p.name for p in tmp_path.iterdir()] == ["wrong"]


@pytest.mark.parametrize("args", [("eval", "--tracker", "t", "--workers"), ("dataset", "check", "--workers"),
                                  ("dataset", "prepare", "--jobs")])
def test_a_number_of_processes_below_one_is_a_usage_error(tmp_path: Path, args) -> None:
    r = CliRunner().invoke(main, [*args[:-1], "--root", str(tmp_path / "trek"), args[-1], "0"])
    assert r.exit_code == 2 and f"Invalid value for '{args[-1]}'" in r.stderr and "x>=1" in r.stderr, r.output
    assert list(tmp_path.iterdir()) == []


def test_a_report_of_several_trackers_goes_to_the_folder_of_the_first(root: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    for name, cls in (("oracle", ORACLE), ("constant", CONSTANT)):
        assert run("eval", "--root", root, "--tracker", name, "--tracker-class", cls, "--protocol", "ope",
                   "--quiet", "--no-plots", "--report-dir", tmp_path / "x").exit_code == 0
    r = run("eval", "--report-only", "--protocol", "ope", "--root", root, "--tracker", "constant", "--tracker",
            "oracle", "--no-plots")
    assert r.exit_code == 0, r.output
    assert sorted(p.as_posix() for p in Path("reports").rglob("*.json")) == [
        "reports/TREK-150/constant/performance-ope.json"]
    assert r.stderr.splitlines()[-1] == f"reports written to {Path('reports/TREK-150/constant')}"
    assert "constant: per sequence" in r.stdout and "oracle: per sequence" in r.stdout  # the default table


def test_the_cost_of_a_run_follows_the_memory_of_the_model_asked_for() -> None:
    from trek_tracker.cli.eval import _pipeline_identity
    from trek_tracker.inference.memory import MemoryConfig
    from trek_tracker.modeling.registry import model_config
    from trek_tracker.pipeline import DEFAULT_MODEL

    own, default = (MemoryConfig().resolve(model_config(name)) for name in ("vmos", DEFAULT_MODEL))
    assert own.cap != default.cap  # else this would not tell them apart
    _, cost = _pipeline_identity({"model": ("vmos",), "random_weights": True, "init": "box", "device": "cpu"}, None)
    assert cost.keywords == {"gap": own.gap, "cap": own.cap}


def test_eval_says_how_its_runs_went_unless_quiet(root: Path, tmp_path: Path) -> None:
    args = ("eval", "--root", root, "--tracker", "o", "--tracker-class", ORACLE, "--results", tmp_path / "res",
            "--protocol", "ope", "--no-plots", "--report-dir", tmp_path / "rep")
    first = run(*args)
    assert first.exit_code == 0, first.output
    n = int(re.search(r"^(\d+) runs tracked, 0 already finished$", first.stderr, re.M).group(1))
    quiet = run(*args, "--quiet")
    assert quiet.exit_code == 0 and quiet.stderr == "", quiet.stderr
    again = run(*args)
    assert f"trek-track: {n} of {n} runs already finished, skipped\n" in again.stderr, again.stderr
    assert f"0 runs tracked, {n} already finished" in again.stderr
