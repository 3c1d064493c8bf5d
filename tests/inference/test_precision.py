"""The fast paths: preprocessing on the device agrees with the official CPU preprocessing, boxes from the
device equal boxes from the host, labels stay on the device unless asked for, mixed precision keeps the
memory in the compute precision and the probabilities in float32."""

from __future__ import annotations

import traceback
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image
from torch.overrides import TorchFunctionMode

from trek_tracker.errors import InputError
from trek_tracker.geometry import BoxConfig
from trek_tracker.inference.engine import EngineConfig, VOSEngine
from trek_tracker.inference.ensemble import EnsembleConfig, ModelSpec
from trek_tracker.inference.preprocess import (
    Frame,
    device_network_input,
    input_size,
    resolve_precision,
    to_network_input,
)
from trek_tracker.inference.tta import TTAConfig
from trek_tracker.init.api import InitConfig
from trek_tracker.modeling.registry import build_model
from trek_tracker.pipeline import LoadedModel, ObjectBoxes, Tracker, TrackerConfig
from trek_tracker.video import open_frames


@pytest.fixture(scope="module")
def frame_1080p(shared):
    return open_frames(shared / "data/aot_demo/images")[0]


@pytest.mark.parametrize("scale,flip", [(1.0, False), (1.3, True)])
def test_device_preprocessing_matches_the_official_within_a_fraction_of_a_grey_level(frame_1080p, scale, flip):
    size = input_size(*frame_1080p.shape[:2], max_long_edge=1040, scale=scale,
                      max_short_edge=None if scale == 1.0 else 624)
    exact = to_network_input(frame_1080p, size, flip=flip)
    fast = device_network_input(torch.from_numpy(frame_1080p), size, flip=flip)
    assert fast.shape == exact.shape == (1, 3, *size) and fast.dtype == torch.float32
    # 0.02 grey levels after normalisation (1/255/0.225 per level)
    assert (fast - exact).abs().max() <= 0.02 / 255 / 0.225
    assert (fast - exact).abs().mean() <= 1e-5


def test_precision_names():
    cpu, gpu = torch.device("cpu"), torch.device("cuda", 0)
    assert resolve_precision("auto", cpu) == "fp32" and resolve_precision("auto", gpu) == "bf16"
    assert resolve_precision("fp16", cpu) == "fp16"
    with pytest.raises(InputError, match="unknown precision"):
        resolve_precision("int8", cpu)


def _random_labels(seed: int, n: int = 3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    labels = np.zeros((60, 80), np.uint8)
    for i in range(1, n + 1):
        if rng.random() < 0.2:
            continue  # absent object
        y, x = rng.integers(0, 50), rng.integers(0, 70)
        labels[y:y + rng.integers(3, 12), x:x + rng.integers(3, 12)] = i
        for _ in range(rng.integers(0, 3)):  # specks
            labels[rng.integers(0, 60), rng.integers(0, 80)] = i
    return labels


@pytest.mark.parametrize("config", [BoxConfig(min_component_px=10), BoxConfig(min_component_px=0),
                                    BoxConfig(min_component_px=0, components="largest")])
def test_boxes_from_the_device_equal_boxes_from_the_host(config):
    start = {i: np.array([0, 0, 2, 2.0]) for i in (1, 2, 3)}
    host, device = ObjectBoxes(start, config), ObjectBoxes(start, config)
    for seed in range(40):
        labels = _random_labels(seed)
        a = host.update(labels)
        b = device.update(torch.from_numpy(labels))
        for i in (1, 2, 3):
            assert np.array_equal(a[0][i], b[0][i]) and a[1][i] == b[1][i], (seed, i)


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return build_model("test_deaot_tiny").eval()


def _clip(n=4):
    rng = np.random.default_rng(3)
    base = rng.integers(0, 255, (64, 96, 3), dtype=np.uint8)
    return [np.roll(base, 3 * i, axis=1) for i in range(n)]


def _tracker(model, precision="fp32") -> Tracker:
    loaded = LoadedModel(model, model.config.name, None, None, torch.device("cpu"))
    return Tracker(TrackerConfig(precision=precision, max_long_edge=96, init=InitConfig(method="box")), loaded=loaded)


def test_labels_stay_on_the_device_unless_asked_for(tiny):
    frames = _clip()
    a, b = _tracker(tiny), _tracker(tiny)
    a.init(frames[0], [20, 10, 30, 20])
    b.init(frames[0], [20, 10, 30, 20])
    for f in frames[1:]:
        lean = a.step(f, keep_labels=False)
        full = b.step(f)
        assert lean.labels is None and full.labels is not None
        assert np.array_equal(lean.box, full.box)
        assert np.array_equal(a.labels, full.labels)  # still there when asked for afterwards


def test_mixed_precision_keeps_memory_in_the_compute_dtype_and_probabilities_in_float32(tiny):
    engine = VOSEngine(tiny, EngineConfig(max_long_edge=96, precision="bf16"))
    frames = _clip()
    labels = np.zeros((64, 96), np.int64)
    labels[10:30, 20:50] = 1
    engine.add_reference(Frame(frames[0]), labels)
    out = engine.step(Frame(frames[1]))
    memory = engine.memory.attend()[0]
    assert memory.long_key.dtype == torch.bfloat16 and memory.short_value.dtype == torch.bfloat16
    assert out.probs.dtype == torch.float32
    assert torch.allclose(out.probs.sum(0), torch.ones(64, 96), atol=1e-5)
    assert out.labels.shape == (64, 96)


@pytest.mark.parametrize("name,precision", [("test_deaot_tiny", "bf16"), ("test_msdeaot_tiny", "fp16"),
                                            ("test_vmos_tiny", "bf16")])
def test_weights_stored_in_the_autocast_dtype_give_the_same_outputs_bit_for_bit(name, precision):
    """Autocast casts a convolution's or linear layer's float32 weights on every call; storing them in that
    dtype once changes nothing computed (every family, two objects, memory updates included)."""
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    torch.manual_seed(0)
    reference = build_model(name).eval()
    torch.manual_seed(0)
    stored = build_model(name).eval()
    assert stored.store_for_autocast(dtype) > 0 and stored.store_for_autocast(dtype) == 0
    convs = [m for m in stored.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    assert convs and all(m.weight.dtype == dtype for m in convs)
    assert all(p.dtype == torch.float32 for m in stored.modules() if isinstance(m, (torch.nn.LayerNorm,
               torch.nn.GroupNorm, torch.nn.BatchNorm2d)) for p in m.parameters())
    frames = _clip(5)
    labels = np.zeros((64, 96), np.uint8)
    labels[10:30, 20:50], labels[40:60, 60:90] = 1, 2
    outs = []
    for model in (reference, stored):
        engine = VOSEngine(model, EngineConfig(max_long_edge=96, precision=precision))
        engine.add_reference(Frame(frames[0]), labels)
        outs.append([engine.step(Frame(f)) for f in frames[1:]])
    for a, b in zip(*outs, strict=True):
        assert torch.equal(a.labels, b.labels) and torch.equal(a.probs, b.probs)
        assert all(torch.equal(x, y) for x, y in zip(a.logits, b.logits, strict=True))
    with pytest.raises(ValueError, match="bf16 or fp16"):
        stored.store_for_autocast(torch.float32)


def test_tracker_stores_its_own_models_weights_for_autocast_but_never_a_model_it_was_lent(tiny):
    own = Tracker(TrackerConfig(model="test_deaot_tiny", random_weights=True, device="cpu", precision="bf16",
                                max_long_edge=96, init=InitConfig(method="box")))
    assert own.members[0].model.encoder_projector.weight.dtype == torch.bfloat16
    assert any("stored in bf16" in note for note in own.describe()["notes"])
    own.init(_clip()[0], [20, 10, 30, 20])
    assert own.step(_clip()[1]).box.shape == (4,)
    lent = _tracker(tiny, "bf16")  # e.g. the model being trained, validated with mixed precision
    assert lent.members[0].model is tiny and tiny.encoder_projector.weight.dtype == torch.float32
    fp32 = Tracker(TrackerConfig(model="test_deaot_tiny", random_weights=True, device="cpu", precision="fp32"))
    assert fp32.members[0].model.encoder_projector.weight.dtype == torch.float32


class HostTransfers(TorchFunctionMode):
    """Records every call that, on a GPU, moves data between host and device, by the trek_tracker function
    that made it: downloads (``cpu``, ``numpy``, ``item``, ``tolist``, a tensor's truth value or number,
    data-dependent shapes, boolean-mask indexing) and tensors built from host data (``tensor``,
    ``as_tensor``), which a GPU run uploads with a blocking copy. On a CPU each is a no-op, so the count is
    the same there."""

    CALLS = {"cpu", "numpy", "item", "tolist", "__bool__", "__int__", "__float__", "__index__", "nonzero",
             "unique", "masked_select", "argwhere", "tensor", "as_tensor"}

    def __init__(self) -> None:
        super().__init__()
        self.seen: Counter = Counter()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name in ("__getitem__", "__setitem__") and _bool_index(args[1]):
            name = "bool-index"  # a boolean mask as an index counts its elements on the host (nonzero)
        if name in self.CALLS or name == "bool-index":
            ours = [f.name for f in traceback.extract_stack()[:-1] if "trek_tracker" in f.filename]
            self.seen[(name, ours[-1] if ours else "?")] += 1
        return func(*args, **(kwargs or {}))


def _car_shadow(davis, n: int) -> tuple[list[np.ndarray], np.ndarray]:
    """DAVIS car-shadow's first ``n`` frames and its first-frame mask (one object)."""
    paths = sorted((davis / "JPEGImages/480p/car-shadow").glob("*.jpg"))[:n]
    mask = np.asarray(Image.open(davis / "Annotations/480p/car-shadow/00000.png")) > 0
    return [np.asarray(Image.open(p).convert("RGB")) for p in paths], mask.astype(np.uint8)


def _bool_index(index) -> bool:
    parts = index if isinstance(index, tuple) else (index,)
    return any(isinstance(p, torch.Tensor) and p.dtype == torch.bool for p in parts)


@pytest.mark.parametrize("name,tta,members,specks,objects", [
    ("test_deaot_tiny", TTAConfig(), 0, 100, 1),
    ("test_deaot_tiny", TTAConfig(), 0, 0, 1),
    ("test_msdeaot_tiny", TTAConfig(scales=(1.0, 0.75), flip=True), 0, 100, 1),
    ("test_vmos_tiny", TTAConfig(flip=True), 0, 100, 1),
    ("test_deaot_tiny", TTAConfig(), 1, 100, 1),
    ("test_deaot_tiny", TTAConfig(flip=True), 0, 0, 12),  # two object groups
])
def test_a_mixed_precision_frame_crosses_to_the_host_only_for_its_boxes(davis, name, tta, members, specks,
                                                                         objects):
    """After warm-up, a tracked frame reads nothing back while it is tracked: the call queues the frame's
    work and returns (on a GPU the GPU goes on with it while the caller queues the next frame). No
    blocking upload of a constant, no hidden download in the network, the views or the memory (each would
    stall the GPU's queue in the middle of the frame). Only reading the boxes crosses to the host: the
    objects' extents and, when speck removal needs them, the label map."""
    frames, mask = _car_shadow(davis, 7)
    if objects > 1:  # the car cut into vertical strips, one object each
        xs = np.nonzero(mask.any(0))[0]
        strip = np.minimum((np.arange(mask.shape[1]) - xs[0]) * objects // (xs[-1] + 1 - xs[0]), objects - 1)
        mask = mask * (1 + strip[None, :]).astype(np.uint8)
        assert set(np.unique(mask)) == set(range(objects + 1))
    ensemble = EnsembleConfig(members=[ModelSpec(name, None)] * members)
    tracker = Tracker(TrackerConfig(model=name, random_weights=True, device="cpu", precision="bf16",
                                    max_long_edge=160, tta=tta, ensemble=ensemble,
                                    box=BoxConfig(min_component_px=specks), init=InitConfig(method="box")))
    tracker.init(frames[0], mask=mask)
    assert tracker.step(frames[1], keep_labels=False).boxes  # warm-up: constants are built once per size and device
    tracking, reading = HostTransfers(), HostTransfers()
    with tracking:
        results = [tracker.step(frame, keep_labels=False) for frame in frames[2:]]
    with reading:
        boxes = [r.boxes for r in results]
    assert dict(tracking.seen) == {}
    assert dict(reading.seen) == {("numpy", "_compute"): 5 * (2 if specks else 1)}
    assert all(sorted(b) == list(range(1, objects + 1)) for b in boxes)


@pytest.mark.cuda
def test_on_a_gpu_a_frame_is_tracked_without_waiting_for_the_gpu(davis):
    """The host-transfer count above, checked by CUDA itself: in sync-debug mode every synchronising call
    warns. A steady-state bf16 frame (one object, speck removal, a mirrored view, the label map and the
    probabilities kept) queues its work and its copies back and returns without one."""
    import warnings

    frames, mask = _car_shadow(davis, 8)
    tracker = Tracker(TrackerConfig(model="test_deaot_tiny", random_weights=True, device="cuda", precision="bf16",
                                    max_long_edge=160, tta=TTAConfig(flip=True), init=InitConfig(method="box")))
    tracker.init(frames[0], mask=mask)
    assert tracker.step(frames[1]).box.shape == (4,)  # warm-up: constants are built
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            results = [tracker.step(frame, keep_probs=True) for frame in frames[2:]]
    finally:
        torch.cuda.set_sync_debug_mode("default")
    syncs = [w for w in caught if "synchroniz" in str(w.message)]
    assert syncs == [], [f"{w.filename}:{w.lineno}" for w in syncs]
    for result in results:
        assert result.box.shape == (4,) and result.labels.shape == mask.shape and 0 < result.seconds < 10
        assert result.probs.device.type == "cpu" and result.probs.shape == (2, *mask.shape)


@pytest.mark.cuda
def test_on_a_gpu_results_read_late_are_those_read_at_once(davis):
    """Frames whose results are read only after later frames were queued (as the loop's writer thread
    reads them) get the values of frames read one by one: the copies back are ordered behind their
    frame's work, and nothing of a frame is overwritten by the next (fp32: no kernel races a timing)."""
    frames, mask = _car_shadow(davis, 8)
    config = TrackerConfig(model="test_deaot_tiny", random_weights=True, device="cuda", precision="fp32",
                           max_long_edge=160, tta=TTAConfig(flip=True), init=InitConfig(method="box"))
    ahead, one_by_one = Tracker(config), Tracker(config)
    ahead.init(frames[0], mask=mask)
    one_by_one.init(frames[0], mask=mask)
    late = [ahead.step(frame, keep_probs=True) for frame in frames[1:]]
    for frame, result in zip(frames[1:], late, strict=True):
        expected = one_by_one.step(frame, keep_probs=True)
        assert expected.box.tolist() == result.box.tolist() and result.lost == expected.lost
        assert np.array_equal(expected.labels, result.labels) and torch.equal(expected.probs, result.probs)
