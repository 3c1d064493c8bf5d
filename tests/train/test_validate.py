"""VOS validation on DAVIS-layout folders: void pixels, sparse annotations."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from trek_tracker.train.validate import evaluate_folder, list_sequences

PALETTE = [0, 0, 0, 128, 0, 0] + [0] * 756


def _png(path, arr):
    im = Image.fromarray(arr.astype(np.uint8), mode="P")
    im.putpalette(PALETTE)
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path)


@pytest.fixture()
def dataset(tmp_path):
    root = tmp_path / "ds"
    for i in range(4):
        img = root / "JPEGImages" / "seq" / f"{i:05d}.jpg"
        img.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(img)
        if i == 2:
            continue  # sparse annotations, as YouTube-VOS
        gt = np.zeros((16, 16), np.uint8)
        gt[4:12, 4:12] = 1
        gt[0:2, :] = 255  # void band
        _png(root / "Annotations" / "seq" / f"{i:05d}.png", gt)
    return root


def test_sparse_annotations_are_listed(dataset):
    (seq,) = list_sequences(dataset)
    assert len(seq.frames) == 4 and sorted(seq.labels) == [0, 1, 3]


def test_void_pixels_are_ignored(dataset, tmp_path):
    pred = tmp_path / "pred"
    for i in (0, 1, 3):
        p = np.zeros((16, 16), np.uint8)
        p[4:12, 4:12] = 1
        p[0:2, 0:8] = 1  # wrong only inside the void band
        _png(pred / "seq" / f"{i:05d}.png", p)
    res = evaluate_folder(pred, dataset)
    assert res["J_mean"] == 1.0 and res["F_mean"] == 1.0
    p = np.zeros((16, 16), np.uint8)
    p[4:12, 4:8] = 1  # half the object on the one scored frame (frame 1; 0 and 3 are first/last)
    _png(pred / "seq" / "00001.png", p)
    assert evaluate_folder(pred, dataset)["J_mean"] == pytest.approx(0.5)
