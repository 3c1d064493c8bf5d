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


def test_box_scores_of_predicted_masks():
    """TREK-150-style box scores from label maps: perfect masks score 1, a shifted object less, an emptied
    prediction holds the previous box, and frames where the ground truth lacks the object are not scored."""
    from trek_tracker.train.validate import mask_boxes, score_boxes, summarise_boxes

    gts = []
    for i in range(6):
        g = np.zeros((40, 60), np.int64)
        g[5 + i:15 + i, 10:30] = 1
        if i != 3:
            g[20:30, 40:50] = 2  # object 2 absent from the ground truth in frame 3
        gts.append(g)
    perfect = summarise_boxes(score_boxes(gts, gts))
    # The toolkit's success curve counts IoU strictly above each threshold, so a perfect run misses the
    # threshold 1.0: 20 of 21.
    assert perfect == {"box_success": pytest.approx(20 / 21), "box_precision": 1.0}
    shifted = [np.roll(g, 6, axis=1) for g in gts]
    worse = summarise_boxes(score_boxes([gts[0]] + shifted[1:], gts))
    assert worse["box_success"] < 0.9 and worse["box_precision"] < 1.0
    held = mask_boxes([gts[0], np.zeros_like(gts[0])], 1, hold=True)
    assert held[1].tolist() == held[0].tolist() == [10.0, 5.0, 20.0, 10.0]
    assert mask_boxes([np.zeros_like(gts[0])], 1, hold=False).tolist() == [[-1.0, -1.0, -1.0, -1.0]]
