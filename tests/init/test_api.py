"""``BoxToMask``: method choice, messages, errors, and every init end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from trek_tracker.errors import CheckpointError, InputError, OutOfMemory, memory_errors
from trek_tracker.geometry import box_to_mask
from trek_tracker.init.alpha_refine.secm import SEcm
from trek_tracker.init.api import BoxToMask, InitConfig, choose_method
from trek_tracker.init.fusion import FusionConfig

from .prompts import prompt_boxes
from .test_sam import tiny_sam


def _disk_image(h: int = 96, w: int = 128) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    img = rng.integers(0, 50, (h, w, 3), dtype=np.uint8)
    yy, xx = np.mgrid[0:h, 0:w]
    disk = (yy + 0.5 - 50) ** 2 + (xx + 0.5 - 60) ** 2 <= 24**2
    img[disk] = rng.integers(200, 255, (int(disk.sum()), 3), dtype=np.uint8)
    return img, disk, np.array([36.0, 26.0, 48.0, 48.0])


def test_auto_method_and_messages() -> None:
    assert choose_method(InitConfig(sam_checkpoint="s", ar_checkpoint="a")) == ("fused", None)
    method, msg = choose_method(InitConfig(sam_checkpoint="s"))
    assert method == "sam" and "--ar-checkpoint" in msg
    method, msg = choose_method(InitConfig(ar_checkpoint="a"))
    assert method == "ar" and "--sam-checkpoint" in msg
    method, msg = choose_method(InitConfig())
    assert method == "grabcut" and "--sam-checkpoint" in msg and "--ar-checkpoint" in msg and "grabcut" in msg


def test_explicit_methods_need_their_checkpoints() -> None:
    with pytest.raises(CheckpointError, match="--ar-checkpoint"):
        choose_method(InitConfig(method="fused", sam_checkpoint="s"))
    with pytest.raises(CheckpointError, match="--sam-checkpoint"):
        choose_method(InitConfig(method="sam"))
    with pytest.raises(InputError, match="unknown init method"):
        choose_method(InitConfig(method="magic"))
    with pytest.raises(CheckpointError, match="not found"):
        BoxToMask(InitConfig(method="ar", ar_checkpoint="/nonexistent"))(_disk_image()[0], [36, 26, 48, 48])


def test_bad_inputs() -> None:
    img = _disk_image()[0]
    with pytest.raises(InputError, match="zero or negative width"):
        BoxToMask(InitConfig(method="box"))(img, [10, 10, 0, 5])
    with pytest.raises(InputError, match="outside"):
        BoxToMask(InitConfig(method="box"))(img, [500, 10, 5, 5])
    with pytest.raises(InputError, match="RGB uint8"):
        BoxToMask(InitConfig(method="box"))(img.astype(np.float32), [10, 10, 5, 5])


def test_box_and_grabcut_inits() -> None:
    img, disk, box = _disk_image()
    res = BoxToMask(InitConfig(method="box"))(img, box)
    assert res.method == "box" and np.array_equal(res.mask, box_to_mask(box, img.shape[:2]))
    res = BoxToMask(InitConfig())(img, box)
    assert res.method == "grabcut" and "checkpoints missing" in res.message
    iou = (res.mask & disk).sum() / (res.mask | disk).sum()
    assert iou > 0.85  # a high-contrast disk: GrabCut separates it from the box corners
    assert res.details["winner"] == "grabcut"
    json.dumps(res.details)


def test_a_grey_or_rgba_first_frame_is_refused() -> None:
    img = _disk_image()[0]
    for bad in (img[..., 0], np.concatenate([img, img[..., :1]], axis=2)):
        with pytest.raises(InputError, match="RGB uint8"):
            BoxToMask(InitConfig(method="box"))(bad, [10, 10, 5, 5])


def test_the_box_init_records_the_filled_box_as_the_winner() -> None:
    img, _, box = _disk_image()
    res = BoxToMask(InitConfig(method="box"))(img, box)
    assert res.details["winner"] == "box" and res.details["method"] == res.details["requested"] == "box"
    assert res.details["mask_area"] == 48 * 48 and res.message is None and "candidates" not in res.details


@pytest.fixture(scope="module")
def tiny_networks():
    torch.manual_seed(0)
    return tiny_sam(), SEcm().eval()


def test_fused_end_to_end_records_every_candidate(tiny_networks) -> None:
    sam, ar = tiny_networks
    img, _, box = _disk_image()
    init = BoxToMask(InitConfig(sam_second_pass=True), sam_model=sam, ar_network=ar)
    assert init.method == "fused" and init.message is None
    res = init(img, box)
    names = [c["name"] for c in res.details["candidates"]]
    assert names == [
        "sam_0",
        "sam_1",
        "sam_2",
        "sam_3",
        "sam_refined",
        "ar_secm",
        "vote",
        "intersection",
        "union",
    ]
    json.dumps(res.details)  # run.json material
    assert res.mask.dtype == bool and res.mask.any()
    grown = box + np.array([-1, -1, 2, 2])  # candidates are clipped to the box with a 1 px tolerance
    assert not (res.mask & ~box_to_mask(grown, img.shape[:2])).any()
    valid = [c for c in res.details["candidates"] if c["rejected"] is None]
    if res.details["fallback"] is None:
        best = max(valid, key=lambda c: c["score"])
        assert res.details["winner"] == best["name"] and res.method == "fused"
    else:
        assert res.method in ("ar", "box") and res.message and res.details["fallback"] in res.message


def test_sam_only_and_ar_only(tiny_networks) -> None:
    sam, ar = tiny_networks
    img, _, box = _disk_image()
    res = BoxToMask(InitConfig(method="sam"), sam_model=sam)(img, box)
    assert {c["source"] for c in res.details["candidates"]} == {"sam"} and res.method in ("sam", "box")
    res = BoxToMask(InitConfig(method="ar"), ar_network=ar)(img, box)
    assert [c["name"] for c in res.details["candidates"]] == ["ar_secm"] and res.method in ("ar", "box")


def test_sam_is_prompted_with_the_corners_of_the_box_clipped_to_the_frame(tiny_networks) -> None:
    """An x,y,w,h box reaches SAM as the corners [x, y, x + w, y + h] of its part inside the frame, on both
    passes, exactly as the official predictor is prompted with those corners."""
    predictor_mod = pytest.importorskip("segment_anything.predictor")
    sam, _ = tiny_networks
    img, _, _ = _disk_image()  # 96 x 128
    box = [-10.0, 26.0, 48.0, 80.0]  # 10 px left of the frame and 10 px below it
    corners = np.array([0.0, 26.0, 38.0, 96.0])
    with prompt_boxes(sam) as seen:
        res = BoxToMask(InitConfig(method="sam", sam_second_pass=True), sam_model=sam)(img, box)
        official = predictor_mod.SamPredictor(sam)
        official.set_image(img)
        _, iou, _ = official.predict(box=corners, multimask_output=True)
    assert res.details["box"] == [0.0, 26.0, 38.0, 70.0]
    assert len(seen) == 3 and torch.equal(seen[0], seen[2]) and torch.equal(seen[1], seen[2])
    np.testing.assert_allclose(res.details["sam"]["sam_iou_predictions"][1:], iou, atol=1e-5)


def test_a_fallback_reports_the_filled_box_and_says_why_after_the_auto_message(tiny_networks) -> None:
    _, ar = tiny_networks
    img, _, box = _disk_image()
    res = BoxToMask(InitConfig(fusion=FusionConfig(min_rect_iou=1.5)), ar_network=ar)(img, box)  # nothing passes
    assert res.method == "box" and res.details["method"] == "box" and res.details["requested"] == "auto"
    assert res.details["winner"] == "box" and res.details["source"] == "box"
    assert np.array_equal(res.mask, box_to_mask(box, img.shape[:2])) and res.details["mask_area"] == 48 * 48
    auto, fallback = res.message.split("; ")
    assert auto == "SAM checkpoint missing (--sam-checkpoint): used ar instead of fused"
    assert fallback == f"ar init: {res.details['fallback']}" and fallback.endswith("used the filled box")


def test_load_opens_the_networks_of_the_chosen_method_once(monkeypatch) -> None:
    opened = []
    sam = tiny_sam()

    def loader(kind):
        def load(*args, **kwargs):
            opened.append(kind)
            return sam if kind != "ar" else torch.nn.Identity()

        return load

    monkeypatch.setattr("trek_tracker.init.sam.load_sam", loader("sam"))
    monkeypatch.setattr("trek_tracker.init.hqsam.load_hqsam", loader("hqsam"))
    monkeypatch.setattr("trek_tracker.init.alpha_refine.checkpoint.load_alpha_refine", loader("ar"))
    every = dict(sam_checkpoint=__file__, hqsam_checkpoint=__file__, ar_checkpoint=__file__)
    cases = [
        (InitConfig(sam_checkpoint=__file__, ar_checkpoint=__file__), ["sam", "ar"]),
        (InitConfig(hqsam_checkpoint=__file__, ar_checkpoint=__file__), ["hqsam", "ar"]),
        (InitConfig(**every), ["sam", "hqsam", "ar"]),
        (InitConfig(method="sam", **every), ["sam"]),
        (InitConfig(method="hqsam", **every), ["hqsam"]),
        (InitConfig(method="ar", **every), ["ar"]),
        (InitConfig(method="grabcut", **every), []),
        (InitConfig(method="box", **every), []),
    ]
    for config, expected in cases:
        opened.clear()
        init = BoxToMask(config).load()
        assert opened == expected, config.method
        init.load()
        assert opened == expected  # kept for the next call


def test_a_checkpoint_name_of_another_family_is_refused_by_name() -> None:
    for config in (InitConfig(method="sam", sam_checkpoint="ar_secm"),
                   InitConfig(method="hqsam", hqsam_checkpoint="sam_vit_b"),
                   InitConfig(method="ar", ar_checkpoint="deaotl")):
        with pytest.raises(CheckpointError, match=r"is a \w+ checkpoint .*not (sam|hqsam|alpha_refine);"):
            BoxToMask(config).load()


class _FakeSam:
    """``SamBoxPredictor.set_image`` / ``predict_box`` giving chosen logits and predicted IoUs."""

    def __init__(self, logits: np.ndarray, ious: list[float], second_ious: list[float]) -> None:
        self.logits, self.ious, self.second_ious = logits, ious, second_ious
        self.low_res = np.arange(4 * 8 * 8, dtype=np.float32).reshape(4, 8, 8)
        self.prompts: list[tuple[list[float], np.ndarray | None]] = []

    def set_image(self, image) -> None:
        pass

    def predict_box(self, box_xyxy, mask_input=None):
        from trek_tracker.init.sam import SamOutput

        self.prompts.append(([float(v) for v in box_xyxy], mask_input))
        ious = self.ious if mask_input is None else self.second_ious
        return SamOutput(self.logits, np.array(ious, np.float32), self.low_res)


def _fake_alpha_refine(prob: np.ndarray, boxes: list[list[float]]) -> type:
    """An ``AlphaRefine`` giving ``prob`` as its probability map; appends the boxes it is given to ``boxes``."""

    class FakeAlphaRefine:
        model_name = "seg384"

        def __init__(self, network, device) -> None:
            pass

        def initialize(self, image, box) -> None:
            boxes.append([float(v) for v in box])

        def get_mask(self, image, box) -> np.ndarray:
            boxes.append([float(v) for v in box])
            return prob

    return FakeAlphaRefine


def test_the_candidates_are_thresholded_strictly_with_clipped_confidences(tiny_networks, monkeypatch) -> None:
    """SAM's tokens are logits > 0 with their predicted IoU clipped to [0, 1]; the second pass is fed the best
    multimask token's low-res logits; AR's mask is P > ar_threshold with its mean probability as confidence;
    the combined masks use the best multimask token (docs/init.md#candidates)."""
    img, _, box = _disk_image()  # box x 36..84, y 26..74
    h, w = img.shape[:2]
    logits = np.full((4, h, w), -1.0, np.float32)
    for k, (x0, x1) in enumerate([(36, 84), (40, 70), (36, 80), (50, 84)]):
        logits[k, 26:74, x0:x1] = 1.0
    logits[:, 50, :] = 0.0  # exactly 0: not in any mask
    fake = _FakeSam(logits, [1.3, 0.2, 1.1, -0.2], [0.1, 0.3, 1.7, 0.5])
    prob = np.full((h, w), 0.1, np.float32)
    prob[30:70, 40:80] = 0.5  # exactly ar_threshold: not in the AR mask
    prob[30:70, 45:75] = 0.6
    prob[35:65, 50:70] = 0.9
    ar_boxes: list[list[float]] = []
    monkeypatch.setattr("trek_tracker.init.alpha_refine.refiner.AlphaRefine", _fake_alpha_refine(prob, ar_boxes))
    sam, ar = tiny_networks
    init = BoxToMask(InitConfig(sam_second_pass=True), sam_model=sam, ar_network=ar)
    monkeypatch.setattr(init.sam_predictor(), "set_image", fake.set_image)
    monkeypatch.setattr(init.sam_predictor(), "predict_box", fake.predict_box)
    res = init(img, box)

    assert [p[0] for p in fake.prompts] == [[36.0, 26.0, 84.0, 74.0]] * 2
    assert fake.prompts[0][1] is None and np.array_equal(fake.prompts[1][1], fake.low_res[2][None])  # best: 2
    assert ar_boxes == [[36.0, 26.0, 48.0, 48.0]] * 2  # AR takes x,y,w,h
    sam_masks = logits > 0
    sam_masks[:, 50, :] = False
    ar_mask = prob > 0.5
    expected = {f"sam_{k}": (sam_masks[k], c) for k, c in enumerate([1.0, 0.2, 1.0, 0.0])}
    expected["sam_refined"] = (sam_masks[2], 1.0)  # the second pass's best multimask token
    ar_conf = (600 * 0.6 + 600 * 0.9) / 1200  # the mean over the 40 x 30 mask, half of it at 0.9
    expected["ar_seg384"] = (ar_mask, ar_conf)
    both = 0.5 * (1.0 + ar_conf)
    vote = 0.5 * (1 / (1 + np.exp(-logits[2])) + prob) > 0.5
    expected.update(vote=(vote, both), intersection=(sam_masks[2] & ar_mask, both),
                    union=(sam_masks[2] | ar_mask, both))
    scores = {c["name"]: c for c in res.details["candidates"]}
    assert list(scores) == ["sam_0", "sam_1", "sam_2", "sam_3", "sam_refined", "ar_seg384", "vote",
                            "intersection", "union"]
    for name, (mask, conf) in expected.items():
        assert scores[name]["area"] == int(mask.sum()), name  # all inside the box, no speckles
        assert scores[name]["confidence"] == pytest.approx(conf, abs=1e-6), name
    assert res.details["ar"] == {"model": "seg384", "confidence": pytest.approx(ar_conf)}
    assert res.details["sam"]["sam_best_multimask"] == 2
    assert res.details["sam"]["sam_iou_predictions"] == pytest.approx([1.3, 0.2, 1.1, -0.2])
    assert res.details["sam"]["sam_second_pass_iou"] == pytest.approx(1.7)
    assert res.details["sam"]["model"] == "custom"  # the tiny SAM's encoder width is none of SAM's
    # sam_0 fills the box (rect IoU ~1) and, with confidence 1, has the best score
    assert res.details["winner"] == "sam_0" and res.method == "fused"
    assert np.array_equal(res.mask, sam_masks[0])

    prob[:] = 0.2  # nothing above ar_threshold: an empty AR mask has confidence 0, and the filled box is used
    res = BoxToMask(InitConfig(method="ar"), ar_network=ar)(img, box)
    assert res.details["ar"]["confidence"] == 0.0 and res.details["candidates"][0]["rejected"] == "empty"
    assert res.method == "box" and np.array_equal(res.mask, box_to_mask(box, img.shape[:2]))

    fake.prompts.clear()
    res = BoxToMask(InitConfig(method="sam"), sam_model=init.sam_predictor().model)
    monkeypatch.setattr(res.sam_predictor(), "set_image", fake.set_image)
    monkeypatch.setattr(res.sam_predictor(), "predict_box", fake.predict_box)
    # a ViT-B-wide encoder (its position embedding is all the name is read from; the fake skips the encoder)
    monkeypatch.setattr(sam.image_encoder, "pos_embed", torch.nn.Parameter(torch.zeros(1, 8, 8, 768)))
    details = res(img, box).details
    assert [c["name"] for c in details["candidates"]] == ["sam_0", "sam_1", "sam_2", "sam_3"]
    assert len(fake.prompts) == 1  # no second pass by default
    assert details["sam"]["model"] == "vit_b"


def test_running_out_of_memory_names_the_init_and_what_needs_less(monkeypatch) -> None:
    """An allocation failing in SAM is one line about the first-frame mask and what needs less memory, not the
    tracking hints (--memory-cap, ...) of the run around it, which change nothing for SAM."""
    sam = tiny_sam()

    def no_memory(*args, **kwargs):
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 7.79 GiB "
                           "of which 1.00 GiB is free.")

    monkeypatch.setattr(sam.image_encoder, "forward", no_memory)
    img, _, box = _disk_image()
    with pytest.raises(OutOfMemory) as err, memory_errors("while tracking clip"):  # what the CLI wraps a run in
        BoxToMask(InitConfig(method="sam"), sam_model=sam)(img, box)
    text = str(err.value)
    assert "while making the first-frame mask (--init sam)" in text and "--init ar or --init grabcut" in text
    assert "--memory-cap" not in text and "\n" not in text

    def no_ram(*args, **kwargs):
        raise MemoryError

    monkeypatch.setattr("trek_tracker.init.sam.load_sam", no_ram)
    with pytest.raises(OutOfMemory, match=r"\(RAM\) while loading the networks of --init sam; use --init ar"):
        BoxToMask(InitConfig(method="sam", sam_checkpoint=__file__)).load()


@pytest.mark.cuda
def test_sam_and_alpha_refine_on_cuda(tiny_networks) -> None:
    """The fused init on a GPU chooses what it chooses on the CPU (same candidates, same winner)."""
    sam, ar = tiny_networks
    img, _, box = _disk_image()
    cpu = BoxToMask(InitConfig(), "cpu", sam_model=sam, ar_network=ar)(img, box)
    gpu = BoxToMask(InitConfig(), "cuda", sam_model=sam.to("cuda"), ar_network=ar.to("cuda"))(img, box)
    assert [c["name"] for c in gpu.details["candidates"]] == [c["name"] for c in cpu.details["candidates"]]
    assert gpu.details["winner"] == cpu.details["winner"]
    assert (gpu.mask != cpu.mask).mean() < 0.01
