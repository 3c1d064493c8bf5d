"""DeAOT encoders: official state-dict layout, frozen BN, Swin details, freezing, and golden parity of the
features with the seeded weights."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from trek_tracker.errors import UserError
from trek_tracker.inference.preprocess import input_size, to_network_input
from trek_tracker.modeling.encoders import ENCODERS, build_encoder, encoder_dims, relative_position_index
from trek_tracker.modeling.encoders.frozen_bn import FrozenBatchNorm2d
from trek_tracker.modeling.encoders.swin import DropPath, SwinEncoder

OFFICIAL = {"mobilenetv2": "deaott", "resnet50": "r50_deaotl", "swin_base": "swinb_deaotl"}


@pytest.fixture(scope="module")
def swin() -> nn.Module:
    """One Swin-B for the read-only checks (building its 88 M parameters takes seconds)."""
    return build_encoder("swin_base").eval()


def _encoder_rows(golden: Path, model: str) -> list[tuple[str, tuple[int, ...], str]]:
    rows = json.loads((golden / "deaot" / model / "keys.json").read_text())
    return [(k[len("encoder.") :], tuple(s), d) for k, s, d in rows if k.startswith("encoder.")]


def _seeded(golden: Path, model: str) -> dict[str, torch.Tensor]:
    """Seeded weights of the official model (README §1), loaded from the golden folder (not a package)."""
    spec = importlib.util.spec_from_file_location("_seeded_weights", golden / "seeded_weights.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.seeded_state_dict(json.loads((golden / "deaot" / model / "keys.json").read_text()))


# --- frozen BN ------------------------------------------------------------------------------------


def test_frozen_bn_buffers_and_math() -> None:
    bn = FrozenBatchNorm2d(5)
    assert list(bn.state_dict()) == ["weight", "bias", "running_mean", "running_var"]
    assert list(bn.parameters()) == []
    x = torch.randn(2, 5, 3, 4)
    assert torch.allclose(bn(x), x, atol=1e-6)  # the default is the identity
    g = torch.Generator().manual_seed(0)
    state = {
        "weight": torch.randn(5, generator=g),
        "bias": torch.randn(5, generator=g),
        "running_mean": torch.randn(5, generator=g),
        "running_var": torch.rand(5, generator=g) + 0.5,
    }
    bn.load_state_dict(state)
    ref = nn.BatchNorm2d(5, eps=1e-5).eval()
    ref.load_state_dict(state, strict=False)
    assert torch.allclose(bn(x), ref(x), atol=1e-6)
    xg = x.clone().requires_grad_(True)  # training path: folded scale/shift, same numbers
    y = bn(xg)
    assert torch.allclose(y, ref(x), atol=1e-5)
    y.sum().backward()
    assert xg.grad is not None and all(v.grad is None for v in bn.buffers())


# --- layout ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(OFFICIAL))
def test_state_dict_matches_official_keys(golden, swin, name) -> None:
    enc = swin if name == "swin_base" else build_encoder(name)
    ours = [(k, tuple(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in enc.state_dict().items()]
    assert ours == _encoder_rows(golden, OFFICIAL[name])
    assert not any(k.endswith("num_batches_tracked") for k, _, _ in ours)


@pytest.mark.parametrize(
    ("name", "hw"),
    [("mobilenetv2", (65, 97)), ("resnet50", (65, 97)), ("swin_base", (100, 90)), ("test_tiny", (33, 49))],
)
def test_output_strides_and_dims(swin, name, hw) -> None:
    enc = swin if name == "swin_base" else build_encoder(name).eval()
    with torch.no_grad():
        outs = enc(torch.randn(1, 3, *hw))
    assert len(outs) == 4
    assert tuple(o.shape[1] for o in outs) == enc.dims == encoder_dims(name) == ENCODERS[name].dims
    h, w = hw
    for o, stride in zip(outs, (4, 8, 16, 16), strict=True):
        assert o.shape[-2:] == (-(-h // stride), -(-w // stride))
        assert torch.isfinite(o).all()


def test_build_encoder_unknown_name() -> None:
    with pytest.raises(UserError, match="resnet50"):
        build_encoder("resnet18")
    with pytest.raises(UserError):
        encoder_dims("nope")
    assert [ENCODERS[n].align_corners for n in OFFICIAL] == [True, True, False]


# --- freezing -------------------------------------------------------------------------------------


def _trainable(module: nn.Module) -> bool:
    flags = {p.requires_grad for p in module.parameters()}
    assert len(flags) == 1, "mixed trainable/frozen parameters"
    return flags.pop()


def test_freeze_at_2_freezes_stem_and_first_stage() -> None:
    r = build_encoder("resnet50", freeze_at=2)
    assert not _trainable(r.conv1) and not _trainable(r.layer1)
    assert _trainable(r.layer2) and _trainable(r.layer3)
    m = build_encoder("mobilenetv2", freeze_at=2)
    assert not _trainable(m.features[0:4]) and _trainable(m.features[4:])
    m1 = build_encoder("mobilenetv2", freeze_at=1)
    assert not _trainable(m1.features[0]) and _trainable(m1.features[1:])
    s = build_encoder("swin_base", freeze_at=2)
    assert not _trainable(s.patch_embed) and not _trainable(s.layers[0].blocks)
    assert _trainable(s.layers[0].downsample) and _trainable(s.layers[1]) and _trainable(s.norm0)
    assert all(isinstance(b.drop_path, nn.Identity) for b in s.layers[0].blocks)


def test_no_freezing_by_default(swin) -> None:
    assert all(p.requires_grad for p in swin.parameters())
    assert all(p.requires_grad for p in build_encoder("resnet50").parameters())


# --- Swin details ---------------------------------------------------------------------------------


def test_relative_position_index_definition() -> None:
    w = 7
    idx = relative_position_index(w)
    assert idx.dtype == torch.int64 and idx.shape == (49, 49)
    for i in range(w * w):
        for j in range(w * w):
            dy, dx = i // w - j // w, i % w - j % w
            assert idx[i, j] == (dy + w - 1) * (2 * w - 1) + (dx + w - 1)
    assert set(idx.unique().tolist()) == set(range((2 * w - 1) ** 2))


def test_swin_index_buffers_load_and_check() -> None:
    enc = SwinEncoder(embed_dim=16, depths=(2, 2, 2, 2), heads=(1, 2, 4, 8), window=7)
    state = enc.state_dict()
    index_keys = [k for k in state if k.endswith("relative_position_index")]
    assert len(index_keys) == 6
    assert all(torch.equal(state[k], relative_position_index(7)) for k in index_keys)
    floats = {k: v for k, v in state.items() if v.is_floating_point()}
    enc.load_state_dict(floats, strict=True)  # seeded weights omit the int64 buffers
    bad = dict(state)
    bad[index_keys[0]] = bad[index_keys[0]].flip(0)
    with pytest.raises(RuntimeError, match="relative position index"):
        enc.load_state_dict(bad, strict=True)


def test_swin_drop_path_schedule_and_eval_identity(swin) -> None:
    blocks = [b for stage in swin.layers for b in stage.blocks]
    rates = [b.drop_path.p if isinstance(b.drop_path, DropPath) else 0.0 for b in blocks]
    # Linear over the 24 blocks of the full 4-stage network; the 22 built blocks take the first 22 rates.
    assert rates == pytest.approx([0.3 * i / 23 for i in range(22)], abs=1e-7)
    dp = DropPath(0.5)
    x = torch.ones(64, 3, 2)
    dp.eval()
    assert torch.equal(dp(x), x)
    dp.train()
    y = dp(x)
    per_sample = y.flatten(1)
    assert set(per_sample.unique().tolist()) <= {0.0, 2.0}
    assert (per_sample == per_sample[:, :1]).all() and 0 < (per_sample[:, 0] == 0).sum() < 64


# --- golden parity --------------------------------------------------------------------------------

PARITY = [
    ("mobilenetv2", "car-shadow", range(8)),
    ("resnet50", "car-shadow", range(4)),
    ("swin_base", "car-shadow", range(4)),  # ~0.5 s per frame on 2 idle CPU cores
    ("resnet50", "aot_demo", range(4)),
]


def _stats(x: torch.Tensor) -> np.ndarray:
    d = x.double()
    return np.array([d.sum().item(), d.mean().item(), d.abs().mean().item(), d.std().item()])


@pytest.mark.parametrize(("name", "case", "frames"), PARITY)
def test_encoder_features_match_golden(shared, golden, name, case, frames) -> None:
    model = OFFICIAL[name]
    g = np.load(golden / "deaot" / model / f"{case}.npz")
    seeded = _seeded(golden, model)
    enc = build_encoder(name).eval()
    enc.load_state_dict({k[len("encoder.") :]: v for k, v in seeded.items() if k.startswith("encoder.")})
    proj = nn.Conv2d(enc.dims[3], 256, 1)
    proj.load_state_dict({k: seeded[f"encoder_projector.{k}"] for k in ("weight", "bias")})
    if case == "car-shadow":
        paths = [shared / "data/davis/JPEGImages/480p/car-shadow" / f"{i:05d}.jpg" for i in frames]
    else:
        paths = [shared / "data/aot_demo/images" / f"{2058 + i:08d}.jpg" for i in frames]
    for t, path in zip(frames, paths, strict=True):
        rgb = np.ascontiguousarray(cv2.imread(str(path))[:, :, ::-1])
        size = input_size(*rgb.shape[:2], max_long_edge=480, align_corners=ENCODERS[name].align_corners)
        x = to_network_input(rgb, size)
        h, w = size
        crop = x[0, :, h // 2 - 8 : h // 2 + 8, w // 2 - 8 : w // 2 + 8].numpy()
        assert np.abs(crop - g["input_crop"][t]).max() <= 1e-5
        with torch.no_grad():
            f4, f8, f16, f16b = enc(x)
            feats = [f4, f8, f16, proj(f16b)]
        for i, f in enumerate(feats):
            assert tuple(f.shape) == tuple(g["enc_shape"][t, i]), (t, i)
            ours, ref = _stats(f), g["enc_stats"][t, i]
            assert abs(ours[2] - ref[2]) <= 1e-4 * ref[2], (t, i, ours, ref)
            assert abs(ours[3] - ref[3]) <= 1e-4 * ref[3], (t, i, ours, ref)
            assert abs(ours[0] - ref[0]) <= 1e-5 * f.numel() * ref[2], (t, i, ours, ref)
            assert abs(ours[1] - ref[1]) <= 1e-5 * ref[2], (t, i, ours, ref)
