"""Box tracks -> masks with our box -> mask stage (a tiny seeded SAM, no download), read back for training."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.init.test_sam import tiny_sam
from tests.train import replicas
from trek_tracker.errors import InputError
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
