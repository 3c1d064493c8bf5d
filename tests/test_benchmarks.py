"""The scale, memory and start-frame benchmarks (``benchmarks/trek150_scale.py``, ``memory_long_video.py``,
``start_frame.py``): their workload is shaped as they say, and they run end to end on a CPU with the tiny
model, reporting figures that add up."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.damaged import REPO

sys.path.insert(0, str(REPO / "benchmarks"))

import memory_long_video  # noqa: E402
import trek150_scale  # noqa: E402


def _run(script: str, *args: str | os.PathLike, shared: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", TREK_TRACK_SHARED=str(shared))
    return subprocess.run([sys.executable, str(REPO / "benchmarks" / script), *map(str, args)], capture_output=True,
                          text=True, env=env, timeout=300)


def test_start_frame_benchmark_measures_every_shared_clip_and_a_1080p_one(shared, tmp_path):
    out = tmp_path / "start.json"
    proc = _run("start_frame.py", "--shared", shared, "--repeats", "1", "--frames-1080p", "24", "--json", out,
                shared=shared)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = json.loads(out.read_text())["rows"]
    clips = sorted(p.name for p in (shared / "data/videos").glob("*.mp4"))
    assert [r["video"] for r in rows[:-1]] == clips and rows[-1]["size"] == "1920x1080" and rows[-1]["frames"] == 24
    assert next(r for r in rows if r["video"] == "blackswan.mp4")["frames"] == 50
    assert all(r["skip_fps"] > 0 and r["read_fps"] > 0 for r in rows) and "reaching the last" in proc.stdout


def test_drawn_lengths_have_trek150s_summary():
    lengths = trek150_scale.draw_lengths(0)
    real = trek150_scale.REAL
    assert len(lengths) == real["sequences"] and min(lengths) == real["min"] and max(lengths) == real["max"]
    assert np.median(lengths) == real["median"]
    assert abs(sum(lengths) - real["frames"]) <= len(lengths)  # rounding each length moves the total by < 1
    assert lengths != trek150_scale.draw_lengths(1)


def test_anchors_track_towards_the_longer_side_and_hoi_intervals_fit():
    assert trek150_scale.anchors(10, 4) == [(0, 0), (4, 0), (8, 1)]
    for n in (161, 484, 4640):
        for start, end, kind in trek150_scale.hoi_intervals(n, 3):
            assert 0 <= start < end < n and end - start + 1 == min(300, n // 4) and kind in (0, 1, 2)


def test_ping_pong_plays_the_clip_back_and_forth_without_cuts():
    seq = [memory_long_video._ping_pong(4, t) for t in range(10)]
    assert seq == [0, 1, 2, 3, 2, 1, 0, 1, 2, 3]
    assert memory_long_video._ping_pong(1, 7) == 0


def test_scale_benchmark_runs_end_to_end_on_cpu(shared, tmp_path):
    out = tmp_path / "scale.json"
    proc = _run("trek150_scale.py", "--shared", shared, "--model", "test_deaot_tiny", "--random-weights",
                "--device", "cpu", "--threads", "1", "--sequences", "1", "--length-scale", "0.02",
                "--budget-frames", "12", "--max-long-edge", "64", "--workers", "1,2", "--init-sam", "none",
                "--json", out, shared=shared)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    runs = result["sample_runs"]
    assert runs and runs[0]["protocol"] == "ope" and result["frames"] == sum(r["frames"] for r in runs)
    assert 0 < result["network_seconds"] < result["seconds"]
    assert 0 < result["ms_per_frame_outside_network"] < result["ms_per_frame"]
    # outside the network = the tensor work around it (a GPU's) + the host's
    assert 0 < result["ms_per_frame_frame_work"] < result["ms_per_frame_outside_network"]
    assert result["ms_per_frame_host"] == pytest.approx(
        result["ms_per_frame_outside_network"] - result["ms_per_frame_frame_work"])
    assert "work     host" in proc.stdout
    assert result["full_plan_frames"]["ope"] == sum(trek150_scale.draw_lengths(0))
    assert result["full_plan_frames"]["mse"] > result["full_plan_frames"]["ope"]
    assert "projected on this machine" in proc.stdout and "outside" in proc.stdout
    assert result["init_seconds_per_run"] is None and "without the box-to-mask init" in proc.stdout
    assert sum(result["full_plan_runs"].values()) > 150 and result["full_plan_runs"]["ope"] == 150
    # eval tracks MSE's forward run from frame 0 once, as OPE; so does the projection
    full, tracked = result["full_plan_frames"], result["tracked_plan_frames"]
    assert tracked["ope"] == full["ope"] and tracked["mse"] == full["mse"] - full["ope"]
    assert tracked["hoi"] <= full["hoi"]
    assert result["tracked_plan_runs"]["mse"] == result["full_plan_runs"]["mse"] - 150
    per_frame = result["ms_per_frame"] / 1000
    assert result["projected_hours"]["mse"] * 3600 == pytest.approx(tracked["mse"] * per_frame)
    parallel = result["runner_by_workers"]  # the same sample again, through eval's runner
    assert [r["workers"] for r in parallel] == [1, 2] and all(r["frames"] == result["frames"] for r in parallel)
    assert "the runner with 2 processes on cpu" in proc.stdout
    for key in ("decode_fps_by_threads", "toolkit_decode_fps_by_threads"):
        decode = result[key]  # JSON keys are strings
        assert "1" in decode and all(v > 0 for v in decode.values())
    assert "for ours (OpenCV, into arrays): " in proc.stdout and "frames/s with 1 thread" in proc.stdout


def test_scale_benchmark_leaves_its_projection_when_stopped_in_the_runners_rates(shared, tmp_path, monkeypatch,
                                                                                 capsys):
    """The runner's rates come last and track the sample again (twice with ``--workers 1,2``): a GPU report's
    time limit stopping them leaves the sample's table, the projection and the JSON."""
    def stopped(*args, **kwargs):
        raise KeyboardInterrupt  # the time limit's signal

    monkeypatch.setattr(trek150_scale, "runner_rate", stopped)
    out = tmp_path / "scale.json"
    with pytest.raises(KeyboardInterrupt):
        trek150_scale.main(["--shared", str(shared), "--model", "test_deaot_tiny", "--random-weights", "--device",
                            "cpu", "--sequences", "1", "--length-scale", "0.02", "--budget-frames", "0",
                            "--max-long-edge", "64", "--workers", "1,2", "--init-sam", "none", "--json", str(out)])
    result = json.loads(out.read_text())
    assert result["frames"] > 0 and result["projected_hours"]["ope"] > 0 and result["runner_by_workers"] == []
    assert "projected on this machine" in capsys.readouterr().out

def test_memory_benchmark_shows_the_default_cap_and_the_official_growth(shared, tmp_path):
    out = tmp_path / "memory.json"
    proc = _run("memory_long_video.py", "--model", "test_deaot_tiny", "--lengths", "8,30", "--gap", "2",
                "--clip-frames", "5", "--max-long-edge", "64", "--json", out, shared=shared)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = {(r["setting"], r["frames"]): r for r in json.loads(out.read_text())["rows"]}
    assert set(rows) == {("default", 8), ("default", 30), ("official", 8), ("official", 30)}
    # gap 2 from frame 0: frames 0, 2, 4, ... enter the long-term memory; the default keeps 10 of them
    assert rows["official", 30]["lt_frames"] == 15 and rows["default", 30]["lt_frames"] == 10
    assert rows["official", 8]["lt_frames"] == rows["default", 8]["lt_frames"] == 4
    assert rows["default", 30]["lt_tokens"] < rows["official", 30]["lt_tokens"]
    assert all(r["peak_rss_mb"] > 0 for r in rows.values())


def test_memory_benchmark_keeps_each_finished_row_when_a_later_run_is_stopped(shared, tmp_path, monkeypatch,
                                                                             capsys):
    """A GPU report stops a stage at its time limit (the 4,640-frame run is the long one): the rows of the
    runs that ended before are in the log's table and in the JSON."""
    out = tmp_path / "memory.json"
    real_run, calls = memory_long_video.subprocess.run, []

    def run_then_stopped(cmd, **kwargs):
        calls.append(cmd)
        if len(calls) > 1:
            raise KeyboardInterrupt  # the time limit's signal, during the second run
        return real_run(cmd, **kwargs)

    monkeypatch.setattr(memory_long_video.subprocess, "run", run_then_stopped)
    davis = shared / "data/davis"
    with pytest.raises(KeyboardInterrupt):
        memory_long_video.main(["--model", "test_deaot_tiny", "--lengths", "8,30", "--settings", "default",
                                "--clip", str(davis / "JPEGImages/480p/blackswan"), "--mask-dir",
                                str(davis / "Annotations/480p/blackswan"), "--clip-frames", "5", "--max-long-edge",
                                "64", "--json", str(out)])
    (row,) = json.loads(out.read_text())["rows"]
    assert row["setting"] == "default" and row["frames"] == 8
    printed = capsys.readouterr().out.splitlines()
    assert any(line.split()[:2] == ["default", "8"] for line in printed) and "peak RSS MiB" in "\n".join(printed)

def test_outputs_benchmark_measures_every_output_with_one_thread_and_the_pool(tmp_path):
    out = tmp_path / "outputs.json"
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "run_outputs.py"), "--frames", "6", "--size",
                           "160x90", "--json", str(out)], capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    rows = result["rows"]
    assert {r["outputs"] for r in rows} == {"boxes", "masks", "probs", "masks+probs", "overlay"}
    assert {r["writer_threads"] for r in rows} == {1, result["writer_pool"]}
    assert all(r["frames"] == 6 and r["fps"] > 0 and abs(r["ms_per_frame"] * r["fps"] - 1000) < 1e-6 for r in rows)
    assert proc.stdout.count("| masks |") == len({1, result["writer_pool"]})
    for r in rows:  # each row really wrote its files
        assert r["mask_files"] == (6 if "masks" in r["outputs"] else 0)
        assert r["probs_files"] == (6 if "probs" in r["outputs"] else 0)
        assert (r["overlay_bytes"] > 0) == (r["outputs"] == "overlay")


def test_network_clock_counts_the_time_inside_the_models_calls_only():
    import time

    import torch

    from trek_tracker.modeling.registry import build_model

    model = build_model("test_deaot_tiny").eval()
    original = model.encode

    def slow_encode(*args, **kwargs):
        time.sleep(0.05)
        return original(*args, **kwargs)

    model.encode = slow_encode
    clock = trek150_scale.NetworkClock()
    clock.attach(model)
    start = time.perf_counter()
    with torch.inference_mode():
        model.encode(torch.zeros(1, 3, 64, 96))
        time.sleep(0.05)  # between calls: not the network's time
        model.encode(torch.zeros(1, 3, 64, 96))
    wall = time.perf_counter() - start
    assert len(clock) == 2
    assert 0.1 <= clock.seconds() <= wall - 0.05
    assert clock.seconds(0, 1) >= 0.05 and clock.seconds(1) >= 0.05
    assert abs(clock.seconds() - clock.seconds(0, 1) - clock.seconds(1)) < 1e-9
    clock.reset()
    assert len(clock) == 0 and clock.seconds() == 0

    class Work:  # a timed call made inside another timed call counts once, in the outer one
        def outer(self):
            time.sleep(0.02)
            return self.inner()

        def inner(self):
            time.sleep(0.02)
            return 7

    work, spans = Work(), trek150_scale.SpanClock()
    spans.wrap(work, ("outer", "inner"), cuda=False)
    assert work.outer() == 7 and len(spans) == 1 and 0.04 <= spans.seconds() < 0.5
    assert work.inner() == 7 and len(spans) == 2


def test_the_projection_adds_one_init_per_run_and_the_init_is_timed_as_eval_runs_it():
    from tests.init.test_sam import tiny_sam
    from trek_tracker.init.alpha_refine.secm import SEcm
    from trek_tracker.init.api import BoxToMask, InitConfig

    full = [r for n in (161, 484) for r in trek150_scale._plan_of(n, 100, 2, *_planners())]
    frames = {p: sum(r.length for r in full if r.protocol == p) for p in ("ope", "mse", "hoi")}
    runs = {p: sum(r.protocol == p for r in full) for p in frames}
    plain = trek150_scale.project(frames, runs, 0.01, 0.0)
    with_init = trek150_scale.project(frames, runs, 0.01, 0.5)
    for p in ("ope", "mse", "hoi"):
        planned = [r for r in full if r.protocol == p]
        assert plain[p] == pytest.approx(0.01 * sum(r.length for r in planned))
        assert with_init[p] - plain[p] == pytest.approx(0.5 * len(planned))
    calls = []
    init = BoxToMask(InitConfig(method="fused"), "cpu", sam_model=tiny_sam(), ar_network=SEcm().eval())
    original = init.__call__

    class Counted:
        device = init.device

        def __call__(self, image, box):
            calls.append(box.tolist())
            return original(image, box)

    frame = np.random.default_rng(0).integers(0, 255, (90, 160, 3), dtype=np.uint8)
    seconds = trek150_scale.init_seconds(Counted(), frame, (40, 20, 50, 30), calls=2)
    assert seconds > 0 and calls == [[40.0, 20.0, 50.0, 30.0]] * 3  # one untimed call, then the timed ones


def _planners():
    from trek_tracker.eval.protocols import Run, hoi_runs, mse_runs, ope_runs

    return Run, ope_runs, mse_runs, hoi_runs


def test_resume_state_benchmark_reports_the_state_its_memory_holds(tmp_path):
    out = tmp_path / "state.json"
    proc = _run("resume_state.py", "--models", "test_deaot_tiny", "--size", "240x320", "--repeats", "1",
                "--dir", tmp_path, "--json", out, shared=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (row,) = json.loads(out.read_text())["rows"]
    assert row["model"] == "test_deaot_tiny" and row["frame"] == "320x240" and row["memory_cap"] == 10
    assert 0 < row["memory_mib"] <= row["state_mib"] < row["memory_mib"] * 1.05  # the buffers, and little else
    assert row["take_s"] > 0 and row["write_s"] > 0 and row["restore_s"] > 0 and "state" in proc.stdout
    assert not list(tmp_path.glob("resume-state-*"))  # its files are removed


def test_the_official_baseline_runs_under_pytorchs_default_kernel_flags_whatever_ran_before(monkeypatch, tmp_path):
    """``gpu_speed.py --official``: the official evaluator's process sets no TF32 or cuDNN autotuning flag, so
    its baseline runs under PyTorch's defaults, not under what the previous case's Tracker left (fp32 turns
    cuDNN's TF32 off, bf16 turns everything on), and the process's flags are left as they were."""
    import gpu_speed
    import official_aot
    import torch

    seen = []

    class Engine:  # the official engine, recording the flags its frames run under
        def __init__(self, checkout, model, state, device):
            pass

        def start(self, frame, labels):
            pass

        def step(self, frame):
            seen.append((torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
                         torch.backends.cudnn.benchmark))
            return None, None, 0.01, 0.02

    monkeypatch.setattr(official_aot, "OfficialEngine", Engine)
    monkeypatch.setattr("trek_tracker.video.open_frames", lambda video: [np.zeros((48, 64, 3), np.uint8)] * 4)
    before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark)
    try:
        for left in ((True, True, True), (False, False, False)):  # after a bf16 case, after an fp32 case
            (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
             torch.backends.cudnn.benchmark) = left
            seen.clear()
            fps = gpu_speed.official(tmp_path, tmp_path / "v.mp4", (8, 8, 16, 16), "deaott", {},
                                     torch.device("cpu"), warmup=1)
            assert seen == [(False, True, False)] * 3
            assert fps == pytest.approx({"official_network_fps": 100.0, "official_total_fps": 50.0})
            assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
                    torch.backends.cudnn.benchmark) == left
    finally:
        (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
         torch.backends.cudnn.benchmark) = before


def test_a_failing_official_evaluator_costs_its_columns_not_our_figures(shared, monkeypatch, tmp_path, capsys):
    """The official code runs on the report's GPU for the first time there: if it fails, our rows are still
    measured and saved, the failure is said, and the exit status is not 0."""
    import gpu_speed

    def broken(*args, **kwargs):
        raise RuntimeError("CUDA error: no kernel image is available\nmore lines")

    monkeypatch.setattr(gpu_speed, "official", broken)
    out = tmp_path / "speed.json"
    rc = gpu_speed.main(["--shared", str(shared), "--models", "deaott", "--precisions", "fp32", "--inputs", "480p",
                         "--frames", "4", "--warmup", "1", "--device", "cpu", "--threads", "1", "--official",
                         str(tmp_path), "--json", str(out)])
    assert rc == 1
    (row,) = json.loads(out.read_text())["rows"]
    assert row["end_to_end_fps"] > 0 and row["official_error"] == "RuntimeError: CUDA error: no kernel image is " \
                                                                  "available" and "speedup_vs_official" not in row
    err = capsys.readouterr().err
    assert "gpu_speed: the official evaluator failed on deaott at 480p (RuntimeError: CUDA error" in err


def test_precision_benchmark_keeps_each_finished_row_when_stopped(shared, monkeypatch, tmp_path):
    """A GPU report's time limit stopping the precision stage (VMOS comes last) leaves the rows done in the
    JSON, not only in the log."""
    import precision_agreement

    calls = []

    def track(model, device, frames, box, precision, max_long_edge):
        calls.append(precision)
        if len(calls) > 2:  # fp32, then bf16 of the first clip; stopped in the next clip's fp32
            raise KeyboardInterrupt
        masks = [np.ones((4, 4), bool)] * len(frames)
        return masks, np.array([[0.0, 0.0, 4.0, 4.0]] * len(frames)), 0.01

    monkeypatch.setattr(precision_agreement, "seeded_model", lambda shared, name, device: None)
    monkeypatch.setattr(precision_agreement, "track", track)
    out = tmp_path / "precision.json"
    with pytest.raises(KeyboardInterrupt):
        precision_agreement.main(["--shared", str(shared), "--models", "deaott", "--precisions", "bf16", "--frames",
                                  "3", "--device", "cpu", "--json", str(out)])
    (row,) = json.loads(out.read_text())["rows"]
    assert row["precision"] == "bf16" and row["clip"] == "car-shadow" and row["mask_iou_mean"] == 1.0
