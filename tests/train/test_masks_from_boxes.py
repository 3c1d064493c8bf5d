"""Box tracks -> masks with our box -> mask stage (a tiny seeded SAM, no download), read back for training."""

from __future__ import annotations

import hashlib
import json
import sys
import time

import numpy as np
import pytest
from PIL import Image

from tests.init.test_sam import tiny_sam
from tests.train import replicas
from trek_tracker.errors import CheckpointError, InputError
from trek_tracker.init.api import BoxToMask, InitConfig
from trek_tracker.train import datasets
from trek_tracker.train.augment import AugmentConfig
from trek_tracker.train.data import ClipDataset
from trek_tracker.train.datasets.base import read_label
from trek_tracker.train.datasets.source import DataSource
from trek_tracker.train.masks_from_boxes import MaskJob, make_masks


@pytest.fixture(scope="module")
def sam():
    pytest.importorskip("segment_anything")
    return tiny_sam()


def _quiet(_msg: str) -> None:
    pass


def test_tiny_sam_masks_make_a_dataset_the_trainer_reads(davis, tmp_path, sam):
    truth = replicas.lasot(davis, tmp_path / "LaSOT")
    out = tmp_path / "masks"
    calls = []

    class Counting(BoxToMask):
        def __call__(self, image, box):
            calls.append(tuple(box))
            return super().__call__(image, box)

    job = MaskJob("lasot", str(tmp_path / "LaSOT"), str(out), method="sam", every=2)
    stats = make_masks(job, Counting(InitConfig(method="sam"), sam_model=sam), progress=False, log=_quiet)
    # bird-1: visible frames 0, 1, 3 -> every 2nd: 0, 3; dog-2: 0, 1, 2, 3 -> 0, 2
    assert stats["masks_written"] == 4 and len(calls) == 4
    written = sorted(p.relative_to(out).as_posix() for p in (out / "Annotations").rglob("*.png"))
    assert written == ["Annotations/bird-1/00000001.png", "Annotations/bird-1/00000004.png",
                       "Annotations/dog-2/00000001.png", "Annotations/dog-2/00000003.png"]
    for path in (out / "Annotations").rglob("*.png"):
        label = read_label(path)
        assert label.shape == (72, 128) and set(np.unique(label)) <= {0, 1}
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["method"] == "sam" and manifest["every"] == 2 and manifest["kind"] == "lasot"
    assert manifest["checkpoints"] == []  # the network was handed over, not loaded from a file
    done = json.loads((out / "done" / "bird-1.json").read_text())
    # The record says what each mask really came from: an untrained SAM's masks fail the fusion's sanity
    # checks, so its masks fall back to the box, and the record counts that.
    assert done["masks"] == 2 and sum(done["methods_used"].values()) == 2
    assert stats["fallbacks"] == 4 - sum(json.loads(p.read_text())["methods_used"].get("sam", 0)
                                         for p in (out / "done").glob("*.json"))

    # Resumable: a finished sequence is skipped, a missing mask of an unfinished one is redone.
    (out / "done" / "dog-2.json").unlink()
    (out / "Annotations" / "dog-2" / "00000003.png").unlink()
    calls.clear()
    again = make_masks(job, Counting(InitConfig(method="sam"), sam_model=sam), progress=False, log=_quiet)
    assert again["done_before"] == 1 and again["masks_written"] == 1 and again["masks_kept"] == 1
    assert calls == [tuple(truth["dog-2"]["boxes"][2])]

    # Other settings into the same folder are refused.
    with pytest.raises(InputError, match="other settings"):
        make_masks(MaskJob("lasot", str(tmp_path / "LaSOT"), str(out), method="sam", every=1),
                   BoxToMask(InitConfig(method="sam"), sam_model=sam), progress=False, log=_quiet)

    # The training reader takes the images from LaSOT and the masks from the new folder.
    src = DataSource(str(tmp_path / "LaSOT"), kind="lasot", mask_root=str(out))
    videos = {v.name: v for v in datasets.list_items(src)}
    assert videos["bird-1"].numbers == [1, 4] and videos["dog-2"].numbers == [1, 3]
    ds = ClipDataset([src], length=3, augment=AugmentConfig(crop=(49, 49), short_edge=60, min_object_pixels=1),
                     merge_p=0.0, seed=0)
    sample = ds[0]
    assert sample["images"].shape == (3, 3, 49, 49)


def test_shards_split_the_sequences_and_box_masks_match_the_boxes(davis, tmp_path):
    truth = replicas.lasot(davis, tmp_path / "LaSOT")
    out = tmp_path / "masks"
    for i in range(2):
        job = MaskJob("lasot", str(tmp_path / "LaSOT"), str(out), method="box", shard=(i, 2))
        stats = make_masks(job, BoxToMask(InitConfig(method="box")), progress=False, log=_quiet)
        assert stats["sequences"] == 1
    for name, want in truth.items():
        masks = sorted((out / "Annotations" / name).glob("*.png"))
        assert len(masks) == sum(want["visible"])
        first = read_label(masks[0]) > 0
        ys, xs = np.nonzero(first)
        box = want["boxes"][0]
        assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (box[0], box[1], box[0] + box[2], box[1] + box[3])
    with pytest.raises(InputError, match="box-track"):
        make_masks(MaskJob("davis", str(tmp_path), str(out)), BoxToMask(InitConfig(method="box")),
                   progress=False, log=_quiet)


def test_a_box_outside_its_frame_is_skipped_with_a_warning_and_the_job_finishes(davis, tmp_path):
    """One wrong box in a dataset of thousands must not stop the job for good (a rerun would meet it
    again): that frame gets no mask, as a sparse annotation, and the job says so."""
    replicas.lasot(davis, tmp_path / "LaSOT")
    gt = tmp_path / "LaSOT" / "dog" / "dog-2" / "groundtruth.txt"
    rows = gt.read_text().splitlines()
    rows[1] = "5000,5000,10,10"  # wholly outside the frame, yet marked visible
    gt.write_text("\n".join(rows) + "\n")
    said: list[str] = []
    stats = make_masks(MaskJob("lasot", str(tmp_path / "LaSOT"), str(tmp_path / "masks"), method="box"),
                       BoxToMask(InitConfig(method="box")), progress=False, log=said.append)
    assert stats["boxes_skipped"] == 1 and stats["masks_written"] == 3 + 3
    assert any("dog-2 frame 1" in s and "outside" in s for s in said) and "1 boxes skipped" in said[-1]
    done = json.loads((tmp_path / "masks" / "done" / "dog-2.json").read_text())
    assert [s["frame"] for s in done["skipped"]] == [1]
    assert len(list((tmp_path / "masks" / "Annotations" / "dog-2").glob("*.png"))) == 3


def _box_job(tmp_path, **kw) -> MaskJob:
    return MaskJob("lasot", str(tmp_path / "LaSOT"), str(tmp_path / "masks"), method="box", **kw)


def test_masks_are_palette_pngs_in_the_davis_colours(davis, tmp_path):
    replicas.lasot(davis, tmp_path / "LaSOT")
    make_masks(_box_job(tmp_path), BoxToMask(InitConfig(method="box")), progress=False, log=_quiet)
    for path in (tmp_path / "masks" / "Annotations").rglob("*.png"):
        with Image.open(path) as im:
            assert im.mode == "P" and im.getpalette()[:6] == replicas.PALETTE[:6]  # black, DAVIS object 1


def test_a_done_record_counts_the_frames_and_masks_and_times_the_sequence(davis, tmp_path):
    truth = replicas.lasot(davis, tmp_path / "LaSOT")
    t0 = time.perf_counter()
    make_masks(_box_job(tmp_path), BoxToMask(InitConfig(method="box")), progress=False, log=_quiet)
    elapsed = time.perf_counter() - t0
    for name, want in truth.items():
        done = json.loads((tmp_path / "masks" / "done" / f"{name}.json").read_text())
        visible = sum(want["visible"])
        assert done["frames"] == len(want["visible"]) and done["masks"] == done["written_now"] == visible
        assert done["methods_used"] == {"box": visible} and 0 <= done["seconds"] <= elapsed


def test_the_manifest_names_checkpoints_by_file_and_hash_and_a_rerun_may_find_the_same_weights_elsewhere(
        davis, tmp_path, monkeypatch):
    """The weights are recorded by resolved path and sha256 (not as the option was spelt), and compared by
    content: a rerun naming the same file by another path, or a copy of it elsewhere, resumes; other weights in
    that file are refused."""
    replicas.lasot(davis, tmp_path / "LaSOT")
    weights = tmp_path / "weights" / "sam.pth"
    weights.parent.mkdir()
    weights.write_bytes(b"stand-in SAM weights, recorded but never loaded")
    monkeypatch.chdir(tmp_path)

    def box_naming(checkpoint: str) -> BoxToMask:
        return BoxToMask(InitConfig(method="box", sam_checkpoint=checkpoint))

    make_masks(_box_job(tmp_path), box_naming("weights/sam.pth"), progress=False, log=_quiet)
    manifest = json.loads((tmp_path / "masks" / "manifest.json").read_text())
    assert manifest["checkpoints"] == [{"role": "sam", "path": str(weights.resolve()),
                                        "sha256": hashlib.sha256(weights.read_bytes()).hexdigest()}]
    assert not {"sam_checkpoint", "ar_checkpoint", "method"} & set(manifest["params"])
    (tmp_path / "masks" / "done" / "dog-2.json").unlink()
    again = make_masks(_box_job(tmp_path), box_naming(str(weights)), progress=False, log=_quiet)
    assert again["done_before"] == 1 and again["masks_kept"] == 4
    # the same weights elsewhere (another machine's cache): a shard writing beside the first resumes it too
    copy = tmp_path / "elsewhere" / "sam.pth"
    copy.parent.mkdir()
    copy.write_bytes(weights.read_bytes())
    (tmp_path / "masks" / "done" / "dog-2.json").unlink()
    moved = make_masks(_box_job(tmp_path), box_naming(str(copy)), progress=False, log=_quiet)
    assert moved["done_before"] == 1 and moved["masks_kept"] == 4
    assert json.loads((tmp_path / "masks" / "manifest.json").read_text()) == manifest  # the first writer's record
    weights.write_bytes(b"other weights")
    with pytest.raises(InputError, match=r"\(checkpoints differ\)"):
        make_masks(_box_job(tmp_path), box_naming(str(weights)), progress=False, log=_quiet)


@pytest.mark.parametrize("settings", [{"every": 0}, {"shard": (2, 2)}, {"shard": (-1, 2)}, {"shard": (0, 0)}])
def test_a_bad_every_or_shard_is_refused_before_anything_is_written(davis, tmp_path, settings):
    replicas.lasot(davis, tmp_path / "LaSOT")
    with pytest.raises(InputError, match="--every|bad shard"):
        make_masks(_box_job(tmp_path, **settings), BoxToMask(InitConfig(method="box")), progress=False, log=_quiet)
    assert not (tmp_path / "masks").exists()


def test_the_progress_bar_counts_the_shards_sequences_and_extra_manifest_fields_are_recorded(davis, tmp_path,
                                                                                             capsys):
    replicas.lasot(davis, tmp_path / "LaSOT")
    make_masks(_box_job(tmp_path), BoxToMask(InitConfig(method="box")), manifest_extra={"note": "for the test"},
               log=lambda line: print(line, file=sys.stderr))
    err = capsys.readouterr().err
    assert "masks 0/1" in err and "2/2" in err  # the shard's two sequences, each counted once done
    assert "\nlasot shard 0/1: 2 sequences" in err  # the bar is closed before the summary: a line of its own
    assert json.loads((tmp_path / "masks" / "manifest.json").read_text())["note"] == "for the test"


def test_split_sequences_and_max_sequences_choose_the_sequences_masked(davis, tmp_path):
    replicas.lasot(davis, tmp_path / "LaSOT")
    (tmp_path / "LaSOT" / "training_set.txt").write_text("dog-2\n")
    (tmp_path / "LaSOT" / "testing_set.txt").write_text("bird-1\n")
    masked = {}
    for name, settings in (("split", {"split": "test"}), ("sequences", {"sequences": ["dog-2"]}),
                           ("max_sequences", {"max_sequences": 1})):
        out = tmp_path / name
        job = MaskJob("lasot", str(tmp_path / "LaSOT"), str(out), method="box", **settings)
        make_masks(job, BoxToMask(InitConfig(method="box")), progress=False, log=_quiet)
        masked[name] = sorted(p.stem for p in (out / "done").glob("*.json"))
        assert sorted(p.name for p in (out / "Annotations").iterdir()) == masked[name]
    assert masked["split"] == ["bird-1"] and masked["sequences"] == ["dog-2"]
    assert len(masked["max_sequences"]) == 1


def test_a_checkpoint_of_another_family_is_refused_before_anything_is_written(davis, tmp_path, monkeypatch):
    monkeypatch.setenv("TREK_TRACK_HOME", str(tmp_path / "home"))  # nothing downloaded
    replicas.lasot(davis, tmp_path / "LaSOT")
    with pytest.raises(CheckpointError, match="alpha_refine checkpoint .*not sam"):
        make_masks(_box_job(tmp_path), BoxToMask(InitConfig(method="box", sam_checkpoint="ar_seg384")),
                   progress=False, log=_quiet)
    assert not (tmp_path / "masks").exists()


def test_masks_that_fell_back_to_another_method_are_counted_and_said(davis, tmp_path):
    """A stage asked for SAM masks that yields box masks (as the fusion's sanity checks make it do) has each
    of them counted, in the stats, the done records and the summary line; a run without one says nothing."""
    truth = replicas.lasot(davis, tmp_path / "LaSOT")
    visible = sum(sum(t["visible"]) for t in truth.values())
    said: list[str] = []
    stats = make_masks(MaskJob("lasot", str(tmp_path / "LaSOT"), str(tmp_path / "masks"), method="sam"),
                       BoxToMask(InitConfig(method="box")), progress=False, log=said.append)
    assert stats["fallbacks"] == visible and f"{visible} fell back to another method" in said[-1]
    assert json.loads((tmp_path / "masks" / "done" / "bird-1.json").read_text())["methods_used"] == {"box": 3}
    plain = make_masks(MaskJob("lasot", str(tmp_path / "LaSOT"), str(tmp_path / "plain"), method="box"),
                       BoxToMask(InitConfig(method="box")), progress=False, log=said.append)
    assert plain["fallbacks"] == 0 and "fell back" not in said[-1] and said[-1].startswith("lasot shard 0/1")
