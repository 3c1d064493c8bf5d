"""Dataset reader: official layout, order, checks with precise errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.eval.helpers import SYN_A, build_synthetic, write_sequence
from trek_tracker.errors import InputError
from trek_tracker.eval.dataset import Trek150, sequence_order_key


@pytest.fixture()
def root(tmp_path: Path) -> Path:
    return build_synthetic(tmp_path / "trek")


def test_reads_official_layout(root: Path) -> None:
    ds = Trek150(root)
    assert ds.names == ["P01-P01_01-10", "P01-P01_01-2"]  # sorted, not in sequences.txt order
    seq = ds["P01-P01_01-2"]
    assert len(seq) == 8
    np.testing.assert_array_equal(seq.gt[1], [13, 10, 16, 8])
    assert seq.absent.tolist() == [False, False, True] + [False] * 5
    assert seq.anchors == [(0, 0), (7, 1), (3, 0)]
    assert seq.hoi == [(1, 4, 0), (5, 7, 2)]
    assert ds["P01-P01_01-10"].hoi is None
    assert seq.frame_ids[:2] == [101, 103]
    assert [f.name for f in seq.img_files][:2] == ["frame_0000000101.jpg", "frame_0000000103.jpg"]
    assert seq.attributes == ["SC", "POC"] and seq.action_target == (2, 11, 11)
    assert seq.load_frame(0).mode == "RGB"
    assert ds.check() == {"sequences": 2, "frames": 13, "with_anchors": 2, "with_hoi": 1, "mse_runs": 4,
                          "hoi_runs": 2}


def test_order_rule_matches_path_sort() -> None:
    names = ["a", "a-b", "a0"]
    # the toolkit sorts "<name>/groundtruth_rect.txt": "a-b/" < "a/" < "a0/"
    assert sorted(names, key=sequence_order_key) == ["a-b", "a", "a0"]
    by_path = [p.split("/")[0] for p in sorted(n + "/gt" for n in names)]
    assert sorted(names, key=sequence_order_key) == by_path


def test_unlisted_folders_are_ignored(root: Path) -> None:
    write_sequence(root, "otb-Basketball", SYN_A[:2])  # e.g. an OTB folder under the same root
    assert "otb-Basketball" not in Trek150(root).names


def test_listed_sequence_without_annotations(root: Path) -> None:
    (root / "TREK-150-annotations" / "sequences.txt").write_text("P01-P01_01-2\nP09-P09_01-1\n")
    with pytest.raises(InputError, match="P09-P09_01-1"):
        Trek150(root)


def test_image_count_mismatch(root: Path) -> None:
    seq = root / "P01-P01_01-2"
    next(iter(sorted((seq / "img").iterdir()))).unlink()
    with pytest.raises(InputError, match="7 images .* but 8 rows"):
        _ = Trek150(root)["P01-P01_01-2"].img_files


def test_image_names_must_match_frames_txt(root: Path) -> None:
    seq = root / "P01-P01_01-2"
    (seq / "frames.txt").write_text("".join(f"{i}\n" for i in range(8)))
    with pytest.raises(InputError, match="frames.txt row 1 says frame_0000000000.jpg"):
        _ = Trek150(root)["P01-P01_01-2"].img_files


def test_malformed_ground_truth_row(root: Path) -> None:
    gt = root / "P01-P01_01-10" / "groundtruth_rect.txt"
    lines = gt.read_text().splitlines()
    lines[2] = "40,21,16"
    gt.write_text("\n".join(lines) + "\n")
    with pytest.raises(InputError, match=r"groundtruth_rect.txt:3: 3 values"):
        Trek150(root)["P01-P01_01-10"]


def test_bad_and_duplicate_anchors(root: Path) -> None:
    anchors = root / "P01-P01_01-2" / "anchors.txt"
    anchors.write_text("3,0\n3,1\n")
    with pytest.raises(InputError, match="anchor 3 appears twice"):
        _ = Trek150(root)["P01-P01_01-2"].anchors
    anchors.write_text("8,0\n")
    with pytest.raises(InputError, match="outside the sequence"):
        _ = Trek150(root)["P01-P01_01-2"].anchors
    anchors.write_text("5,x\n")
    with pytest.raises(InputError, match="anchors.txt:1: malformed"):
        _ = Trek150(root)["P01-P01_01-2"].anchors


def test_missing_root_and_empty_root(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        Trek150(tmp_path / "nope")
    with pytest.raises(InputError, match="no TREK-150 sequences"):
        Trek150(tmp_path)
