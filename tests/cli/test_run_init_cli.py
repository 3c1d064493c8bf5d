"""``trek-track run --init ...``: the weight-free inits and Alpha-Refine from the command line."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from tests.cli.conftest import TINY
from trek_tracker.init.alpha_refine.secm import SEcm
from trek_tracker.results import read_label_png

BOX = "127,73,383,312"  # blackswan frame 0: the tight box of its ground-truth mask


@pytest.fixture()
def clip(davis, tmp_path):
    d = tmp_path / "clip"
    d.mkdir()
    for i in range(3):
        shutil.copy(davis / f"JPEGImages/480p/blackswan/{i:05d}.jpg", d / f"{i:05d}.jpg")
    return d


def _run(cli, clip, out, tiny_checkpoint, *extra):
    result = cli("run", "--video", clip, "--box", BOX, "--model", TINY, "--checkpoint", tiny_checkpoint,
                 "--max-long-edge", "240", "--device", "cpu", "--quiet", "--out", out, "--save-masks", *extra)
    assert result.exit_code == 0, result.stderr
    record = json.loads((out / "run.json").read_text())
    first, _ = read_label_png(out / "masks/00000.png")
    return result, record["tracker"]["init"], first > 0


def test_box_and_grabcut_inits(cli, clip, tiny_checkpoint, tmp_path):
    _, info, box_mask = _run(cli, clip, tmp_path / "box", tiny_checkpoint, "--init", "box")
    assert info["method"] == "box" and box_mask.sum() == 383 * 312
    _, info, grab = _run(cli, clip, tmp_path / "grabcut", tiny_checkpoint, "--init", "grabcut")
    assert info["method"] == "grabcut"
    assert 0 < grab.sum() < box_mask.sum() and not grab[~box_mask].any()  # inside the box, not all of it


def test_auto_without_checkpoints_says_what_it_used(cli, clip, tiny_checkpoint, tmp_path):
    result, info, _ = _run(cli, clip, tmp_path / "auto", tiny_checkpoint)
    assert info["method"] == "grabcut"
    assert "grabcut" in result.stderr and "--sam-checkpoint" in result.stderr


def test_alpha_refine_init_from_a_checkpoint_file(cli, clip, tiny_checkpoint, tmp_path):
    torch.manual_seed(0)
    ckpt = tmp_path / "SEcmnet_ep0040-c.pth.tar"
    torch.save({"net": SEcm().state_dict(), "epoch": 40}, ckpt)
    _, info, mask = _run(cli, clip, tmp_path / "ar", tiny_checkpoint, "--init", "ar", "--ar-checkpoint", ckpt)
    assert info["requested"] == "ar" and info["method"] in {"ar", "box"}  # random weights may fall back
    assert mask.any() and not mask[:, :127].any()  # clipped to the box
    assert np.isfinite(info["ar"]["confidence"])


def test_explicit_method_without_its_checkpoint_is_an_error(cli, clip, tiny_checkpoint, tmp_path):
    out = tmp_path / "out"
    result = cli("run", "--video", clip, "--box", BOX, "--model", TINY, "--checkpoint", tiny_checkpoint,
                 "--init", "fused", "--out", out, "--quiet")
    assert result.exit_code == 2 and "--ar-checkpoint" in result.stderr
    assert not out.exists()
