"""``trek-track convert``: official file -> our format (round trip), DeAOT -> MSDeAOT start, errors."""

from __future__ import annotations

import torch

from tests.cli.conftest import TINY
from trek_tracker.modeling.checkpoints import load_model
from trek_tracker.modeling.msdeaot import MSDeAOT


def test_convert_round_trips_weights_and_config(cli, tiny_checkpoint, tmp_path):
    out = tmp_path / "ours.pth"
    result = cli("convert", tiny_checkpoint, "--model", TINY, "--out", out)
    assert result.exit_code == 0, result.stderr
    assert torch.load(out, weights_only=True)["config"]["name"] == TINY
    assert result.stdout == f"wrote {out} ({TINY}, {out.stat().st_size / 1024 / 1024:.1f} MiB)\n"  # MiB: 2**20 bytes
    payload = torch.load(out, weights_only=True)
    assert "optimizer" not in payload and payload["converted_from"] == tiny_checkpoint.name
    ours, _ = load_model(out)  # no model name needed: the file carries its config
    official, _ = load_model(tiny_checkpoint, TINY)
    a, b = ours.state_dict(), official.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_convert_starts_an_msdeaot_from_a_deaot_file(cli, tiny_checkpoint, tmp_path):
    out = tmp_path / "ms.pth"
    result = cli("convert", tiny_checkpoint, "--model", "test_msdeaot_tiny", "--out", out)
    assert result.exit_code == 0, result.stderr
    assert "new (untrained): " in result.stdout and "stages.1.layers" in result.stdout
    assert "decoder" in result.stdout  # DeAOT's FPN is reported unused
    model, init = load_model(out)
    assert isinstance(model, MSDeAOT) and init is None  # a full load now: the file has every tensor
    official, _ = load_model(tiny_checkpoint, TINY)
    assert torch.equal(model.state_dict()["gpm.layers.1.linear_QV.weight"],
                       official.state_dict()["gpm.layers.1.linear_QV.weight"])
    assert torch.load(out, weights_only=True)["partial_init"]["loaded"] > 0


def test_convert_errors_are_one_line(cli, tiny_checkpoint, tmp_path):
    result = cli("convert", tmp_path / "missing.pth", "--model", TINY, "--out", tmp_path / "x.pth")
    assert result.exit_code == 2 and "checkpoint not found" in result.stderr
    result = cli("convert", tiny_checkpoint, "--model", "deaott", "--out", tmp_path / "x.pth")
    assert result.exit_code == 2 and "does not match model 'deaott'" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "x.pth").exists()


def test_convert_never_replaces_its_source(cli, tiny_checkpoint, tmp_path):
    source = tmp_path / "official.pth"
    source.write_bytes(tiny_checkpoint.read_bytes())
    result = cli("convert", source, "--model", TINY, "--out", source)
    assert result.exit_code == 2 and "is SOURCE itself" in result.stderr, result.output
    assert source.read_bytes() == tiny_checkpoint.read_bytes()


def test_convert_our_own_file_without_model(cli, tiny_checkpoint, tmp_path):
    ours = tmp_path / "ours.pth"
    assert cli("convert", tiny_checkpoint, "--model", TINY, "--out", ours).exit_code == 0
    result = cli("convert", ours, "--out", tmp_path / "again.pth")
    assert result.exit_code == 0, result.output
    a, b = torch.load(ours, weights_only=True), torch.load(tmp_path / "again.pth", weights_only=True)
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
    result = cli("convert", tiny_checkpoint, "--out", tmp_path / "x.pth")  # an official file needs --model
    assert result.exit_code == 2 and "name its model (--model)" in result.stderr, result.output


def test_convert_out_that_is_a_folder_is_refused_before_loading(cli, tmp_path):
    (tmp_path / "folder").mkdir()
    result = cli("convert", tmp_path / "missing.pth", "--model", TINY, "--out", tmp_path / "folder")
    assert result.exit_code == 2 and "Invalid value for '--out'" in result.stderr and "is a directory" in result.stderr
    assert list((tmp_path / "folder").iterdir()) == []


def test_convert_source_that_is_a_folder_is_refused_before_loading(cli, tmp_path):
    (tmp_path / "official.pth").mkdir()
    result = cli("convert", tmp_path / "official.pth", "--model", TINY, "--out", tmp_path / "x.pth")
    assert result.exit_code == 2 and result.stderr.count("\n") == 1 and "Traceback" not in result.output
    assert "Invalid value for 'SOURCE'" in result.stderr and "is a directory" in result.stderr, result.stderr
    assert not (tmp_path / "x.pth").exists()
