"""VMOS (HQTrack's MSDeAOT_V2): parity with the official code's goldens, strict loading, DCNv3, memory rule.

Goldens, procedure and bounds: ``../shared/golden/vmos/README.md`` (§3 preprocessing, §4 model and engine,
§7 tolerances, including the teacher-forcing mode).
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from trek_tracker.errors import CheckpointError
from trek_tracker.inference.engine import EngineConfig, VOSEngine
from trek_tracker.inference.memory import Memory, MemorySchedule
from trek_tracker.inference.preprocess import input_size, to_network_input
from trek_tracker.modeling.base import LayerLayout
from trek_tracker.modeling.checkpoints import load_model, load_official_state_dict, save_checkpoint
from trek_tracker.modeling.dcnv3 import dcnv3_sample_grid
from trek_tracker.modeling.gpm import FrameEntry
from trek_tracker.modeling.registry import build_model, canonical_name, model_config
from trek_tracker.modeling.vmos import VMOS, VMOSConfig

from .conftest import load_seeded_weights_module

LOGIT_TOL = 2e-4
PROB_TOL = 1e-3
LABEL_PIXELS = 10
INPUT_TOL = 1e-6
STAT_REL = 1e-5


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def vmos_keys(golden: Path) -> list:
    return json.loads((golden / "vmos" / "keys.json").read_text())


@pytest.fixture(scope="module")
def vmos_state(golden: Path, vmos_keys) -> dict[str, torch.Tensor]:
    return load_seeded_weights_module(golden).seeded_state_dict(vmos_keys)


@pytest.fixture(scope="module")
def vmos_model(vmos_state) -> VMOS:
    model = build_model("vmos").eval()
    load_official_state_dict(model, vmos_state, model_name="vmos")
    return model


@pytest.fixture(scope="module")
def car_shadow(golden: Path, davis: Path):
    gold = np.load(golden / "vmos" / "car-shadow.npz")
    root = davis / "JPEGImages/480p/car-shadow"
    frames = [cv2.cvtColor(cv2.imread(str(root / f"{f}.jpg"), cv2.IMREAD_UNCHANGED), cv2.COLOR_BGR2RGB)
              for f in gold["frames"]]
    png = np.array(Image.open(davis / "Annotations/480p/car-shadow/00000.png"))
    ids = np.unique(png[png > 0])  # distinct non-zero values, increasing, become objects 1..N (README §2)
    mask = ((np.searchsorted(ids, png) + 1) * (png > 0)).astype(np.uint8)
    return gold, frames, mask


# --------------------------------------------------------------------------- registry and loading
def test_registered_with_hqtrack_defaults() -> None:
    config = model_config("internt_msdeaotl_v2")
    assert canonical_name("internt_msdeaotl_v2") == "vmos"
    assert isinstance(config, VMOSConfig) and config.family == "vmos"
    assert (config.long_term_gap, config.short_term_skip, config.long_term_cap) == (50, 4, 6)
    assert (config.input_resize, config.min_short_edge) == ("uint8", 480)
    assert VMOSConfig.from_dict(config.to_dict()) == config


def test_official_keys_load_strictly(vmos_keys, vmos_state, tmp_path: Path) -> None:
    model = build_model("vmos")
    ours = {model.official_key(k): tuple(v.shape) for k, v in model.state_dict().items()}
    assert ours == {k: tuple(s) for k, s, _ in vmos_keys}  # all 957, same shapes, nothing else
    assert sum(p.numel() for p in model.parameters()) == 33_820_938  # README §1
    assert all(model.our_key(model.official_key(k)) == k for k in model.state_dict())

    path = tmp_path / "save_step_42000.pth"  # the official container: state_dict (+ optimizer)
    torch.save({"state_dict": vmos_state, "optimizer": {}}, path)
    loaded, partial = load_model(path, "internt_msdeaotl_v2")
    assert partial is None and isinstance(loaded, VMOS)
    assert torch.equal(loaded.gpm8.linear_QV.weight, vmos_state["LSTT.layer_s8.linear_QV.weight"])
    assert torch.equal(loaded.bridge4.refine_id.res2.gn1.bias, vmos_state["LSTT.s4_cons_out_id.res2.gn1.bias"])

    mine = save_checkpoint(tmp_path / "vmos_ours.pth", loaded)  # our format: config beside the weights
    again, _ = load_model(mine)
    assert again.config == loaded.config
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), loaded.state_dict().values(),
                                                  strict=True))

    broken = dict(vmos_state)
    del broken["LSTT.s8_proj.weight"]
    torch.save({"state_dict": broken}, path)
    with pytest.raises(CheckpointError, match="LSTT.s8_proj.weight"):
        load_model(path, "vmos")


# --------------------------------------------------------------------------- DCNv3
def _bilinear_zero(plane: np.ndarray, x: float, y: float) -> np.ndarray:
    """Bilinear sample of (H, W, C) at pixel (x, y), zero outside (independent of grid_sample)."""
    h, w, _ = plane.shape
    x0, y0 = int(np.floor(x)), int(np.floor(y))
    out = np.zeros(plane.shape[2])
    for yy, wy in ((y0, 1 - (y - y0)), (y0 + 1, y - y0)):
        for xx, wx in ((x0, 1 - (x - x0)), (x0 + 1, x - x0)):
            if 0 <= xx < w and 0 <= yy < h:
                out += wy * wx * plane[yy, xx]
    return out


def test_dcnv3_samples_where_the_spec_says() -> None:
    """Output (i, j), group g = sum_p mask_p * v_pad(j + 1 + dx_p + off_x, i + 1 + dy_p + off_y), with the
    kernel points x-major (p = 3 (dx + 1) + (dy + 1)) and the value zero-padded by one pixel (README §4.2)."""
    gen = torch.Generator().manual_seed(0)
    n, h, w, group, cg = 1, 5, 7, 2, 3
    value = torch.randn(n, h, w, group * cg, generator=gen)
    offset = 1.7 * torch.randn(n, h, w, group * 9 * 2, generator=gen)
    mask = torch.softmax(torch.randn(n, h, w, group, 9, generator=gen), -1).reshape(n, h, w, -1)
    out = dcnv3_sample_grid(value, offset, mask, group=group).numpy()
    v = np.pad(value[0].double().numpy(), ((1, 1), (1, 1), (0, 0)))
    off = offset[0].double().numpy().reshape(h, w, group, 9, 2)
    m = mask[0].double().numpy().reshape(h, w, group, 9)
    expected = np.zeros((h, w, group * cg))
    for i in range(h):
        for j in range(w):
            for g in range(group):
                acc = np.zeros(cg)
                for p in range(9):
                    dx, dy = p // 3 - 1, p % 3 - 1
                    x, y = j + 1 + dx + off[i, j, g, p, 0], i + 1 + dy + off[i, j, g, p, 1]
                    acc += m[i, j, g, p] * _bilinear_zero(v[..., g * cg:(g + 1) * cg], x, y)
                expected[i, j, g * cg:(g + 1) * cg] = acc
    np.testing.assert_allclose(out[0], expected, atol=2e-5)


def test_dcnv3_module_in_float64_agrees_with_float32() -> None:
    """The sampling locations are built in float32 (as the official core does) and sampled in the wider of
    their dtype and the value's, so the module also runs in float64 (a numerical reference), within float32
    noise of the float32 result."""
    from trek_tracker.modeling.dcnv3 import DCNv3

    torch.manual_seed(0)
    module = DCNv3(16, 4).eval()
    for p in module.parameters():
        torch.nn.init.normal_(p, std=0.3)  # non-zero offsets and non-uniform masks
    x = torch.randn(1, 9, 11, 16)
    with torch.no_grad():
        single, double = module(x), module.double()(x.double())
    assert double.dtype == torch.float64
    assert (single.double() - double).abs().max() < 1e-5 < (single.double() - double).abs().max() * 1e6


def test_dcnv3_samples_a_half_precision_value_at_float32_locations() -> None:
    """Under mixed precision the value is bf16 but the locations stay float32, as CUDA autocast runs the
    official core's grid_sample (it promotes): on InternImage's widest map (262 columns at a 1040 input) a
    bf16 location would be up to 1/4 pixel off. So a bf16 value samples exactly as its float32 copy does."""
    gen = torch.Generator().manual_seed(0)
    n, h, w, group, cg = 1, 6, 262, 2, 4
    value = torch.randn(n, h, w, group * cg, generator=gen).to(torch.bfloat16)
    offset = 3.0 * torch.randn(n, h, w, group * 9 * 2, generator=gen)
    mask = torch.softmax(torch.randn(n, h, w, group, 9, generator=gen), -1).reshape(n, h, w, -1)
    half = dcnv3_sample_grid(value, offset, mask, group=group)
    full = dcnv3_sample_grid(value.float(), offset, mask, group=group)
    assert half.dtype == torch.float32
    assert (half - full).abs().max() < 1e-6  # sampling at bf16 locations differs by about 2 here


# --------------------------------------------------------------------------- preprocessing
def test_preprocessing_enlarges_small_frames_and_resizes_uint8() -> None:
    # MultiRestrictSize_ by hand: short edge 240 < 480 -> x2, then the long-edge cap, int, 16k+1 alignment.
    h, w = 240, 427
    sc = 480 / 240
    nh, nw = sc * h, sc * w
    long_sc = 1040 / max(nh, nw) if max(nh, nw) > 1040 else 1.0
    nh, nw = int(long_sc * nh), int(long_sc * nw)
    expect = tuple(n if (n - 1) % 16 == 0 else int(np.around((n - 1) / 16) * 16 + 1) for n in (nh, nw))
    assert input_size(h, w, min_short_edge=480) == expect == (481, 849)
    assert input_size(h, w) == (241, 433)  # DeAOT's rule never enlarges
    assert input_size(480, 854, max_long_edge=480, min_short_edge=480) == (273, 481)  # README §3

    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    x = to_network_input(frame, (481, 849), resize="uint8")[0].numpy()
    u8 = cv2.resize(frame, (849, 481), interpolation=cv2.INTER_CUBIC)
    ref = ((u8 / 255.0 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])).astype(np.float32)
    np.testing.assert_array_equal(x, ref.transpose(2, 0, 1))
    flipped = to_network_input(frame, (481, 849), flip=True, resize="uint8")[0].numpy()
    np.testing.assert_array_equal(flipped, x[:, :, ::-1])
    # The float resize (DeAOT's) is a different input: it keeps cubic overshoot and fractions.
    assert np.abs(to_network_input(frame, (481, 849))[0].numpy() - x).max() > 0.01


# --------------------------------------------------------------------------- memory rule
def _hqtrack_long_term(events: list[tuple[int, bool]], cap: int = 6) -> list[list[int]]:
    """HQTrack's ``update_long_term_memory`` on frame ids: newest first; when the memory holds ``cap``
    blocks, the block at position ``cap - 2`` is dropped before the new one is prepended."""
    memory: list[int] = []
    history = []
    for frame, enters in events:
        if enters:
            if len(memory) >= cap:
                memory = memory[:cap - 2] + memory[cap - 1:]
            memory = [frame] + memory
        history.append(list(memory))
    return history


def test_memory_cap_evicts_like_hqtrack() -> None:
    """With one reference frame, our cap rule (oldest non-reference out) is HQTrack's positional rule."""
    layout = [LayerLayout((2, 3)), LayerLayout((3, 5))]
    gap, frames = 3, 60
    memory = Memory(layout, MemorySchedule(gap=gap, skip=4, cap=6))
    events, ours, short = [], [], []
    last = 0
    for t in range(frames):
        entries = [FrameEntry(key=torch.full((h * w, 1, 2), float(t)), value=torch.zeros(h * w, 1, 2), id_in=None)
                   for h, w in (la.grid for la in layout)]
        idv = [torch.zeros(e.key.shape[0], 1, 2) for e in entries]
        entered = memory.remember(t, entries, idv, reference=t == 0)
        events.append((t, t == 0 or t - last >= gap))
        assert entered == events[-1][1]
        last = t if entered else last
        ours.append(memory.frames)
        short.append(memory.short_term_frame)
        # what the layers attend to is exactly those frames (per layer, each with its own token count)
        for i, la in enumerate(layout):
            keys = memory.attend()[i].long_key
            assert keys.shape[0] == len(memory.frames) * la.grid[0] * la.grid[1]
            assert sorted(set(keys[:, 0, 0].int().tolist()), reverse=True) == memory.frames
    assert ours == _hqtrack_long_term(events)
    assert max(len(f) for f in ours) == 6 and ours[-1][-1] == 0
    # HQTrack's short-term list: append, keep the last 4, use the oldest (frames 1-4 see 0, frame 5 sees 1)
    stm_list, official = [], []
    for t in range(frames):
        stm_list = ([] if t == 0 else stm_list) + [t]
        stm_list = stm_list[-4:]
        official.append(stm_list[0])
    assert short == official and short[:8] == [0, 0, 0, 0, 1, 2, 3, 4]


# --------------------------------------------------------------------------- golden parity
def _stats(t: torch.Tensor) -> np.ndarray:
    x = t.detach().double()
    return np.array([x.sum().item(), x.mean().item(), x.abs().mean().item(), x.std().item()])


def _check_stats(ours: np.ndarray, gold: np.ndarray, numel: int, what: str) -> None:
    scale = abs(gold[2])
    assert abs(ours[0] - gold[0]) <= STAT_REL * numel * scale, f"{what}: sum"
    assert abs(ours[1] - gold[1]) <= STAT_REL * scale, f"{what}: mean"
    assert abs(ours[2] - gold[2]) <= STAT_REL * abs(gold[2]), f"{what}: mean abs"
    assert abs(ours[3] - gold[3]) <= STAT_REL * abs(gold[3]), f"{what}: std"


class _Recorder:
    """Forward hooks that keep what the golden fingerprints describe, one entry per call."""

    def __init__(self, model: VMOS) -> None:
        self.calls: dict[str, list] = {k: [] for k in ("input", "enc", "proj", "gpm16", "gpm8", "gpm4",
                                                        "id16", "id8")}
        self.handles = [
            model.encoder.register_forward_pre_hook(lambda m, a: self.calls["input"].append(a[0].clone())),
            model.encoder.register_forward_hook(lambda m, a, o: self.calls["enc"].append([t.clone() for t in o])),
            model.encoder_projector.register_forward_hook(lambda m, a, o: self.calls["proj"].append(o.clone())),
            model.gpm8.register_forward_hook(lambda m, a, o: self.calls["gpm8"].append((o[0], o[1]))),
            model.out_norm.register_forward_hook(lambda m, a, o: self.calls["gpm4"].append(o.clone())),
            model.id_norm.register_forward_hook(lambda m, a, o: self.calls["id16"].append(o.clone())),
            model.id_norm8.register_forward_hook(lambda m, a, o: self.calls["id8"].append(o.clone())),
        ]
        self.per_layer: list[list] = [[] for _ in model.gpm.layers]
        for i, layer in enumerate(model.gpm.layers):
            self.handles.append(layer.register_forward_hook(
                lambda m, a, o, i=i: self.per_layer[i].append((o[0], o[1]))))

    def close(self) -> None:
        for h in self.handles:
            h.remove()


def _run(model: VMOS, gold, frames, mask, *, teacher_forcing: bool):
    engine = VOSEngine(model, EngineConfig(max_long_edge=float(gold["max_long_edge"])))
    engine.add_reference(frames[0], mask)
    outputs, memory_log = [], [(engine.memory.frames, engine.memory.short_term_frame,
                                [engine.memory.long_term_tokens(i) for i in (0, 3)])]
    for t in range(1, len(frames)):
        out = engine.predict(frames[t])
        outputs.append(out)
        label = torch.from_numpy(gold["label"][t - 1].astype(np.int64)) if teacher_forcing else out.labels
        engine.commit(label)
        memory = engine.memory
        memory_log.append((memory.frames, memory.short_term_frame, [memory.long_term_tokens(i) for i in (0, 3)]))
    return engine, outputs, memory_log


def _check_frames(gold, outputs) -> list[tuple[float, int]]:
    report = []
    for t, out in enumerate(outputs, start=1):
        logits = out.logits[0][0].numpy()
        assert logits.shape == gold["logits4x"][t - 1].shape
        delta = float(np.abs(logits - gold["logits4x"][t - 1]).max())
        flipped = int((out.labels.numpy() != gold["label"][t - 1]).sum())
        assert delta <= LOGIT_TOL, f"frame {t}: max |dlogit| {delta}"
        assert flipped <= LABEL_PIXELS, f"frame {t}: {flipped} label pixels differ"
        prob = out.probs[1].numpy()
        assert np.abs(prob - gold["prob_obj1"][t - 1].astype(np.float32)).max() <= PROB_TOL, f"frame {t}"
        report.append((delta, flipped))
    return report


def test_car_shadow_matches_official(vmos_model, car_shadow) -> None:
    """Every frame's logits, probabilities and labels, every fingerprint, and the exact memory schedule."""
    gold, frames, mask = car_shadow
    rec = _Recorder(vmos_model)
    try:
        engine, outputs, memory_log = _run(vmos_model, gold, frames, mask, teacher_forcing=False)
    finally:
        rec.close()
    assert engine.input_size == tuple(gold["input_size"]) and engine.token_grid == tuple(gold["enc_size"])
    assert (engine.num_objects, len(engine.group_sizes)) == (int(gold["obj_num"]), int(gold["groups"]))
    assert tuple(outputs[0].logits[0].shape[-2:]) == tuple(gold["logits_size"])
    _check_frames(gold, outputs)

    # memory schedule: exact
    for t, (ltm, stm, tokens) in enumerate(memory_log):
        expected = [f for f in gold["ltm_frames"][t] if f >= 0]
        assert ltm == expected, f"frame {t}: long-term frames"
        assert stm == gold["stm_frame"][t], f"frame {t}: short-term frame"
        assert tokens == list(gold["ltm_tokens"][t]), f"frame {t}: long-term tokens"

    T = len(frames)
    assert len(rec.calls["input"]) == T and len(rec.calls["id16"]) == T
    for t in range(T):
        x = rec.calls["input"][t][0]
        h, w = x.shape[-2:]
        crop = x[:, h // 2 - 8:h // 2 + 8, w // 2 - 8:w // 2 + 8].numpy()
        assert np.abs(crop - gold["input_crop"][t]).max() <= INPUT_TOL, f"frame {t}: input crop"
        for c in range(3):
            s = _stats(x[c])
            assert np.abs(s - gold["input_stats"][t, c]).max() <= INPUT_TOL * x[c].numel(), f"frame {t}: input"
        enc = [*rec.calls["enc"][t], rec.calls["proj"][t]]
        assert [list(e.shape) for e in enc] == gold["enc_shape"][t].tolist()
        for i, e in enumerate(enc):
            _check_stats(_stats(e), gold["enc_stats"][t, i], e.numel(), f"frame {t} encoder output {i}")
        for i, layer in enumerate(rec.per_layer):
            for s, stream in enumerate(layer[t]):
                _check_stats(_stats(stream), gold["gpm16_stats"][t, i, s], stream.numel(), f"frame {t} gpm16.{i}")
        for s, stream in enumerate(rec.calls["gpm8"][t]):
            _check_stats(_stats(stream), gold["gpm8_stats"][t, s], stream.numel(), f"frame {t} gpm8")
        head = rec.calls["gpm4"][t]
        half = head.shape[1] // 2
        for s, part in enumerate((head[:, :half], head[:, half:])):
            _check_stats(_stats(part), gold["gpm4_stats"][t, s], part.numel(), f"frame {t} 4x head input")
        for key, gkey in (("id16", "idemb16_stats"), ("id8", "idemb8_stats")):
            emb = rec.calls[key][t]
            _check_stats(_stats(emb), gold[gkey][t], emb.numel(), f"frame {t} {key}")


def test_car_shadow_teacher_forced(vmos_model, car_shadow) -> None:
    """README §7: memories updated with the golden labels; the per-frame bounds then hold on any clip."""
    gold, frames, mask = car_shadow
    _, outputs, _ = _run(vmos_model, gold, frames, mask, teacher_forcing=True)
    _check_frames(gold, outputs)


# --------------------------------------------------------------------------- the tiny variant
def test_tiny_vmos_tracks_with_its_memory_layout() -> None:
    torch.manual_seed(0)
    model = build_model("test_vmos_tiny", long_term_gap=2, long_term_cap=3).eval()
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (100, 150, 3), dtype=np.uint8) for _ in range(8)]
    labels = np.zeros((100, 150), np.uint8)
    labels[20:60, 30:90] = 1
    labels[70:90, 100:140] = 2
    engine = VOSEngine(model, EngineConfig(max_long_edge=200))
    engine.add_reference(frames[0], labels)
    # min short edge 480 enlarges 100x150, then the long edge 200 caps it: 133x200 -> 16k+1
    assert engine.input_size == input_size(100, 150, max_long_edge=200, min_short_edge=480) == (129, 193)
    grids = [la.grid for la in engine.layout]
    assert grids == [(9, 13), (9, 13), (17, 25)]  # two 16x layers, the 8x layer at (ceil(h/8), ceil(w/8))
    for t in range(1, 8):
        out = engine.step(frames[t])
        assert out.logits[0].shape == (1, 11, 33, 49) and out.probs.shape == (3, 100, 150)
    memory = engine.memory
    assert memory.frames == [6, 4, 0]  # gap 2, cap 3: the reference stays, the oldest other frame goes
    assert memory.long_term_tokens(2) == 3 * 17 * 25


def test_id_embedding_8x_is_a_nearest_upsampled_16x_bank() -> None:
    model = build_model("test_vmos_tiny").eval()
    one_hot = F.one_hot(torch.randint(0, 3, (1, 65, 97)), 11).permute(0, 3, 1, 2).float()
    emb = model.id_embedding(one_hot)
    assert emb.banks[0].shape == (5 * 7, 1, 32) and emb.banks[1].shape == (9 * 13, 1, 16)
    coarse = model.id_norm8(model.id_bank8(one_hot).permute(0, 2, 3, 1))  # (1, 5, 7, 16) at 16x
    fine = emb.banks[1].view(9, 13, 16)
    rows, cols = (np.arange(9) * 5) // 9, (np.arange(13) * 7) // 13  # legacy nearest: floor(i * in / out)
    torch.testing.assert_close(fine, coarse[0][rows][:, cols])
    assert emb.per_layer == [0, 0, 1]


def test_every_trainable_parameter_gets_a_gradient() -> None:
    """A reference pass and one propagated frame reach every trainable parameter (DDP needs no unused ones);
    the parts the official forward never uses (its FPN decoder and norm, level 2's downsample) are frozen."""
    torch.manual_seed(0)
    model = build_model("test_vmos_tiny").train()
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen and all(n.startswith(("unused_", "encoder.levels.2.downsample.")) for n in frozen)
    images = torch.randn(2, 3, 65, 97)
    labels = torch.zeros(2, 65, 97, dtype=torch.long)
    labels[:, 20:40, 30:60] = 1
    one_hot = F.one_hot(labels, 11).permute(0, 3, 1, 2).float()
    feats = [model.encode(images[i:i + 1]) for i in range(2)]
    memory = Memory(model.memory_layout(feats[0]), MemorySchedule(gap=1, skip=1))
    emb = model.id_embedding(one_hot[:1])
    _, entries = model.propagate(feats[0], None, emb)
    memory.remember(0, entries, [e.id_value for e in entries], reference=True)
    tokens, _ = model.propagate(feats[1], memory.attend())
    loss = F.cross_entropy(F.interpolate(model.decode(tokens, feats[1]), size=(65, 97)), labels[1:])
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, missing[:5]
