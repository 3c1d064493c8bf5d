"""HQ-SAM: our box predictor against the official ``segment_anything_hq`` predictor on a tiny seeded HQ-SAM,
HQ-SAM candidates in the box-to-mask init, loading errors, and HQTrack's refiner of propagated masks."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import json
import sys
from functools import partial

import numpy as np
import pytest
import torch

from tests.init.prompts import prompt_boxes
from trek_tracker.errors import CheckpointError, InputError
from trek_tracker.init.alpha_refine.secm import SEcm
from trek_tracker.init.api import BoxToMask, InitConfig, choose_method
from trek_tracker.init.hqsam import (
    HQSamBoxPredictor,
    build_hqsam,
    hqsam_model_from_state,
    hqsam_modules,
    load_hqsam,
)
from trek_tracker.init.refine import HQSamRefiner, mask_box, mask_iou


def tiny_hqsam(img_size: int = 128, dim: int = 32, vit: int = 48, seed: int = 0,
               global_attn: tuple[int, ...] = (0,)) -> torch.nn.Module:
    """An HQ-SAM with the package's classes: a 2-block ViT (the first with global attention, so it feeds the
    HQ token), 32-d prompts and decoder; seeded weights."""
    m = hqsam_modules()
    torch.manual_seed(seed)
    grid = img_size // 16
    encoder = m.ImageEncoderViT(img_size=img_size, patch_size=16, embed_dim=vit, depth=2, num_heads=2,
                                out_chans=dim, norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), use_rel_pos=True,
                                window_size=4, global_attn_indexes=global_attn)
    prompt = m.PromptEncoder(embed_dim=dim, image_embedding_size=(grid, grid), input_image_size=(img_size, img_size),
                             mask_in_chans=8)
    decoder = m.MaskDecoderHQ(num_multimask_outputs=3,
                              transformer=m.TwoWayTransformer(depth=1, embedding_dim=dim, mlp_dim=64, num_heads=2),
                              transformer_dim=dim, iou_head_depth=2, iou_head_hidden_dim=32, vit_dim=vit)
    sam = m.Sam(encoder, prompt, decoder).eval()
    with torch.no_grad():  # the HQ path's weights are zero-free defaults; make every token matter
        for p in sam.mask_decoder.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return sam


def _scene(h: int = 90, w: int = 120) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    img = rng.integers(0, 60, (h, w, 3), dtype=np.uint8)
    yy, xx = np.mgrid[0:h, 0:w]
    labels = np.zeros((h, w), np.uint8)
    labels[(yy - 40) ** 2 + (xx - 40) ** 2 < 18**2] = 1
    labels[(yy - 55) ** 2 + (xx - 85) ** 2 < 20**2] = 2  # touches nothing of object 1
    img[labels == 1] = (220, 180, 40)
    img[labels == 2] = (40, 90, 230)
    return img, labels


@pytest.fixture(scope="module")
def hqsam() -> torch.nn.Module:
    return tiny_hqsam()


def test_matches_the_official_hqsam_predictor(hqsam) -> None:
    official_mod = pytest.importorskip("segment_anything_hq.predictor")
    image, _ = _scene()
    ours = HQSamBoxPredictor(hqsam)
    calls = []
    hqsam.image_encoder.register_forward_hook(lambda *a: calls.append(1))
    ours.set_image(image)
    official = official_mod.SamPredictor(hqsam)
    official.set_image(image)
    for box in (np.array([22.0, 22.0, 58.0, 58.0]), np.array([65.0, 35.0, 105.0, 75.0])):
        out = ours.predict_box_hq(box)
        assert out.sam_logits.shape == (4, 90, 120) and out.hq_logits.shape == (90, 120)
        for multimask in (True, False):
            for hq_only in (False, True):
                masks, iou, _ = official.predict(box=box, multimask_output=multimask, hq_token_only=hq_only,
                                                 return_logits=True)
                logits, conf = out.combined(multimask=multimask, hq_token_only=hq_only)
                np.testing.assert_allclose(logits, masks[0], atol=1e-4)
                assert conf == pytest.approx(float(iou[0]), abs=1e-5)
        by_default, conf = out.combined()  # HQTrack's: the best multimask token + the HQ token
        np.testing.assert_array_equal(by_default, out.combined(multimask=True, hq_token_only=False)[0])
        assert not np.array_equal(by_default, out.combined(multimask=False)[0])
    assert len(calls) == 2  # one encoder pass each (ours and the official), reused across prompts
    # the HQ token changes the mask: its logits are not zero
    assert np.abs(out.hq_logits).max() > 1e-3


def test_the_hq_token_reads_the_first_global_attention_blocks_features() -> None:
    # SAM's ViTs attend globally in several blocks (ViT-B: 2, 5, 8, 11); the HQ token takes the first one's output
    official_mod = pytest.importorskip("segment_anything_hq.predictor")
    model = tiny_hqsam(global_attn=(0, 1))
    image, _ = _scene()
    box = np.array([22.0, 22.0, 58.0, 58.0])
    ours = HQSamBoxPredictor(model)
    ours.set_image(image)
    official = official_mod.SamPredictor(model)
    official.set_image(image)
    masks, _, _ = official.predict(box=box, hq_token_only=True, return_logits=True)
    np.testing.assert_allclose(ours.predict_box_hq(box).hq_logits, masks[0], atol=1e-4)
    assert not torch.allclose(official.interm_features[0], official.interm_features[1])  # two different features


def test_the_box_prompt_is_bit_equal_to_the_official_predictors(hqsam) -> None:
    """The official predictor scales the box in float64 and then casts it: scaling in float32 moves x = 58
    (x 128/120) by one unit in the last place."""
    official_mod = pytest.importorskip("segment_anything_hq.predictor")
    image, _ = _scene()
    box = np.array([22.0, 22.0, 58.0, 58.0])
    with prompt_boxes(hqsam) as seen:
        ours = HQSamBoxPredictor(hqsam)
        ours.set_image(image)
        ours.predict_box_hq(box)
        official = official_mod.SamPredictor(hqsam)
        official.set_image(image)
        official.predict(box=box)
    assert len(seen) == 2 and torch.equal(seen[0], seen[1])


def test_loading_refuses_plain_sam_and_foreign_files(tmp_path) -> None:
    with pytest.raises(CheckpointError, match="plain SAM"):
        hqsam_model_from_state({"image_encoder.pos_embed": torch.zeros(1, 64, 64, 768)})
    state = {"image_encoder.pos_embed": torch.zeros(1, 64, 64, 1024), "mask_decoder.hf_token.weight": torch.zeros(1)}
    assert hqsam_model_from_state(state) == "vit_l"
    path = tmp_path / "x.pth"
    torch.save({"image_encoder.pos_embed": torch.zeros(1, 64, 64, 999), "mask_decoder.hf_token.weight": torch.zeros(1)},
               path)
    with pytest.raises(CheckpointError, match="encoder width 999"):
        load_hqsam(path)
    with pytest.raises(CheckpointError, match="HQ-SAM checkpoint not found"):
        load_hqsam(tmp_path / "missing.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a torch file")
    with pytest.raises(CheckpointError, match="junk.pth is not a loadable HQ-SAM state dict"):
        load_hqsam(tmp_path / "junk.pth")
    torch.save({"weight": torch.zeros(2)}, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match=r"other.pth: not a SAM checkpoint"):
        load_hqsam(tmp_path / "other.pth")


@pytest.mark.parametrize("size", ["vit_b", "vit_l", "vit_h"])
def test_each_size_is_built_as_the_official_builder_builds_it(size) -> None:
    official = pytest.importorskip("segment_anything_hq")  # its sam_model_registry: the package's build_sam_vit_*
    with torch.device("meta"):  # shapes and settings only: no memory, no weight initialisation
        ours, theirs = build_hqsam(size), official.sam_model_registry[size]()
    assert repr(ours) == repr(theirs)  # every layer, its sizes and options (LayerNorm eps, biases)
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in theirs.state_dict().items()}
    # which blocks attend globally (window 0, and so feed the HQ token) and the input normalisation
    assert [b.window_size for b in ours.image_encoder.blocks] == [b.window_size for b in theirs.image_encoder.blocks]
    for name in ("pixel_mean", "pixel_std"):
        assert torch.equal(getattr(ours, name), getattr(theirs, name))
    for attr in ("img_size", "patch_embed.proj.stride"):
        assert _attr(ours.image_encoder, attr) == _attr(theirs.image_encoder, attr)
    for attr in ("embed_dim", "image_embedding_size", "input_image_size", "num_point_embeddings"):
        assert getattr(ours.prompt_encoder, attr) == getattr(theirs.prompt_encoder, attr)
    assert ours.mask_decoder.num_multimask_outputs == theirs.mask_decoder.num_multimask_outputs
    assert not ours.training
    with pytest.raises(InputError, match="unknown HQ-SAM model 'vit_t'; choose one of vit_b, vit_l, vit_h"):
        build_hqsam("vit_t")


def _attr(obj, dotted: str):
    for name in dotted.split("."):
        obj = getattr(obj, name)
    return obj


def test_a_missing_hqsam_package_says_how_to_install_it(monkeypatch) -> None:
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *args: None if name == "segment_anything_hq" else find_spec(name, *args))
    with pytest.raises(ModuleNotFoundError, match=r"segment-anything-hq is not installed \(pip install"):
        hqsam_modules()


def test_the_hq_predictor_decodes_boxes_only_after_an_image(hqsam) -> None:
    predictor = HQSamBoxPredictor(hqsam)
    with pytest.raises(RuntimeError, match="set_image must be called first"):
        predictor.predict_box_hq([10, 10, 50, 50])
    predictor.set_image(_scene()[0])
    predictor.predict_box_hq([10, 10, 50, 50])
    with pytest.raises(InputError):
        predictor.set_image(np.zeros((90, 120), np.uint8))
    with pytest.raises(RuntimeError, match="set_image must be called first"):  # not the previous image's masks
        predictor.predict_box_hq([10, 10, 50, 50])
    with pytest.raises(NotImplementedError, match="predict_box_hq"):  # SAM's path would drop the HQ token
        predictor.predict_box([10, 10, 50, 50])


def test_a_checkpoint_loads_into_the_hqsam_of_its_size(tmp_path, monkeypatch) -> None:
    from trek_tracker.init import hqsam as hqsam_module

    built = []
    monkeypatch.setitem(hqsam_module._EMBED_DIM_TO_MODEL, 48, "vit_l")  # the tiny encoder's width stands for ViT-L
    monkeypatch.setattr(hqsam_module, "build_hqsam", lambda size: built.append(size) or tiny_hqsam(seed=1).train())
    trained = tiny_hqsam(seed=2).state_dict()
    torch.save(trained, tmp_path / "sam_hq.pth")
    for model in (None, "vit_l"):
        loaded = load_hqsam(tmp_path / "sam_hq.pth", model)
        assert not loaded.training and loaded.state_dict().keys() == trained.keys()
        assert all(torch.equal(v, trained[k]) for k, v in loaded.state_dict().items())
    assert built == ["vit_l", "vit_l"]
    with pytest.raises(CheckpointError, match="sam_hq.pth holds an HQ-SAM vit_l, not vit_b"):
        load_hqsam(tmp_path / "sam_hq.pth", "vit_b")


def test_the_modules_are_the_packages_modeling_classes_without_its_init() -> None:
    pytest.importorskip("segment_anything_hq.modeling")
    files = {"Sam": "sam", "ImageEncoderViT": "image_encoder", "PromptEncoder": "prompt_encoder",
             "MaskDecoderHQ": "mask_decoder_hq", "TwoWayTransformer": "transformer", "LayerNorm2d": "common"}
    m = hqsam_modules()
    assert set(vars(m)) == set(files)
    for name, file in files.items():  # the same class of the same file as the package's, under our own name
        ours, theirs = getattr(m, name), getattr(importlib.import_module(f"segment_anything_hq.modeling.{file}"), name)
        assert ours.__name__ == name and ours.__module__.startswith("_trek_segment_anything_hq.modeling.")
        assert inspect.getsourcefile(ours) == inspect.getsourcefile(theirs)
    assert hqsam_modules().Sam is m.Sam  # imported once
    assert not hasattr(sys.modules["_trek_segment_anything_hq.modeling"], "TinyViT")  # its __init__ never ran


# --------------------------------------------------------------------------- box -> mask
def test_hqsam_candidates_in_the_init(hqsam) -> None:
    assert choose_method(InitConfig(hqsam_checkpoint="h", ar_checkpoint="a")) == ("fused", None)
    method, msg = choose_method(InitConfig(hqsam_checkpoint="h"))
    assert method == "hqsam" and "--ar-checkpoint" in msg
    with pytest.raises(CheckpointError, match="--hqsam-checkpoint"):
        choose_method(InitConfig(method="hqsam"))

    image, labels = _scene()
    box = np.array([22.0, 22.0, 36.0, 36.0])
    torch.manual_seed(0)
    res = BoxToMask(InitConfig(), hqsam_model=hqsam, ar_network=SEcm().eval())(image, box)
    names = [c["name"] for c in res.details["candidates"]]
    assert names == ["hqsam", "hqsam_single", "hqsam_hq", "ar_secm", "vote", "intersection", "union"]
    assert res.details["hqsam"]["hqsam_best_multimask"] in (1, 2, 3)
    json.dumps(res.details)
    # each HQ-SAM candidate is the official predictor's mask, scored by the same rule as SAM's
    out = HQSamBoxPredictor(hqsam)
    out.set_image(image)
    raw = out.predict_box_hq([22.0, 22.0, 58.0, 58.0])
    scores = {c["name"]: c for c in res.details["candidates"]}
    logits, conf = raw.combined(multimask=True)
    assert scores["hqsam"]["confidence"] == pytest.approx(float(np.clip(conf, 0, 1)), abs=1e-6)
    res = BoxToMask(InitConfig(method="hqsam"), hqsam_model=hqsam)(image, box)
    assert {c["source"] for c in res.details["candidates"]} == {"hqsam"}


def test_the_init_prompts_hqsam_with_the_corners_of_the_box_clipped_to_the_frame(hqsam) -> None:
    official_mod = pytest.importorskip("segment_anything_hq.predictor")
    image, _ = _scene()  # 90 x 120
    with prompt_boxes(hqsam) as seen:
        res = BoxToMask(InitConfig(method="hqsam"), hqsam_model=hqsam)(image, [90.0, -5.0, 40.0, 41.0])
        official = official_mod.SamPredictor(hqsam)
        official.set_image(image)
        official.predict(box=np.array([90.0, 0.0, 120.0, 36.0]))
    assert res.details["box"] == [90.0, 0.0, 30.0, 36.0]
    assert len(seen) == 2 and torch.equal(seen[0], seen[1])


def test_the_hqsam_candidates_are_the_official_sums_thresholded_strictly(hqsam, monkeypatch) -> None:
    """``hqsam``: the best multimask SAM token + the HQ token, ``hqsam_single``: token 0 + the HQ token,
    ``hqsam_hq``: the HQ token alone; logits > 0, confidence the SAM token's predicted IoU clipped to [0, 1]
    (the best multimask token's for the HQ token). Without SAM, the combined masks use ``hqsam``'s logits;
    with SAM, SAM's best token."""
    from tests.init.test_api import _fake_alpha_refine, _FakeSam
    from tests.init.test_sam import tiny_sam
    from trek_tracker.init.hqsam import HQSamOutput
    from trek_tracker.init.sam import SamBoxPredictor

    image, _ = _scene()  # 90 x 120
    box = [30.0, 20.0, 60.0, 50.0]  # x 30..90, y 20..70
    h, w = image.shape[:2]

    def band(x0: int, x1: int, value: float) -> np.ndarray:
        out = np.full((h, w), -value, np.float32)
        out[20:70, x0:x1] = value
        return out

    # |SAM logits| = 1 > |HQ logits| = 0.5: a sum is > 0 on the SAM token's band; row 45 sums to exactly 0
    sam_logits = np.stack([band(30, 90, 1.0), band(40, 60, 1.0), band(30, 70, 1.0), band(50, 90, 1.0)])
    hq_logits = band(30, 76, 0.5)
    sam_logits[:, 45, :], hq_logits[45, :] = 0.5, -0.5
    out = HQSamOutput(sam_logits, hq_logits, np.array([1.2, -0.3, -0.1, -0.5], np.float32))  # best multimask: 2
    prompts = []
    monkeypatch.setattr(HQSamBoxPredictor, "set_image", lambda self, image: None)
    monkeypatch.setattr(HQSamBoxPredictor, "predict_box_hq", lambda self, box: prompts.append(list(box)) or out)
    prob = np.full((h, w), 0.1, np.float32)
    prob[25:65, 35:85] = 0.9
    monkeypatch.setattr("trek_tracker.init.alpha_refine.refiner.AlphaRefine", _fake_alpha_refine(prob, []))
    res = BoxToMask(InitConfig(), hqsam_model=hqsam, ar_network=torch.nn.Identity())(image, box)
    assert prompts == [[30.0, 20.0, 90.0, 70.0]]

    def without_row_45(x0: int, x1: int) -> int:
        return 49 * (x1 - x0)

    scores = {c["name"]: c for c in res.details["candidates"]}
    assert [scores[n]["area"] for n in ("hqsam", "hqsam_single", "hqsam_hq")] == [
        without_row_45(30, 70), without_row_45(30, 90), without_row_45(30, 76)]
    assert [scores[n]["confidence"] for n in ("hqsam", "hqsam_single", "hqsam_hq")] == [0.0, 1.0, 0.0]
    ar_mask = prob > 0.5
    best = (sam_logits[2] + hq_logits) > 0
    assert scores["intersection"]["area"] == int((best & ar_mask).sum())
    assert scores["union"]["area"] == int((best | ar_mask).sum())
    assert scores["union"]["confidence"] == pytest.approx(0.5 * (0.0 + 0.9))
    assert res.details["hqsam"]["hqsam_best_multimask"] == 2
    assert res.details["hqsam"]["model"] == "custom"  # the tiny HQ-SAM's encoder width is none of SAM's
    assert res.details["hqsam"]["hqsam_iou_predictions"] == pytest.approx([1.2, -0.3, -0.1, -0.5])
    out.iou_predictions = np.array([-0.2, 0.3, 1.4, 0.1], np.float32)  # now above 1: clipped to 1
    res = BoxToMask(InitConfig(), hqsam_model=hqsam, ar_network=torch.nn.Identity())(image, box)
    scores = {c["name"]: c for c in res.details["candidates"]}
    assert [scores[n]["confidence"] for n in ("hqsam", "hqsam_single", "hqsam_hq")] == [1.0, 0.0, 1.0]
    assert scores["union"]["confidence"] == pytest.approx(0.5 * (1.0 + 0.9))

    # With SAM too, the combined masks are built from SAM's best multimask token (here token 1).
    fake = _FakeSam(np.stack([band(30, 90, 1.0)] * 4), [0.5, 0.9, 0.2, 0.1], [0.5, 0.5, 0.5, 0.5])
    fake.logits[1] = band(30, 50, 1.0)
    monkeypatch.setattr(SamBoxPredictor, "set_image", lambda self, image: None)
    monkeypatch.setattr(SamBoxPredictor, "predict_box", lambda self, b, mask_input=None: fake.predict_box(b))
    res = BoxToMask(InitConfig(), sam_model=tiny_sam(), hqsam_model=hqsam, ar_network=torch.nn.Identity())(image, box)
    scores = {c["name"]: c for c in res.details["candidates"]}
    assert scores["intersection"]["area"] == int(((fake.logits[1] > 0) & ar_mask).sum())
    assert scores["union"]["confidence"] == pytest.approx(0.5 * (0.9 + 0.9))


# --------------------------------------------------------------------------- refiner
def _hqtrack_refine(official, image: np.ndarray, m: np.ndarray, threshold: float) -> np.ndarray:
    """HQTrack's MSAOTTracker.track refinement, step by step, with the official package predictor."""
    obj_list = np.unique(m)
    mask_2 = np.zeros_like(m)
    masks_ls = []
    for i in obj_list:
        mask = (m == i).astype(np.uint8)
        if i == 0 or mask.sum() == 0:
            masks_ls.append(np.zeros_like(m))
            continue
        a = np.where(mask != 0)
        bbox = np.array([np.min(a[1]), np.min(a[0]), np.max(a[1]), np.max(a[0])])
        official.set_image(image)
        masks_, iou_predictions, _ = official.predict(box=bbox)
        output = masks_[list(iou_predictions).index(max(iou_predictions))].astype(np.uint8)
        inter = float((output * mask).sum())
        union = float(((output + mask) > 0).sum())
        if (inter + 1e-6) / (union + 1e-6) < threshold:
            output = mask
        masks_ls.append(output)
        mask_2 = mask_2 + output * i
    stack = np.stack(masks_ls)
    total = stack.sum(0)
    return np.where(total > 1, np.argmax(stack, axis=0), mask_2).astype(np.uint8)


@pytest.mark.parametrize("threshold", [0.1, 0.0, 1.0])
def test_refiner_is_hqtracks_refinement(hqsam, threshold) -> None:
    official_mod = pytest.importorskip("segment_anything_hq.predictor")
    image, labels = _scene()
    calls = []
    handle = hqsam.image_encoder.register_forward_hook(lambda *a: calls.append(1))
    try:
        result = HQSamRefiner(hqsam, iou_threshold=threshold)(image, labels)
    finally:
        handle.remove()
    assert len(calls) == 1  # one embedding per frame, whatever the number of objects
    expected = _hqtrack_refine(official_mod.SamPredictor(hqsam), image, labels, threshold)
    assert (result.labels != expected).sum() <= 2  # float noise of the two predictors' resizes at 0
    assert set(result.kept) == {1, 2}
    for i in (1, 2):
        assert result.kept[i] == (result.iou[i] >= threshold)
    if threshold == 1.0:  # nothing kept: the tracker's labels come back unchanged
        np.testing.assert_array_equal(result.labels, labels)
    if threshold == 0.0:
        assert all(result.kept.values()) and (result.labels != labels).any()


def test_refiner_helpers_and_errors(hqsam) -> None:
    mask = np.zeros((5, 7), bool)
    mask[1:3, 2:6] = True
    np.testing.assert_array_equal(mask_box(mask), [2, 1, 5, 2])  # inclusive pixel indices, as HQTrack
    assert mask_box(np.zeros((3, 3), bool)) is None
    assert mask_iou(mask, mask) == 1.0 and mask_iou(mask, ~mask) < 1e-6
    refiner = HQSamRefiner(hqsam)
    image, _ = _scene()
    empty = refiner(image, np.zeros((90, 120), np.uint8))
    assert not empty.labels.any() and empty.kept == {}
    with pytest.raises(InputError, match="label map of its size"):
        refiner(image, np.zeros((10, 10), np.uint8))
    with pytest.raises(InputError, match=r"\[0, 1\]"):
        HQSamRefiner(hqsam, iou_threshold=1.5)


def test_the_refinement_threshold_defaults_to_hqtracks_and_lies_in_0_1(hqsam) -> None:
    from trek_tracker.init.refine import RefineConfig

    assert RefineConfig().min_iou == HQSamRefiner(hqsam).iou_threshold == 0.1  # HQTrack's sam_refine_iou
    for ok in (0.0, 1.0):
        assert RefineConfig(min_iou=ok).min_iou == HQSamRefiner(hqsam, iou_threshold=ok).iou_threshold == ok
    for bad in (-0.01, 1.01):
        with pytest.raises(InputError, match=r"\[0, 1\]"):
            RefineConfig(min_iou=bad)
        with pytest.raises(InputError, match=r"\[0, 1\]"):
            HQSamRefiner(hqsam, iou_threshold=bad)


def test_a_refined_mask_equal_to_the_trackers_is_kept_even_at_threshold_1(hqsam, monkeypatch) -> None:
    """Kept when IoU >= the threshold; HQ-SAM's mask is its logits > 0 (a logit of exactly 0 is outside)."""
    from trek_tracker.init.hqsam import HQSamOutput

    image, labels = _scene()
    ids, boxes = iter([1, 2]), []

    def predict(box):  # logits 1 on the object, exactly 0 elsewhere
        boxes.append(list(box))
        hq = np.where(labels == next(ids), 1.0, 0.0).astype(np.float32)
        return HQSamOutput(np.zeros((4, *labels.shape), np.float32), hq, np.array([0.5, 0.9, 0.1, 0.1], np.float32))

    predictor = HQSamBoxPredictor(hqsam)
    monkeypatch.setattr(predictor, "set_image", lambda image: None)
    monkeypatch.setattr(predictor, "predict_box_hq", predict)
    result = HQSamRefiner(predictor, iou_threshold=1.0)(image, labels)
    assert result.kept == {1: True, 2: True} and result.iou == {1: 1.0, 2: 1.0}
    np.testing.assert_array_equal(result.labels, labels)
    assert boxes == [mask_box(labels == 1).tolist(), mask_box(labels == 2).tolist()]


def test_the_refiner_loads_hqsam_from_a_checkpoint(hqsam, monkeypatch, tmp_path) -> None:
    calls = []
    monkeypatch.setattr("trek_tracker.init.hqsam.load_hqsam", lambda *args: calls.append(args) or hqsam)
    path = tmp_path / "sam_hq.pth"
    path.write_bytes(b"")
    refiner = HQSamRefiner.from_checkpoint(path, "vit_b", iou_threshold=0.3)
    assert calls == [(path, "vit_b", "cpu")] and refiner.iou_threshold == 0.3
    assert isinstance(refiner.predictor, HQSamBoxPredictor) and refiner.predictor.model is hqsam
    assert HQSamRefiner.from_checkpoint(path).iou_threshold == 0.1  # HQTrack's sam_refine_iou
    with pytest.raises(CheckpointError, match="not hqsam"):
        HQSamRefiner.from_checkpoint("sam_vit_b")  # plain SAM's registry name


def test_the_tracker_refines_its_output_and_remembers_its_own_masks(hqsam, monkeypatch) -> None:
    """``--refine-checkpoint``: every frame's label map is HQ-SAM's refinement, while the memory keeps the
    tracker's own masks (HQTrack): the tracker's next prediction is the one it makes without refinement."""
    from trek_tracker.init.api import InitConfig
    from trek_tracker.init.refine import HQSamRefiner, RefineConfig
    from trek_tracker.modeling.registry import build_model
    from trek_tracker.pipeline import LoadedModel, Tracker, TrackerConfig

    monkeypatch.setattr(HQSamRefiner, "from_checkpoint", classmethod(
        lambda cls, checkpoint, model=None, device="cpu", iou_threshold=0.1: cls(hqsam, iou_threshold)))
    torch.manual_seed(0)
    model = build_model("test_deaot_tiny").eval()
    loaded = LoadedModel(model, model.config.name, None, None, torch.device("cpu"))
    image, _ = _scene()
    frames = [np.roll(image, 2 * i, axis=1) for i in range(4)]

    def run(refine):
        tracker = Tracker(TrackerConfig(init=InitConfig(method="box"), refine=refine, max_long_edge=120),
                          loaded=loaded)
        tracker.init(frames[0], [30, 20, 40, 30])
        return [(tracker.step(f), tracker.engine.memory.attend()[0].short_value.clone()) for f in frames[1:]]

    plain, refined = run(RefineConfig()), run(RefineConfig(checkpoint="sam_hq_vit_b", min_iou=0.0))
    for i, ((a, memory_a), (b, memory_b)) in enumerate(zip(plain, refined, strict=True)):
        assert torch.equal(memory_a, memory_b)  # the memory never saw the refinement
        assert np.array_equal(b.labels, HQSamRefiner(hqsam, 0.0)(frames[i + 1], a.labels).labels)
