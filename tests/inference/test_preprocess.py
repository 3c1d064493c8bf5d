"""Input pipeline of the DeAOT models: sizes, resize/normalisation and label resizing, against the spec's
worked examples and the official goldens."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from trek_tracker.errors import InputError
from trek_tracker.inference.preprocess import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Frame,
    Uploader,
    autocast,
    autocast_dtype,
    device_network_input,
    input_size,
    resize_labels,
    resolve_precision,
    to_network_input,
)

# --- input_size -----------------------------------------------------------------------------------

# docs/inference.md#network-input-size: EK-55 1080x1920 frames, long edge capped at 1040; TTA scales run with
# the short-edge cap 624.
EK_SIZES = [
    (1.0, None, (577, 1041), (592, 1040)),
    (1.2, 624, (705, 1249), (704, 1248)),
    (1.3, 624, (753, 1345), (768, 1344)),
    (1.4, 624, (817, 1457), (816, 1456)),
]


@pytest.mark.parametrize(("scale", "short_cap", "r50", "swin"), EK_SIZES)
def test_input_size_ek55_worked_examples(scale, short_cap, r50, swin) -> None:
    kw = dict(max_long_edge=1040, max_short_edge=short_cap, scale=scale)
    assert input_size(1080, 1920, **kw, align_corners=True) == r50
    assert input_size(1080, 1920, **kw, align_corners=False) == swin


@pytest.mark.parametrize("scale", [1.2, 1.3, 1.4])
def test_short_edge_cap_624_is_inactive_for_1080p(scale) -> None:
    # 624 / 1080 then 1040 / 1109.3 lands on the same 585 x 1040 as the long-edge cap alone.
    for ac in (True, False):
        assert input_size(1080, 1920, max_short_edge=624, scale=scale, align_corners=ac) == input_size(
            1080, 1920, scale=scale, align_corners=ac
        )


def test_input_size_davis() -> None:
    assert input_size(480, 854) == (481, 849)
    assert input_size(480, 854, align_corners=False) == (480, 848)
    # The goldens' long edge 480: 854 * (480 / 854) is 479.99999999999994 in float64, so w truncates to 479.
    assert input_size(480, 854, max_long_edge=480) == (273, 481)
    assert input_size(480, 854, max_long_edge=480, align_corners=False) == (272, 480)
    assert input_size(1080, 1920, max_long_edge=480) == (273, 481)


def test_input_size_rounds_half_to_even_and_keeps_aligned_sizes() -> None:
    # (601 - 1) / 16 = 37.5 -> 38 (even); (585 - 1) / 16 = 36.5 -> 36 (even). Python's round-half-up differs.
    assert input_size(601, 585, max_long_edge=None) == (609, 577)
    # n / 16 = 36.5 -> 36, 37.5 -> 38 for the Swin alignment.
    assert input_size(584, 600, max_long_edge=None, align_corners=False) == (576, 608)
    assert input_size(465, 465) == (465, 465)  # already 16k + 1: kept
    assert input_size(464, 464, align_corners=False) == (464, 464)
    assert input_size(464, 464) == (465, 465)
    # Never upscaled by the caps; the TTA scale does upscale.
    assert input_size(97, 161, max_long_edge=1040) == (97, 161)
    assert input_size(97, 161, scale=2.0) == (193, 321)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(h=0, w=10),
        dict(h=-5, w=10),
        dict(h=10.5, w=10),
        dict(h=10, w=10, scale=0),
        dict(h=10, w=10, scale=float("nan")),
        dict(h=10, w=10, max_long_edge=0),
        dict(h=10, w=10, max_short_edge=-1),
        dict(h=2, w=2, max_long_edge=None),  # aligns to 0 rows for Swin below
    ],
)
def test_input_size_rejects_nonsense(kwargs) -> None:
    h, w = kwargs.pop("h"), kwargs.pop("w")
    with pytest.raises(InputError):
        input_size(h, w, **kwargs, align_corners=False)


# --- to_network_input -----------------------------------------------------------------------------


def test_normalisation_is_float32_imagenet() -> None:
    rgb = np.zeros((4, 5, 3), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 0, 128, 255
    x = to_network_input(rgb, (4, 5))
    assert x.dtype == torch.float32 and x.shape == (1, 3, 4, 5)
    for c, v in enumerate((0, 128, 255)):
        want = (np.float32(v) / np.float32(255) - IMAGENET_MEAN[c]) / IMAGENET_STD[c]
        assert torch.allclose(x[0, c], torch.full((4, 5), want, dtype=torch.float32), rtol=0, atol=1e-6)


def test_cubic_resize_keeps_overshoot_and_flip_mirrors() -> None:
    rng = np.random.default_rng(0)
    rgb = np.where(np.arange(40)[None, :, None] < 20, 0, 255).astype(np.uint8).repeat(30, 0).repeat(3, 2)
    x = to_network_input(rgb, (61, 81))
    lo = (0 - IMAGENET_MEAN[0]) / IMAGENET_STD[0]
    hi = (1 - IMAGENET_MEAN[0]) / IMAGENET_STD[0]
    assert x[0, 0].min() < lo - 1e-3 and x[0, 0].max() > hi + 1e-3  # no clipping of cubic ringing
    rgb = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
    a = to_network_input(rgb, (49, 65))
    b = to_network_input(rgb, (49, 65), flip=True)
    assert torch.equal(b, a.flip(-1))
    ref = cv2.resize(rgb.astype(np.float32), (65, 49), interpolation=cv2.INTER_CUBIC) / 255.0
    ref = (ref - np.asarray(IMAGENET_MEAN)) / np.asarray(IMAGENET_STD)
    assert np.abs(a[0].numpy().transpose(1, 2, 0) - ref).max() < 1e-6


@pytest.mark.parametrize(
    "frame",
    [
        np.zeros((4, 4, 3), np.float32),
        np.zeros((4, 4), np.uint8),
        np.zeros((4, 4, 4), np.uint8),
        np.zeros((4, 3, 4), np.uint8),
        np.zeros((0, 4, 3), np.uint8),
        np.zeros((4, 0, 3), np.uint8),
        [[0, 0, 0]],
    ],
)
def test_to_network_input_rejects_bad_frames(frame) -> None:
    with pytest.raises(InputError):
        to_network_input(frame, (4, 4))


def test_frame_tensor_of_views_torch_cannot_wrap() -> None:
    """A rotated or mirrored view (negative strides) and a read-only array are copied; other frames are
    wrapped without a copy."""
    image = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    read_only = image.copy()
    read_only.flags.writeable = False
    for view in (np.rot90(image), image[::-1], image[:, ::-1], image[..., ::-1], read_only):  # [..., ::-1]: BGR
        assert torch.equal(Frame(view).tensor(), torch.from_numpy(view.copy()))
    assert Frame(image).tensor().data_ptr() == image.ctypes.data


def test_a_frame_is_uploaded_once_by_its_uploader_and_a_cpu_uploader_wraps_it() -> None:
    image = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    calls = []
    frame = Frame(image, uploader=lambda host: calls.append(host) or torch.ones(1))
    assert frame.shape == (5, 7, 3) and frame.host is image
    assert torch.equal(frame.tensor(), torch.ones(1)) and frame.tensor() is frame.tensor() and len(calls) == 1
    upload = Uploader(torch.device("cpu"))
    assert upload(image).data_ptr() == image.ctypes.data
    assert torch.equal(upload(image[:, ::-1]), torch.from_numpy(image[:, ::-1].copy()))


def test_device_preprocessing_follows_the_cpu_steps() -> None:
    """The mixed-precision input (docs/inference.md#precision), run on the CPU: without a resize it is the
    official normalisation up to float32 rounding; the cubic resize is OpenCV's kernel (half-pixel centres,
    a = -0.75), flipped after the resize; the uint8 (VMOS) path rounds and saturates the resized frame to 0..255
    as OpenCV's uint8 resize does, within one grey level."""
    rng = np.random.default_rng(4)
    rgb = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
    rgb[:, :10] = 0
    rgb[:, 10:20] = 255  # steps: the cubic kernel overshoots both ends
    t = torch.from_numpy(rgb)
    same = device_network_input(t, (30, 40))
    assert same.shape == (1, 3, 30, 40) and same.dtype == torch.float32
    assert (same - to_network_input(rgb, (30, 40))).abs().max() <= 1e-6
    x = device_network_input(t, (49, 65))
    ref = cv2.resize(rgb.astype(np.float32), (65, 49), interpolation=cv2.INTER_CUBIC)
    ref = (ref / 255.0 - np.asarray(IMAGENET_MEAN)) / np.asarray(IMAGENET_STD)
    assert np.abs(x[0].numpy().transpose(1, 2, 0) - ref).max() <= 0.02 / 255 / 0.225
    assert torch.equal(device_network_input(t, (49, 65), flip=True), x.flip(-1))
    u = device_network_input(t, (49, 65), resize="uint8", flip=True).flip(-1)[0].double().numpy().transpose(1, 2, 0)
    grey = (u * np.asarray(IMAGENET_STD) + np.asarray(IMAGENET_MEAN)) * 255
    assert np.abs(grey - np.round(grey)).max() < 1e-3 and abs(grey.min()) < 1e-3 and abs(grey.max() - 255) < 1e-3
    official = cv2.resize(rgb, (65, 49), interpolation=cv2.INTER_CUBIC).astype(np.float64)
    assert np.abs(grey - official).max() < 1 + 1e-3 and (official == 0).any() and (official == 255).any()
    assert np.abs(grey - official).mean() < 0.05


def test_autocast_of_each_precision() -> None:
    assert autocast_dtype("fp32") == torch.float32 and autocast_dtype("bf16") == torch.bfloat16
    assert autocast_dtype("fp16") == torch.float16
    a = torch.ones(4, 4)
    with autocast(torch.device("cpu"), "bf16"):
        assert (a @ a).dtype == torch.bfloat16
    with autocast(torch.device("cpu"), "fp32"):
        assert (a @ a).dtype == torch.float32
    with autocast(torch.device("cpu"), "fp16"):
        assert (a @ a).dtype == torch.float16
    for precision in ("fp32", "bf16", "fp16"):  # a precision the user named is kept on any device
        assert resolve_precision(precision, torch.device("cpu")) == precision


def test_to_network_input_rejects_bad_size() -> None:
    with pytest.raises(InputError):
        to_network_input(np.zeros((4, 4, 3), np.uint8), (0, 4))


def test_an_unknown_resize_and_bad_inputs_on_the_uint8_path_are_input_errors() -> None:
    rgb = np.zeros((4, 4, 3), np.uint8)
    with pytest.raises(InputError, match="resize must be 'float32' or 'uint8', got 'nearest'"):
        to_network_input(rgb, (4, 4), resize="nearest")
    for frame, what in ((np.zeros((4, 4, 3), np.float32), "uint8 numpy array, got float32"),
                        ([[0, 0, 0]], "uint8 numpy array, got list"), (np.zeros((4, 4), np.uint8), "shape"),
                        (np.zeros((4, 4, 4), np.uint8), "shape"), (np.zeros((0, 4, 3), np.uint8), "shape")):
        with pytest.raises(InputError, match=what):
            to_network_input(frame, (4, 4), resize="uint8")
    with pytest.raises(InputError, match="network input size"):
        to_network_input(rgb, (0, 4), resize="uint8")
    x = to_network_input(rgb, (5, 3), resize="uint8")
    assert x.dtype == torch.float32 and x.shape == (1, 3, 5, 3)


# --- resize_labels --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("src", "dst"), [((480, 854), (273, 481)), ((1080, 1920), (273, 481)), ((7, 9), (20, 3))]
)
def test_resize_labels_is_legacy_nearest(src, dst) -> None:
    rng = np.random.default_rng(1)
    label = rng.integers(0, 45, src, dtype=np.uint8)
    out = resize_labels(label, dst)
    rows = np.floor(np.arange(dst[0]) * src[0] / dst[0]).astype(int)
    cols = np.floor(np.arange(dst[1]) * src[1] / dst[1]).astype(int)
    assert out.dtype == torch.uint8 and tuple(out.shape) == dst
    assert np.array_equal(out.numpy(), label[rows][:, cols])


def test_resize_labels_picks_what_interpolate_nearest_picks() -> None:
    """Source indices computed as PyTorch computes them for a float32 map (the official code resizes its
    labels as float32), over many size pairs, up and down, and for a mirrored map."""
    rng = np.random.default_rng(3)
    sizes = [(1080, 1920, 577, 1041), (1080, 1920, 705, 1249), (480, 854, 273, 481), (7, 9, 20, 3)]
    sizes += [tuple(int(v) for v in rng.integers(1, 400, 4)) for _ in range(60)]
    for sh, sw, dh, dw in sizes:
        label = torch.arange(sh * sw, dtype=torch.int64).view(1, 1, sh, sw)
        expected = F.interpolate(label.float(), size=(dh, dw), mode="nearest").long()
        assert torch.equal(resize_labels(label, (dh, dw)), expected), (sh, sw, dh, dw)
        mirrored = F.interpolate(label.flip(-1).float(), size=(dh, dw), mode="nearest").long()
        assert torch.equal(resize_labels(label, (dh, dw), flip=True), mirrored), (sh, sw, dh, dw)


def test_resize_labels_differs_from_nearest_exact() -> None:
    label = torch.arange(480 * 854, dtype=torch.float32).view(1, 1, 480, 854)
    ours = resize_labels(label, (273, 481))
    exact = F.interpolate(label, size=(273, 481), mode="nearest-exact")
    assert ours.shape == (1, 1, 273, 481) and ours.dtype == torch.float32
    assert not torch.equal(ours, exact)


def test_input_size_caps_and_enlargement_by_hand() -> None:
    """docs/inference.md#network-input-size rules 1-4, computed by hand."""
    # Short-edge cap: 1248 x 2000 halves to 624 x 1000; (623)/16 = 38.9 -> 625, 999/16 = 62.4 -> 993.
    assert input_size(1248, 2000, max_short_edge=624, max_long_edge=None) == (625, 993)
    # A short edge below the cap is not enlarged, though the long edge exceeds it: 599/16 -> 593, 999/16 -> 993.
    assert input_size(600, 1000, max_short_edge=624, max_long_edge=None) == (593, 993)
    # VMOS enlargement: the short edge 100 -> 200 doubles both sides: 199/16 -> 193, 799/16 = 49.9 -> 801.
    assert input_size(100, 400, min_short_edge=200, max_long_edge=None) == (193, 801)
    # The long-edge cap defaults to 1040: 10 x 1041 -> int(9.99) = 9 rows, and 8/16 = 0.5 rounds to 0 -> 1.
    assert input_size(10, 1041) == (1, 1041)
    # Swin sizes 16k: 17 -> 16, 33 -> 32; an aligned 32 is kept.
    assert input_size(17, 33, max_long_edge=None, align_corners=False) == (16, 32)
    assert input_size(32, 48, max_long_edge=None, align_corners=False) == (32, 48)
    for kw, message in ((dict(max_long_edge=0), "max_long_edge must be positive"),
                        (dict(max_short_edge=0), "max_short_edge must be positive"),
                        (dict(scale=0), "scale must be a positive"), (dict(scale=float("inf")), "scale must be"),
                        (dict(max_long_edge=0.5), "too small")):
        with pytest.raises(InputError, match=message):
            input_size(10, 10, align_corners=False, **kw)


def test_a_side_of_one_pixel_is_a_size() -> None:
    assert input_size(1, 17, max_long_edge=None) == (1, 17)
    label = np.arange(12).reshape(3, 4)
    assert resize_labels(label, (1, 2)).tolist() == [[0, 2]]  # rows floor(0 * 3/1), columns floor(i * 4/2)


def test_resize_labels_keeps_rank_and_dtype() -> None:
    label = torch.randint(0, 11, (2, 13, 17), dtype=torch.int64)
    out = resize_labels(label, (5, 7))
    assert out.shape == (2, 5, 7) and out.dtype == torch.int64
    assert torch.equal(resize_labels(label, (13, 17)), label)
    empty = resize_labels(label[:0], (5, 7), flip=True)  # a batch of no maps is a batch, as for interpolate
    assert empty.shape == (0, 5, 7) and empty.dtype == torch.int64


@pytest.mark.parametrize(
    ("label", "size"),
    [
        (np.zeros((3, 3), np.uint8), (0, 3)),
        (np.zeros(3, np.uint8), (3, 3)),
        (np.zeros((1, 1, 1, 3, 3), np.uint8), (3, 3)),
        (torch.zeros(3, 3, dtype=torch.bool), (3, 3)),
        (torch.zeros(3, 3, dtype=torch.complex64), (3, 3)),
        (np.zeros((0, 3), np.uint8), (3, 3)),
        (np.zeros((2, 3, 0), np.uint8), (3, 3)),
        ([[0]], (3, 3)),
    ],
)
def test_resize_labels_rejects_nonsense(label, size) -> None:
    with pytest.raises(InputError):
        resize_labels(label, size)


# --- goldens --------------------------------------------------------------------------------------


def _read_rgb(path: Path) -> np.ndarray:
    bgr = cv2.imread(str(path))
    assert bgr is not None, path
    return np.ascontiguousarray(bgr[:, :, ::-1])


def _channel_stats(x: torch.Tensor) -> np.ndarray:
    d = x.double()
    return np.array([d.sum().item(), d.mean().item(), d.abs().mean().item(), d.std().item()])


GOLDEN_CASES = [
    ("deaott", "car-shadow", True),
    ("swinb_deaotl", "car-shadow", False),
    ("r50_deaotl", "aot_demo", True),
]


@pytest.mark.parametrize(("model", "case", "align_corners"), GOLDEN_CASES)
def test_network_input_matches_golden(shared, golden, model, case, align_corners) -> None:
    g = np.load(golden / "deaot" / model / f"{case}.npz")
    if case == "car-shadow":
        frames = [shared / "data/davis/JPEGImages/480p/car-shadow" / f"{i:05d}.jpg" for i in range(8)]
    else:
        frames = [shared / "data/aot_demo/images" / f"{i:08d}.jpg" for i in range(2058, 2062)]
    for t, path in enumerate(frames):
        rgb = _read_rgb(path)
        assert rgb.shape[:2] == tuple(g["orig_size"])
        long_edge = float(g["max_long_edge"])
        size = input_size(*rgb.shape[:2], max_long_edge=long_edge, align_corners=align_corners)
        assert size == tuple(int(v) for v in g["input_size"])
        x = to_network_input(rgb, size, flip=bool(g["flip"]))
        h, w = size
        crop = x[0, :, h // 2 - 8 : h // 2 + 8, w // 2 - 8 : w // 2 + 8].numpy()
        assert np.abs(crop - g["input_crop"][t]).max() <= 1e-5
        for c in range(3):
            ours, ref = _channel_stats(x[0, c]), g["input_stats"][t, c]
            n = h * w
            assert abs(ours[0] - ref[0]) <= 1e-5 * n * ref[2]
            assert abs(ours[1] - ref[1]) <= 1e-5 * ref[2]
            assert abs(ours[2] - ref[2]) <= 1e-4 * ref[2]
            assert abs(ours[3] - ref[3]) <= 1e-4 * ref[3]
