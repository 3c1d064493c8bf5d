"""Every reader on a tiny replica of its published layout (tests/train/replicas.py): the masks, ids, names
and frame numbers it was given come back; clips sample among annotated frames; problems are reported."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from PIL import Image

from tests.train import replicas
from trek_tracker.errors import InputError
from trek_tracker.train import datasets
from trek_tracker.train.augment import AugmentConfig
from trek_tracker.train.data import ClipDataset
from trek_tracker.train.datasets.check import check_dataset
from trek_tracker.train.datasets.source import DataSource

TINY = AugmentConfig(crop=(49, 49), short_edge=60, min_object_pixels=5)


def _videos(kind: str, root, **kw) -> dict:
    return {v.name: v for v in datasets.list_items(DataSource(str(root), kind=kind, **kw))}


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max(1, (a | b).sum()))


def test_davis2017_split_lists_masks_and_ids(davis, tmp_path):
    truth = replicas.davis2017(davis, tmp_path)
    train = _videos("davis", tmp_path)
    assert sorted(train) == ["blackswan", "dog"]  # ImageSets/2017/train.txt
    assert sorted(_videos("davis", tmp_path, split="val")) == ["car-shadow"]
    v = train["dog"]
    assert v.numbers == [0, 1, 2, 3]
    for i in range(4):
        assert np.array_equal(v.label(i), truth["dog"][i])
        assert v.image(i).shape == (72, 128, 3)
    assert sorted(_videos("davis", tmp_path, exclude=["dog"])) == ["blackswan"]
    with pytest.raises(InputError, match="test-dev"):
        _videos("davis", tmp_path, split="test-dev")


def test_youtubevos_reads_meta_and_sparse_frames(davis, tmp_path):
    truth = replicas.youtubevos(davis, tmp_path)
    v = _videos("youtubevos", tmp_path)["vid0"]
    # Only annotated frames, with their real numbers (every 5th), the unannotated ones left out.
    assert v.numbers == truth["numbers"]
    assert [v.label(i).max() for i in range(4)] == [1, 2, 1, 1]
    assert np.array_equal(v.label(1), truth["vid0"][1])
    # Sampling among annotated frames: every clip's frames are annotated frames with real gaps of 5 to 15.
    ds = ClipDataset([DataSource(str(tmp_path), kind="youtubevos", max_gap=3)], length=3, augment=TINY,
                     merge_p=0.0, seed=0)
    for g in range(6):
        numbers = ds.sample(g)[3]["frames"]
        assert set(numbers) <= set(truth["numbers"])
        gaps = np.abs(np.diff(numbers))
        assert ((gaps >= 5) & (gaps <= 15)).all(), numbers


def test_mose_and_generic_folder(davis, tmp_path):
    truth = replicas.mose(davis, tmp_path)
    v = _videos("mose", tmp_path)["m1"]
    assert v.numbers == list(range(5)) and np.array_equal(v.label(4), truth["m1"][4])
    assert sorted(_videos("video", tmp_path / "train")) == ["m1"]


def test_visor_sparse_json_polygons_zip_and_frame_numbers(davis, tmp_path):
    truth = replicas.visor(davis, tmp_path)
    videos = _videos("visor", tmp_path)
    assert sorted(videos) == ["P01_01_seq_00001", "P01_01_seq_00002"]
    v = videos["P01_01_seq_00001"]
    assert v.numbers == replicas.VISOR_NUMBERS  # sorted by frame, although the JSON lists them backwards
    for i, want in enumerate(truth["P01_01_seq_00001"]):
        got = v.label(i)
        assert got.shape == want.shape
        # ids by sorted entity name: bird 1, pan 2; polygons refill the masks they came from
        for obj in (1, 2):
            assert _iou(got == obj, want == obj) > 0.9, (i, obj)
        assert v.image(i).shape == (72, 128, 3)  # read from the zip
    # Clips: annotated frames only, their real numbers (gaps 30-90 here), never an invented frame
    ds = ClipDataset([DataSource(str(tmp_path), kind="visor", sequences=["P01_01_seq_00001"])], length=3,
                     augment=TINY, merge_p=0.0, seed=1)
    seen = set()
    for g in range(8):
        meta = ds.sample(g)[3]
        assert meta["item"] == "P01_01_seq_00001" and set(meta["frames"]) <= set(replicas.VISOR_NUMBERS)
        seen.update(meta["frames"])
    assert len(seen) >= 3
    # A sub-sequence below the toolkit's minimum of annotated frames (3 in train) is left out.
    assert sorted(_videos("visor", tmp_path, options={"min_frames": 4})) == ["P01_01_seq_00001"]


def test_visor_unpacked_frames_and_toolkit_export(davis, tmp_path):
    replicas.visor(davis, tmp_path / "unpacked", zipped=False)
    assert len(_videos("visor", tmp_path / "unpacked")["P01_01_seq_00002"]) == 3
    truth = replicas.visor_export(davis, tmp_path / "export")
    v = _videos("visor", tmp_path / "export")["P01_01_seq_00001"]
    assert v.numbers == replicas.VISOR_NUMBERS
    assert np.array_equal(v.label(2), truth["P01_01_seq_00001"][2])


def test_vipseg_panoptic_values_and_clip_ids(davis, tmp_path):
    truth = replicas.vipseg(davis, tmp_path)
    v = _videos("vipseg", tmp_path)["12_abc"]
    assert np.array_equal(v.label(1), truth["12_abc"][1])  # 16-bit values as they are
    things = _videos("vipseg", tmp_path, options={"min_value": 1000})["12_abc"]
    assert set(np.unique(things.label(0))) <= {0, 1201, 3402}
    ds = ClipDataset([DataSource(str(tmp_path), kind="vipseg")], length=3, augment=TINY, merge_p=0.0, seed=0)
    frames, labels, n, _ = ds.sample(0)
    assert 1 <= n <= 3 and max(int(lb.max()) for lb in labels) == n  # values made consecutive per clip


@pytest.mark.parametrize("kind", ["lasot", "got10k", "egotracks"])
def test_box_tracks(davis, tmp_path, kind):
    truth = getattr(replicas, kind)(davis, tmp_path)
    tracks = {t.name: t for t in datasets.list_tracks(DataSource(str(tmp_path), kind=kind))}
    assert sorted(tracks) == sorted(truth)
    for name, want in truth.items():
        t = tracks[name]
        np.testing.assert_allclose(t.boxes, want["boxes"], atol=1e-3)
        if "visible" in want:
            assert t.visible.tolist() == want["visible"]
        if "numbers" in want:
            assert t.numbers == want["numbers"]
        assert t.numbers == sorted(t.numbers) and len(t.images) == len(t.boxes)
    with pytest.raises(InputError, match="mask_root"):
        datasets.list_items(DataSource(str(tmp_path), kind=kind))


def test_lasot_split_and_subset(davis, tmp_path):
    replicas.lasot(davis, tmp_path)
    src = DataSource(str(tmp_path), kind="lasot", split="train", max_sequences=1)
    picked = [t.name for t in datasets.list_tracks(src)]
    assert len(picked) == 1 and picked == [t.name for t in datasets.list_tracks(src)]  # a fixed subset
    assert datasets.list_tracks(DataSource(str(tmp_path), kind="lasot", split="test")) == []


def test_coco_instances(davis, tmp_path):
    pytest.importorskip("pycocotools")
    truth = replicas.coco(davis, tmp_path)
    items = {it.name: it for it in datasets.list_items(DataSource(str(tmp_path), kind="coco"))}
    assert sorted(items) == sorted(truth)
    for name, want in truth.items():
        got = items[name].label()
        # polygons through the outline's pixel centres: the interior exactly, the rim half-covered
        interior = cv2.erode((want == 1).astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
        assert (got[interior] == 1).all() and _iou(got == 1, want == 1) > 0.8
        assert np.array_equal(got == 2, want == 2)  # RLE, exact
        assert got.max() == 2  # the crowd is not an object


def test_voc_with_sbd(davis, tmp_path):
    truth = replicas.voc(davis, tmp_path, sbd=tmp_path / "benchmark_RELEASE")
    items = {it.name: it for it in datasets.list_items(DataSource(str(tmp_path), kind="voc"))}
    assert sorted(items) == ["2007_000032"]
    assert np.array_equal(items["2007_000032"].label(), truth["2007_000032"])  # void rims become background
    both = datasets.list_items(DataSource(str(tmp_path), kind="voc",
                                          options={"sbd": str(tmp_path / "benchmark_RELEASE")}))
    assert [it.name for it in both] == ["2007_000032", "2008_000002"]  # SBD adds only what VOC lacks
    assert np.array_equal(both[1].label(), truth["2008_000002"])


@pytest.mark.parametrize("kind", ["ecssd", "msra10k", "pascals"])
def test_saliency_sets(davis, tmp_path, kind):
    truth = replicas.saliency(davis, tmp_path, kind)
    items = {it.name: it for it in datasets.list_items(DataSource(str(tmp_path), kind=kind))}
    assert sorted(items) == sorted(truth)
    for name, want in truth.items():
        assert np.array_equal(items[name].label(), want)
    ds = ClipDataset([DataSource(str(tmp_path), kind=kind)], length=3, augment=TINY, merge_p=1.0, seed=0)
    assert ds[0]["images"].shape == (3, 3, 49, 49)


def test_check_finds_problems(davis, tmp_path):
    replicas.davis2017(davis, tmp_path)
    clean = check_dataset(DataSource(str(tmp_path), kind="davis"))
    assert clean.ok, clean.problems
    assert clean.counts["sequences"] == 2 and clean.counts["annotated frames"] == 8 and clean.counts["objects"] == 4
    ann = tmp_path / "Annotations" / "480p"
    (ann / "dog" / "00001.png").write_bytes(b"not a png")
    replicas.save_png(ann / "dog" / "00002.png", np.zeros((72, 128), np.int64))
    replicas.save_png(ann / "blackswan" / "00003.png", np.ones((70, 128), np.int64))
    (tmp_path / "JPEGImages" / "480p" / "blackswan" / "00001.jpg").unlink()
    replicas.save_png(ann / "blackswan" / "00009.png", np.full((72, 128), 3))
    report = check_dataset(DataSource(str(tmp_path), kind="davis"))
    text = "\n".join(report.problems)
    assert "dog/00001.png: unreadable mask" in text
    assert "dog/00002.png: empty mask" in text
    assert "blackswan/00003.png: mask is 128x70, its frame 128x72" in text
    assert "blackswan/00001.png: mask without a frame" in text
    assert "blackswan/00009.png: mask without a frame" in text
    assert "frame number(s) missing" in text  # blackswan now has frames 0, 2, 3
    assert len(report.problems) == 6, report.problems


def test_a_root_without_its_split_list_is_named_once(davis, tmp_path):
    """DAVIS 2017 needs ImageSets/2017/train.txt; the problem names the root once, not twice."""
    replicas.davis2017(davis, tmp_path)
    (tmp_path / "ImageSets" / "2017" / "train.txt").unlink()
    report = check_dataset(DataSource(str(tmp_path), kind="davis"))
    assert len(report.problems) == 1 and report.problems[0].count(str(tmp_path)) == 1, report.problems
    assert "split list" in report.problems[0]


def test_check_boxes_out_of_frame_and_bad_roots(davis, tmp_path):
    replicas.got10k(davis, tmp_path)
    assert check_dataset(DataSource(str(tmp_path), kind="got10k")).ok
    gt = tmp_path / "train" / "GOT-10k_Train_000001" / "groundtruth.txt"
    rows = gt.read_text().splitlines()
    rows[2] = "500,10,20,20"
    rows[3] = "nan,nan,nan,nan"
    gt.write_text("\n".join(rows))
    report = check_dataset(DataSource(str(tmp_path), kind="got10k"))
    assert len(report.problems) == 2, report.problems
    assert "lies outside the 128x72 frame" in report.problems[0] and "nan" in report.problems[1]
    bad = check_dataset(DataSource(str(tmp_path / "nowhere"), kind="mose"))
    assert len(bad.problems) == 1 and "not a MOSE root" in bad.problems[0]


def test_source_settings_are_checked(tmp_path):
    for bad in ({"kind": "lasott"}, {"options": "sbd"}, {"sequences": "dog"}, {"min_gap": 4, "max_gap": 2},
                {"weight": 0.0}, {"max_sequences": 0}):
        with pytest.raises(InputError):
            DataSource(str(tmp_path), **bad)


def test_wrong_or_partial_roots_are_one_line_input_errors(davis, tmp_path):
    with pytest.raises(InputError, match="not a GOT-10k split folder"):
        datasets.list_tracks(DataSource(str(tmp_path / "nowhere"), kind="got10k"))
    (tmp_path / "mose" / "train" / "JPEGImages" / "m1").mkdir(parents=True)  # annotations not unpacked
    with pytest.raises(InputError, match="Annotations/ is missing"):
        datasets.list_items(DataSource(str(tmp_path / "mose"), kind="mose"))
    # YouTube-VOS: meta.json names a video whose folders are absent: a partial download, not a smaller dataset
    replicas.youtubevos(davis, tmp_path / "ytb")
    meta = tmp_path / "ytb" / "train" / "meta.json"
    table = json.loads(meta.read_text())
    table["videos"]["vid1"] = table["videos"]["vid0"]
    meta.write_text(json.dumps(table))
    with pytest.raises(InputError, match="1 of the 2 videos .* e.g. vid1: the download is incomplete"):
        datasets.list_items(DataSource(str(tmp_path / "ytb"), kind="youtubevos"))
    assert sorted(_videos("youtubevos", tmp_path / "ytb", exclude=["vid1"])) == ["vid0"]


def test_pascals_graded_masks_are_one_object(davis, tmp_path):
    """PASCAL-S masks are graded (the share of subjects choosing each segment): one object above half scale,
    not one object per grey level."""
    replicas.saliency(davis, tmp_path, "pascals")
    graded = np.zeros((72, 128), np.uint8)
    graded[10:30, 10:40], graded[40:60, 50:90], graded[5:15, 100:120] = 255, 170, 85
    Image.fromarray(graded, mode="L").save(tmp_path / "datasets" / "masks" / "pascal" / "1.png")
    items = {it.name: it for it in datasets.list_items(DataSource(str(tmp_path), kind="pascals"))}
    np.testing.assert_array_equal(items["1"].label(), (graded >= 128).astype(np.int64))


def test_max_sequences_keeps_a_fixed_subset_for_every_kind(davis, tmp_path):
    replicas.davis2017(davis, tmp_path / "davis")
    replicas.saliency(davis, tmp_path / "ecssd", "ecssd")
    for kind, root in (("davis", tmp_path / "davis"), ("ecssd", tmp_path / "ecssd")):
        src = DataSource(str(root), kind=kind, max_sequences=1)
        picked = [it.name for it in datasets.list_items(src)]
        assert len(picked) == 1 and picked == [it.name for it in datasets.list_items(src)], kind


def test_egotracks_skips_the_clips_its_extraction_tool_skips(davis, tmp_path):
    """EgoTracks' frame extraction leaves out, whole, a clip where a box has no clip frame number or a query
    set has no lt_track: such a clip has no frames, and must neither crash the reader nor stop it."""
    truth = replicas.egotracks(davis, tmp_path)
    path = tmp_path / "egotracks_train.json"
    ann = json.loads(path.read_text())
    good = ann["videos"][0]["clips"][0]["annotations"][0]["query_sets"]["1"]
    no_number = dict(good, lt_track=[{"frame_number": 7, "x": 1, "y": 1, "width": 5, "height": 5}])
    ann["videos"][0]["clips"] += [
        {"exported_clip_uid": "clipB", "annotations": [{"query_sets": {"1": no_number}}]},
        {"exported_clip_uid": "clipC", "annotations": [{"query_sets": {"1": good, "2": {"is_valid": True}}}]}]
    path.write_text(json.dumps(ann))
    tracks = datasets.list_tracks(DataSource(str(tmp_path), kind="egotracks"))
    assert [t.name for t in tracks] == sorted(truth)


def test_generic_folder_frames_follow_their_numbers(davis, tmp_path):
    frames, labels = replicas.davis_frames(davis, "dog", 12)
    for i, (f, lb) in enumerate(zip(frames, labels, strict=True)):  # unpadded names: "10" sorts before "2"
        replicas.save_jpg(tmp_path / "JPEGImages" / "v" / f"{i}.jpg", f)
        replicas.save_png(tmp_path / "Annotations" / "v" / f"{i}.png", lb)
    v = _videos("video", tmp_path)["v"]
    assert v.numbers == list(range(12))
    assert np.array_equal(v.label(2), labels[2])


def test_got10k_full_occlusion_hides_the_target(davis, tmp_path):
    replicas.got10k(davis, tmp_path)
    (tmp_path / "train" / "GOT-10k_Train_000001" / "cover.label").write_text("8\n0\n0\n5\n")
    (track,) = datasets.list_tracks(DataSource(str(tmp_path), kind="got10k"))
    assert track.visible.tolist() == [True, False, False, True]  # frame 1 absent, frame 2 fully occluded


def test_scanning_a_dataset_shows_progress(davis, tmp_path, monkeypatch, capsys):
    from trek_tracker.train.datasets import base

    replicas.visor(davis, tmp_path / "visor")
    replicas.lasot(davis, tmp_path / "lasot")
    monkeypatch.setattr(base, "SCAN_PROGRESS", True)
    datasets.list_items(DataSource(str(tmp_path / "visor"), kind="visor"))
    datasets.list_tracks(DataSource(str(tmp_path / "lasot"), kind="lasot"))
    err = capsys.readouterr().err
    assert "VISOR train annotations" in err and "LaSOT sequences" in err
    monkeypatch.setattr(base, "SCAN_PROGRESS", None)  # the default: on a terminal only (not here)
    datasets.list_items(DataSource(str(tmp_path / "visor"), kind="visor"))
    assert "VISOR" not in capsys.readouterr().err
