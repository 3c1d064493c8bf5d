"""``benchmarks/init_masks.py`` prints its table (weight-free methods) on a shared DAVIS clip."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import cv2
import numpy as np

from tests.conftest import REPO
from trek_tracker.geometry import box_to_mask, mask_to_box


def test_table_on_one_sequence(davis: Path, capsys, monkeypatch) -> None:
    monkeypatch.setattr(sys, "path", [str(REPO / "benchmarks"), *sys.path])  # as when run as a script
    spec = importlib.util.spec_from_file_location("init_masks", REPO / "benchmarks" / "init_masks.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.main(["--davis", str(davis), "--sequences", "car-shadow"]) == 0
    lines = capsys.readouterr().out.splitlines()
    header = [c.strip() for c in lines[1].split("|")]
    assert header == ["sequence", "box x,y,w,h", "IoU box", "IoU grabcut"]
    row = [c.strip() for c in lines[3].split("|")]
    assert row[0] == "car-shadow" and row[1] == "313 88 342 194"
    gt = cv2.imread(str(davis / "Annotations" / "480p" / "car-shadow" / "00000.png"), cv2.IMREAD_GRAYSCALE) > 0
    filled = box_to_mask(mask_to_box(gt), gt.shape)
    assert float(row[2]) == round((filled & gt).sum() / (filled | gt).sum(), 3)
    assert float(row[3]) > float(row[2])  # GrabCut beats the filled box on this clip
    assert lines[-2].startswith("mean") and lines[-1].startswith("s/call")
    assert np.isclose(float(lines[-2].split("|")[2]), float(row[2]))
