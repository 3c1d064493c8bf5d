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
from trek_tracker.init.alpha_refine.checkpoint import load_alpha_refine, read_checkpoint
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
