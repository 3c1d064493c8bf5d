"""Dataset reader: official layout, order, checks with precise errors."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import pytest

from tests.eval.helpers import ABSENT, SYN_A, SYN_B, build_synthetic, write_sequence
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


def test_hand_boxes_and_contact_labels_are_read_when_present(root: Path) -> None:
    """The hand annotations of a sequence (``lh_rect.txt``/``rh_rect.txt``, ``{l,r,b}hi_labels.txt``), with -1
    rows where the hand is not visible; None for files the sequence does not have."""
    folder = root / "P01-P01_01-10"
    (folder / "lh_rect.txt").write_text("1,2,3,4\n-1,-1,-1,-1\n5,6,7,8\n9,9,9,9\n1,1,2,2\n")
    (folder / "bhi_labels.txt").write_text("0\n1\n1\n0\n0\n")
    seq = Trek150(root)["P01-P01_01-10"]
    np.testing.assert_array_equal(seq.hand_boxes("left"), [[1, 2, 3, 4], [-1, -1, -1, -1], [5, 6, 7, 8],
                                                           [9, 9, 9, 9], [1, 1, 2, 2]])
    np.testing.assert_array_equal(seq.contact_labels("BHI"), [0, 1, 1, 0, 0])
    assert seq.hand_boxes("r") is None and seq.contact_labels("lhi") is None


def test_order_rule_matches_path_sort() -> None:
    names = ["a", "a-b", "a0"]
    # the toolkit sorts "<name>/groundtruth_rect.txt": "a-b/" < "a/" < "a0/"
    assert sorted(names, key=sequence_order_key) == ["a-b", "a", "a0"]
    by_path = [p.split("/")[0] for p in sorted(n + "/gt" for n in names)]
    assert sorted(names, key=sequence_order_key) == by_path


def test_unlisted_folders_are_ignored(root: Path, caplog) -> None:
    write_sequence(root, "otb-Basketball", SYN_A[:2])  # e.g. an OTB folder under the same root
    with caplog.at_level(logging.WARNING, logger="trek_tracker.eval.dataset"):
        assert "otb-Basketball" not in Trek150(root).names
    assert "ignoring 1 folders not listed in sequences.txt: otb-Basketball" in caplog.text


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
    anchors.write_text("\n")  # a truncated extraction: MSE would have no run to score the sequence by
    with pytest.raises(InputError, match="anchors.txt:1: holds no anchor, and MSE needs at least one"):
        _ = Trek150(root)["P01-P01_01-2"].anchors
    problems = [f.line() for f in Trek150(root).validate(images=False).problems]
    assert f"{anchors}: line 1: holds no anchor, and MSE needs at least one for every sequence; extract the " \
           "sequence's annotations again (trek-track dataset prepare)" in problems


def test_check_counts_the_anchors_of_a_sequence_it_cannot_read(root: Path) -> None:
    """A sequence whose ground truth is broken is a problem; its anchors file is still there, and the
    counts must not send the user looking for a missing one."""
    (root / "P01-P01_01-10" / "groundtruth_rect.txt").write_text("1,1,1,1\n1,2\n")
    report = Trek150(root).validate(images=False)
    assert not report.ok and report.counts["with_anchors"] == 2 == report.counts["sequences"]


def test_missing_root_and_empty_root(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        Trek150(tmp_path / "nope")
    with pytest.raises(InputError, match="no TREK-150 sequences"):
        Trek150(tmp_path)


# --------------------------------------------------------------------------------- damaged files


def _cut(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def _frames(root: Path, name: str = "P01-P01_01-2") -> list[Path]:
    return sorted((root / name / "img").glob("*.jpg"))


def test_binary_annotation_files_are_one_line_errors(root: Path) -> None:
    gt = root / "P01-P01_01-2" / "groundtruth_rect.txt"
    gt.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe")
    with pytest.raises(InputError, match=r"groundtruth_rect.txt should be a text file .* binary data \(at byte 0\)"):
        Trek150(root)["P01-P01_01-2"]
    frames = root / "P01-P01_01-10" / "frames.txt"
    frames.write_bytes(b"101\n\x00\x00\x00\n")
    with pytest.raises(InputError, match=r"frames.txt should be a text file .* NUL bytes"):
        _ = Trek150(root)["P01-P01_01-10"].frame_ids
    (root / "TREK-150-annotations" / "sequences.txt").write_bytes(b"\xff\xfe\x00P\x00")
    with pytest.raises(InputError, match="sequences.txt should be a text file"):
        Trek150(root)


@pytest.mark.parametrize("row", ["nan,0", "inf,1", "2.5,0"])
def test_non_integer_anchors_name_the_line(root: Path, row: str) -> None:
    (root / "P01-P01_01-2" / "anchors.txt").write_text(f"0,0\n{row}\n")
    with pytest.raises(InputError, match=r"anchors.txt:2: MSE anchors must be integers"):
        _ = Trek150(root)["P01-P01_01-2"].anchors
    (root / "P01-P01_01-2" / "frames.txt").write_text("nan\n" * 8)
    with pytest.raises(InputError, match=r"frames.txt:1: .* is not an integer"):
        _ = Trek150(root)["P01-P01_01-2"].frame_ids


@pytest.mark.parametrize("load", ["load_frame", "load_array"])
def test_damaged_frames_are_errors_when_loaded(root: Path, load: str) -> None:
    seq = Trek150(root)["P01-P01_01-2"]
    load_frame = getattr(seq, load)
    files = _frames(root)
    files[1].write_bytes(b"")
    _cut(files[2])
    files[3].write_bytes(b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + bytes(60) + b"\xff\xd9")
    ihdr = b"IHDR" + (96).to_bytes(4, "big") + (64).to_bytes(4, "big") + b"\x08\x02\x00\x00\x00"
    files[4].write_bytes(b"\x89PNG\r\n\x1a\n" + (13).to_bytes(4, "big") + ihdr + b"\x00\x00\x00\x00"  # bad CRC
                         + (0).to_bytes(4, "big") + b"IEND\xaeB`\x82")
    assert np.asarray(load_frame(0)).shape == (64, 96, 3)
    with pytest.raises(InputError, match=r"frame_0000000103.jpg is empty \(0 bytes\)"):
        load_frame(1)
    with pytest.raises(InputError, match=r"frame_0000000105.jpg is truncated .*dataset check --decode"):
        load_frame(2)
    with pytest.raises(InputError, match=r"frame_0000000107.jpg is damaged \(no JPEG marker at byte 20\)"):
        load_frame(3)
    with pytest.raises(InputError, match=r"cannot decode frame .*frame_0000000109.jpg.*dataset check --decode"):
        load_frame(4)


def test_sixteen_bit_frame_is_scaled_not_white(root: Path) -> None:
    from PIL import Image

    from trek_tracker.eval.dataset import load_array, load_image

    wide = (np.arange(64 * 96).reshape(64, 96) * 7).astype(np.uint16)
    path = _frames(root)[0]
    Image.fromarray(wide).save(path, format="PNG")  # a 16-bit PNG under a .jpg name
    loaded = np.asarray(load_image(path))
    assert loaded.shape == (64, 96, 3) and loaded.dtype == np.uint8
    np.testing.assert_array_equal(loaded[..., 1], (wide >> 8).astype(np.uint8))
    np.testing.assert_array_equal(load_array(path), loaded)


def test_our_tracker_gets_the_toolkit_pixels_as_arrays(shared: Path, tmp_path: Path) -> None:
    """TREK-150 frames reach our tracker decoded straight into arrays (``load_array``) and toolkit trackers
    as PIL images (``load_image``): the same pixels, on every JPEG of the shared clips (1080p EPIC-like
    frames, DAVIS, VOT) and on an EXIF-rotated one, which the toolkit does not rotate."""
    from PIL import Image

    from trek_tracker.eval.dataset import load_array, load_image

    files = sorted((shared / "data").rglob("*.jpg"))
    assert len(files) > 400
    exif = Image.Exif()
    exif[0x0112] = 8
    with Image.open(files[0]) as im:
        im.save(tmp_path / "rotated.jpg", exif=exif.tobytes())
    for path in [*files, tmp_path / "rotated.jpg"]:
        np.testing.assert_array_equal(load_array(path), np.asarray(load_image(path)), err_msg=str(path))


def test_validate_lists_every_problem_and_decode_finds_damaged_frames(root: Path) -> None:
    seq = root / "P01-P01_01-2"
    gt = (seq / "groundtruth_rect.txt").read_text().splitlines()
    gt[3], gt[4], gt[5], gt[6] = "nan,10,16,8", "50,40,0,8", "200,200,16,8", "90,10,16,8"
    (seq / "groundtruth_rect.txt").write_text("\n".join(gt) + "\n")
    (seq / "anchors.txt").write_text("0,0\n8,1\n2,0\n5,3\n")
    (seq / "lhi_labels.txt").write_text("0\n1\n2\n0\n0\n0\n0\n0\n")
    files = _frames(root)
    files[5].write_bytes(b"")
    _cut(files[6])
    _cut(files[7], 0.97)
    (root / "P01-P01_01-10" / "frames.txt").write_bytes(b"\xff" * 5)

    report = Trek150(root).validate(decode=False)
    problems = [f.line() for f in report.problems]
    warnings = [f.line() for f in report.warnings]
    gt_path = seq / "groundtruth_rect.txt"
    assert f"{gt_path}: box with NaN or infinite values (1 row: line 4)" in problems
    assert any(p.startswith(f"{gt_path}: visible box with width or height <= 0") for p in problems)
    assert f"{gt_path}: box wholly outside the 96x64 frame (1 row: line 6)" in problems
    assert f"{gt_path}: box extends beyond the 96x64 frame by more than 1 pixel (1 row: line 7)" in warnings
    assert f"{seq / 'anchors.txt'}: line 2: anchor 8 is outside the sequence (0..7)" in problems
    assert any("anchor 2 is on a frame where the target is absent" in w for w in warnings)
    assert any("anchor 5 has direction 3" in w for w in warnings)
    assert f"{seq / 'lhi_labels.txt'}: contact label other than 0 or 1 (1 row: row 3)" in problems
    assert f"{seq / 'img'}: empty frame (0 bytes) (1 frame: frame_0000000111.jpg)" in problems
    assert any("P01-P01_01-10/frames.txt should be a text file" in p for p in problems)
    assert not any("truncated" in p for p in problems)  # only decoding finds those
    assert report.sequences_with_problems() == 2 and report.decoded == 0
    assert report.counts["sequences"] == 2 and report.counts["mse_runs"] == 3 + 1

    decoded = Trek150(root).validate(decode=True, workers=2)
    truncated = [f for f in decoded.problems if f.what.startswith("truncated frame")]
    assert len(truncated) == 1 and truncated[0].count == 2
    assert truncated[0].places == ["frame_0000000113.jpg", "frame_0000000115.jpg"]
    assert decoded.decoded == 13 and len(decoded.problems) == len(report.problems) + 1


def test_validate_of_a_clean_root(root: Path) -> None:
    report = Trek150(root).validate(decode=True)
    assert report.ok and report.warnings == [] and report.decoded == 13
    assert report.counts == Trek150(root).check()


def test_validate_finds_frames_of_another_size(root: Path) -> None:
    from PIL import Image

    files = _frames(root)
    Image.new("RGB", (95, 64)).save(files[4], format="JPEG")
    report = Trek150(root).validate(decode=True)
    (problem,) = report.problems
    assert problem.line() == (f"{files[4].parent}: frame of another size than the first one (95x64, not 96x64) "
                              f"(1 frame: {files[4].name})")


def test_dataset_check_decode_cli(root: Path) -> None:
    from tests.damaged import assert_one_line_error, run_cli

    ok = run_cli("dataset", "check", "--root", root, "--decode")
    assert ok.returncode == 0 and ok.stderr == "", ok.stderr
    assert "2 sequences, 13 frames, 13 decoded" in ok.stdout and "problem" not in ok.stdout
    files = _frames(root)
    _cut(files[2])
    files[3].write_bytes(b"")
    (root / "P01-P01_01-10" / "anchors.txt").write_bytes(b"\x00\x01\x02binary")
    proc = run_cli("dataset", "check", "--root", root, "--decode")
    line = assert_one_line_error(proc, "dataset check found 3 problems in 2 sequences", "the first:")
    assert str(root / "P01-P01_01-10" / "anchors.txt") in line
    problems = [x for x in proc.stdout.splitlines() if x.startswith("problem: ")]
    assert len(problems) == 3
    assert f"problem: {files[2].parent}: truncated frame (the JPEG data ends before its end-of-image marker) " \
           f"(1 frame: {files[2].name})" in problems
    assert f"problem: {files[3].parent}: empty frame (0 bytes) (1 frame: {files[3].name})" in problems
    # without --decode the truncated frame goes unseen, and the output says how to look for it
    quick = run_cli("dataset", "check", "--root", root)
    assert_one_line_error(quick, "dataset check found 2 problems")
    assert "truncated" not in quick.stdout and "`--decode` also checks every frame's content" in quick.stdout
    assert_one_line_error(run_cli("dataset", "check", "--root", root, "--decode", "--no-images"), "give one of them")


def test_byte_order_mark_is_not_a_value(root: Path) -> None:
    gt = root / "P01-P01_01-2" / "groundtruth_rect.txt"
    gt.write_bytes(b"\xef\xbb\xbf" + gt.read_bytes())  # saved by a Windows editor
    np.testing.assert_array_equal(Trek150(root)["P01-P01_01-2"].gt[0], [10, 10, 16, 8])


def test_image_count_problems_name_the_frames_and_what_to_do(root: Path) -> None:
    """A missing or unlisted image: the reader's error and `dataset check`'s line name the frames and say to
    prepare again (which extracts the missing ones and deletes those frames.txt does not list)."""
    seq = root / "P01-P01_01-2"
    (seq / "img" / "frame_0000000103.jpg").unlink()
    (seq / "img" / "frame_0000000102.jpg").write_bytes(b"x")
    (seq / "img" / "frame_0000000104.jpg").write_bytes(b"x")
    fix = "; prepare the dataset again (trek-track dataset prepare"
    with pytest.raises(InputError, match=r"9 images .* but 8 rows in groundtruth_rect.txt \(missing: "
                                         r"frame_0000000103.jpg; not in frames.txt: frame_0000000102.jpg, "
                                         r"frame_0000000104.jpg\)" + re.escape(fix)):
        _ = Trek150(root)["P01-P01_01-2"].img_files
    (problem,) = Trek150(root).validate().problems
    assert problem.line().startswith(f"{seq / 'img'}: 9 frames but 8 rows in groundtruth_rect.txt (missing: "
                                     "frame_0000000103.jpg; not in frames.txt: frame_0000000102.jpg, "
                                     f"frame_0000000104.jpg){fix}")
    (seq / "frames.txt").write_text((seq / "frames.txt").read_text() + "999\n")
    redo = "; extract the annotations again (trek-track dataset prepare)"
    with pytest.raises(InputError, match="9 rows in frames.txt but 8 rows in groundtruth_rect.txt" + re.escape(redo)):
        Trek150(root).check(images=False)
    assert any(p.line().endswith(redo) for p in Trek150(root).validate().problems)


# ------------------------------------------------------------- sequence set, boxes, hand files, frames


def test_ground_truth_that_is_a_folder_is_one_line_naming_it(root: Path) -> None:
    gt = root / "P01-P01_01-10" / "groundtruth_rect.txt"
    gt.unlink()
    gt.mkdir()
    with pytest.raises(InputError, match=f"cannot read {gt}: it is a folder, not a file"):
        Trek150(root)["P01-P01_01-10"]
    (problem,) = Trek150(root).validate().problems
    assert problem.path is None and problem.what.startswith(f"cannot read {gt}: it is a folder")


def test_a_row_with_only_some_negative_values_is_a_visible_box(root: Path) -> None:
    gt = root / "P01-P01_01-10" / "groundtruth_rect.txt"
    rows = gt.read_text().splitlines()
    rows[1], rows[2] = "-5,-3,16,8", "0,0,0,0"
    gt.write_text("\n".join(rows) + "\n")
    seq = Trek150(root)["P01-P01_01-10"]
    assert seq.absent.tolist() == [False, False, False, True, False]
    (problem,) = Trek150(root).validate().problems  # only that problem, not also "outside the frame"
    assert problem.line() == (f"{gt}: visible box with width or height <= 0 (an absent target is -1,-1,-1,-1) "
                              "(1 row: line 3)")


def test_hoi_interval_of_an_unknown_type_or_on_an_absent_frame_is_read_with_a_warning(root: Path) -> None:
    """The toolkit runs an interval of any type (the type only names the file), and from whatever box its first
    frame has; an interval that ends before it starts or leaves the sequence cannot be run."""
    hoi = root / "P01-P01_01-2" / "anchors_hoi.txt"
    hoi.write_text("1,4,3\n2,5,1\n")
    assert Trek150(root)["P01-P01_01-2"].hoi == [(1, 4, 3), (2, 5, 1)]
    report = Trek150(root).validate(images=False)
    assert report.ok and report.counts["hoi_runs"] == 2
    assert [w.line() for w in report.warnings] == [
        f"{hoi}: line 1: interval 1-4 has type 3, not 0 (LHI), 1 (RHI) or 2 (BHI)",
        f"{hoi}: line 2: interval 2-5 starts on a frame where the target is absent, so the run starts from no box "
        "(our tracker writes it as lost from its first frame)"]
    for row, line in (("5,4,0", 2), ("-1,3,0", 2), ("6,8,2", 2)):
        hoi.write_text(f"0,7,0\n{row}\n")
        start, end = row.split(",")[:2]
        with pytest.raises(InputError, match=f"anchors_hoi.txt:{line}: interval {start}-{end} is not inside the "
                                             r"sequence \(0..7\)"):
            _ = Trek150(root)["P01-P01_01-2"].hoi
        report = Trek150(root).validate(images=False)
        assert report.counts["hoi_runs"] == 1 and report.problem_count == 1


def test_frame_numbers_must_increase_and_not_be_negative(root: Path) -> None:
    frames = root / "P01-P01_01-10" / "frames.txt"
    frames.write_text("-3\n101\n101\n99\n107\n")
    (problem, negative) = Trek150(root).validate(images=False).problems
    assert problem.line() == f"{frames}: frame numbers not strictly increasing (2 rows: line 3, line 4)"
    assert negative.line() == f"{frames}: negative frame numbers"
    frames.write_text("101\n103\n105\n107\n109\n")
    assert Trek150(root).validate(images=False).ok


def test_validate_checks_hand_annotations_and_goes_on_past_a_damaged_file(root: Path) -> None:
    seq = root / "P01-P01_01-10"
    (seq / "lh_rect.txt").write_text("1,2,3,4\n-1,-1,-1,-1\n5,6,0,8\n1,1,2,2\n")  # a row short, one of width 0
    (seq / "rh_rect.txt").write_text("1,2,3,4\nx\n")
    (seq / "rhi_labels.txt").write_text("0\n1\nyes\n0\n0\n")
    (seq / "lhi_labels.txt").write_text("0\n1\n1\n0\n")
    (seq / "bhi_labels.txt").write_text("0\n1\n1\n0\n0\n")
    lines = [p.line() for p in Trek150(root).validate(images=False).problems]
    assert lines == [
        f"{seq / 'lh_rect.txt'}: 4 rows for 5 rows in groundtruth_rect.txt",
        f"{seq / 'lh_rect.txt'}: visible box with width or height <= 0 (an absent target is -1,-1,-1,-1) "
        "(1 row: line 3)",
        f"{seq / 'rh_rect.txt'}:2: malformed row 'x' in hand boxes: expected 4 comma-separated numbers",
        f"{seq / 'lhi_labels.txt'}: 4 labels for 5 rows in groundtruth_rect.txt",
        f"{seq / 'rhi_labels.txt'}:3: malformed contact label value 'yes'",
    ]


def test_a_sequence_without_its_optional_files(tmp_path: Path) -> None:
    root = tmp_path / "trek"
    write_sequence(root, "P01-P01_01-10", SYN_B, extra=False)
    seq = Trek150(root)["P01-P01_01-10"]
    assert seq.attributes == [] and seq.action_target is None and seq.anchors is None and seq.hoi is None
    (seq.path / "frames.txt").unlink()
    seq = Trek150(root)["P01-P01_01-10"]
    assert seq.frame_ids is None and len(seq.img_files) == 5
    report = Trek150(root).validate()
    assert report.ok and report.counts == {"sequences": 1, "frames": 5, "with_anchors": 0, "with_hoi": 0,
                                           "mse_runs": 0, "hoi_runs": 0}


def test_sequences_by_position_and_an_unknown_name(root: Path) -> None:
    ds = Trek150(root)
    assert [ds[0].name, ds[1].name] == ds.names == [s.name for s in ds] and ds[-1].name == ds.names[1]
    assert ds[0] is ds["P01-P01_01-10"]
    with pytest.raises(InputError, match=f"sequence P01-P01_01-3 is not in {root}"):
        ds["P01-P01_01-3"]


def test_a_frame_whose_link_points_nowhere_is_one_problem_even_when_decoding(root: Path) -> None:
    frame = sorted((root / "P01-P01_01-2" / "img").glob("*.jpg"))[3]
    frame.unlink()
    frame.symlink_to(root / "gone.jpg")  # the frame it linked to was deleted
    for decode in (False, True):
        (problem,) = Trek150(root).validate(decode=decode).problems
        assert problem.line() == f"{frame.parent}: unreadable frame (1 frame: {frame.name} (no such file or folder; " \
                                 "check the path))"
    with pytest.raises(InputError, match=f"cannot read frame {frame}: no such file"):
        Trek150(root)["P01-P01_01-2"].load_frame(3)


def test_boxes_against_the_frame_edges(root: Path) -> None:
    """A box that only touches the frame from outside is wholly outside; one reaching 1 px beyond an edge is
    fine (rounding), more is a warning. Only the first three places of a finding are shown."""
    gt = root / "P01-P01_01-2" / "groundtruth_rect.txt"
    rows = gt.read_text().splitlines()
    rows[1], rows[3], rows[4] = "-16,10,16,8", "96,10,16,8", "10,64,16,8"  # right, bottom edge at 0; x = w; y = h
    rows[5], rows[6], rows[7] = "-1,-1,16,8", "81,57,16,8", "10,-1.5,16,8"
    gt.write_text("\n".join(rows) + "\n")
    other = root / "P01-P01_01-10" / "groundtruth_rect.txt"
    other.write_text("inf,10,16,8\n" * 5)  # an infinite box is that problem only, not also outside
    report = Trek150(root).validate()
    assert [p.line() for p in report.problems] == [
        f"{other}: box with NaN or infinite values (5 rows: line 1, line 2, line 3, ...)",
        f"{gt}: box wholly outside the 96x64 frame (3 rows: line 2, line 4, line 5)"]
    assert [w.line() for w in report.warnings] == [
        f"{gt}: box extends beyond the 96x64 frame by more than 1 pixel (1 row: line 8)"]


def test_the_sequence_set_from_an_older_list_or_from_the_folders(root: Path) -> None:
    listed = root / "TREK-150-annotations" / "sequences.txt"
    listed.unlink()
    (root / "sequences.txt").write_text("\nP01-P01_01-2\n\n")  # before toolkit 65d91c9 the list was at the root
    assert Trek150(root).names == ["P01-P01_01-2"]
    (root / "sequences.txt").unlink()
    write_sequence(root, "P01-P01_01-1", SYN_B)
    assert Trek150(root).names == ["P01-P01_01-1", "P01-P01_01-10", "P01-P01_01-2"]


def test_names_pick_sequences_in_the_toolkit_order(root: Path) -> None:
    picked = Trek150(root, names=["P01-P01_01-2", "P01-P01_01-10", "P01-P01_01-2"])
    assert picked.names == ["P01-P01_01-10", "P01-P01_01-2"] and len(picked) == 2
    assert Trek150(root, names=["P01-P01_01-2"]).names == ["P01-P01_01-2"]
    with pytest.raises(InputError, match=f"unknown sequence\\(s\\) P01-P01_01-3, P09 in {root}"):
        Trek150(root, names=["P01-P01_01-2", "P01-P01_01-3", "P09"])


def test_listed_sequences_without_annotations_are_counted(root: Path) -> None:
    missing = [f"P09-P09_01-{i}" for i in range(1, 8)]
    (root / "TREK-150-annotations" / "sequences.txt").write_text("\n".join(["P01-P01_01-2", *missing]) + "\n")
    with pytest.raises(InputError, match=f"^7 sequences listed in sequences.txt have no groundtruth_rect.txt under "
                                         f"{root}: {', '.join(missing[:5])} \\(and 2 more\\); extract"):
        Trek150(root)
    (root / "TREK-150-annotations" / "sequences.txt").write_text("\n".join(missing[:5]) + "\n")
    with pytest.raises(InputError, match=f"{missing[4]}; extract"):
        Trek150(root)


def test_a_root_that_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "trek").write_text("")
    with pytest.raises(InputError, match=f"dataset root {tmp_path / 'trek'} is not a folder"):
        Trek150(tmp_path / "trek")


def test_a_malformed_row_is_shown_up_to_forty_characters(root: Path) -> None:
    anchors = root / "P01-P01_01-2" / "anchors.txt"
    for row, shown in (("x" * 40, "x" * 40), ("x" * 41, "x" * 40 + "...")):
        anchors.write_text(f"0,0\n  {row}\n")
        with pytest.raises(InputError, match=f"anchors.txt:2: malformed row '{shown}' in MSE anchors: expected 2 "):
            _ = Trek150(root)["P01-P01_01-2"].anchors


def test_an_odd_anchor_direction_warns_how_the_toolkit_runs_it(root: Path) -> None:
    """The toolkit runs an anchor forward when its direction is below 1, else backward."""
    anchors = root / "P01-P01_01-2" / "anchors.txt"
    anchors.write_text("0,-1\n7,2\n")
    assert Trek150(root)["P01-P01_01-2"].anchors == [(0, -1), (7, 2)]
    report = Trek150(root).validate(images=False)
    assert report.ok and report.counts["mse_runs"] == 3
    assert [w.line() for w in report.warnings] == [
        f"{anchors}: line 1: anchor 0 has direction -1, not 0 (forward) or 1 (backward); the toolkit runs it forward",
        f"{anchors}: line 2: anchor 7 has direction 2, not 0 (forward) or 1 (backward); the toolkit runs it backward"]


def test_decoding_names_an_undecodable_frame_with_the_decoder_s_reason(root: Path) -> None:
    import io

    from PIL import Image

    frame = sorted((root / "P01-P01_01-2" / "img").glob("*.jpg"))[4]
    ihdr = b"IHDR" + (96).to_bytes(4, "big") + (64).to_bytes(4, "big") + b"\x08\x02\x00\x00\x00"
    frame.write_bytes(b"\x89PNG\r\n\x1a\n" + (13).to_bytes(4, "big") + ihdr + b"\x00\x00\x00\x00"  # bad CRC
                      + (0).to_bytes(4, "big") + b"IEND\xaeB`\x82")
    with pytest.raises((OSError, SyntaxError)) as err, Image.open(io.BytesIO(frame.read_bytes())) as im:
        im.load()
    assert Trek150(root).validate().ok
    (problem,) = Trek150(root).validate(decode=True).problems
    reason = " ".join(str(err.value).split())
    assert len(reason) < 100
    addresses = re.compile("0x[0-9a-f]+")  # PIL names the decoder object, at another address each time
    assert addresses.sub("0x", problem.line()) == addresses.sub(
        "0x", f"{frame.parent}: undecodable frame (1 frame: {frame.name} ({reason}))")


def test_validate_lists_frames_named_otherwise_than_frames_txt(root: Path) -> None:
    seq = root / "P01-P01_01-2"
    (seq / "frames.txt").write_text("".join(f"{101 + 2 * i + (i >= 6)}\n" for i in range(8)))  # the last two moved
    (problem,) = Trek150(root).validate().problems
    assert problem.line() == (f"{seq / 'img'}: frame names that differ from frames.txt; prepare the dataset again "
                              "(trek-track dataset prepare) (2 frames: frame_0000000113.jpg for frame_0000000114.jpg "
                              "(line 7), frame_0000000115.jpg for frame_0000000116.jpg (line 8))")


def test_action_target_must_hold_three_class_ids(root: Path) -> None:
    path = root / "P01-P01_01-2" / "action_target.txt"
    path.write_text("2\n11\n")
    with pytest.raises(InputError, match=r"action_target.txt: 2 values, expected 3 \(verb, action noun, target noun\)"):
        _ = Trek150(root)["P01-P01_01-2"].action_target
    (problem,) = Trek150(root).validate(images=False).problems
    assert "action_target.txt: 2 values, expected 3" in problem.line()


def test_many_missing_frames_are_counted_after_the_first_three(root: Path) -> None:
    files = sorted((root / "P01-P01_01-2" / "img").glob("*.jpg"))
    for f in files[2:7]:
        f.unlink()
    shown = ", ".join(f.name for f in files[2:5])
    with pytest.raises(InputError, match=f"3 images .* but 8 rows in groundtruth_rect.txt \\(missing: {shown} and 2 "
                                         "more\\); prepare"):
        _ = Trek150(root)["P01-P01_01-2"].img_files


def test_a_target_absent_on_every_frame_or_on_the_first_is_a_problem(tmp_path: Path) -> None:
    root = tmp_path / "trek"
    write_sequence(root, "never", [ABSENT] * 3)
    write_sequence(root, "late", [ABSENT, *SYN_B[:2]])
    report = Trek150(root).validate()
    never, late = (root / name / "groundtruth_rect.txt" for name in ("never", "late"))
    assert [(f.path, f.what, f.places, f.sequence) for f in report.problems] == [
        (late, "the target is absent on the first frame, where OPE starts from its box", ["line 1"], "late"),
        (never, "the target is absent on every frame", [], "never"),
    ]
    assert report.problems[0].line() == f"{late}: {report.problems[0].what}"  # its one place is in the words


def test_blank_lines_in_a_one_value_per_line_file_are_not_values(root: Path) -> None:
    seq = root / "P01-P01_01-10"
    ids = (seq / "frames.txt").read_text().split()
    (seq / "frames.txt").write_text("\n".join(ids[:2]) + "\n\n" + "\n".join(ids[2:]) + "\n\n  \n")
    (seq / "action_target.txt").write_text("\n2\n11\n\n11\n\n")
    got = Trek150(root)["P01-P01_01-10"]
    assert got.frame_ids == [int(i) for i in ids] and got.action_target == (2, 11, 11)
    assert len(got.img_files) == 5 and Trek150(root).validate().ok


def test_a_sequence_without_frames_is_told_to_prepare_the_dataset(root: Path) -> None:
    img = root / "P01-P01_01-10" / "img"
    for f in img.iterdir():
        f.unlink()
    with pytest.raises(InputError, match=f"sequence P01-P01_01-10: no images in {re.escape(str(img))}; prepare"):
        _ = Trek150(root)["P01-P01_01-10"].img_files
    (problem,) = Trek150(root).validate().problems
    assert problem.line() == f"{img}: no frames; prepare the dataset first (trek-track dataset prepare)"


def test_frames_txt_of_another_length_than_the_ground_truth_is_refused_when_frames_are_listed(root: Path) -> None:
    frames = root / "P01-P01_01-2" / "frames.txt"
    frames.write_text("".join(line + "\n" for line in frames.read_text().splitlines()[:-1]))
    with pytest.raises(InputError, match="P01-P01_01-2: 7 rows in frames.txt but 8 rows in groundtruth_rect.txt; "
                                         "extract the annotations again"):
        _ = Trek150(root)["P01-P01_01-2"].img_files


def test_an_empty_ground_truth_file_is_an_error_naming_it(root: Path) -> None:
    gt = root / "P01-P01_01-10" / "groundtruth_rect.txt"
    gt.write_text("\n")
    with pytest.raises(InputError, match=f"^{re.escape(str(gt))} is empty$"):
        Trek150(root)["P01-P01_01-10"]


def test_validate_goes_on_past_anchors_it_cannot_read_and_counts_no_run_for_them(root: Path) -> None:
    anchors = root / "P01-P01_01-2" / "anchors.txt"
    anchors.write_text("0,0\n2.5,1\n")
    (root / "P01-P01_01-2" / "anchors_hoi.txt").write_text("1,9,0\n")
    report = Trek150(root).validate(images=False)
    assert [f.line() for f in report.problems] == [
        f"{anchors}:2: MSE anchors must be integers, got 2.5,1",
        f"{root / 'P01-P01_01-2' / 'anchors_hoi.txt'}: line 1: interval 1-9 is not inside the sequence (0..7)",
    ]
    # the other sequence's one anchor; neither file of P01-P01_01-2 gives a run
    assert (report.counts["mse_runs"], report.counts["hoi_runs"], report.counts["with_anchors"]) == (1, 0, 2)


def test_a_root_lists_its_sequences_in_the_toolkits_path_order(tmp_path: Path) -> None:
    root = tmp_path / "trek"
    for name in ("a0", "a", "a-b"):
        write_sequence(root, name, SYN_B[:2])
    # the toolkit sorts "<name>/groundtruth_rect.txt": "-" sorts before "/", which sorts before "0"
    assert Trek150(root).names == ["a-b", "a", "a0"] == Trek150(root, names=["a", "a0", "a-b"]).names


def test_check_lists_the_frames_only_when_asked_to(root: Path) -> None:
    next(iter(_frames(root))).unlink()
    with pytest.raises(InputError, match="P01-P01_01-2: 7 images .* but 8 rows"):
        Trek150(root).check()
    assert Trek150(root).check(images=False)["frames"] == 13


def test_check_counts_a_sequence_without_frames_txt(root: Path) -> None:
    (root / "P01-P01_01-10" / "frames.txt").unlink()
    assert Trek150(root).check()["frames"] == 13


def test_validate_finds_a_visible_box_of_height_zero_and_a_frame_number_repeated_on_line_2(root: Path) -> None:
    seq = root / "P01-P01_01-10"
    gt = (seq / "groundtruth_rect.txt").read_text().splitlines()
    gt[1] = "41,20,16,0"
    (seq / "groundtruth_rect.txt").write_text("\n".join(gt) + "\n")
    ids = (seq / "frames.txt").read_text().split()
    (seq / "frames.txt").write_text("\n".join([ids[0], ids[0], *ids[2:]]) + "\n")
    lines = [f.line() for f in Trek150(root).validate(images=False).problems]
    assert lines == [f"{seq / 'frames.txt'}: frame numbers not strictly increasing (1 row: line 2)",
                     f"{seq / 'groundtruth_rect.txt'}: visible box with width or height <= 0 (an absent target is "
                     "-1,-1,-1,-1) (1 row: line 2)"]


def test_decoding_shows_no_bar_unless_asked(root: Path, capsys) -> None:
    assert Trek150(root).validate(decode=True, workers=1).decoded == 13
    assert capsys.readouterr().err == ""
