"""Clip sampling and augmentation: label conventions, geometric consistency, determinism, sampling."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from trek_tracker.errors import InputError
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


@pytest.mark.parametrize("n,length,gap", [(50, 5, 3), (50, 5, 12), (6, 5, 12), (3, 5, 3)])
def test_sample_frame_indices(n, length, gap):
    rng = np.random.default_rng(0)
    seen_reversed = False
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
    assert seen_reversed


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
