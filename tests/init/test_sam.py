"""Our SAM box predictor on a tiny SAM built from ``segment_anything.modeling`` (seeded, CPU, seconds)."""

from __future__ import annotations

import importlib
import sys
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.init.prompts import prompt_boxes
from trek_tracker.errors import CheckpointError, InputError
from trek_tracker.init.sam import (
    SamBoxPredictor,
    _import_segment_anything,
    load_sam,
    load_sam_state,
    read_sam_state,
    sam_model_from_state,
    stability_score,
)


def tiny_sam(img_size: int = 128, dim: int = 32) -> torch.nn.Module:
    """A SAM with the official classes, a 1-block ViT encoder and 32-d prompt/decoder (seeded)."""
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    torch.manual_seed(0)
    grid = img_size // 16
    encoder = ImageEncoderViT(
        img_size=img_size,
        patch_size=16,
        embed_dim=48,
        depth=1,
        num_heads=2,
        out_chans=dim,
        norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
        use_rel_pos=True,
        window_size=4,
        global_attn_indexes=(0,),
    )
    prompt = PromptEncoder(
        embed_dim=dim,
        image_embedding_size=(grid, grid),
        input_image_size=(img_size, img_size),
        mask_in_chans=8,
    )
    decoder = MaskDecoder(
        num_multimask_outputs=3,
        transformer=TwoWayTransformer(depth=1, embedding_dim=dim, mlp_dim=64, num_heads=2),
        transformer_dim=dim,
        iou_head_depth=2,
        iou_head_hidden_dim=32,
    )
    return Sam(encoder, prompt, decoder).eval()


def _image(h: int = 90, w: int = 120) -> np.ndarray:
    rng = np.random.default_rng(0)
    img = rng.integers(0, 60, (h, w, 3), dtype=np.uint8)
    yy, xx = np.mgrid[0:h, 0:w]
    img[(yy - 45) ** 2 + (xx - 60) ** 2 < 25**2] = (220, 180, 40)
    return img


def test_matches_the_official_predictor_and_encodes_once() -> None:
    predictor_mod = pytest.importorskip("segment_anything.predictor")
    sam = tiny_sam()
    calls = []
    sam.image_encoder.register_forward_hook(lambda *a: calls.append(1))
    ours = SamBoxPredictor(sam)
    image = _image()
    ours.set_image(image)
    box = np.array([33.0, 18.0, 88.0, 73.0])
    out = ours.predict_box(box)
    out2 = ours.predict_box(box + 2)
    assert len(calls) == 1  # one embedding per frame, reused across prompts
    assert out.logits.shape == (4, 90, 120) and out.low_res_logits.shape == (4, 32, 32)
    assert not np.allclose(out.logits, out2.logits)

    official = predictor_mod.SamPredictor(sam)
    official.set_image(image)
    for multimask, tokens in ((True, slice(1, 4)), (False, slice(0, 1))):
        masks, iou, low = official.predict(box=box, multimask_output=multimask, return_logits=True)
        np.testing.assert_allclose(out.logits[tokens], masks, atol=1e-4)
        np.testing.assert_allclose(out.iou_predictions[tokens], iou, atol=1e-5)
        np.testing.assert_allclose(out.low_res_logits[tokens], low, atol=1e-5)

    # Second pass with the best candidate's low-res logits, as the official mask_input path does.
    best = out.best_multimask()
    second = ours.predict_box(box, mask_input=out.low_res_logits[best][None])
    masks, iou, _ = official.predict(
        box=box, mask_input=out.low_res_logits[best][None], multimask_output=True, return_logits=True
    )
    np.testing.assert_allclose(second.logits[1:], masks, atol=1e-4)
    as_float64 = ours.predict_box(box, mask_input=out.low_res_logits[best][None].astype(np.float64))
    np.testing.assert_array_equal(as_float64.logits, second.logits)  # given as float32, as the network's dtype
    assert 1 <= best <= 3 and out.iou_predictions[best] == out.iou_predictions[1:].max()


def test_the_box_prompt_is_bit_equal_to_the_official_predictors() -> None:
    """The official predictor scales the box in float64 and then casts it: scaling in float32 moves x = 58
    (the tiny SAM's 128/120) by one unit in the last place."""
    predictor_mod = pytest.importorskip("segment_anything.predictor")
    sam = tiny_sam()
    box = np.array([22.0, 22.0, 58.0, 58.0])
    with prompt_boxes(sam) as seen:
        ours = SamBoxPredictor(sam)
        ours.set_image(_image())
        ours.predict_box(box)
        official = predictor_mod.SamPredictor(sam)
        official.set_image(_image())
        official.predict(box=box)
    assert len(seen) == 2 and torch.equal(seen[0], seen[1]), seen


def test_stability_is_an_iou_in_unit_range() -> None:
    sam = tiny_sam()
    with torch.no_grad():  # the untrained decoder's logits lie within +-1: scale them so that the cue varies
        for mlp in sam.mask_decoder.output_hypernetworks_mlps:
            mlp.layers[-1].weight.mul_(50)
            mlp.layers[-1].bias.mul_(50)
    pred = SamBoxPredictor(sam)
    pred.set_image(_image())
    out = pred.predict_box([33, 18, 88, 73])
    expected = [((l > 1).sum() / max((l > -1).sum(), 1)) for l in out.logits]
    assert 0 < min(expected) and max(expected) < 1, expected
    np.testing.assert_allclose(out.stability, expected, atol=1e-6)


def test_checkpoint_size_is_inferred_and_checked(tmp_path: Path) -> None:
    assert sam_model_from_state({"image_encoder.pos_embed": torch.zeros(1, 64, 64, 768)}) == "vit_b"
    assert sam_model_from_state({"image_encoder.pos_embed": torch.zeros(1, 64, 64, 1024)}) == "vit_l"
    assert sam_model_from_state({"image_encoder.pos_embed": torch.zeros(1, 64, 64, 1280)}) == "vit_h"
    path = tmp_path / "tiny.pth"
    torch.save(tiny_sam().state_dict(), path)
    with pytest.raises(CheckpointError, match="encoder width 48"):
        load_sam(path)
    with pytest.raises(CheckpointError, match="not found"):
        load_sam(tmp_path / "missing.pth")
    torch.save({"weight": torch.zeros(2)}, tmp_path / "other.pth")  # a state dict, but not SAM's: say which file
    with pytest.raises(CheckpointError, match=r"other.pth: not a SAM checkpoint.*trek-track weights list"):
        load_sam(tmp_path / "other.pth")


def test_sam_family_state_is_read_safely_and_loaded_strictly(tmp_path: Path) -> None:
    # one reader and one strict loader serve SAM and HQ-SAM
    torch.save([1, 2], tmp_path / "list.pth")
    with pytest.raises(CheckpointError, match="list.pth does not hold a state dict"):
        read_sam_state(tmp_path / "list.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a torch file")
    with pytest.raises(CheckpointError, match="junk.pth is not a loadable HQ-SAM state dict"):
        read_sam_state(tmp_path / "junk.pth", "HQ-SAM")
    module = torch.nn.Linear(2, 3)
    state = {**module.state_dict(), "extra.weight": torch.zeros(1)}
    with pytest.raises(CheckpointError, match=r"does not match SAM vit_b: missing \[\], unexpected \['extra.weight'\]"):
        load_sam_state(module, state, "x.pth", "SAM vit_b")
    with pytest.raises(CheckpointError, match=r"does not match SAM vit_b: missing \['bias'\], unexpected \[\]"):
        load_sam_state(torch.nn.Linear(2, 3), {"weight": torch.ones(3, 2)}, "x.pth", "SAM vit_b")
    state = {"weight": torch.ones(3, 2), "bias": torch.zeros(3)}
    loaded = load_sam_state(torch.nn.Linear(2, 3).train(), state, "x.pth", "SAM vit_b")
    assert not loaded.training and torch.equal(loaded.weight, torch.ones(3, 2))


def test_a_wrong_or_damaged_file_is_one_line_that_says_what_to_give(tmp_path: Path) -> None:
    """PyTorch's weights-only refusal spans lines (with terminal escapes) and advises weights_only=False; the
    user sees one line naming the kind of file and what to give instead."""
    import sys
    import types

    module = types.ModuleType("ltr_fake_settings")
    settings = type("Settings", (), {"__module__": "ltr_fake_settings"})
    module.Settings = settings
    sys.modules["ltr_fake_settings"] = module
    try:  # an Alpha-Refine-style .pth.tar: tensors plus pickled training objects
        torch.save({"net": {"w": torch.zeros(2)}, "settings": settings()}, tmp_path / "ar.pth.tar")
    finally:
        del sys.modules["ltr_fake_settings"]
    hq_state = {"image_encoder.pos_embed": torch.zeros(1, 4, 4, 768), "mask_decoder.hf_token.weight": torch.zeros(1, 8)}
    torch.save(hq_state, tmp_path / "sam_hq.pth")
    data = (tmp_path / "sam_hq.pth").read_bytes()
    (tmp_path / "partial.pth").write_bytes(data[: len(data) // 2])
    cases = [("ar.pth.tar", r"ar.pth.tar is not a loadable SAM state dict: it holds pickled objects "
                            r"\(ltr_fake_settings.Settings\).*give SAM's own .pth"),
             ("sam_hq.pth", "sam_hq.pth is an HQ-SAM checkpoint, not plain SAM: give it as --hqsam-checkpoint"),
             ("partial.pth", "partial.pth is not a loadable SAM state dict .*download it again")]
    for name, message in cases:
        with pytest.raises(CheckpointError, match=message) as err:
            load_sam(tmp_path / name)
        text = str(err.value)
        assert "\n" not in text and "\x1b" not in text and "weights_only" not in text, text


def test_stability_counts_logits_strictly_above_each_threshold() -> None:
    # SAM's calculate_stability_score: pixels > +1 over pixels > -1; a logit of exactly +-1 is outside both
    logits = torch.tensor([[[-1.0, 1.0], [2.0, -2.0]], [[-5.0, -1.0], [-3.0, -1.0]], [[0.5, 0.5], [1.0, 3.0]],
                           [[2.0, -3.0], [-3.0, -3.0]]])
    np.testing.assert_allclose(stability_score(logits).numpy(), [1 / 2, 0.0, 1 / 4, 1.0])  # nothing above -1: 0
    np.testing.assert_allclose(stability_score(logits, offset=0.75).numpy(), [1.0, 0.0, 2 / 4, 1.0])


def test_a_checkpoint_loads_into_the_official_model_of_its_size(tmp_path: Path, monkeypatch) -> None:
    from trek_tracker.init import sam as sam_module

    registry = importlib.import_module("segment_anything.build_sam").sam_model_registry
    built = []
    monkeypatch.setitem(sam_module._EMBED_DIM_TO_MODEL, 48, "vit_l")  # the tiny encoder's width stands for ViT-L
    monkeypatch.setitem(registry, "vit_l", lambda checkpoint="unset": built.append(checkpoint) or tiny_sam())
    trained = tiny_sam()
    with torch.no_grad():
        for p in trained.parameters():
            p.add_(1.0)
    torch.save(trained.state_dict(), tmp_path / "sam.pth")
    for model in (None, "vit_l"):
        loaded = load_sam(tmp_path / "sam.pth", model)
        assert not loaded.training and next(loaded.parameters()).device.type == "cpu"
        assert loaded.state_dict().keys() == trained.state_dict().keys()
        assert all(torch.equal(v, trained.state_dict()[k]) for k, v in loaded.state_dict().items())
    assert built == [None, None]  # built untrained, then loaded from our safe read
    with pytest.raises(CheckpointError, match="sam.pth holds a vit_l SAM, but --sam-model vit_b was given"):
        load_sam(tmp_path / "sam.pth", "vit_b")


def test_the_predictor_moves_the_model_to_the_device_it_is_given() -> None:
    predictor = SamBoxPredictor(tiny_sam(), "meta")
    assert predictor.device == torch.device("meta") and next(predictor.model.parameters()).is_meta
    assert SamBoxPredictor(tiny_sam()).device == torch.device("cpu")  # none given: the model's own


def test_a_box_before_any_image_or_after_a_refused_one_says_to_set_one() -> None:
    predictor = SamBoxPredictor(tiny_sam())
    with pytest.raises(RuntimeError, match="set_image must be called first"):
        predictor.predict_box([10, 10, 50, 50])
    predictor.set_image(_image())
    predictor.predict_box([10, 10, 50, 50])
    with pytest.raises(InputError):
        predictor.set_image(np.zeros((90, 120), np.uint8))
    with pytest.raises(RuntimeError, match="set_image must be called first"):  # not the previous image's masks
        predictor.predict_box([10, 10, 50, 50])


@pytest.mark.parametrize("image", [np.zeros((90, 120), np.uint8), np.zeros((90, 120, 4), np.uint8),
                                   np.zeros((90, 120, 3), np.float32)], ids=["gray", "rgba", "float"])
def test_an_image_that_is_not_rgb_uint8_is_refused(image) -> None:
    with pytest.raises(InputError, match=r"RGB uint8 \(H, W, 3\)"):
        SamBoxPredictor(tiny_sam()).set_image(image)


@pytest.fixture
def segment_anything_reimported():
    """Imports of ``segment_anything`` inside the test start afresh; the modules before it come back after."""
    pytest.importorskip("segment_anything.modeling")
    ours = lambda name: name == "segment_anything" or name.startswith("segment_anything.")  # noqa: E731
    saved = {name: module for name, module in sys.modules.items() if ours(name)}
    for name in saved:
        del sys.modules[name]
    try:
        yield
    finally:
        for name in [name for name in sys.modules if ours(name)]:
            del sys.modules[name]
        sys.modules.update(saved)


def test_segment_anything_is_imported_without_torchvision(segment_anything_reimported, monkeypatch) -> None:
    # the package's __init__ imports its predictor, which needs torchvision; the models need only torch
    for name in [name for name in sys.modules if name.split(".")[0] == "torchvision"] + ["torchvision"]:
        monkeypatch.setitem(sys.modules, name, None)  # as if not installed: importing it fails
    with pytest.raises(ModuleNotFoundError, match="torchvision"):
        importlib.import_module("segment_anything")  # as a user without torchvision meets it
    for name in [name for name in sys.modules if name.split(".")[0] == "segment_anything"]:
        del sys.modules[name]  # the submodules that did import: gone again, as in a fresh process
    modeling, build_sam = _import_segment_anything()
    assert {"vit_b", "vit_l", "vit_h"} <= set(build_sam.sam_model_registry)
    assert build_sam.Sam is modeling.Sam and "segment_anything.predictor" not in sys.modules
    assert not hasattr(sys.modules["segment_anything"], "SamPredictor")  # its __init__ was not run
    grid = modeling.PromptEncoder(embed_dim=8, image_embedding_size=(4, 4), input_image_size=(64, 64), mask_in_chans=4)
    assert grid.get_dense_pe().shape == (1, 8, 4, 4)


def test_a_segment_anything_that_fails_for_another_reason_says_so(segment_anything_reimported, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "segment_anything", None)
    with pytest.raises(ModuleNotFoundError, match="No module named 'segment_anything.modeling'"):  # as raised
        _import_segment_anything()
