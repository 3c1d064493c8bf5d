"""Alpha-Refine networks: output shapes, key maps, and parity with the official code (goldens)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from trek_tracker.device import set_fast_kernels
from trek_tracker.errors import CheckpointError, InputError
from trek_tracker.init.alpha_refine.checkpoint import KEY_MAPS, build_model, map_state_dict, pool_size_of
from trek_tracker.init.alpha_refine.prroi_pool import prroi_pool2d
from trek_tracker.init.alpha_refine.refiner import AlphaRefine
from trek_tracker.init.alpha_refine.secm import SEcm
from trek_tracker.init.alpha_refine.seg384 import ARSegMask, BicubicUp2x, CorrNLNeck


def _official_like_state(model: torch.nn.Module, unused: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    state = {
        k: torch.randn(v.shape, generator=gen) if v.is_floating_point() else v for k, v in model.state_dict().items()
    }
    state.update({k: torch.zeros(s) for k, s in unused.items()})
    return state


def test_secm_shapes_and_key_map() -> None:
    torch.manual_seed(0)
    model = SEcm().eval()
    unused = {
        "feature_extractor.fc.weight": (1000, 512),
        "feature_extractor.layer4.0.conv1.weight": (512, 256, 3, 3),
    }
    state = _official_like_state(model, unused)
    mapped = map_state_dict(state, KEY_MAPS["secm"], model)
    assert set(mapped) == set(model.state_dict()) and pool_size_of(state) == 8
    crop = torch.randn(1, 3, 256, 256)
    with torch.no_grad():
        kernel = model.reference_kernel(crop)
        out = model(crop, kernel)  # both branches by default
    assert kernel.shape == (1, 256, 8, 8)
    assert (
        out["corner"].shape == (1, 4) and out["mask"].shape == (1, 1, 256, 256) and out["feat"].shape == (1, 64, 16, 16)
    )
    assert 0 <= float(out["corner"].min()) and float(out["corner"].max()) <= 240  # grid of cell corners
    assert "mask" not in model(crop, kernel, branches=("corner",))


def test_seg_mask_shapes_follow_the_pool_size() -> None:
    torch.manual_seed(0)
    model = ARSegMask(pool_size=4).eval()  # small pool: 128 input -> 8x8 layer4 -> 128 mask
    crop = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        kernel = model.reference_kernel(crop, torch.tensor([32.0, 32.0, 64.0, 64.0]))
        out = model(crop, kernel)
    assert kernel.shape == (1, 1024, 4, 4)
    assert out["mask"].shape == (1, 1, 128, 128) and out["feat"].shape == (1, 16, 8, 8)
    assert float(out["mask"].min()) >= 0 and float(out["mask"].max()) <= 1


def test_the_default_seg_network_is_the_384_checkpoints() -> None:
    model = ARSegMask()
    assert model.pool_size == 12 and model.output_size == model.input_size == 384  # 2 * 16 * P: the crop size
    assert model.neck.channel_attention.fc1.weight.shape == (36, 144, 1, 1)  # what pool_size_of reads back


def test_seg_kernel_pools_the_template_box_in_feature_pixels() -> None:
    feat = torch.randn(1, 3, 12, 12)
    box = torch.tensor([40.5, 61.0, 90.0, 52.25])  # x, y, w, h in crop pixels; not square, x != y
    kernel = CorrNLNeck(pool_size=3).reference_kernel(feat, box)
    rois = torch.tensor([[0.0, 40.5, 61.0, 130.5, 113.25]])  # [batch, x1, y1, x2, y2], stride 16
    torch.testing.assert_close(kernel, prroi_pool2d(feat, rois, 3, 3, 1 / 16))


def test_backbones_stop_at_the_deepest_requested_layer() -> None:
    seg = ARSegMask(pool_size=4).eval()
    secm = SEcm().eval()
    ran: list[str] = []
    for net in (seg, secm):
        for name, module in net.feature_extractor.named_children():
            module.register_forward_hook(lambda *_, name=name, net=net: ran.append(f"{type(net).__name__}.{name}"))
    with torch.no_grad():
        feats = seg.feature_extractor(torch.zeros(1, 3, 64, 64), iter(["layer2", "layer1"]))  # any iterable
        assert list(feats) == ["layer2", "layer1"]  # ours: layer1 = after max-pool, layer2 = torchvision layer1
        assert feats["layer1"].shape == (1, 64, 16, 16) and feats["layer2"].shape == (1, 256, 16, 16)
        assert list(secm.feature_extractor(torch.zeros(1, 3, 64, 64), iter(["conv1"]))) == ["conv1"]
    assert "ARSegMask.layer1" in ran and "ARSegMask.layer2" not in ran  # no deeper stage was computed
    assert "SEcm.bn1" in ran and "SEcm.maxpool" not in ran and "SEcm.layer1" not in ran


def test_key_map_is_strict() -> None:
    model = SEcm()
    state = _official_like_state(model, {})
    broken = dict(state)
    del broken["mask_head.post2.bias"]
    with pytest.raises(CheckpointError, match="mask_head.post2.bias"):
        map_state_dict(broken, KEY_MAPS["secm"], model)
    extra = dict(state, **{"neck.surprise.weight": torch.zeros(1)})
    with pytest.raises(CheckpointError, match="neck.surprise.weight"):
        map_state_dict(extra, KEY_MAPS["secm"], model)
    wrong = dict(state, **{"mask_head.post2.bias": torch.zeros(2)})
    with pytest.raises(CheckpointError, match="shape"):
        map_state_dict(wrong, KEY_MAPS["secm"], model)


def test_bicubic_pyramid_equals_torch_bicubic_2x() -> None:
    x = torch.randn(1, 3, 7, 9, dtype=torch.float64)
    ours = BicubicUp2x(3).double()(x)
    ref = F.interpolate(x, scale_factor=2, mode="bicubic", align_corners=False)
    torch.testing.assert_close(ours, ref, atol=1e-10, rtol=0)


# -- parity with the official code (seeded weights; ../shared/golden/alpha_refine) --


def _seeded(golden: Path, name: str) -> dict[str, torch.Tensor]:
    spec_path = golden / "alpha_refine" / name / "keys.json"
    if not spec_path.is_file():
        pytest.skip(f"no Alpha-Refine goldens at {spec_path.parent}")
    spec = importlib.util.spec_from_file_location("seeded_weights", golden / "seeded_weights.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.seeded_state_dict(json.loads(spec_path.read_text()))


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
@pytest.mark.parametrize("name", ["secm", "seg384"])
def test_parity_with_official_outputs(golden: Path, davis: Path, name: str, device: str) -> None:
    torch.set_num_threads(max(torch.get_num_threads(), 1))
    set_fast_kernels(torch.device(device), False)  # float32 without TF32 or autotuning, as the goldens were made
    ref = np.load(golden / "alpha_refine" / name / "car-shadow.npz")
    ar = AlphaRefine(build_model(_seeded(golden, name), name), device)
    frame = cv2.imread(str(davis / "JPEGImages" / "480p" / "car-shadow" / "00000.jpg"))[..., ::-1].copy()
    box = ref["frame0_box"]
    ar.initialize(frame, box)
    assert np.array_equal(ar.template_crop, ref["template_crop_uint8"])
    np.testing.assert_allclose(ar.kernel.cpu().numpy(), ref["ref_kernel"], rtol=1e-4, atol=1e-4)
    out = ar.run(frame, box, branches=("corner", "mask") if name == "secm" else ("mask",))
    assert np.array_equal(out.crop_uint8, ref["f0_crop_uint8"])
    np.testing.assert_allclose(out.mask_crop, ref["f0_mask_crop"], atol=1e-3)
    assert ((out.mask_crop > 0.5) != ref["f0_mask_crop_bin"]).mean() <= 5e-4
    full16 = out.mask_full.astype(np.float16).astype(np.float32)
    np.testing.assert_allclose(full16, ref["f0_mask_full_f16"].astype(np.float32), atol=2e-3)
    assert ((out.mask_full > 0.5) != ref["f0_mask_full_bin"]).mean() <= 5e-4
    if name == "secm":
        np.testing.assert_allclose(out.corner_crop_xyxy, ref["f0_corner_crop_xyxy"], atol=1e-2)
        np.testing.assert_allclose(out.corner_frame_xywh, ref["f0_corner_frame_xywh"], atol=5e-2)
        # Frame 5 with the enlarged box (a tracker-like box): a different crop through the same template.
        f5 = cv2.imread(str(davis / "JPEGImages" / "480p" / "car-shadow" / "00005.jpg"))[..., ::-1].copy()
        out5 = ar.run(f5, ref["frame5_box"], branches=("corner", "mask"))
        np.testing.assert_allclose(out5.mask_crop, ref["f5_mask_crop"], atol=1e-3)
        np.testing.assert_allclose(out5.corner_frame_xywh, ref["f5_corner_frame_xywh"], atol=5e-2)


def test_refine_box_is_secms_corner_box_in_frame_pixels(golden: Path, davis: Path) -> None:
    """docs/init.md: ``refine_box`` is the official ``refine(mode='corner')``; seg384 has no box head."""
    ref = np.load(golden / "alpha_refine" / "secm" / "car-shadow.npz")
    ar = AlphaRefine(build_model(_seeded(golden, "secm"), "secm"))
    frame = cv2.imread(str(davis / "JPEGImages" / "480p" / "car-shadow" / "00000.jpg"))[..., ::-1].copy()
    ar.initialize(frame, ref["frame0_box"])
    np.testing.assert_allclose(ar.refine_box(frame, ref["frame0_box"]), ref["f0_corner_frame_xywh"], atol=5e-2)
    seg = AlphaRefine(ARSegMask(pool_size=4).eval())
    with pytest.raises(InputError, match="no box head"):
        seg.refine_box(frame, ref["frame0_box"])


def test_a_mask_needs_a_template_first_and_a_bad_frame_or_box_is_refused() -> None:
    torch.manual_seed(0)
    ar = AlphaRefine(ARSegMask(pool_size=4).eval())
    assert ar.model_name == "seg384"  # the init's candidate is "ar_seg384"
    frame = np.zeros((60, 80, 3), np.uint8)
    with pytest.raises(RuntimeError, match="initialize must be called before"):
        ar.get_mask(frame, [10, 10, 20, 20])
    for bad in (np.zeros((60, 80), np.uint8), np.zeros((60, 80, 4), np.uint8), np.zeros((60, 80, 3), np.float32)):
        with pytest.raises(InputError, match=r"RGB uint8 \(H, W, 3\) frame"):
            ar.initialize(bad, [10, 10, 20, 20])
    for box in ([10, 10, 0, 20], [10, 10, 20, 0], [10, 10, -0.5, 20], [10, 10, 20, -1], [10, 10, 20],
                [np.nan, 10, 20, 20], [10, np.inf, 20, 20]):
        with pytest.raises(InputError, match=r"\[x, y, w, h\] with w, h > 0"):
            ar.initialize(frame, box)
    assert ar.kernel is None  # nothing was half-initialised
    ar.initialize(frame, [10.5, 10, 20, 20.5])
    assert ar.get_mask(frame, [10.5, 10, 20, 20.5]).shape == (60, 80)
    with pytest.raises(InputError, match=r"\[x, y, w, h\] with w, h > 0"):  # each frame's box is checked too
        ar.get_mask(frame, [10, 10, -20, 20])
    with pytest.raises(InputError, match="RGB uint8"):
        ar.get_mask(frame[..., 0], [10, 10, 20, 20])
