"""The Python API (got10k / TREK-150 toolkit interface) on the same pipeline as the CLI."""

from __future__ import annotations

import time

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
    assert isinstance(box, np.ndarray) and box.shape == (4,) and box.dtype == np.float64 and np.isfinite(box).all()
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


def test_the_start_frame_gives_its_label_map_only_when_asked(tracker):
    frames = _frames()
    lean = tracker.init(frames[0], [20, 30, 40, 25], keep_labels=False)
    assert lean.labels is None and list(lean.boxes[1]) == [20, 30, 40, 25]
    assert tracker.mask is not None and tracker.mask.sum() == 40 * 25  # the toolkit's mask is still there
    assert tracker.init(frames[0], [20, 30, 40, 25]).labels.sum() == 40 * 25


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
    assert fresh.labels is None and fresh.mask is None


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
    assert tracker.describe()["init"] == {}  # not the previous video's init details
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
    began = time.perf_counter()
    results = [FrameResult.deferred(deferred.measure(m), 0.5) for m in _label_maps()]
    assert results[3].box.tolist() == [22, 12, 30, 20]  # the last frame read first: every earlier one computed
    elapsed = time.perf_counter() - began
    for result, (boxes, lost) in zip(results, expected, strict=True):
        assert result.box.tolist() == boxes[1].tolist() and result.lost == lost
        assert 0.5 <= result.seconds <= 0.5 + elapsed  # the host's time and the boxes' own
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
    began = time.perf_counter()
    track_video(tracker, _frames(4), Start(box=np.array([20, 20, 40, 30.0])), [sink], write_behind=behind)
    elapsed = time.perf_counter() - began
    assert len(labelled) == 3 and set(labelled) == {"sink-writer" if behind else "MainThread"}
    assert len(sink.seconds) == 4 and min(sink.seconds[1:]) >= 0.05  # the toolkit's speed includes the boxes
    assert max(sink.seconds) <= elapsed


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


@pytest.mark.parametrize("mask,message", [
    (np.ones((50, 60), np.uint8), "init mask is 60x50 but the frame is 128x96"),
    (np.ones(5, np.uint8), r"init mask is \(5,\) but the frame is 128x96"),
    (np.full((96, 128), 0.5, np.float32), "integer object ids, got float32"),
    (np.pad(np.full((10, 10), 300, np.int64), ((0, 86), (0, 118))), r"ids must be in 0\.\.255, got 0\.\.300"),
    (np.pad(np.full((10, 10), -1, np.int64), ((0, 86), (0, 118)), constant_values=1), r"got -1\.\.1"),
    (np.pad(np.full((10, 10), 3, np.uint8), ((0, 86), (0, 118))), r"ids 1\.\.3 but object 1 has no pixels"),
])
def test_an_init_mask_that_is_not_a_label_map_of_the_frame_is_named(tracker, mask, message):
    with pytest.raises(InputError, match=message):
        tracker.init(_frames(1)[0], mask=mask)
    assert tracker.engine is None


def test_init_without_a_box_or_a_mask_is_an_input_error(tracker):
    with pytest.raises(InputError, match=r"needs a box \[x, y, w, h\] or a mask"):
        tracker.init(_frames(1)[0])


def test_a_boolean_init_mask_is_object_1(tracker):
    mask = np.zeros((96, 128), bool)
    mask[40:60, 10:50] = True
    first = tracker.init(_frames(1)[0], mask=mask)
    assert first.labels.dtype == np.uint8 and np.array_equal(first.labels, mask.astype(np.uint8))
    assert list(first.boxes) == [1] and first.box.tolist() == [10, 40, 40, 20]
    assert tracker.init_info == {"requested": "mask", "method": "mask"}


def test_probabilities_come_only_when_asked_for(tracker):
    frames = _frames()
    assert tracker.init(frames[0], [20, 30, 40, 25]).probs is None
    assert tracker.step(frames[1]).probs is None


def test_an_init_method_that_finds_nothing_starts_from_the_filled_box(tracker, monkeypatch):
    """The init method's own mask is the start when it found one; an empty one falls back to the box, and
    the init details (run.json's ``init``) say which and why."""
    from trek_tracker.geometry import box_to_mask
    from trek_tracker.init.api import InitResult

    found = np.zeros((96, 128), bool)
    found[35:50, 25:45] = True  # inside the box, smaller than it

    def method(mask):
        return lambda image, box: InitResult(mask, "grabcut", "a message", {"requested": "auto", "score": 0.5})

    frames = _frames(1)
    monkeypatch.setattr(tracker, "_box_to_mask", method(found))
    first = tracker.init(frames[0], [20, 30, 40, 25])
    assert np.array_equal(first.labels, found.astype(np.uint8)) and first.box.tolist() == [20, 30, 40, 25]
    assert tracker.init_info == {"message": "a message", "requested": "auto", "score": 0.5, "method": "grabcut"}
    monkeypatch.setattr(tracker, "_box_to_mask", method(np.zeros((96, 128), bool)))
    first = tracker.init(frames[0], [20, 30, 40, 25])
    assert np.array_equal(first.labels, box_to_mask([20, 30, 40, 25], (96, 128)).astype(np.uint8))
    assert tracker.init_info["fallback"] == "empty init mask: used the filled box"
    assert tracker.init_info["method"] == "grabcut" and tracker.describe()["init"] == tracker.init_info


def test_the_state_holds_the_clipped_start_box_and_is_refused_after_a_failed_start(tracker):
    tracker.init(_frames(1)[0], [1, 1, 500, 500])  # clipped to the frame
    assert tracker.state()["boxes"] == {1: [1.0, 1.0, 127.0, 95.0]}
    with pytest.raises(InputError, match="outside"):
        tracker.init(_frames(1)[0], [500, 500, 5, 5])
    with pytest.raises(RuntimeError, match=r"init\(\) must be called .* before state\(\)"):
        tracker.state()


def test_random_weights_and_a_checkpoint_exclude_each_other(tmp_path):
    ckpt = official_checkpoint(tmp_path / "tiny.pth")
    with pytest.raises(InputError, match="--random-weights and --checkpoint exclude each other"):
        Tracker(TrackerConfig(model=TINY, checkpoint=str(ckpt), random_weights=True, device="cpu"))


def test_a_checkpoint_of_the_parent_family_is_recorded_as_a_partial_start(tmp_path):
    """An MSDeAOT started from a DeAOT checkpoint tracks with untrained parts: run.json says which."""
    ckpt = official_checkpoint(tmp_path / "deaot.pth")
    record = Tracker(TrackerConfig(model="test_msdeaot_tiny", checkpoint=str(ckpt), device="cpu",
                                   init=InitConfig(method="box"))).describe()
    assert record["model"] == "test_msdeaot_tiny" and record["partial_init"]["new"]
    assert record["partial_init"]["loaded"] > 0
    new = ", ".join(record["partial_init"]["new"])
    assert record["notes"] == [f"test_msdeaot_tiny initialised from a deaot checkpoint: new (untrained) parts {new}"]
    plain = Tracker(TrackerConfig(model=TINY, checkpoint=str(ckpt), device="cpu", init=InitConfig(method="box")))
    assert plain.describe()["partial_init"] is None and plain.describe()["notes"] == []


def test_tracker_identity_holds_the_checkpoints_of_the_init_and_the_refiner_by_content(tmp_path):
    """A changed SAM or HQ-SAM file is another tracker, a renamed one the same; the init networks' files count
    only for an init method that loads them."""
    from trek_tracker.files import sha256_of
    from trek_tracker.init.refine import RefineConfig
    from trek_tracker.pipeline import tracker_identity

    (tmp_path / "a.pth").write_bytes(b"weights a")
    (tmp_path / "renamed.pth").write_bytes(b"weights a")
    (tmp_path / "b.pth").write_bytes(b"weights b")

    def identity(refine=None, sam=None, method="sam"):
        return tracker_identity(TrackerConfig(
            model=TINY, random_weights=True, init=InitConfig(method=method, sam_checkpoint=sam and str(tmp_path / sam)),
            refine=RefineConfig(checkpoint=refine and str(tmp_path / refine))), "cpu")["checkpoint_sha256"]

    for key in ("refine", "sam"):
        assert identity(**{key: "a.pth"}) == [sha256_of(tmp_path / "a.pth")] != identity(**{key: "b.pth"})
        assert identity(**{key: "renamed.pth"}) == identity(**{key: "a.pth"})
    assert identity(sam="a.pth", refine="b.pth") == [sha256_of(tmp_path / "a.pth"), sha256_of(tmp_path / "b.pth")]
    assert identity(sam="a.pth", method="grabcut") == identity(sam="a.pth", method="box") == []


def test_the_recorded_network_input_size_is_the_unscaled_views(tracker, tmp_path):
    """With test-time augmentation run.json records the network input of the first (unscaled) view."""
    frames = _frames(1)
    tracker.init(frames[0], [20, 30, 40, 25])
    ckpt = official_checkpoint(tmp_path / "tiny.pth")
    tta = Tracker(TrackerConfig(model=TINY, checkpoint=str(ckpt), device="cpu", init=InitConfig(method="box"),
                                max_long_edge=128, tta=TTAConfig(scales=(1.0, 0.5))))
    tta.init(frames[0], [20, 30, 40, 25])
    assert tta.describe()["network_input_size"] == tracker.describe()["network_input_size"]
    assert [v["scale"] for v in tta.describe()["tta"]["views"]] == [1.0, 0.5]


@pytest.mark.parametrize("shape,dtype", [((96, 128), np.uint8), ((96, 128, 4), np.uint8), ((96, 128, 3), np.uint16)])
def test_frames_that_are_not_rgb_uint8_are_refused_by_name(tracker, shape, dtype):
    frames = _frames()
    with pytest.raises(InputError, match=rf"RGB uint8 .* got {np.dtype(dtype)} \({', '.join(map(str, shape))}"):
        tracker.init(np.zeros(shape, dtype), [20, 30, 40, 25])
    tracker.init(frames[0], [20, 30, 40, 25])
    with pytest.raises(InputError, match="RGB uint8"):
        tracker.update(np.zeros(shape, dtype))
    assert tracker.update(frames[1]).shape == (4,)  # a refused frame leaves the video where it was


def test_pil_frames_of_other_modes_track_as_the_frame_readers_read_them(tracker):
    """A grey or 16-bit PIL image is tracked as its 8-bit RGB conversion (16-bit values scaled, not clipped)."""
    grey = [f[..., 1] for f in _frames()]
    rgb = [np.repeat(g[..., None], 3, axis=2) for g in grey]
    expected = _run(tracker, rgb)
    tracker.init(Image.fromarray(grey[0], "L"), [20, 30, 40, 25])
    r = tracker.step(Image.fromarray(grey[1].astype(np.uint16) << 8))  # 16-bit
    assert np.array_equal(r.labels, expected[0][0]) and r.box.tolist() == expected[0][1][1]
    r = tracker.step(Image.fromarray(grey[2], "L"))
    assert np.array_equal(r.labels, expected[1][0]) and r.box.tolist() == expected[1][1][1]


def test_the_init_details_are_those_of_the_latest_start(tracker):
    labels = np.zeros((96, 128), np.uint8)
    labels[10:20, 10:30] = 1
    tracker.init(_frames(1)[0], mask=labels)
    assert tracker.describe()["init"] == {"requested": "mask", "method": "mask"}
    tracker.init(_frames(1)[0], [20, 30, 40, 25])
    assert tracker.describe()["init"] == {"requested": "box", "method": "box"}


def test_a_settings_mapping_may_hold_its_sections_as_configs_or_as_mappings():
    from trek_tracker.init.fusion import FusionConfig

    fusion = FusionConfig(fusion_lambda=0.3, min_fill=0.1)
    expected = TrackerConfig(init=InitConfig(method="fused", fusion=fusion))
    assert TrackerConfig(init={"method": "fused", "fusion": fusion}) == expected
    assert TrackerConfig(init={"method": "fused", "fusion": {"fusion_lambda": 0.3, "min_fill": 0.1}}) == expected
    assert TrackerConfig(init=InitConfig(method="fused", fusion=fusion), memory={"gap": 2}).init.fusion is fusion


def test_the_python_apis_defaults_are_the_commands():
    """`TrackerConfig()` tracks as `trek-track run` without tracker options does."""
    import click

    from trek_tracker.cli.options import tracker_config_from_options, tracker_options

    given = {}

    @click.command()
    @tracker_options
    def command(**options):
        given.update(options)

    command.main([], standalone_mode=False)
    assert TrackerConfig() == tracker_config_from_options(**given)


@pytest.mark.parametrize("weights,recorded", [(None, [1.0, 1.0]), ((1.0, 2.0), [1.0, 2.0])])
def test_an_ensemble_is_described_by_its_first_member_then_every_member(tmp_path, weights, recorded):
    first = official_checkpoint(tmp_path / "first.pth")
    second = official_checkpoint(tmp_path / "second.pth")
    pair = Tracker(TrackerConfig(model=TINY, checkpoint=str(first), device="cpu", init=InitConfig(method="box"),
                                 ensemble=EnsembleConfig(members=(ModelSpec(TINY, str(second)),), weights=weights)))
    record = pair.describe()
    assert pair.loaded is pair.members[0] and record["checkpoint"] == str(first)
    assert [m["checkpoint"] for m in record["ensemble"]["members"]] == [str(first), str(second)]
    assert record["ensemble"]["weights"] == recorded


def test_random_weights_without_a_model_are_the_default_models():
    from trek_tracker.pipeline import DEFAULT_MODEL

    tracker = Tracker(TrackerConfig(random_weights=True, device="cpu", init=InitConfig(method="box")))
    assert tracker.describe()["model"] == DEFAULT_MODEL and tracker.name == f"trek-track-{DEFAULT_MODEL}"


def test_a_tracker_computes_in_its_precision():
    """A bf16 tracker's frames are those of the engine run in bf16 (not float32 with bf16 weights): the same
    model lent to an fp32 and a bf16 tracker gives each the output of the engine of its precision."""
    import torch

    from trek_tracker.inference.engine import EngineConfig, VOSEngine
    from trek_tracker.inference.preprocess import Frame
    from trek_tracker.modeling.registry import build_model
    from trek_tracker.pipeline import LoadedModel

    torch.manual_seed(0)
    model = build_model(TINY).eval()
    frames = _frames()
    labels = np.zeros((96, 128), np.uint8)
    labels[30:55, 20:60] = 1
    probs = {}
    for precision in ("fp32", "bf16"):
        tracker = Tracker(TrackerConfig(precision=precision, max_long_edge=128, init=InitConfig(method="box")),
                          loaded=LoadedModel(model, TINY, None, None, torch.device("cpu")))
        tracker.init(frames[0], mask=labels)
        probs[precision] = tracker.step(frames[1], keep_probs=True).probs
        engine = VOSEngine(model, EngineConfig(max_long_edge=128, memory=tracker.config.memory, precision=precision))
        engine.add_reference(Frame(frames[0]), labels)
        assert torch.equal(probs[precision], engine.step(Frame(frames[1])).probs)
    assert not torch.equal(probs["fp32"], probs["bf16"])


def test_an_init_mask_may_hold_every_id_a_byte_holds():
    from trek_tracker.pipeline import check_label_map

    ids = np.arange(256, dtype=np.int64).reshape(16, 16)
    assert np.array_equal(check_label_map(ids, (16, 16)), ids.astype(np.uint8))
    with pytest.raises(InputError, match=r"0\.\.255, got 1\.\.256"):
        check_label_map(ids + 1, (16, 16))


def test_the_refiner_is_loaded_on_the_trackers_device_with_the_configured_iou(tracker, monkeypatch):
    from trek_tracker.init.refine import HQSamRefiner, RefineConfig

    loads = []
    monkeypatch.setattr(HQSamRefiner, "from_checkpoint", classmethod(lambda cls, *args, **kw: loads.append((args, kw))))
    Tracker(TrackerConfig(init=InitConfig(method="box"), refine=RefineConfig(checkpoint="hq.pth", min_iou=0.37)),
            loaded=tracker.loaded)
    assert loads == [(("hq.pth",), {"device": "cpu", "iou_threshold": 0.37})]


def test_an_ensembles_first_frame_is_the_weighted_mean_of_its_members_alone(tmp_path):
    """Each member predicts the first frame after the start from the start alone: the ensemble's probabilities
    are the weighted mean of those of each member tracking by itself."""
    import torch

    from trek_tracker.inference.ensemble import average_probs

    first = official_checkpoint(tmp_path / "first.pth")
    other = torch.load(first, weights_only=False)
    other["state_dict"] = {k: v * 1.1 if v.is_floating_point() else v for k, v in other["state_dict"].items()}
    torch.save(other, tmp_path / "second.pth")
    frames = _frames(2)

    def probs(checkpoint, **settings):
        tracker = Tracker(TrackerConfig(model=TINY, checkpoint=str(checkpoint), device="cpu", max_long_edge=128,
                                        init=InitConfig(method="box"), **settings))
        tracker.init(frames[0], [20, 30, 40, 25])
        return tracker.step(frames[1], keep_probs=True).probs

    alone = [probs(first), probs(tmp_path / "second.pth")]
    assert not torch.equal(*alone)
    ensemble = probs(first, ensemble=EnsembleConfig(members=(ModelSpec(TINY, str(tmp_path / "second.pth")),),
                                                    weights=(1.0, 2.0)))
    torch.testing.assert_close(ensemble, average_probs(alone, [1.0, 2.0]), rtol=0, atol=1e-6)
