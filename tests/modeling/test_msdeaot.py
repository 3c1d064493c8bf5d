"""MSDeAOT: shapes per stage, gradients, the stride-8 ID bank, config round trip, DeAOT -> MSDeAOT init."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from trek_tracker.errors import CheckpointError, UserError
from trek_tracker.inference.engine import EngineConfig, VOSEngine
from trek_tracker.inference.memory import Memory, MemoryConfig, MemorySchedule
from trek_tracker.modeling.checkpoints import (
    init_from_parent,
    load_model,
    save_checkpoint,
)
from trek_tracker.modeling.deaot import DeAOT
from trek_tracker.modeling.msdeaot import MSDeAOT, MSDeAOTConfig
from trek_tracker.modeling.registry import build_model, build_model_from_config, model_config

SIZE = (129, 161)  # 16k + 1: grids 9x11 at 16x, 17x21 at 8x


def _one_hot(labels: torch.Tensor, classes: int = 11) -> torch.Tensor:
    return (labels[None, None] == torch.arange(classes).view(1, -1, 1, 1)).float()


@pytest.fixture(scope="module")
def tiny() -> MSDeAOT:
    torch.manual_seed(0)
    return build_model("test_msdeaot_tiny")


def test_report_design_is_the_default():
    cfg = model_config("r50_msdeaot")
    assert cfg.stages == ((16, 2, 256), (16, 0, 256), (8, 1, 256))
    assert cfg.num_layers == 3 and cfg.output_stride == 8
    assert model_config("swinb_msdeaot").align_corners is False
    with pytest.raises(UserError, match="first stage"):
        MSDeAOTConfig("bad", "test_tiny", stages=((8, 1, 256),))
    with pytest.raises(UserError, match="invalid stage"):
        MSDeAOTConfig("bad", "test_tiny", d_model=32, stages=((16, 1, 32), (8, 1, 32), (16, 1, 32)))


def test_stage_grids_banks_and_output_stride(tiny):
    tiny.eval()
    feats = tiny.encode(torch.randn(1, 3, *SIZE))
    layout = tiny.memory_layout(feats)
    assert [layer.grid for layer in layout] == [(9, 11), (9, 11), (17, 21)]
    assert tiny.layer_strides == [16, 16, 8]
    labels = torch.zeros(SIZE, dtype=torch.int64)
    labels[40:80, 50:100] = 1
    emb = tiny.id_embedding(_one_hot(labels))
    # A true stride-8 bank: its tokens cover the 8x grid, not an upsampled 16x grid.
    assert [b.shape[0] for b in emb.banks] == [9 * 11, 17 * 21]
    assert [emb.for_layer(i).shape[0] for i in range(3)] == [99, 99, 357]
    with torch.no_grad():
        tokens, entries = tiny.propagate(feats, None, emb)
        logits = tiny.decode(tokens, feats)
    assert [e.key.shape[0] for e in entries] == [99, 99, 357]
    assert entries[0].id_in is None and entries[2].id_in is not None
    assert logits.shape == (1, 11, 17, 21)
    assert layout[0].long_term_dilation == 1 and layout[2].long_term_dilation == 2


def test_forward_backward_reaches_every_stage(tiny):
    tiny.train()
    torch.manual_seed(1)
    ref, cur = torch.randn(1, 3, *SIZE), torch.randn(1, 3, *SIZE)
    labels = torch.zeros(SIZE, dtype=torch.int64)
    labels[30:90, 40:120] = 1
    feats = tiny.encode(ref)
    emb = tiny.id_embedding(_one_hot(labels))
    _, entries = tiny.propagate(feats, None, emb)
    memory = Memory(tiny.memory_layout(feats), MemorySchedule(gap=1))
    memory.remember(0, entries, [tiny.fuse_id(i, e, emb) for i, e in enumerate(entries)], reference=True)
    feats2 = tiny.encode(cur)
    tokens, _ = tiny.propagate(feats2, memory.attend())
    logits = tiny.decode(tokens, feats2)
    target = torch.nn.functional.interpolate(labels[None, None].float(), size=logits.shape[-2:])[0, 0].long()
    loss = torch.nn.functional.cross_entropy(logits, target[None])
    loss.backward()
    for name in ("gpm.layers.0.linear_QV.weight", "gpm.layers.1.linear_ID_U.weight",
                 "stages.0.bridge_vis.collapse.conv.weight", "stages.1.bridge_id.refine.blocks.0.0.conv.weight",
                 "stages.1.adapter.weight", "stages.1.layers.0.linear_ID_V.weight", "id_banks.0.weight",
                 "id_bank.weight", "head_out.weight", "encoder_projector.weight"):
        grad = dict(tiny.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name
    tiny.zero_grad(set_to_none=True)


def test_engine_uses_per_layer_grids_and_dilated_8x_memory(tiny):
    tiny.eval()
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 255, (120, 160, 3), dtype=np.uint8)
    labels = np.zeros((120, 160), np.int64)
    labels[30:70, 40:100] = 1
    engine = VOSEngine(tiny, EngineConfig(memory=MemoryConfig(gap=1)))
    engine.add_reference(frame, labels)
    (h16, w16), _, (h8, w8) = [layer.grid for layer in engine.layout]
    memory = engine.memory
    assert memory.attend()[2].short_key.shape[-2:] == (h8, w8)  # short-term at full 8x resolution
    assert memory.long_term(0, 0)[0].shape[0] == h16 * w16
    assert memory.long_term(2, 0)[0].shape[0] == ((h8 + 1) // 2) * ((w8 + 1) // 2)  # long-term [::2, ::2]
    out = engine.step(frame)
    assert out.probs.shape == (2, 120, 160)
    assert torch.allclose(out.probs.sum(0), torch.ones(120, 160), atol=1e-5)
    assert len(memory.frames) == 2


def test_config_and_checkpoint_round_trip(tiny, tmp_path):
    rebuilt = build_model_from_config(tiny.config.to_dict())
    assert isinstance(rebuilt, MSDeAOT) and rebuilt.config == tiny.config
    path = save_checkpoint(tmp_path / "tiny.pth", tiny)
    assert torch.load(path, weights_only=True)["config"]["stages"] == [[16, 2, 32], [16, 0, 32], [8, 1, 32]]
    loaded, init = load_model(path)
    assert init is None
    ours = tiny.state_dict()
    for key, value in loaded.state_dict().items():
        assert torch.equal(value, ours[key]), key
    with pytest.raises(CheckpointError, match="holds model 'test_msdeaot_tiny'"):
        load_model(path, "test_deaot_tiny")
    with pytest.raises(CheckpointError, match="does not know"):
        build_model_from_config({**tiny.config.to_dict(), "colour": "red"})


def _deaot_state(**overrides) -> dict[str, torch.Tensor]:
    torch.manual_seed(3)
    deaot = build_model("test_deaot_tiny", **overrides)
    return {DeAOT.official_key(k): v for k, v in deaot.state_dict().items()}


def test_msdeaot_starts_from_a_deaot_checkpoint(tmp_path):
    state = _deaot_state(num_layers=3)  # a DeAOT-L-like stack: layer 2 is left unused
    path = tmp_path / "deaot_official.pth"
    torch.save({"state_dict": state, "optimizer": {}}, path)
    model, init = load_model(path, "test_msdeaot_tiny")
    ours = model.state_dict()
    assert torch.equal(ours["encoder_projector.weight"], state["encoder_projector.weight"])
    assert torch.equal(ours["id_bank.weight"], state["patch_wise_id_bank.weight"])
    assert torch.equal(ours["gpm.layers.1.linear_ID_V.weight"], state["LSTT.layers.1.linear_ID_V.weight"])
    enc = [k for k in state if k.startswith("encoder.")]
    assert enc and all(torch.equal(ours[k], state[k]) for k in enc)
    assert any(k.startswith("LSTT.layers.2.") for k in init.unused)
    assert any(k.startswith("decoder.") for k in init.unused)
    assert any(k.startswith("LSTT.decoder_norms.0.") for k in init.unused)
    assert not any(k.startswith("LSTT.layers.1.") for k in init.unused)
    assert set(k.split(".")[0] for k in init.new) == {"stages", "id_banks", "id_norms", "out_norm", "head_conv",
                                                       "head_out"}
    summary = init.to_dict()
    assert summary["loaded"] == len(init.loaded) and "stages.1.layers" in summary["new"]


def test_partial_init_rejects_what_it_cannot_explain(tiny):
    state = _deaot_state()
    del state["encoder_projector.bias"]
    with pytest.raises(CheckpointError, match="1 missing keys .first: encoder_projector.bias"):
        init_from_parent(build_model("test_msdeaot_tiny"), state)
    state = _deaot_state()
    state["extra.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError, match="unexpected keys .first: extra.weight"):
        init_from_parent(build_model("test_msdeaot_tiny"), state)
    state = _deaot_state(d_model=48)  # another width: every GPM tensor mismatches
    with pytest.raises(CheckpointError, match="shape mismatches"):
        init_from_parent(build_model("test_msdeaot_tiny"), state)
