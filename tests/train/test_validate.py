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


def test_void_pixels_are_background_as_the_official_evaluation_has_them(dataset, tmp_path):
    """davis2017-evaluation reads palette index 255 as background, and its void test (the objects' boolean
    masks compared with 255) never holds: a prediction that covers the void band is wrong there."""
    pred = tmp_path / "pred"
    for i in (0, 1, 3):
        p = np.zeros((16, 16), np.uint8)
        p[4:12, 4:12] = 1
        _png(pred / "seq" / f"{i:05d}.png", p)
    res = evaluate_folder(pred, dataset)
    assert res["J_mean"] == 1.0 and res["F_mean"] == 1.0
    p[0:2, 0:8] = 1  # wrong only inside the void band, on the one scored frame (frame 1; 0 and 3 are first/last)
    _png(pred / "seq" / "00001.png", p)
    res = evaluate_folder(pred, dataset)
    assert res["J_mean"] == pytest.approx(64 / 80) and res["F_mean"] < 1
    p = np.zeros((16, 16), np.uint8)
    p[4:12, 4:8] = 1  # half the object
    _png(pred / "seq" / "00001.png", p)
    assert evaluate_folder(pred, dataset)["J_mean"] == pytest.approx(0.5)


def test_the_objects_scored_are_those_of_the_first_annotation(tmp_path):
    """As the official evaluation numbers them: 1..the largest id of the first annotation, so an id that
    appears only later is not scored and one missing in between is (empty: J = 1 where both are empty)."""
    from trek_tracker.eval.vos_metrics import score_sequence

    first = np.zeros((16, 16), np.uint8)
    first[2:6, 2:6], first[8:12, 8:12] = 1, 3
    later = first.copy()
    later[12:16, 0:4] = 4  # appears after the first frame
    gts = [first, later, later]
    scores = score_sequence("s", [first, first, first], gts, skip_first_last=False)
    assert [s.object_id for s in scores] == [1, 2, 3]
    assert all(s.summary()["J_mean"] == 1.0 for s in scores)


def test_box_scores_of_tracker_boxes():
    """TREK-150-style box scores: perfect boxes score the toolkit's maximum, shifted ones less, and frames
    where the ground truth lacks the object are not scored."""
    from trek_tracker.train.validate import mask_boxes, score_boxes, summarise_boxes

    gts = []
    for i in range(6):
        g = np.zeros((40, 60), np.int64)
        g[5 + i:15 + i, 10:30] = 1
        if i != 3:
            g[20:30, 40:50] = 2  # object 2 absent from the ground truth in frame 3
        gts.append(g)
    assert mask_boxes(gts, 2)[3].tolist() == [-1.0, -1.0, -1.0, -1.0]
    assert mask_boxes(gts, 1)[2].tolist() == [10.0, 7.0, 20.0, 10.0]
    # Object 2's prediction is garbage only where the ground truth lacks it: still perfect.
    pred = {1: mask_boxes(gts, 1), 2: np.where(mask_boxes(gts, 2) < 0, 0.0, mask_boxes(gts, 2))}
    perfect = summarise_boxes(score_boxes(pred, gts))
    # The toolkit's success curve counts IoU strictly above each threshold, so a perfect run misses the
    # threshold 1.0: 20 of 21.
    assert perfect == {"box_success": pytest.approx(20 / 21), "box_precision": 1.0}
    shifted = {k: v + np.array([6.0, 0, 0, 0]) * (np.arange(6) > 0)[:, None] for k, v in pred.items()}
    worse = summarise_boxes(score_boxes(shifted, gts))
    assert worse["box_success"] < 0.9 and worse["box_precision"] < 1.0


def test_evaluate_model_scores_masks_and_boxes(dataset):
    """The tracker's own boxes are scored; the void band (255) is neither an object nor scored."""
    import torch

    from trek_tracker.init.api import InitConfig
    from trek_tracker.modeling.registry import build_model
    from trek_tracker.pipeline import LoadedModel, Tracker, TrackerConfig
    from trek_tracker.train.validate import evaluate_model, predict_sequence

    torch.manual_seed(0)
    model = build_model("test_deaot_tiny")
    model.train()
    res = evaluate_model(model, dataset, max_long_edge=None, box_metrics=True)
    assert model.training  # mode restored
    for key in ("J_mean", "F_mean", "box_success", "box_precision"):
        assert 0.0 <= res[key] <= 1.0, (key, res[key])
    (seq,) = list_sequences(dataset)
    config = TrackerConfig(max_long_edge=None, init=InitConfig(method="box"))
    loaded = LoadedModel(model.eval(), "test_deaot_tiny", None, None, torch.device("cpu"))
    pred = predict_sequence(Tracker(config, loaded=loaded), seq)
    assert pred.ids.values == (1,)  # 255 is void, not a second object
    assert len(pred.boxes) == len(pred.labels) == 4 and set(pred.boxes[0]) == {1}
    assert pred.boxes[0][1].tolist() == [4.0, 4.0, 8.0, 8.0]  # frame 0: the annotation's own box


def test_validation_shows_a_bar_of_its_frames(dataset, capsys):
    """Validation during training can take minutes while the training bar stands still: it has a bar of
    its own, counting the frames tracked."""
    from trek_tracker.modeling.registry import build_model
    from trek_tracker.train.validate import evaluate_model

    evaluate_model(build_model("test_deaot_tiny"), dataset, max_long_edge=None, progress="validate step 7")
    err = capsys.readouterr().err
    assert "validate step 7:" in err and "0/4 [" in err, err  # (tqdm redraws at most every 0.1 s)


def test_a_multi_object_rgb_prediction_is_refused_not_scored_as_one_object(dataset, tmp_path):
    from trek_tracker.errors import InputError

    pred = tmp_path / "pred"
    for i in (0, 1, 3):
        p = np.zeros((16, 16), np.uint8)
        p[4:12, 4:12] = 1
        _png(pred / "seq" / f"{i:05d}.png", p)
    rgb = np.zeros((16, 16, 3), np.uint8)
    rgb[4:12, 4:8] = (128, 0, 0)
    rgb[4:12, 8:12] = (0, 128, 0)  # a second object, or the same one? the file cannot say
    Image.fromarray(rgb).save(pred / "seq" / "00001.png")
    with pytest.raises(InputError, match=r"00001\.png is an RGB image with 2 object colours"):
        evaluate_folder(pred, dataset)
    rgb[4:12, 8:12] = (128, 0, 0)  # one colour: one object, as before
    Image.fromarray(rgb).save(pred / "seq" / "00001.png")
    assert evaluate_folder(pred, dataset)["J_mean"] == 1.0
