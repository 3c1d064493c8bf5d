"""Official checkpoint containers load strictly through the documented key map; nothing pickled runs."""

from __future__ import annotations

import logging
import re

import pytest
import torch
import torch.serialization

from tests.cli.conftest import TINY, official_checkpoint
from trek_tracker.errors import CheckpointError
from trek_tracker.modeling import registry
from trek_tracker.modeling.checkpoints import (
    PartialInit,
    init_from_parent,
    load_model,
    load_official_state_dict,
    load_weights,
    read_checkpoint,
    save_checkpoint,
)
from trek_tracker.modeling.deaot import DeAOT
from trek_tracker.modeling.msdeaot import MSDeAOT
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
    assert list(read_checkpoint(path)) == list(state)  # official names, without a wrapper's prefix
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


@pytest.mark.parametrize("unsafe_default", [False, True])
def test_pickled_code_never_runs(tmp_path, monkeypatch, unsafe_default):
    if unsafe_default:  # PyTorch before 2.6 (setup.cfg allows 2.1) loads with weights_only=False by default;
        monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")  # this asks the same of newer versions
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


def test_a_web_page_or_a_cut_download_is_refused_saying_which(tmp_path):
    page = tmp_path / "page.pth"
    page.write_bytes(b"<!DOCTYPE html><html><body>Google Drive - Quota exceeded</body></html>")
    with pytest.raises(CheckpointError, match="not a PyTorch file"):
        read_checkpoint(page)
    data = official_checkpoint(tmp_path / "c.pth").read_bytes()
    cut = tmp_path / "cut.pth"
    cut.write_bytes(data[: len(data) // 2])  # a zip header, but not the rest
    with pytest.raises(CheckpointError, match=r"cannot read checkpoint .*cut\.pth: .*damaged or incomplete"):
        read_checkpoint(cut)


def test_a_legacy_pickle_file_loads(tmp_path):
    state = torch.load(official_checkpoint(tmp_path / "c.pth"), weights_only=True)["state_dict"]
    path = tmp_path / "legacy.pth"
    torch.save({"state_dict": state}, path, _use_new_zipfile_serialization=False)
    assert path.read_bytes()[:1] == b"\x80"
    read = read_checkpoint(path)
    assert read.keys() == state.keys() and all(torch.equal(read[k], state[k]) for k in state)


@pytest.mark.parametrize("obj", [{"epoch": 3}, [torch.zeros(1)], {"state_dict": {"w": torch.zeros(1), "step": 3}},
                                 {"model": {"w": "weights.bin"}}])
def test_a_file_without_a_state_dict_of_tensors_is_not_a_model_checkpoint(tmp_path, obj):
    path = tmp_path / "other.pth"
    torch.save(obj, path)
    with pytest.raises(CheckpointError, match=r"other\.pth is not a model checkpoint"):
        read_checkpoint(path)


def _tiny_with_index_buffer() -> DeAOT:
    """The tiny model with an integer buffer named like Swin's relative position index, which a checkpoint may
    omit and must otherwise hold unchanged."""
    model = build_model(TINY)
    model.encoder.register_buffer("relative_position_index", torch.arange(6).view(2, 3))
    return model


def test_a_derived_index_buffer_may_be_absent_but_not_different(tmp_path):
    state = torch.load(official_checkpoint(tmp_path / "c.pth"), weights_only=True)["state_dict"]
    model = _tiny_with_index_buffer()
    load_official_state_dict(model, state)  # absent: kept as defined
    assert torch.equal(model.encoder.relative_position_index, torch.arange(6).view(2, 3))
    load_official_state_dict(model, {**state, "encoder.relative_position_index": torch.arange(6, dtype=torch.int32)
                                     .view(2, 3)})  # present, equal (in another integer type)
    assert model.encoder.relative_position_index.dtype == torch.int64
    scrambled = {**state, "encoder.relative_position_index": torch.arange(6).flip(0).view(2, 3)}
    with pytest.raises(CheckpointError, match=r"^f\.pth: buffer encoder\.relative_position_index differs from its "
                                              "definition$"):
        load_official_state_dict(model, scrambled, source="f.pth")
    assert torch.equal(model.encoder.relative_position_index, torch.arange(6).view(2, 3))
    with pytest.raises(CheckpointError, match="1 missing keys"):  # only that suffix may be absent
        load_official_state_dict(model, {k: v for k, v in state.items() if k != "id_norm.bias"})


def test_a_mismatch_message_counts_each_kind_and_names_the_model(tmp_path):
    state = read_checkpoint(official_checkpoint(tmp_path / "c.pth"))
    layer1 = [k for k in state if k.startswith("LSTT.layers.1.")]  # in the model's order
    state = {k: v for k, v in state.items() if k not in layer1}
    state.update({"decoder.extra.weight": torch.zeros(2), "decoder.extra.bias": torch.zeros(2)})
    shape = tuple(state["encoder_projector.weight"].shape)
    state["encoder_projector.weight"] = torch.zeros(3, 1, 1, 1)
    expected = (f"tiny.pth does not match model 'test_deaot_tiny': {len(layer1)} missing keys (first: {layer1[0]}); "
                "2 unexpected keys (first: decoder.extra.weight); 1 shape mismatches (first: encoder_projector.weight "
                f"is (3, 1, 1, 1) in the file, {shape} in the model) (is it a checkpoint of another variant? check "
                "--model)")
    with pytest.raises(CheckpointError) as err:
        load_official_state_dict(build_model(TINY), state, source="tiny.pth", model_name=TINY)
    assert str(err.value) == expected
    with pytest.raises(CheckpointError, match="^checkpoint does not match the model: "):
        load_official_state_dict(build_model(TINY), state)


def test_our_file_ignores_the_default_model_and_accepts_its_alias(tmp_path, monkeypatch):
    torch.manual_seed(5)
    saved = build_model(TINY)
    path = save_checkpoint(tmp_path / "ours.pth", saved)
    model, init = load_model(path, default_model="deaott")  # the default is for official files only
    assert init is None and model.config == saved.config
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), saved.state_dict().values(),
                                                  strict=True))
    monkeypatch.setitem(registry._ALIASES, "tiny_alias", TINY)
    assert load_model(path, "tiny_alias")[0].config == saved.config
    with pytest.raises(CheckpointError, match=r"holds model 'test_deaot_tiny', not 'deaott' \(omit --model"):
        load_model(path, "deaott", default_model=TINY)


def test_an_official_file_takes_the_named_model_over_the_default(tmp_path):
    path = official_checkpoint(tmp_path / "c.pth")
    model, init = load_model(path, TINY, default_model="deaott")
    assert init is None and model.config.name == TINY
    model, _ = load_model(path, default_model=TINY)
    state = read_checkpoint(path)
    assert torch.equal(model.state_dict()["id_bank.weight"], state["patch_wise_id_bank.weight"])
    with pytest.raises(CheckpointError, match="without a stored config: name its model"):
        load_model(path)


def test_a_cut_down_file_of_the_family_itself_is_not_taken_for_its_parent(tmp_path):
    state = {MSDeAOT.official_key(k): v for k, v in build_model("test_msdeaot_tiny").state_dict().items()}
    del state["head_out.weight"]
    path = tmp_path / "ms.pth"
    torch.save({"state_dict": state}, path)
    with pytest.raises(CheckpointError, match=r"does not match model 'test_msdeaot_tiny': 1 missing keys \(first: "
                                              r"head_out\.weight\)"):
        load_model(path, "test_msdeaot_tiny")


def test_a_partial_init_summary_groups_names_by_module():
    init = PartialInit("deaotl.pth", loaded=["encoder.conv1.weight", "id_norm.bias"],
                       unused=["decoder.layer1.0.conv.weight", "decoder.layer1.0.conv.bias",
                               "LSTT.layers.2.norm.weight", "decoder.conv_out.weight"],
                       new=["head_out.weight", "stages.1.layers.0.linear_QV.weight", "stages.1.adapter.weight", "x"])
    assert init.to_dict() == {
        "source": "deaotl.pth", "loaded": 2,
        "unused": {"decoder.layer1.0": 2, "LSTT.layers.2": 1, "decoder.conv_out": 1},
        "new": {"head_out": 1, "stages.1.layers": 1, "stages.1.adapter": 1, "x": 1}}


def test_a_file_in_our_documented_format_rebuilds_its_model(tmp_path):
    # docs/deaot.md#our-checkpoint-format, as a file written by any earlier version holds it.
    torch.manual_seed(6)
    source = build_model(TINY)
    state = {DeAOT.official_key(k): v for k, v in source.state_dict().items()}
    path = tmp_path / "ours.pth"
    torch.save({"format": "trek-track/1", "config": source.config.to_dict(), "state_dict": state, "step": 10}, path)
    model, init = load_model(path)
    assert init is None and model.config == source.config
    assert torch.equal(model.state_dict()["id_bank.weight"], state["patch_wise_id_bank.weight"])


def test_a_partial_init_is_logged_with_its_counts_and_modules(tmp_path, caplog):
    torch.manual_seed(7)
    state = {DeAOT.official_key(k): v for k, v in build_model(TINY, num_layers=3).state_dict().items()}
    path = tmp_path / "deaot.pth"
    torch.save({"state_dict": state}, path)
    with caplog.at_level(logging.INFO, logger="trek_tracker.modeling.checkpoints"):
        _, init = load_model(path, "test_msdeaot_tiny")
    (message,) = [r.getMessage() for r in caplog.records if r.name == "trek_tracker.modeling.checkpoints"]
    assert message.startswith(f"initialised test_msdeaot_tiny from {path}: {len(init.loaded)} tensors loaded; ")
    unused, new = message.split("unused from the file: ")[1].split("; new (random init): ")
    assert set(unused.split(", ")) == set(init.to_dict()["unused"]) and "LSTT.layers.2" in unused
    assert set(new.split(", ")) == set(init.to_dict()["new"]) and "stages.1.layers" in new


def test_only_our_format_tag_makes_a_stored_config_ours(tmp_path):
    state = read_checkpoint(official_checkpoint(tmp_path / "c.pth"))
    foreign = tmp_path / "foreign.pth"  # another tool's container with a config of its own
    torch.save({"state_dict": state, "config": {"lr": 0.1, "name": "deaott"}}, foreign)
    model, _ = load_model(foreign, TINY)
    assert model.config.name == TINY
    untagged = tmp_path / "untagged.pth"  # our tag without a config: the weights are still official-keyed
    torch.save({"format": "trek-track/1", "state_dict": state}, untagged)
    with pytest.raises(CheckpointError, match="without a stored config: name its model"):
        load_model(untagged)
    assert load_model(untagged, TINY)[0].config.name == TINY


def test_a_deaot_we_saved_starts_an_msdeaot_as_an_official_deaot_file_does(tmp_path):
    torch.manual_seed(8)
    deaot = build_model(TINY)
    ours = save_checkpoint(tmp_path / "ours.pth", deaot)
    official = tmp_path / "official.pth"
    torch.save({"state_dict": {DeAOT.official_key(k): v for k, v in deaot.state_dict().items()}}, official)
    model, init = load_model(ours, "test_msdeaot_tiny")
    reference, reference_init = load_model(official, "test_msdeaot_tiny")
    assert isinstance(model, MSDeAOT) and init is not None
    assert init.to_dict() == {**reference_init.to_dict(), "source": str(ours)} and init.loaded == reference_init.loaded
    ref = reference.state_dict()
    for key, value in model.state_dict().items():
        if not key.startswith(MSDeAOT.new_prefixes):
            assert torch.equal(value, ref[key]), key
    assert torch.equal(model.gpm.layers[1].linear_QV.weight, deaot.gpm.layers[1].linear_QV.weight)
    legacy = torch.load(ours, weights_only=True)  # written before families were named: no "family" key
    del legacy["config"]["family"]
    torch.save(legacy, tmp_path / "legacy.pth")
    assert load_model(tmp_path / "legacy.pth", "test_msdeaot_tiny")[1].loaded == init.loaded
    with pytest.raises(CheckpointError, match="holds model 'test_deaot_tiny', not 'test_vmos_tiny'"):
        load_model(ours, "test_vmos_tiny")  # VMOS has no parent family
    ms = save_checkpoint(tmp_path / "ms.pth", model)
    with pytest.raises(CheckpointError, match="holds model 'test_msdeaot_tiny', not 'r50_msdeaot_2stage'"):
        load_model(ms, "r50_msdeaot_2stage")  # another variant of the same family is no parent


def test_a_file_of_a_deeper_variant_is_refused_for_its_extra_layers(tmp_path):
    # e.g. a DeAOT-L file (3 layers) named as DeAOT-S (2): nothing is missing, nothing has another shape.
    state = {DeAOT.official_key(k): v for k, v in build_model(TINY, num_layers=3).state_dict().items()}
    path = tmp_path / "deeper.pth"
    torch.save({"state_dict": state}, path)
    layer2 = [k for k in state if k.startswith("LSTT.layers.2.")]
    with pytest.raises(CheckpointError) as err:
        load_model(path, TINY)
    assert str(err.value) == (f"{path} does not match model 'test_deaot_tiny': {len(layer2)} unexpected keys (first: "
                              f"{layer2[0]}) (is it a checkpoint of another variant? check --model)")


def test_a_parent_file_that_cannot_start_the_model_names_each_mismatch_once():
    state = {DeAOT.official_key(k): v for k, v in build_model(TINY).state_dict().items()}
    width = tuple(state["encoder_projector.bias"].shape)
    state["encoder_projector.bias"] = torch.zeros(3)  # present, with another shape: not also "missing"
    expected = (f"checkpoint cannot initialise msdeaot 'test_msdeaot_tiny': 1 shape mismatches (first: "
                f"encoder_projector.bias is (3,) in the file, {width} in the model) (use a deaot checkpoint with "
                "the same encoder, e.g. R50_DeAOTL for r50_msdeaot)")
    for start in (init_from_parent, load_weights):
        with pytest.raises(CheckpointError) as err:
            start(build_model("test_msdeaot_tiny"), state)
        assert str(err.value) == expected, start.__name__


def test_a_file_saved_on_a_gpu_loads_to_the_cpu(tmp_path, monkeypatch):
    state = read_checkpoint(official_checkpoint(tmp_path / "c.pth"))
    path = tmp_path / "gpu.pth"
    with monkeypatch.context() as saving_on_a_gpu:  # as the released files were written: storages on cuda:0,
        saving_on_a_gpu.setattr(torch.serialization, "location_tag", lambda storage: "cuda:0")  # restored there
        torch.save({"state_dict": state, "optimizer": {}}, path)                               # unless told not to
    read = read_checkpoint(path)
    assert all(v.device.type == "cpu" and torch.equal(v, state[k]) for k, v in read.items())
    model, _ = load_model(path, TINY)
    assert torch.equal(model.state_dict()["id_bank.weight"], state["patch_wise_id_bank.weight"])


def test_a_parent_file_may_omit_the_derived_index_buffer_but_not_hold_another():
    state = {DeAOT.official_key(k): v for k, v in build_model(TINY).state_dict().items()}
    model = build_model("test_msdeaot_tiny")
    model.encoder.register_buffer("relative_position_index", torch.arange(6).view(2, 3))
    init = init_from_parent(model, state)
    assert torch.equal(model.encoder.relative_position_index, torch.arange(6).view(2, 3))
    assert "encoder.relative_position_index" not in init.loaded + init.new
    assert torch.equal(model.state_dict()["encoder_projector.weight"], state["encoder_projector.weight"])
    scrambled = {**state, "encoder.relative_position_index": torch.arange(6).flip(0).view(2, 3)}
    with pytest.raises(CheckpointError, match=r"^f\.pth: buffer encoder\.relative_position_index differs from its "
                                              "definition$"):  # one line, not the loader's RuntimeError
        init_from_parent(model, scrambled, source="f.pth")
    assert torch.equal(model.encoder.relative_position_index, torch.arange(6).view(2, 3))


def test_our_file_whose_weights_do_not_fit_its_config_says_so(tmp_path):
    path = save_checkpoint(tmp_path / "ours.pth", build_model(TINY))
    payload = torch.load(path, weights_only=True)
    del payload["state_dict"]["id_norm.bias"]
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match=re.escape(f"{path} does not match model 'test_deaot_tiny': 1 missing "
                                                        "keys (first: id_norm.bias)")):
        load_model(path)


def test_a_raw_state_dict_with_a_tensor_named_like_a_container_stays_raw(tmp_path):
    path = tmp_path / "raw.pth"
    torch.save({"model": torch.ones(2), "state_dict": torch.zeros(1)}, path)
    assert set(read_checkpoint(path)) == {"model", "state_dict"}
