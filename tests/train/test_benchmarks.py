"""The training benchmarks run end to end (tiny models, CPU) and print what they promise."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.train.conftest import REPO


def test_throughput_benchmark_prints_a_projection_per_model(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "train_throughput.py"), "--models",
                           "test_deaot_tiny", "--size", "33", "--frames", "2", "--steps", "1", "--warmup", "0",
                           "--threads", "1", "--json", str(tmp_path / "t.json")], capture_output=True, text=True,
                          env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.strip().splitlines()
    assert lines[0].startswith("device: CPU") and "fp32" in lines[0]
    row = lines[-1].split()
    assert row[0] == "(test_deaot_tiny)" and float(row[3]) > 0 and float(row[-1]) > 0
    saved = json.loads((tmp_path / "t.json").read_text())
    assert saved["device"] == "CPU (1 threads)" and len(saved["rows"]) == 1
    assert round(saved["rows"][0]["samples_per_s"], 2) == float(row[3]) and saved["rows"][0]["peak_gib"] is None
