"""Reading official-layout AR checkpoints with the restricted unpickler."""

from __future__ import annotations

import os
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from trek_tracker.errors import CheckpointError
from trek_tracker.init.alpha_refine.checkpoint import (
    KeyMap,
    build_model,
    load_alpha_refine,
    map_state_dict,
    pool_size_of,
    read_checkpoint,
)
from trek_tracker.init.alpha_refine.secm import SEcm


def _fake_ltr_class(module: str, name: str) -> type:
    """A class that pickles under an ``ltr.*`` name, like the training package's objects."""
    parts = module.split(".")
    for i in range(1, len(parts) + 1):
        sys.modules.setdefault(".".join(parts[:i]), types.ModuleType(".".join(parts[:i])))
    cls = type(name, (), {"__module__": module, "__qualname__": name})
    setattr(sys.modules[module], name, cls)
    return cls


@pytest.fixture
def official_layout_checkpoint(tmp_path: Path):
    torch.manual_seed(0)
    model = SEcm().eval()
    state = dict(model.state_dict())
    state["feature_extractor.fc.weight"] = torch.zeros(1000, 512)  # declared unused
    state["feature_extractor.fc.bias"] = torch.zeros(1000)
    names = ["ltr", "ltr.admin", "ltr.admin.model_constructor", "ltr.admin.settings"]
    try:
        constructor_cls = _fake_ltr_class("ltr.admin.model_constructor", "NetConstructor")
        settings_cls = _fake_ltr_class("ltr.admin.settings", "Settings")
        constructor = constructor_cls()
        constructor.fun_name, constructor.fun_module = "SEcm_resnet34", "ltr.models.SEx_beta.SEcm_r34"
        constructor.args, constructor.kwds = (), {"pool_size": 8, "used_layers": ["layer3"]}
        settings = settings_cls()
        settings.device = torch.device("cpu")
        settings.objective = torch.nn.BCELoss()  # training objects: kept as inert records
        ckpt = {
            "epoch": 40,
            "actor_type": "SEcmActor",
            "net_type": "SEcmnet",
            "net": state,
            "net_info": None,
            "constructor": constructor,
            "optimizer": {"state": {}},
            "stats": {"train": {"Loss/total": np.float64(0.25), "hist": np.zeros(3)}},
            "settings": settings,
        }
        path = tmp_path / "SEcmnet_ep0040-c.pth.tar"
        torch.save(ckpt, path, _use_new_zipfile_serialization=False)  # a plain torch pickle, as published
    finally:
        for name in names:
            sys.modules.pop(name, None)
    return path, model


def test_official_layout_loads_without_ltr(official_layout_checkpoint) -> None:
    path, model = official_layout_checkpoint
    assert "ltr" not in sys.modules
    ckpt = read_checkpoint(path)
    assert ckpt["constructor"].kwds == {"pool_size": 8, "used_layers": ["layer3"]}
    assert type(ckpt["constructor"]).__module__ == "ltr.admin.model_constructor"
    assert type(ckpt["settings"].objective).__name__ == "BCELoss"
    assert not isinstance(ckpt["settings"].objective, torch.nn.Module)  # a record, not the real class
    loss = ckpt["stats"]["train"]["Loss/total"]  # numpy's reconstructor, called with the scalar's raw bytes
    assert type(loss).__module__.startswith("numpy") and np.float64(0.25).tobytes() in loss.args
    assert not hasattr(loss, "dtype")  # a record without pickled state has no attributes at all
    net = load_alpha_refine(path)
    assert isinstance(net, SEcm)
    for key, value in model.state_dict().items():
        assert torch.equal(net.state_dict()[key], value), key
    with pytest.raises(CheckpointError, match="seg384"):
        load_alpha_refine(path, model_name="seg384")


class _Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_checkpoint_carrying_code_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth.tar"
    torch.save({"net": {"w": torch.zeros(2)}, "settings": _Exploit(marker)}, path)
    with pytest.raises(CheckpointError, match="evil.pth.tar cannot be loaded safely: refusing to load global"):
        read_checkpoint(path)
    assert not marker.exists()


def test_missing_and_garbage_files(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="not found"):
        read_checkpoint(tmp_path / "nope.pth.tar")
    junk = tmp_path / "junk.pth.tar"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.pth.tar is not a readable torch checkpoint") as err:
        read_checkpoint(junk)
    assert "safely" not in str(err.value)  # a damaged file, not a refused one


def test_a_sam_file_or_a_damaged_file_says_what_to_give(tmp_path: Path) -> None:
    """Swapped --sam-checkpoint / --ar-checkpoint, or a partial download: one line naming the file and the fix."""
    torch.save({"image_encoder.pos_embed": torch.zeros(1, 4, 4, 768)}, tmp_path / "sam_vit_b_01ec64.pth")
    with pytest.raises(CheckpointError, match=r"sam_vit_b_01ec64.pth is a SAM checkpoint, not Alpha-Refine: give it "
                                              r"as --sam-checkpoint.*SEcmnet_ep0040-c.pth.tar as --ar-checkpoint"):
        load_alpha_refine(tmp_path / "sam_vit_b_01ec64.pth")
    torch.save({"image_encoder.pos_embed": torch.zeros(1), "mask_decoder.hf_token.weight": torch.zeros(1)},
               tmp_path / "sam_hq_vit_b.pth")
    with pytest.raises(CheckpointError, match=r"sam_hq_vit_b.pth is a SAM checkpoint, not Alpha-Refine: give it "
                                              r"as --hqsam-checkpoint, and give the official ARnet"):
        load_alpha_refine(tmp_path / "sam_hq_vit_b.pth")
    torch.save({"w": torch.zeros(2)}, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match=r"other.pth: state dict is neither .*as --ar-checkpoint"):
        load_alpha_refine(tmp_path / "other.pth")
    torch.save({"net": SEcm().state_dict()}, tmp_path / "full.pth.tar")
    data = (tmp_path / "full.pth.tar").read_bytes()
    (tmp_path / "partial.pth.tar").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="partial.pth.tar is not a readable torch checkpoint .*download it again"
                       ) as err:
        load_alpha_refine(tmp_path / "partial.pth.tar")
    assert "\n" not in str(err.value) and len(str(err.value)) < 300



def _save_with_foreign_object(path: Path, module: str, name: str, base: type = object, content=(), **state) -> None:
    """torch.save a checkpoint holding an instance of ``module.name`` (a class defined only while saving)."""
    before = set(sys.modules)
    try:
        _fake_ltr_class(module, name)
        cls = type(name, (base,), {"__module__": module, "__qualname__": name})
        setattr(sys.modules[module], name, cls)
        obj = cls(content) if base is not object else cls()
        obj.__dict__.update(state)
        torch.save({"net": {"w": torch.ones(2)}, "settings": obj}, path)
    finally:
        parts = module.split(".")
        for key in {".".join(parts[:i]) for i in range(1, len(parts) + 1)} - before:
            sys.modules.pop(key)


@pytest.mark.parametrize(
    ("module", "name"),
    [
        ("ltr.admin.loading", "Record"),
        ("pytracking.evaluation.environment", "EnvSettings"),
        ("dlframework.common.utils", "Settings"),
        ("easydict", "EasyDict"),
    ],
)
def test_objects_of_the_training_packages_load_as_inert_records(tmp_path: Path, module: str, name: str) -> None:
    _save_with_foreign_object(tmp_path / "ckpt.pth.tar", module, name, lr=0.5)
    record = read_checkpoint(tmp_path / "ckpt.pth.tar")["settings"]
    assert (type(record).__module__, type(record).__name__, type(record).__qualname__) == (module, name, name)
    assert record.lr == 0.5 and module.split(".")[0] not in sys.modules  # state kept as data; nothing imported
    assert not hasattr(record, "momentum")  # what the pickle did not hold is missing, not None
    assert torch.equal(read_checkpoint(str(tmp_path / "ckpt.pth.tar"))["net"]["w"], torch.ones(2))  # path as text


@pytest.mark.parametrize("protocol", [2, 3])  # 2 (torch.save's default) names builtins __builtin__
def test_an_optimiser_object_is_recorded_not_constructed(tmp_path: Path, protocol: int) -> None:
    optimiser = torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=0.25)
    torch.save({"net": {"w": torch.ones(2)}, "optimizer": optimiser}, tmp_path / "ckpt.pth.tar",
               pickle_protocol=protocol)
    record = read_checkpoint(tmp_path / "ckpt.pth.tar")["optimizer"]
    assert not isinstance(record, torch.optim.Optimizer) and type(record).__name__ == "SGD"
    assert record.defaults["lr"] == 0.25


@pytest.mark.parametrize("module", ["ltr_tools.admin", "pytrackingx"])
def test_a_package_merely_named_like_a_training_package_is_refused(tmp_path: Path, module: str) -> None:
    _save_with_foreign_object(tmp_path / "c.pth", module, "Thing")
    with pytest.raises(CheckpointError, match=f"refusing to load global {module}.Thing"):
        read_checkpoint(tmp_path / "c.pth")


def test_a_file_without_a_net_state_dict_is_refused(tmp_path: Path) -> None:
    odd = [[torch.zeros(2)], {"epoch": 3, "model": {"w": torch.zeros(2)}, "step": torch.tensor(3)},
           {"net": [torch.zeros(2)]}]
    for i, obj in enumerate(odd):
        torch.save(obj, tmp_path / f"odd{i}.pth")
        with pytest.raises(CheckpointError, match=f"odd{i}.pth has no 'net' state dict: not an Alpha-Refine"):
            load_alpha_refine(str(tmp_path / f"odd{i}.pth"))


def test_dict_and_list_subclasses_keep_their_contents(tmp_path: Path) -> None:
    _save_with_foreign_object(tmp_path / "d.pth", "easydict", "EasyDict", dict, {"batch": 8, "lr": 0.5}, lr=0.5)
    record = read_checkpoint(tmp_path / "d.pth")["settings"]
    assert (record["batch"], record["lr"], record.lr) == (8, 0.5, 0.5)
    _save_with_foreign_object(tmp_path / "l.pth", "ltr.admin.stats", "History", list, [0.25, 0.5])
    assert read_checkpoint(tmp_path / "l.pth")["settings"].elements == [0.25, 0.5]


def test_pool_size_is_the_square_root_of_the_attention_inputs() -> None:
    for pool in (4, 8, 12):
        fc1 = torch.zeros(pool * pool // 4, pool * pool, 1, 1)
        assert pool_size_of({"neck.channel_attention.fc1.weight": fc1}) == pool
    with pytest.raises(CheckpointError, match="has 50 inputs, not a square pool size"):
        pool_size_of({"neck.channel_attention.fc1.weight": torch.zeros(12, 50, 1, 1)})
    with pytest.raises(CheckpointError, match="lacks neck.channel_attention.fc1.weight"):
        pool_size_of({"neck.post_corr.0.weight": torch.zeros(128, 64, 1, 1)})


@pytest.mark.parametrize("protocol", [2, 3])
def test_sets_bytes_and_sizes_in_the_training_records_load(tmp_path: Path, protocol: int) -> None:
    records = {"layers": {"layer2", "layer3"}, "frozen": frozenset({"conv1"}), "tag": b"\x00\xff",
               "shape": torch.Size([1, 3, 256, 256])}
    torch.save({"net": {"w": torch.ones(2)}, "settings": records}, tmp_path / "c.pth", pickle_protocol=protocol)
    settings = read_checkpoint(tmp_path / "c.pth")["settings"]
    assert settings == records and type(settings["shape"]) is torch.Size
    assert type(settings["layers"]) is set and type(settings["frozen"]) is frozenset


def test_batch_norm_counters_are_optional_both_ways() -> None:
    torch.manual_seed(0)
    model = SEcm(pool_size=4).eval()  # not the default 8: the network is built with the checkpoint's pool size
    state = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}  # pre-0.4.1 torch
    state["neck.extra_bn.num_batches_tracked"] = torch.tensor(7)  # a counter of a BN we do not have
    net = build_model(state, "secm")
    loaded = net.state_dict()
    assert net.pool_size == 4 and all(torch.equal(loaded[k], v) for k, v in state.items() if k in loaded)
    assert "neck.extra_bn.num_batches_tracked" not in loaded


def test_the_network_is_built_with_the_checkpoints_pool_size() -> None:
    from trek_tracker.init.alpha_refine.seg384 import ARSegMask

    torch.manual_seed(0)
    small = ARSegMask(pool_size=4).eval()  # not the default 12 (SEcm's non-default pool: the test above)
    net = build_model(small.state_dict())
    assert type(net) is ARSegMask and net.pool_size == 4
    assert all(torch.equal(net.state_dict()[k], v) for k, v in small.state_dict().items())


def test_key_map_renames_by_prefix() -> None:
    model = SEcm()
    state = {k.replace("feature_extractor.", "backbone.", 1): v for k, v in model.state_dict().items()}
    key_map = KeyMap(renames=(("backbone.", "feature_extractor."), ("backbone.layer1.", "never.")))  # first wins
    mapped = map_state_dict(state, key_map, model)
    assert set(mapped) == set(model.state_dict())
    assert mapped["feature_extractor.layer1.0.conv1.weight"] is state["backbone.layer1.0.conv1.weight"]


def test_tensors_saved_on_a_gpu_load_on_the_cpu(tmp_path: Path, monkeypatch) -> None:
    with monkeypatch.context() as patch:  # the published files were saved from CUDA tensors
        patch.setattr(torch.serialization, "location_tag", lambda storage: "cuda:0")
        torch.save({"net": {"w": torch.ones(2)}}, tmp_path / "gpu.pth.tar", _use_new_zipfile_serialization=False)
    weight = read_checkpoint(tmp_path / "gpu.pth.tar")["net"]["w"]
    assert weight.device.type == "cpu" and torch.equal(weight, torch.ones(2))
