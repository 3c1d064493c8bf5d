"""Our SAM box predictor on a tiny SAM built from ``segment_anything.modeling`` (seeded, CPU, seconds)."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.init.prompts import prompt_boxes
from trek_tracker.errors import CheckpointError
from trek_tracker.init.sam import SamBoxPredictor, load_sam, load_sam_state, read_sam_state, sam_model_from_state


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
    pred = SamBoxPredictor(sam)
    pred.set_image(_image())
    out = pred.predict_box([33, 18, 88, 73])
    expected = [((l > 1).sum() / max((l > -1).sum(), 1)) for l in out.logits]
    np.testing.assert_allclose(out.stability, expected, atol=1e-6)


def test_checkpoint_size_is_inferred_and_checked(tmp_path: Path) -> None:
    assert sam_model_from_state({"image_encoder.pos_embed": torch.zeros(1, 64, 64, 768)}) == "vit_b"
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
