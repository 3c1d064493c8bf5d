"""Official checkpoint containers load strictly through the documented key map; nothing pickled runs."""

from __future__ import annotations

import pytest
import torch

from tests.cli.conftest import TINY, official_checkpoint
from trek_tracker.errors import CheckpointError
from trek_tracker.modeling.checkpoints import (
    load_official_state_dict,
    read_checkpoint,
    save_checkpoint,
)
from trek_tracker.modeling.deaot import DeAOT
from trek_tracker.modeling.registry import build_model


def test_key_map_round_trips_every_key():
    model = build_model(TINY)
    for key in model.state_dict():
        assert DeAOT.our_key(DeAOT.official_key(key)) == key
    official = {DeAOT.official_key(k) for k in model.state_dict()}
    assert any(k.startswith("LSTT.layers.") for k in official)
    assert "LSTT.decoder_norms.0.gn.weight" in official and "patch_wise_id_bank.weight" in official
    assert [old for old, _ in DeAOT.official_key_map] == ["LSTT.decoder_norms.0.gn.", "LSTT.layers.",
                                                          "patch_wise_id_bank."]


@pytest.mark.parametrize("container", ["state_dict", "model", "raw", "module_prefix"])
def test_official_containers_load(tmp_path, container):
    reference = official_checkpoint(tmp_path / "ref.pth")
    state = torch.load(reference, weights_only=True)["state_dict"]
    if container == "model":
        obj = {"model": state}
    elif container == "raw":
        obj = state
    elif container == "module_prefix":
        obj = {"state_dict": {f"module.{k}": v for k, v in state.items()}, "optimizer": {}}
    else:
        obj = {"state_dict": state, "optimizer": {}}
    path = tmp_path / f"{container}.pth"
    torch.save(obj, path)
    model = build_model(TINY)
    load_official_state_dict(model, read_checkpoint(path), model_name=TINY)
    ours = model.state_dict()
    for key, value in state.items():
        assert torch.equal(ours[DeAOT.our_key(key)], value)


def test_mismatch_names_first_missing_and_unexpected(tmp_path):
    path = official_checkpoint(tmp_path / "c.pth")
    obj = torch.load(path, weights_only=True)
    obj["state_dict"].pop("id_norm.weight")
    obj["state_dict"]["decoder.extra.weight"] = torch.zeros(1)
    torch.save(obj, path)
    with pytest.raises(CheckpointError, match=r"1 missing keys \(first: id_norm\.weight\).*1 unexpected keys "
                                              r"\(first: decoder\.extra\.weight\)"):
        load_official_state_dict(build_model(TINY), read_checkpoint(path), model_name=TINY)


def test_shape_mismatch_is_reported(tmp_path):
    path = official_checkpoint(tmp_path / "c.pth")
    obj = torch.load(path, weights_only=True)
    obj["state_dict"]["encoder_projector.bias"] = torch.zeros(3)
    torch.save(obj, path)
    with pytest.raises(CheckpointError, match="shape mismatch.*encoder_projector.bias"):
        load_official_state_dict(build_model(TINY), read_checkpoint(path))


def test_pickled_code_never_runs(tmp_path):
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (marker.write_text, ("x",))

    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {}, "x": Payload()}, path)
    with pytest.raises(CheckpointError, match="not loaded"):
        read_checkpoint(path)
    assert not marker.exists()


def test_not_a_checkpoint(tmp_path):
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"definitely not a torch file")
    with pytest.raises(CheckpointError, match="cannot read"):
        read_checkpoint(junk)
    with pytest.raises(CheckpointError, match="not found"):
        read_checkpoint(tmp_path / "absent.pth")


def test_our_format_round_trips_with_its_config(tmp_path):
    model = build_model(TINY)
    path = save_checkpoint(tmp_path / "ours.pth", model)
    assert torch.load(path, weights_only=True)["config"]["name"] == TINY
    other = build_model(TINY)
    load_official_state_dict(other, read_checkpoint(path))
    for (k, a), b in zip(model.state_dict().items(), other.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    assert "config" not in torch.load(official_checkpoint(tmp_path / "official.pth"), weights_only=True)
