"""A TREK-150-layout dataset built from real DAVIS frames and masks (boxes from masks, some frames marked
absent): a replay oracle must reach the maximum scores on every protocol, a constant tracker the scores
computed by hand with exact fractions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.eval.helpers import ABSENT, ConstantTracker, ReplayTracker, hand_scores, image_key, write_sequence
from trek_tracker.eval import report as R
from trek_tracker.eval.dataset import Trek150
from trek_tracker.eval.protocols import plan
from trek_tracker.eval.runner import execute

CLIPS = {"car-shadow": "P01-P01_02-7", "blackswan": "P02-P02_01-31"}


def mask_box(path: Path) -> tuple[int, int, int, int]:
    m = np.asarray(Image.open(path)) > 0
    if m.ndim == 3:
        m = m.any(axis=2)
    ys, xs = np.nonzero(m)
    return int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)


@pytest.fixture(scope="module")
def davis_root(davis: Path, tmp_path_factory) -> tuple[Trek150, dict]:
    root = tmp_path_factory.mktemp("davis") / "trek"
    table = {}
    for clip, name in CLIPS.items():
        images = sorted((davis / "JPEGImages" / "480p" / clip).glob("*.jpg"))
        masks = sorted((davis / "Annotations" / "480p" / clip).glob("*.png"))
        gt = [mask_box(m) for m in masks]
        for i in range(4, len(gt), 9):  # the target "leaves the view" on some frames
            gt[i] = ABSENT
        n = len(gt)
        write_sequence(root, name, gt, images=images, anchors=[(0, 0), (n - 1, 1), (n // 2, 0)],
                       hoi=[(5, 20, 1), (21, 30, 2)])
        for img, box in zip(images, gt, strict=True):
            with Image.open(img) as im:
                table[image_key(im.convert("RGB"))] = box
    return Trek150(root), table


def test_mask_boxes_follow_the_trek_convention(davis: Path) -> None:
    assert mask_box(davis / "Annotations" / "480p" / "car-shadow" / "00000.png") == (313, 88, 342, 194)


def test_replay_oracle_scores_the_maximum(davis_root, tmp_path: Path) -> None:
    ds, table = davis_root
    assert ds.check() == {"sequences": 2, "frames": 90, "with_anchors": 2, "with_hoi": 2, "mse_runs": 6,
                          "hoi_runs": 4}
    execute(ds, plan(ds, "all"), tmp_path / "replay", lambda: ReplayTracker(table), progress=False)
    for protocol in ("ope", "mse", "hoi"):
        o = R.evaluate(ds, tmp_path, ["replay"], protocol)["replay"]["overall"]
        assert o["success_score"] == pytest.approx(20 / 21, abs=1e-12)
        assert o["normalized_precision_score"] == 1.0 and o["generalized_success_robustness_score"] == 1.0
    # absent frames hold the previous box; backward MSE rows are in tracking order
    seq = ds["P01-P01_02-7"]
    back = np.loadtxt(tmp_path / "replay" / "mse" / "P01-P01_02-7-anchor-39.txt", delimiter=",")
    assert back.shape == (40, 4)
    np.testing.assert_array_equal(back[39 - 30], seq.gt[30])
    assert seq.absent[31] and not seq.absent[32]
    np.testing.assert_array_equal(back[39 - 31], seq.gt[32])  # absent frame 31 holds frame 32's box


def test_constant_tracker_by_hand(davis_root, tmp_path: Path) -> None:
    ds, _ = davis_root
    execute(ds, plan(ds, ["ope", "mse"]), tmp_path / "const", ConstantTracker, progress=False)
    ope = R.evaluate(ds, tmp_path, ["const"], "ope")["const"]
    mse = R.evaluate(ds, tmp_path, ["const"], "mse")["const"]
    expected_ope, weighted = [], []
    for seq in ds:
        gt = [tuple(r) for r in seq.gt]
        h = hand_scores([gt[0]] * len(gt), gt)
        sw = ope["seq_wise"][seq.name]
        assert sw["success_score"] == pytest.approx(float(h[0]), abs=1e-12)
        assert sw["normalized_precision_score"] == pytest.approx(float(h[1]), abs=1e-12)
        assert sw["generalized_success_robustness_score"] == pytest.approx(float(h[2]), abs=1e-12)
        expected_ope.append(h[0])
        acc = 0
        for run in plan(Trek150(ds.root, names=[seq.name]), "mse"):
            g = [gt[i] for i in run.frames]
            acc += hand_scores([g[0]] * len(g), g)[0] * len(g)
        m = acc / sum(r.length for r in plan(Trek150(ds.root, names=[seq.name]), "mse"))
        assert mse["seq_wise"][seq.name]["success_score"] == pytest.approx(float(m), abs=1e-12)
        weighted.append((m, len(seq)))
    assert ope["overall"]["success_score"] == pytest.approx(float(sum(expected_ope) / 2), abs=1e-12)
    total = sum(m * n for m, n in weighted) / sum(n for _, n in weighted)
    assert mse["overall"]["success_score"] == pytest.approx(float(total), abs=1e-12)
    assert 0.05 < ope["overall"]["success_score"] < 0.9  # the clip moves: not a degenerate case
