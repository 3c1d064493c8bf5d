"""VMOS through the command line: ``run`` (with TTA and as an ensemble member beside a DeAOT model),
``eval`` on a TREK-150 layout, and ``convert`` of an official-format file, with the tiny variant."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import pytest
import torch
from click.testing import CliRunner

from tests.cli.conftest import TINY, _seeded, official_checkpoint
from tests.eval.helpers import build_synthetic
from trek_tracker.cli import main
from trek_tracker.modeling.checkpoints import load_model
from trek_tracker.modeling.registry import build_model
from trek_tracker.modeling.vmos import VMOS

VMOS_TINY = "test_vmos_tiny"
FAST = ("--max-long-edge", "120", "--quiet", "--device", "cpu", "--init", "box")
BOX = "20,15,40,30"


def vmos_official_checkpoint(path: Path) -> Path:
    """The tiny VMOS as HQTrack saves it: ``{'state_dict', 'optimizer'}`` with official keys, seeded."""
    state = {VMOS.official_key(k): _seeded(VMOS.official_key(k), tuple(v.shape))
             for k, v in build_model(VMOS_TINY).state_dict().items()}
    assert any(k.startswith("LSTT.layer_s8.") for k in state) and "patch_wise_id_bank_s8.weight" in state
    torch.save({"state_dict": state, "optimizer": {"state": {}, "param_groups": []}}, path)
    return path


@pytest.fixture()
def cli():
    runner = CliRunner()
    return lambda *args: runner.invoke(main, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def vmos_checkpoint(tmp_path_factory) -> Path:
    return vmos_official_checkpoint(tmp_path_factory.mktemp("vmos") / "save_step_42000.pth")


@pytest.fixture(scope="module")
def deaot_checkpoint(tmp_path_factory) -> Path:
    return official_checkpoint(tmp_path_factory.mktemp("deaot") / "TEST_DeAOT_tiny_PRE_YTB_DAV.pth")


@pytest.fixture(scope="module")
def small_video(shared, tmp_path_factory) -> Path:
    """Five frames of DAVIS car-shadow shrunk to 107x60 (VMOS enlarges it to a 480 short edge first, then
    the long-edge cap of 120 applies)."""
    out = tmp_path_factory.mktemp("video")
    for i, path in enumerate(sorted((shared / "data/davis/JPEGImages/480p/car-shadow").glob("*.jpg"))[:5]):
        cv2.imwrite(str(out / f"{i:05d}.jpg"), cv2.resize(cv2.imread(str(path)), (107, 60)))
    return out


def test_run_with_vmos_tta_and_a_mixed_ensemble(cli, small_video, vmos_checkpoint, deaot_checkpoint, tmp_path):
    single = tmp_path / "single"
    result = cli("run", "--video", small_video, "--box", BOX, "--model", "internt_msdeaotl_v2", "--checkpoint",
                 vmos_checkpoint, "--out", single, "--save-masks", *FAST)
    # the official alias names the registered variant, whose shapes differ from the tiny file's
    assert result.exit_code == 2 and "does not match" in result.stderr and "Traceback" not in result.stderr
    result = cli("run", "--video", small_video, "--box", BOX, "--model", VMOS_TINY, "--checkpoint", vmos_checkpoint,
                 "--out", single, "--save-masks", *FAST)
    assert result.exit_code == 0, result.stderr
    record = json.loads((single / "run.json").read_text())
    assert record["status"] == "complete" and record["tracker"]["model"] == VMOS_TINY
    assert len((single / "boxes.txt").read_text().splitlines()) == 5
    assert len(list((single / "masks").glob("*.png"))) == 5

    tta = tmp_path / "tta"
    result = cli("run", "--video", small_video, "--box", BOX, "--model", VMOS_TINY, "--checkpoint", vmos_checkpoint,
                 "--out", tta, "--tta-scales", "1.0,1.2", "--tta-flip", *FAST)
    assert result.exit_code == 0, result.stderr
    assert len(json.loads((tta / "run.json").read_text())["tracker"]["tta"]["views"]) == 4

    duo = tmp_path / "duo"
    result = cli("run", "--video", small_video, "--box", BOX, "--model", VMOS_TINY, "--checkpoint", vmos_checkpoint,
                 "--model", TINY, "--checkpoint", deaot_checkpoint, "--ensemble-mode", "mean", "--out", duo, *FAST)
    assert result.exit_code == 0, result.stderr
    members = json.loads((duo / "run.json").read_text())["tracker"]["ensemble"]["members"]
    assert len(members) == 2 and VMOS_TINY in json.dumps(members) and TINY in json.dumps(members)
    assert len((duo / "boxes.txt").read_text().splitlines()) == 5


def test_eval_with_vmos(cli, vmos_checkpoint, tmp_path):
    root = build_synthetic(tmp_path / "trek")
    results = tmp_path / "results"
    result = cli("eval", "--root", root, "--protocol", "ope", "--tracker", "vmos_tiny", "--results", results,
                 "--report-dir", tmp_path / "reports", "--no-plots", "--model", VMOS_TINY, "--max-long-edge", "120",
                 "--sequences", "P01-P01_01-10", "--checkpoint",
                 vmos_checkpoint, "--init", "box", "--device", "cpu", "--quiet")
    assert result.exit_code == 0, result.stderr
    assert "TREK-150 OPE" in result.stdout
    files = sorted((results / "vmos_tiny" / "ope").glob("*.txt"))
    assert files and all(f.read_text().strip() for f in files)


def test_convert_writes_our_format(cli, vmos_checkpoint, tmp_path):
    out = tmp_path / "vmos_ours.pth"
    result = cli("convert", vmos_checkpoint, "--model", VMOS_TINY, "--out", out)
    assert result.exit_code == 0, result.stderr
    config = torch.load(out, weights_only=True)["config"]
    assert config["family"] == "vmos" and config["name"] == VMOS_TINY and config["long_term_gap"] == 50
    ours, _ = load_model(out)
    official, _ = load_model(vmos_checkpoint, VMOS_TINY)
    a, b = ours.state_dict(), official.state_dict()
    assert isinstance(ours, VMOS) and a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    payload = torch.load(out, weights_only=True)
    assert "optimizer" not in payload and "LSTT.s4_cons_out.res1.conv1.weight" in payload["state_dict"]
