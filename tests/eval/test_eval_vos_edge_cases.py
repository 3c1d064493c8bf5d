"""``eval-vos`` and its metrics at their edges: no object, a size mismatch, a first frame that is the given
annotation, options that do not apply, masks of an earlier evaluation, per-sequence output."""

from __future__ import annotations

import math

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from trek_tracker.cli import main
from trek_tracker.errors import InputError
from trek_tracker.eval.vos_metrics import score_sequence, summarise

PALETTE = [0, 0, 0, 128, 0, 0, 0, 128, 0] + [0] * 759
KEYS = ("J&F", "J_mean", "J_recall", "J_decay", "F_mean", "F_recall", "F_decay")


def _png(path, arr):
    im = Image.fromarray(np.asarray(arr, np.uint8), mode="P")
    im.putpalette(PALETTE)
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path)


def _square(h=16, w=16, value=1):
    m = np.zeros((h, w), np.uint8)
    m[4:12, 4:12] = value
    return m


def _dataset(root, seqs: dict[str, list[np.ndarray]]):
    """A DAVIS-layout folder: black 16x16 frames, one annotation per frame."""
    for name, gts in seqs.items():
        for i, gt in enumerate(gts):
            img = root / "JPEGImages" / name / f"{i:05d}.jpg"
            img.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(img)
            _png(root / "Annotations" / name / f"{i:05d}.png", gt)
    return root


def _cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def test_summarise_without_objects_has_every_key():
    res = summarise([])
    assert res["objects"] == [] and all(math.isnan(res[k]) for k in KEYS)


def test_prediction_of_another_size_is_an_input_error():
    gts = [_square(16, 16)] * 3
    preds = [_square(16, 16), _square(16, 15), _square(16, 16)]
    with pytest.raises(InputError, match=r"annotation 2 of 3 is 16x16 but its prediction is 15x16"):
        score_sequence("s", preds, gts)


def test_given_first_frame_is_never_scored():
    """Two annotated frames (sparse annotations, or --max-frames 2): frame 0 is the given annotation, so only
    frame 1 counts; a lost object there scores 0, not (1 + 0) / 2."""
    gts = [_square(), _square()]
    (score,) = score_sequence("s", [_square(), np.zeros((16, 16), np.uint8)], gts)
    assert score.j == [0.0] and score.f == [0.0]
    (score,) = score_sequence("s", [_square()], [_square()])
    assert score.j == [] and math.isnan(score.summary()["J_mean"])
    assert len(score_sequence("s", gts * 2, gts * 2)[0].j) == 2  # 4 frames: the middle two, as before


def test_eval_vos_without_any_object_is_one_line(tmp_path):
    z = np.zeros((16, 16), np.uint8)
    data = _dataset(tmp_path / "ds", {"seq": [z] * 4})
    for i in range(4):
        _png(tmp_path / "pred" / "seq" / f"{i:05d}.png", z)
    result = _cli("eval-vos", data, "--predictions", tmp_path / "pred")
    assert result.exit_code == 2, result.output
    assert "holds an object" in result.stderr and "Traceback" not in result.stderr


def test_eval_vos_refuses_model_options_with_predictions(tmp_path):
    data = _dataset(tmp_path / "ds", {"seq": [_square()] * 4})
    for i in range(4):
        _png(tmp_path / "pred" / "seq" / f"{i:05d}.png", _square())
    result = _cli("eval-vos", data, "--predictions", tmp_path / "pred", "--max-frames", "2")
    assert result.exit_code == 2 and "--max-frames applies to a model's run" in result.stderr, result.output
    result = _cli("eval-vos", data, "--predictions", tmp_path / "pred")
    assert result.exit_code == 0, result.output
    assert "J&F 1.0000" in result.stdout and "J-decay 0.0000" in result.stdout


def test_eval_vos_prints_each_sequence_as_it_is_scored(tmp_path):
    """A long evaluation shows its sequences as they are done: here the first is printed before the second
    one's missing prediction stops it."""
    data = _dataset(tmp_path / "ds", {"a": [_square()] * 3, "b": [_square()] * 3})
    for i in range(3):
        _png(tmp_path / "pred" / "a" / f"{i:05d}.png", _square())
    result = _cli("eval-vos", data, "--predictions", tmp_path / "pred")
    assert result.exit_code == 2 and "prediction missing" in result.stderr, result.output
    assert result.stdout.startswith("a ") and "(1/2)" in result.stdout


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from tests.cli.conftest import official_checkpoint

    return official_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pth")


def test_eval_vos_annotation_of_another_size_is_one_line(tmp_path, tiny):
    data = _dataset(tmp_path / "ds", {"seq": [_square(), _square(16, 15), _square()]})
    result = _cli("eval-vos", data, "--checkpoint", tiny, "--model", "test_deaot_tiny", "--device", "cpu")
    assert result.exit_code == 2, result.output
    assert "annotation 2 of 3 is 15x16 but its prediction is 16x16" in result.stderr
    assert "Traceback" not in result.stderr


def test_eval_vos_save_masks_never_mixes_with_earlier_masks(tmp_path, tiny):
    data = _dataset(tmp_path / "ds", {"seq": [_square()] * 4})
    masks = tmp_path / "masks"
    args = ("eval-vos", data, "--checkpoint", tiny, "--model", "test_deaot_tiny", "--device", "cpu")
    result = _cli(*args, "--save-masks", masks)
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (masks / "seq").iterdir()) == [f"{i:05d}.png" for i in range(4)]
    before = {p.name: p.read_bytes() for p in (masks / "seq").iterdir()}
    result = _cli(*args, "--max-frames", "2", "--save-masks", masks)  # would leave frames 2, 3 of the first
    assert result.exit_code == 2 and "already holds masks of seq" in result.stderr, result.output
    assert {p.name: p.read_bytes() for p in (masks / "seq").iterdir()} == before


def test_a_checkpoint_is_a_file_or_a_registry_name(tmp_path, monkeypatch):
    """As everywhere a checkpoint is asked for: a registry name resolves (here to its download command, the
    cache being empty), and a SAM name is refused as the wrong family."""
    monkeypatch.setenv("TREK_TRACK_HOME", str(tmp_path / "home"))
    root = tmp_path / "davis"
    _dataset(root, {"a": [_square(), _square()]})
    runner = CliRunner()
    res = runner.invoke(main, ["eval-vos", str(root), "--checkpoint", "r50_deaotl"])
    assert res.exit_code == 2 and "trek-track weights download r50_deaotl" in res.output, res.output
    res = runner.invoke(main, ["eval-vos", str(root), "--checkpoint", "sam_vit_b"])
    assert res.exit_code == 2 and "not deaot" in res.output, res.output
