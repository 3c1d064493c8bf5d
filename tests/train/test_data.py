"""Clip sampling and augmentation: label conventions, geometric consistency, determinism, sampling."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from PIL import Image

from trek_tracker.errors import InputError
from trek_tracker.train import data
from trek_tracker.train.augment import AugmentConfig, paste_clip, select_objects, static_clip
from trek_tracker.train.data import (
    ClipDataset,
    DataSource,
    StepSampler,
    compact_ids,
    id_permutation,
    read_label,
    sample_frame_indices,
    to_tensors,
)
from trek_tracker.train.datasets.base import StaticItem, VideoItem

TINY = AugmentConfig(crop=(97, 97), short_edge=120, min_object_pixels=20)


def test_read_label_conventions(tmp_path):
    binary = np.zeros((4, 4), np.uint8)
    binary[1:3, 1:3] = 255
    Image.fromarray(binary, mode="L").save(tmp_path / "bin.png")
    assert read_label(tmp_path / "bin.png").tolist() == (binary // 255).tolist()
    ids = np.array([[0, 1], [2, 3]], np.uint8)
    Image.fromarray(ids, mode="L").save(tmp_path / "ids.png")
    assert read_label(tmp_path / "ids.png").tolist() == ids.tolist()
    pal = Image.fromarray(np.array([[0, 2], [255, 1]], np.uint8), mode="P")
    pal.putpalette([0, 0, 0, 128, 0, 0, 0, 128, 0] + [255] * 759)
    pal.save(tmp_path / "pal.png")
    assert read_label(tmp_path / "pal.png").tolist() == [[0, 2], [0, 1]]  # 255 = void -> background


@pytest.mark.parametrize("n,length,gap", [(50, 5, 3), (50, 5, 12), (6, 5, 12), (5, 5, 3), (3, 5, 3)])
def test_sample_frame_indices(n, length, gap):
    rng = np.random.default_rng(0)
    seen_reversed = False
    gaps, frames = set(), set()
    for _ in range(50):
        idx = sample_frame_indices(n, length, gap, rng)
        assert len(idx) == length and all(0 <= i < n for i in idx)
        d = np.diff(idx)
        if d.sum() < 0:
            seen_reversed = True
            d = -d
        assert (d >= 0).all() and (d <= gap).all()
        if n >= length:
            assert (d >= 1).all()
        gaps |= set(d.tolist())
        frames |= set(idx)
    assert seen_reversed
    if n <= length:  # a video no longer than the clip: every one of its frames is used
        assert frames == set(range(n))
    if n >= length * gap:  # room for any gaps: every gap from 1 (the default min_gap) to max_gap is drawn
        assert gaps == set(range(1, gap + 1))


def test_gaps_are_at_least_min_gap_shrink_just_to_fit_and_every_start_and_direction_is_drawn():
    """Gaps in min_gap..max_gap (a min_gap above max_gap gives max_gap), shrunk no further than the video needs;
    the clip may start on any frame that leaves room for it, the first and the last included."""
    rng = np.random.default_rng(1)
    starts = set()
    for _ in range(1000):
        idx = sample_frame_indices(20, 3, 6, rng, min_gap=4)
        d = np.abs(np.diff(idx))
        assert ((d >= 4) & (d <= 6)).all() and np.sign(np.diff(idx)).tolist() in ([1, 1], [-1, -1])
        starts.add(min(idx))
        assert np.abs(np.diff(sample_frame_indices(20, 3, 2, rng, min_gap=5))).tolist() == [2, 2]
    assert starts == set(range(20 - 8))  # a span of 8 (gaps 4 + 4) fits from frame 0 up to frame 11
    spans = [abs(idx[-1] - idx[0]) for idx in (sample_frame_indices(6, 5, 12, rng) for _ in range(50))]
    assert spans.count(6 - 1) >= 45  # gaps too long for 6 frames shrink just until they fit: the whole video
    reversed_ = np.mean([np.diff(sample_frame_indices(50, 5, 3, rng))[0] < 0 for _ in range(2000)])
    assert abs(reversed_ - 0.5) < 4 * np.sqrt(0.25 / 2000)  # reversed with probability 0.5


def test_static_clips_follow_the_official_static_train():
    """Frame 0 is the image (perhaps flipped, as the whole clip is with p = 0.5) under a resized crop only;
    later frames get an affine each (and a flip of their own with p = 0.3); a crop covers at least 80 % of
    the image. A horizontal ramp shows it: frame 0's columns keep their order and its rows stay equal."""
    ramp = np.tile(np.linspace(0, 255, 200).astype(np.uint8)[None, :, None], (150, 1, 3))
    label = np.zeros((150, 200), np.int64)
    label[50:100, 60:140] = 1
    cfg = AugmentConfig(crop=(97, 97))
    flipped, later_moved = 0, 0
    for seed in range(40):
        frames, labels = static_clip(ramp, label, 3, np.random.default_rng(seed), cfg)
        first = frames[0][..., 0].astype(int)
        assert np.abs(first - first[:1]).max() <= 2  # no rotation or shear on frame 0
        steps = np.diff(first[48])
        assert (steps >= -2).all() or (steps <= 2).all()  # monotone: resized, maybe flipped, not warped
        flipped += int(first[48, 0] > first[48, -1])
        later_moved += int(np.abs(frames[1][..., 0].astype(int) - frames[1][:1, :, 0]).max() > 8)
        assert labels[0][48, 48] == 1  # the centre of a crop of 80 %+ of the image stays on the object
    assert 10 <= flipped <= 30 and later_moved >= 30  # about half the clips flipped; later frames warped


def test_static_clip_moves_mask_with_image():
    image = np.zeros((120, 160, 3), np.uint8)
    label = np.zeros((120, 160), np.int64)
    image[40:80, 50:110] = (255, 0, 0)
    label[40:80, 50:110] = 1
    frames, labels = static_clip(image, label, 4, np.random.default_rng(3), AugmentConfig(crop=(97, 129)))
    assert all(f.shape == (97, 129, 3) and lb.shape == (97, 129) for f, lb in zip(frames, labels, strict=True))
    assert not all(np.array_equal(labels[0], lb) for lb in labels[1:])  # each frame its own warp
    for f, lb in zip(frames, labels, strict=True):
        obj = lb == 1
        assert obj.sum() > 500
        red = (f[..., 0] > 128) & (f[..., 1] < 100)
        # The warped mask covers the warped red square up to its interpolated rim.
        assert (red & obj).sum() / obj.sum() > 0.9
        assert (red & ~obj).sum() / red.sum() < 0.1


def test_select_objects_renumbers_and_caps():
    lab = np.zeros((10, 40), np.int64)
    for k, obj in enumerate([3, 7, 9, 12]):
        lab[:, k * 10:k * 10 + 10] = obj
    lab[0, 0] = 5  # a one-pixel object: below the size floor
    later = np.full_like(lab, 5)
    cfg = AugmentConfig(max_objects=3, min_object_pixels=50)
    (first, second), n = select_objects([lab, later], np.random.default_rng(0), cfg)
    assert n == 3
    assert sorted(np.unique(first).tolist()) in ([0, 1, 2, 3],)
    assert (second == 0).all()  # object 5 was not selected in the reference frame


def test_paste_clip_shifts_ids_and_occludes():
    base = ([np.zeros((4, 4, 3), np.uint8)], [np.zeros((4, 4), np.int64)])
    base[1][0][:2] = 1
    other = ([np.full((4, 4, 3), 9, np.uint8)], [np.zeros((4, 4), np.int64)])
    other[1][0][:, :1] = 1
    frames, labels = paste_clip(base, other, max_objects=10)
    assert labels[0][:, 0].tolist() == [2, 2, 2, 2] and labels[0][0, 1] == 1
    assert (frames[0][:, 0] == 9).all() and (frames[0][:, 1:] == 0).all()


@pytest.fixture(scope="module")
def video_dataset(davis):
    return ClipDataset([DataSource(str(davis), sequences=["blackswan", "dog"], max_gap=3)], length=3,
                       augment=TINY, merge_p=0.5, seed=11)


def test_video_clips_shapes_and_determinism(video_dataset):
    a, b, c = video_dataset[5], video_dataset[5], video_dataset[6]
    assert a["images"].shape == (3, 3, 97, 97) and a["labels"].shape == (3, 97, 97)
    assert a["images"].dtype == torch.float32 and a["labels"].dtype == torch.int64
    assert torch.equal(a["images"], b["images"]) and torch.equal(a["labels"], b["labels"])
    assert not torch.equal(a["images"], c["images"])
    for g in range(8):
        s = video_dataset[g]
        n = int(s["num_objects"])
        assert 0 <= s["labels"].min() and s["labels"].max() <= n <= 10
        if n:  # the reference frame shows every kept object
            assert set(torch.unique(s["labels"][0]).tolist()) == set(range(n + 1))


def test_a_merge_takes_its_second_clip_from_another_item_of_the_same_source(davis):
    """The official dataset merges with another index of itself: never the same item, never another source."""
    sources = [DataSource(str(davis), sequences=["blackswan", "dog", "bmx-trees"], max_gap=3),
               DataSource(str(davis), sequences=["car-shadow"], max_gap=3)]
    ds = ClipDataset(sources, length=3, augment=TINY, merge_p=1.0, seed=3)
    seen = set()
    for g in range(40):
        rng = np.random.default_rng(g)
        s, k = ds.locate(g)
        partner = ds._merge_partner(s, k, rng)
        assert partner[0] == s and (partner[1] != k or len(ds.items[s]) == 1), (g, s, k, partner)
        seen.add(partner)
    assert {p for p in seen if p[0] == 0} == {(0, 0), (0, 1), (0, 2)} and seen - {(0, 0), (0, 1), (0, 2)} == {(1, 0)}


def test_epoch_covers_every_item_once(video_dataset):
    n = len(video_dataset)
    assert n == 2
    items = video_dataset.items[0]
    assert {items[video_dataset.locate(g)[1]].name for g in range(n)} == {"blackswan", "dog"}


def test_step_sampler_partitions_global_samples():
    single = list(StepSampler(4, num_micro=3))
    r0 = list(StepSampler(2, rank=0, world=2, num_micro=3))
    r1 = list(StepSampler(2, rank=1, world=2, num_micro=3))
    assert single == list(range(12))
    assert sorted(r0 + r1) == single and not set(r0) & set(r1)
    assert list(StepSampler(4, start_micro=2, num_micro=1)) == single[8:]


def test_bad_sources(tmp_path):
    with pytest.raises(InputError, match="layout"):
        ClipDataset([DataSource(str(tmp_path))])
    with pytest.raises(InputError, match="kind"):
        DataSource(str(tmp_path), kind="images")
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    with pytest.raises(InputError, match="no image/mask pairs"):
        ClipDataset([DataSource(str(tmp_path), kind="static")])


def test_compact_ids_renumbers_large_ids_consistently_and_leaves_small_ones():
    """Ids past 255 (panoptic, COCO) become 1..K in increasing order, the same number in every frame; labels
    whose ids all fit 8 bits are returned as they are."""
    a = np.array([[0, 70_000], [300, 3]], np.int64)
    b = np.array([[300, 0], [0, 70_000]], np.int64)
    out = compact_ids([a, b])
    assert out[0].tolist() == [[0, 3], [2, 1]] and out[1].tolist() == [[2, 0], [0, 3]]
    small = [np.array([[0, 7], [200, 255]], np.int64)]
    assert compact_ids(small)[0].tolist() == small[0].tolist()
    assert compact_ids([np.array([[0, 256], [1, 0]], np.int64)])[0].tolist() == [[0, 2], [1, 0]]  # 256: 9 bits
    many = np.arange(1, 301, dtype=np.int64).reshape(1, -1) * 1000  # 300 ids: the first 255 are kept
    (kept,) = compact_ids([many])
    assert kept[0, :255].tolist() == list(range(1, 256)) and not kept[0, 255:].any()


def test_id_permutation_keeps_background_and_permutes_the_rest():
    perms = [id_permutation(11, 0, g) for g in range(20)]
    for p in perms:
        assert p[0] == 0 and sorted(p.tolist()) == list(range(11))
    assert np.array_equal(perms[3], id_permutation(11, 0, 3))  # a pure function of (seed, g)
    assert len({tuple(p) for p in perms}) > 15 and not np.array_equal(perms[3], id_permutation(11, 1, 3))


def test_to_tensors_normalises_with_the_imagenet_statistics():
    frame = np.zeros((2, 3, 3), np.uint8)
    frame[0, 1] = (255, 0, 128)
    label = np.arange(6, dtype=np.int64).reshape(2, 3)
    images, labels = to_tensors([frame, frame], [label, label])
    assert images.shape == (2, 3, 2, 3) and images.dtype == torch.float32 and labels.shape == (2, 2, 3)
    expected = [(1 - 0.485) / 0.229, (0 - 0.456) / 0.224, (128 / 255 - 0.406) / 0.225]
    assert images[1, :, 0, 1].tolist() == pytest.approx(expected, rel=1e-5)
    assert images[0, :, 1, 2].tolist() == pytest.approx([-0.485 / 0.229, -0.456 / 0.224, -0.406 / 0.225], rel=1e-5)
    assert torch.equal(labels[1], torch.from_numpy(label))


def _video(folder, name: str, shows: list[bool], numbers: list[int] | None = None,
           where: tuple[slice, slice] = (slice(4, -4), slice(4, -4))) -> VideoItem:
    """A hand-made video of 40 x 48 noise frames whose label holds one object (id 1, on ``where``: all but a
    4-pixel rim unless given) in the frames where ``shows`` is true."""
    image = folder / f"{name}.png"
    Image.fromarray(np.random.default_rng(len(shows)).integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(image)
    obj = np.zeros((40, 48), np.int64)
    obj[where] = 1
    empty = np.zeros_like(obj)
    return VideoItem(name, [image] * len(shows), [(lambda lb=(obj if s else empty): lb.copy()) for s in shows],
                     numbers if numbers is not None else list(range(len(shows))))


def _dataset_of(monkeypatch, items: list[VideoItem], source: dict | None = None, **kw) -> ClipDataset:
    """A ClipDataset of one source (``source``: its DataSource settings) whose reader yields ``items``."""
    monkeypatch.setattr(data, "source_items", lambda src: items)
    kw.setdefault("augment", AugmentConfig(crop=(33, 33), short_edge=40, min_object_pixels=5))
    return ClipDataset([DataSource("hand-made", **{"kind": "davis", "max_gap": 3, **(source or {})})], **kw)


def test_the_reference_frame_is_redrawn_up_to_four_times_until_it_shows_an_object(tmp_path, monkeypatch):
    """Only the last of 10 annotated frames shows the object. A clip's frames (by their real numbers) are the
    first of up to 5 draws whose reference frame shows it, else the 5th draw."""
    shows = [False] * 9 + [True]
    item = _video(tmp_path, "late", shows, numbers=[3 * i + 2 for i in range(10)])
    ds = _dataset_of(monkeypatch, [item], length=3, merge_p=0.0, seed=5)
    draws_needed = []
    for g in range(80):
        rng = np.random.default_rng([5, g])  # the sample's own generator: the frames are drawn first
        draws = [sample_frame_indices(10, 3, 3, rng)]
        while not shows[draws[-1][0]] and len(draws) < 5:
            draws.append(sample_frame_indices(10, 3, 3, rng))
        assert ds.sample(g)[3]["frames"] == [item.numbers[i] for i in draws[-1]], g
        draws_needed.append(len(draws) if shows[draws[-1][0]] else None)
    assert set(draws_needed) == {1, 2, 3, 4, 5, None}  # found at every draw, and not at all


def test_with_merge_p_0_only_a_clip_without_objects_is_merged(tmp_path, monkeypatch):
    """The official obj_num == 0 rule: with merge_p = 0 the empty video's clips carry another video's object,
    and the other videos' clips keep just their own (with merge_p = 1 some clips show two objects)."""
    rows = slice(4, -4)
    items = [_video(tmp_path, "empty", [False] * 6), _video(tmp_path, "left", [True] * 5, where=(rows, slice(4, 20))),
             _video(tmp_path, "right", [True] * 4, where=(rows, slice(28, 44)))]
    counts = {}
    for merge_p in (0.0, 1.0):
        ds = _dataset_of(monkeypatch, items, length=3, merge_p=merge_p, seed=2)
        counts[merge_p] = [(meta["item"], n) for _, _, n, meta in map(ds.sample, range(9))]
    assert {item for item, _ in counts[0.0]} == {"empty", "left", "right"}
    assert all(n == 1 for _, n in counts[0.0]) and any(n == 2 for _, n in counts[1.0])


def test_a_static_clip_keeps_its_object_however_small(tmp_path, monkeypatch):
    """The official StaticTrain keeps every object of frame 0 (no 100-pixel floor, unlike a video clip):
    a 12 x 12 object of a 60 x 60 image, about 45 pixels at the 33 x 33 crop, is the clip's object."""
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (60, 60, 3), dtype=np.uint8)).save(tmp_path / "i.png")
    label = np.zeros((60, 60), np.int64)
    label[24:36, 24:36] = 1
    item = StaticItem("small", tmp_path / "i.png", label.copy)
    ds = _dataset_of(monkeypatch, [item], source={"kind": "static"}, length=3, merge_p=0.0,
                     augment=AugmentConfig(crop=(33, 33)))
    for g in range(4):
        _, labels, n, meta = ds.sample(g)
        assert n == 1 and 0 < (labels[0] == 1).sum() < 100
        assert meta["item"] == "small" and meta["frames"] == [0, 0, 0]  # every frame made from the one image


def test_a_sample_carries_its_id_permutation_without_changing_its_clip(tmp_path, monkeypatch):
    items = [_video(tmp_path, "a", [True] * 4), _video(tmp_path, "b", [True] * 4)]
    plain = _dataset_of(monkeypatch, items, length=3, seed=4)
    shuffled = _dataset_of(monkeypatch, items, length=3, seed=4, id_classes=11)
    for g in (0, 3):
        a, b = plain[g], shuffled[g]
        assert "id_perm" not in a and torch.equal(b["id_perm"], torch.from_numpy(id_permutation(11, 4, g)))
        assert torch.equal(a["images"], b["images"]) and torch.equal(a["labels"], b["labels"])


def test_a_clip_needs_two_frames_and_some_data_and_defaults_to_the_official_clip(tmp_path, monkeypatch):
    items = [_video(tmp_path, "a", [True] * 4)]
    with pytest.raises(InputError, match="at least 2"):
        _dataset_of(monkeypatch, items, length=1)
    pair = _dataset_of(monkeypatch, items, length=2)[0]
    assert pair["images"].shape[0] == 2 and pair["labels"].shape[0] == 2
    official = _dataset_of(monkeypatch, items, augment=None)  # DATA_SEQ_LEN = 5, the 465 x 465 crop
    assert official[0]["images"].shape == (5, 3, 465, 465) and official.merge_p == 0.3
    with pytest.raises(InputError, match="empty"):
        ClipDataset([])
    with pytest.raises(InputError, match="hand-made .davis. has no items"):
        _dataset_of(monkeypatch, [])


def test_an_epoch_is_every_item_times_its_sources_repeat(tmp_path, monkeypatch):
    items = [_video(tmp_path, name, [True] * 3) for name in ("a", "b", "c")]
    ds = _dataset_of(monkeypatch, items, source={"repeat": 2}, length=2)
    assert len(ds) == 6
    assert sorted(ds.locate(g)[1] for g in range(len(ds))) == [0, 0, 1, 1, 2, 2]


def test_a_step_sampler_has_the_length_of_its_micro_batches_and_an_endless_one_has_none():
    assert len(StepSampler(4, rank=1, world=2, start_micro=3, num_micro=5)) == 20
    # micro-batch 1 of rank 1 in a world of 2: the 4th group of 2 sample numbers, (1 x 2 + 1) x 2 = 6 on
    assert list(StepSampler(2, rank=1, world=2, start_micro=1, num_micro=1)) == [6, 7]
    endless = StepSampler(3)
    with pytest.raises(TypeError, match="endless"):
        len(endless)
    assert list(itertools.islice(endless, 10)) == list(range(10))
