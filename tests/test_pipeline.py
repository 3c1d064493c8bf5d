"""The Python API (got10k / TREK-150 toolkit interface) on the same pipeline as the CLI."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from tests.cli.conftest import TINY, official_checkpoint
from trek_tracker import Tracker
from trek_tracker.errors import InputError
from trek_tracker.inference.ensemble import EnsembleConfig, ModelSpec
from trek_tracker.inference.memory import MemoryConfig
from trek_tracker.inference.tta import TTAConfig
from trek_tracker.init.api import InitConfig
from trek_tracker.pipeline import TrackerConfig


def _frames(n=3, h=96, w=128):
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
    return [np.roll(base, 2 * i, axis=1) for i in range(n)]


@pytest.fixture(scope="module")
def tracker(tmp_path_factory):
    ckpt = official_checkpoint(tmp_path_factory.mktemp("api") / "tiny.pth")
    return Tracker(TrackerConfig(model=TINY, checkpoint=str(ckpt), device="cpu", init=InitConfig(method="box"),
                                 max_long_edge=128))


def test_toolkit_interface_with_numpy_and_pil(tracker):
    frames = _frames()
    tracker.init(Image.fromarray(frames[0]), [20, 30, 40, 25])
    assert tracker.mask is not None and tracker.mask[30:55, 20:60].all() and tracker.mask.sum() == 40 * 25
    box = tracker.update(frames[1])
    assert isinstance(box, np.ndarray) and box.shape == (4,) and np.isfinite(box).all()
    assert box[2] > 0 and box[3] > 0
    result = tracker.step(Image.fromarray(frames[2]), keep_probs=True)
    assert result.labels.shape == (96, 128) and result.labels.dtype == np.uint8
    assert result.probs.shape == (2, 96, 128)
    np.testing.assert_allclose(result.probs.sum(0).numpy(), 1.0, atol=1e-5)
    if not result.lost[1]:  # the box is the tight box of the mask
        ys, xs = np.nonzero(result.labels == 1)
        assert list(result.box) == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]


def test_probabilities_are_a_tensor_from_the_first_frame_on(tracker):
    """The start frame's probabilities (its one-hot mask) come as every later frame's do, a float tensor."""
    import torch

    frames = _frames()
    first = tracker.init(frames[0], [20, 30, 40, 25], keep_probs=True)
    later = tracker.step(frames[1], keep_probs=True)
    for probs in (first.probs, later.probs):
        assert isinstance(probs, torch.Tensor) and probs.dtype == torch.float32 and probs.shape == (2, 96, 128)
    assert first.probs.numpy()[1].sum() == 40 * 25


def test_multi_object_mask_start(tracker):
    frames = _frames()
    labels = np.zeros((96, 128), np.uint8)
    labels[10:20, 10:30] = 1
    labels[50:70, 60:100] = 2
    first = tracker.init(frames[0], mask=labels)
    assert sorted(first.boxes) == [1, 2]
    assert list(first.boxes[2]) == [60, 50, 40, 20]
    nxt = tracker.step(frames[1])
    assert sorted(nxt.boxes) == [1, 2] and set(np.unique(nxt.labels)) <= {0, 1, 2}


def test_api_input_errors(tracker):
    frames = _frames()
    with pytest.raises(InputError, match="RGB uint8"):
        tracker.init(frames[0].astype(np.float32), [1, 1, 5, 5])
    with pytest.raises(InputError, match="outside"):
        tracker.init(frames[0], [500, 500, 5, 5])
    with pytest.raises(InputError, match="empty"):
        tracker.init(frames[0], mask=np.zeros((96, 128), np.uint8))
    with pytest.raises(InputError, match="not both"):  # the box was ignored without a word
        tracker.init(frames[0], [20, 30, 40, 25], mask=np.pad(np.ones((10, 10), np.uint8), ((0, 86), (0, 118))))
    tracker.init(frames[0], [20, 30, 40, 25])
    with pytest.raises(InputError, match="differs from the first frame"):
        tracker.update(np.zeros((50, 50, 3), np.uint8))


def test_update_before_init_is_an_error(tmp_path):
    ckpt = official_checkpoint(tmp_path / "tiny.pth")
    fresh = Tracker(TrackerConfig(model=TINY, checkpoint=str(ckpt), device="cpu", init=InitConfig(method="box")))
    with pytest.raises(RuntimeError, match="init"):
        fresh.update(_frames(1)[0])
    assert fresh.name == f"trek-track-{TINY}"


def test_a_failed_init_leaves_no_video_to_continue(tracker):
    """A re-init that fails (here on a box outside the frame) must not let update() go on tracking the
    previous video's object on the new video's frames."""
    frames = _frames()
    tracker.init(frames[0], [20, 30, 40, 25])
    tracker.update(frames[1])
    with pytest.raises(InputError, match="outside"):
        tracker.init(frames[0], [500, 500, 5, 5])
    with pytest.raises(RuntimeError, match="init"):
        tracker.update(frames[2])
    assert tracker.labels is None and "network_input_size" not in tracker.describe()
    tracker.init(frames[0], [20, 30, 40, 25])  # a later start works as on a fresh tracker
    assert tracker.update(frames[1]).shape == (4,)


def test_a_frame_too_small_for_a_swin_model_is_one_input_error_and_the_run_can_still_be_described():
    """Swin inputs are multiples of 16: a 6-pixel-high frame has none. The error names the frame; the tracker's
    description (written to run.json as the run fails) must not trip over an engine left without sizes."""
    tracker = Tracker(TrackerConfig(model="swinb_deaotl", random_weights=True, device="cpu",
                                    init=InitConfig(method="box"), max_long_edge=64))
    with pytest.raises(InputError, match="96x6 frame is too small"):
        tracker.init(np.zeros((6, 96, 3), np.uint8), [10, 1, 30, 3])
    assert "network_input_size" not in tracker.describe()
    with pytest.raises(RuntimeError, match="init"):
        tracker.update(np.zeros((6, 96, 3), np.uint8))


def test_each_tracker_tracks_with_the_kernel_flags_of_its_own_precision(tmp_path, monkeypatch):
    """The GPU kernel flags are process-wide: building a bf16 tracker (TF32 and autotuning on) must not leave
    an fp32 tracker of the same process, the parity mode, running with them. Here trackers set the flags as
    they would on a GPU."""
    import torch

    import trek_tracker.device as device_module
    from trek_tracker.device import kernel_flags_kept

    real = device_module.set_fast_kernels
    monkeypatch.setattr(device_module, "set_fast_kernels",
                        lambda device, enabled: real(torch.device("cuda", 0), enabled))

    def tf32() -> bool:
        return torch.backends.cuda.matmul.allow_tf32 or torch.backends.cudnn.allow_tf32

    ckpt = official_checkpoint(tmp_path / "tiny.pth")
    frames = _frames()
    with kernel_flags_kept():
        parity = Tracker(TrackerConfig(model=TINY, checkpoint=str(ckpt), device="cpu", precision="fp32",
                                       init=InitConfig(method="box"), max_long_edge=64))
        assert not tf32()
        Tracker(TrackerConfig(model=TINY, checkpoint=str(ckpt), device="cpu", precision="bf16",
                              init=InitConfig(method="box"), max_long_edge=64))
        assert tf32() and torch.backends.cudnn.benchmark
        parity.init(frames[0], [20, 30, 40, 25])
        assert not tf32() and not torch.backends.cudnn.benchmark
        torch.backends.cuda.matmul.allow_tf32 = True  # as another tracker's frame leaves it
        parity.update(frames[1])
        assert not tf32()


def test_a_config_is_rebuilt_from_the_settings_run_json_records():
    """`TrackerConfig(**run["tracker"]["settings"])` is the tracker of that run, nested sections included (they
    stayed dicts, and the tracker failed on first use); a misspelt setting is named."""
    import json

    config = TrackerConfig(model=TINY, checkpoint="a.pth", tta=TTAConfig(scales=(1.2, 1.3), flip=True),
                           memory=MemoryConfig(gap=2, cap="none"), init=InitConfig(method="grabcut"),
                           ensemble=EnsembleConfig(members=(ModelSpec(TINY, "b.pth"),), weights=(1.0, 2.0)))
    settings = json.loads(json.dumps(config.to_dict()))
    assert TrackerConfig(**settings) == config
    with pytest.raises(InputError, match="memory.gapp"):
        TrackerConfig(**{**settings, "memory": {"gapp": 1}})


def test_tracker_identity_ignores_how_fast_not_what():
    """Resuming an eval may change the device or --compile, not a setting that changes results."""
    from trek_tracker.inference.memory import MemoryConfig
    from trek_tracker.pipeline import TrackerConfig, tracker_identity

    base = TrackerConfig(model="test_deaot_tiny", random_weights=True)
    same = TrackerConfig(model="test_deaot_tiny", random_weights=True, device="cuda:1", compile=True, name="x")
    other = TrackerConfig(model="test_deaot_tiny", random_weights=True, memory=MemoryConfig(cap=6))
    assert tracker_identity(base, "cpu") == tracker_identity(same, "cpu")
    assert tracker_identity(base, "cpu") != tracker_identity(other, "cpu")
    assert tracker_identity(base, "cpu")["precision"] == "fp32" != tracker_identity(base, "cuda")["precision"]


def _label_maps() -> list:
    """Object 1 present, absent (lost: the box of the frame before is held), then present with a speck."""
    import torch

    maps = [np.zeros((40, 60), np.uint8) for _ in range(4)]
    maps[0][5:20, 10:30] = 1
    maps[2][10:30, 20:50] = 1
    maps[3][12:32, 22:52] = 1
    maps[3][0, 0] = 1  # a speck: removed, the box is the object's
    return [torch.from_numpy(m) for m in maps]


def test_deferred_boxes_are_computed_in_frame_order_whoever_asks_first():
    from trek_tracker.geometry import BoxConfig
    from trek_tracker.pipeline import FrameResult, ObjectBoxes

    start = {1: np.array([0, 0, 4, 4.0])}
    eager = ObjectBoxes(start, BoxConfig(min_component_px=10))
    expected = [eager.update(m) for m in _label_maps()]
    deferred = ObjectBoxes(start, BoxConfig(min_component_px=10))
    results = [FrameResult.deferred(deferred.measure(m), 0.5) for m in _label_maps()]
    assert results[3].box.tolist() == [22, 12, 30, 20]  # the last frame read first: every earlier one computed
    for result, (boxes, lost) in zip(results, expected, strict=True):
        assert result.box.tolist() == boxes[1].tolist() and result.lost == lost
        assert result.seconds >= 0.5
    assert [r.lost[1] for r in results] == [False, True, False, False]
    assert results[1].box.tolist() == [10, 5, 20, 15]  # held from frame 0


def test_boxes_nobody_reads_do_not_pile_up():
    from trek_tracker.geometry import BoxConfig
    from trek_tracker.pipeline import ObjectBoxes

    maps = _label_maps() * 10
    start = {1: np.array([0, 0, 4, 4.0])}
    eager = ObjectBoxes(start, BoxConfig(min_component_px=10))
    expected = [eager.update(m) for m in maps]
    deferred = ObjectBoxes(start, BoxConfig(min_component_px=10))
    pending = [deferred.measure(m) for m in maps]  # a caller that reads only masks
    first_waiting = len(maps) - ObjectBoxes.PENDING
    assert len(deferred._queue) == ObjectBoxes.PENDING
    assert pending[first_waiting - 1].done is not None and pending[first_waiting].done is None
    assert [p.result()[0][1].tolist() for p in pending] == [b[1].tolist() for b, _ in expected]


@pytest.mark.parametrize("behind", [True, False])
def test_a_frames_boxes_are_computed_behind_the_tracker_and_counted_in_its_time(tracker, monkeypatch, behind):
    import threading
    import time

    from trek_tracker import geometry
    from trek_tracker.loop import Sink, Start, track_video

    labelled = []
    original = geometry.kept_components_box

    def slow(mask, min_px, keep="all"):
        labelled.append(threading.current_thread().name)
        time.sleep(0.05)
        return original(mask, min_px, keep)

    monkeypatch.setattr(geometry, "kept_components_box", slow)

    class Times(Sink):
        def __init__(self):
            self.seconds = []

        def frame(self, index, image, result):
            self.seconds.append(result.seconds)

    sink = Times()
    track_video(tracker, _frames(4), Start(box=np.array([20, 20, 40, 30.0])), [sink], write_behind=behind)
    assert len(labelled) == 3 and set(labelled) == {"sink-writer" if behind else "MainThread"}
    assert len(sink.seconds) == 4 and min(sink.seconds[1:]) >= 0.05  # the toolkit's speed includes the boxes


def _run(tracker, frames, start=None):
    """Labels and boxes of ``frames`` after ``start`` (or from an init on the first frame)."""
    out = []
    if start is None:
        tracker.init(frames[0], [20, 30, 40, 25])
        frames = frames[1:]
    for f in frames:
        r = tracker.step(f)
        out.append((r.labels.copy(), {i: b.tolist() for i, b in r.boxes.items()}, dict(r.lost)))
    return out


@pytest.mark.parametrize("kind", ["bounded", "unbounded-tta", "ensemble"])
def test_a_restored_tracker_continues_exactly_where_the_saved_one_stood(tmp_path, kind):
    """state() between frames, saved to a file and read back (weights_only), then restore() on a new
    tracker: the following frames' labels, boxes and lost flags are those of the uninterrupted tracker."""
    import io

    import torch

    ckpt = official_checkpoint(tmp_path / "tiny.pth")
    other = torch.load(ckpt, weights_only=False)  # a second member with weights of its own
    other["state_dict"] = {k: v * 1.1 if v.is_floating_point() else v for k, v in other["state_dict"].items()}
    torch.save(other, tmp_path / "other.pth")
    settings = {
        # a full long-term memory and a wrapped short-term ring
        "bounded": dict(memory=MemoryConfig(gap=1, skip=2, cap=2)),
        "unbounded-tta": dict(memory=MemoryConfig(gap=2, cap="none"), tta=TTAConfig(scales=(1.0, 0.75), flip=True)),
        "ensemble": dict(memory=MemoryConfig(gap=3, cap=2, eviction="least-similar"), ensemble=EnsembleConfig(
            members=(ModelSpec(TINY, str(tmp_path / "other.pth")),), weights=(1.0, 2.0)), tta=TTAConfig(flip=True)),
    }[kind]
    config = TrackerConfig(model=TINY, checkpoint=str(ckpt), device="cpu", init=InitConfig(method="box"),
                           max_long_edge=128, **settings)
    frames = _frames(12)
    frames[7][:] = 0  # a blank frame: the object may be lost there, and a lost box is held
    uninterrupted = _run(Tracker(config), frames)
    first = Tracker(config)
    head = _run(first, frames[:5])  # saved after frame 4: the short-term ring half-way round
    buf = io.BytesIO()
    torch.save(first.state(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    _assert_same(head, uninterrupted[:4])
    second = Tracker(config)
    second.restore(state)
    _assert_same(_run(second, frames[5:], start=True), uninterrupted[4:])
    _assert_same(_run(first, frames[5:], start=True), uninterrupted[4:])  # saving left the tracker as it was


def _assert_same(got: list, want: list) -> None:
    assert len(got) == len(want)
    for (labels, boxes, lost), (labels_w, boxes_w, lost_w) in zip(got, want, strict=True):
        assert np.array_equal(labels, labels_w) and boxes == boxes_w and lost == lost_w


def test_random_weights_are_the_same_network_every_time_and_leave_the_callers_random_state():
    """A smoke run with --random-weights is reproducible, and its --resume continues with the network it
    began with; the members of a random ensemble still differ from each other."""
    import torch

    def weights(tracker: Tracker) -> list[torch.Tensor]:
        return [p.detach().clone() for p in tracker.members[0].model.parameters()]

    config = TrackerConfig(model=TINY, random_weights=True, device="cpu")
    torch.manual_seed(1)
    first = weights(Tracker(config))
    after = torch.rand(3)
    torch.manual_seed(1)
    torch.rand(7)  # another random state before the second build
    second = weights(Tracker(config))
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))
    torch.manual_seed(1)
    Tracker(config)
    assert torch.equal(torch.rand(3), after)  # building drew nothing from the caller's generator
    pair = Tracker(TrackerConfig(model=TINY, random_weights=True, device="cpu",
                                 ensemble=EnsembleConfig(members=(ModelSpec(TINY),))))
    a, b = (list(m.model.parameters()) for m in pair.members)
    assert any(not torch.equal(x, y) for x, y in zip(a, b, strict=True))
