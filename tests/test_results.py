"""Result files (trek_tracker.results): formats, round trips, atomicity, label PNGs."""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import os
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from trek_tracker.errors import InputError
from trek_tracker.files import atomic_write, read_json, write_json
from trek_tracker.geometry import mask_to_box
from trek_tracker.results import (
    ObjectIds,
    StreamingTextWriter,
    format_box,
    read_boxes,
    read_label_png,
    read_result,
    read_times,
    write_boxes,
    write_label_png,
    write_times,
)

# --------------------------------------------------------------------------------------------- boxes


def _png(path: Path) -> tuple[str, list[int] | None]:
    with Image.open(path) as im:
        return im.mode, im.getpalette()


def _savetxt(arr: np.ndarray, fmt: str) -> bytes:
    buf = io.BytesIO()
    np.savetxt(buf, arr, fmt=fmt, delimiter=",")
    return buf.getvalue()


def test_write_boxes_is_byte_identical_to_the_toolkit(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    boxes = np.concatenate([rng.uniform(-10, 1900, (30, 2)), rng.uniform(0.5, 500, (30, 2))], axis=1)
    boxes[3] = [2.0005, -0.0001, 1e-9, 123456.78949]
    path = tmp_path / "ope" / "P01-P01_01-0.txt"
    write_boxes(path, boxes)
    data = path.read_bytes()
    assert data == _savetxt(boxes, "%.3f")
    assert data.splitlines()[3] == b"2.001,-0.000,0.000,123456.789"  # docs/trek150.md#result-file-format examples
    assert data.endswith(b"\n") and not data.endswith(b"\n\n")
    back = read_boxes(path)
    np.testing.assert_allclose(back, boxes, atol=5e-4 + 1e-9)
    np.testing.assert_array_equal(back, np.loadtxt(path, delimiter=","))


def test_read_boxes_one_and_zero_rows_keep_two_dims(tmp_path: Path) -> None:
    write_boxes(tmp_path / "one.txt", [[1, 2, 3, 4]])
    assert read_boxes(tmp_path / "one.txt").shape == (1, 4)
    write_boxes(tmp_path / "none.txt", np.zeros((0, 4)))
    assert (tmp_path / "none.txt").read_bytes() == b""
    assert read_boxes(tmp_path / "none.txt").shape == (0, 4)


def test_read_boxes_toolkit_and_ground_truth_styles(tmp_path: Path) -> None:
    path = tmp_path / "gt.txt"
    path.write_text("# comment\n1,2,3,4\n5 6 7 8\n9\t10\t11\t12\n-1,-1,-1,-1\n\nnan,nan,nan,nan\n")
    boxes = read_boxes(path)
    assert boxes.shape == (5, 4)
    np.testing.assert_array_equal(boxes[:4], [[1, 2, 3, 4], [5, 6, 7, 8], [9, 10, 11, 12], [-1, -1, -1, -1]])
    assert np.isnan(boxes[4]).all()


@pytest.mark.parametrize(("row", "line"), [("1,2,3", 2), ("1,2,x,4", 2), ("1,2,3,4,5", 2)])
def test_read_boxes_malformed_row_names_file_and_line(tmp_path: Path, row: str, line: int) -> None:
    path = tmp_path / "bad.txt"
    path.write_text(f"1,2,3,4\n{row}\n5,6,7,8\n")
    with pytest.raises(InputError, match=rf"bad\.txt, line {line}: expected 4 numbers"):
        read_boxes(path)


def test_read_boxes_row_count_and_missing(tmp_path: Path) -> None:
    write_boxes(tmp_path / "b.txt", np.ones((3, 4)))
    assert read_boxes(tmp_path / "b.txt", rows=3).shape == (3, 4)
    with pytest.raises(InputError, match="has 3 boxes, expected 4"):
        read_boxes(tmp_path / "b.txt", rows=4)
    with pytest.raises(InputError, match="not found"):
        read_boxes(tmp_path / "missing.txt")


@pytest.mark.parametrize(
    "row",
    ["1,2,3,4", " 1 , 2 ,3,4 ", "1\t,2,3,4", "nan,inf,-inf,1e3", "NaN,INF,Infinity,-nan", "1,2,3,4 # c",
     "+1,.5,5.,-0", "1.5e+03,2E-2,3,4", "1,2,3,4\r", "1,2,3,4,", "1,,3,4", " ,1,2,3", "1 2 3 4", "1;2;3;4",
     "1,2,3", "1,2,3,4,5", "1_0,2,3,4", "\uff11,2,3,4", "0x10,1,1,1", "nan(1),1,1,1", "1,2\x0c3,4"],
)
def test_read_result_accepts_what_the_toolkit_loadtxt_accepts(tmp_path: Path, row: str) -> None:
    """Result files are read by the toolkit with ``np.loadtxt(delimiter=',')``: the same rows are accepted,
    with the same values, and the others are an error naming file and line."""
    path = tmp_path / "r.txt"
    path.write_text(f"5,6,7,8\n{row}\n", encoding="utf-8")
    try:
        expected = np.loadtxt(path, delimiter=",", ndmin=2)
        ok = expected.shape[1] == 4
    except ValueError:
        ok = False
    if ok:
        np.testing.assert_array_equal(read_result(path, rows=2), expected)
    else:
        with pytest.raises(InputError, match=r"r\.txt, line 2: expected 4 comma-separated numbers.*run again"):
            read_result(path)


def test_read_result_one_row_missing_and_row_count(tmp_path: Path) -> None:
    write_boxes(tmp_path / "one.txt", [[1, 2, 3, 4]])
    assert read_result(tmp_path / "one.txt").shape == (1, 4)  # np.loadtxt would flatten it
    write_boxes(tmp_path / "none.txt", np.zeros((0, 4)))
    assert read_result(tmp_path / "none.txt").shape == (0, 4)
    with pytest.raises(InputError, match=r"result file .*b\.txt is missing"):
        read_result(tmp_path / "b.txt")
    write_boxes(tmp_path / "b.txt", np.ones((3, 4)))
    with pytest.raises(InputError, match=r"result file .*b\.txt has 3 rows, expected 4; delete it and run again"):
        read_result(tmp_path / "b.txt", rows=4)


def test_times_round_trip_and_format(tmp_path: Path) -> None:
    times = np.array([0.123456789, 1.5, 1e-9, 12.0])
    path = tmp_path / "times" / "seq_time.txt"
    write_times(path, times)
    assert path.read_bytes() == _savetxt(times, "%.8f")
    np.testing.assert_allclose(read_times(path), times, atol=5e-9)
    write_times(tmp_path / "list.txt", [0.5, 0.25])
    np.testing.assert_array_equal(read_times(tmp_path / "list.txt", rows=2), [0.5, 0.25])
    (tmp_path / "bad.txt").write_text("0.1\n0.2 0.3\n")
    with pytest.raises(InputError, match=r"bad\.txt, line 2: expected 1 number"):
        read_times(tmp_path / "bad.txt")


# ----------------------------------------------------------------------------------------- atomicity


def test_failed_write_leaves_no_file(tmp_path: Path) -> None:
    path = tmp_path / "boxes.txt"
    with pytest.raises(ValueError):
        write_boxes(path, np.ones((3, 5)))
    with pytest.raises(RuntimeError, match="crash"):
        with atomic_write(path) as f:
            f.write("1,2,3,4\n")
            raise RuntimeError("crash")
    assert list(tmp_path.iterdir()) == []


def test_writer_crash_midway_keeps_the_previous_file(tmp_path: Path, monkeypatch) -> None:
    import trek_tracker.results as results

    path = tmp_path / "boxes.txt"
    write_boxes(path, [[1, 2, 3, 4]])
    before = path.read_bytes()
    calls = []

    def failing(box):
        calls.append(box)
        if len(calls) == 3:
            raise OSError("disk full")
        return format_box(box)

    monkeypatch.setattr(results, "format_box", failing)
    with pytest.raises(OSError, match="disk full"):
        write_boxes(path, np.ones((5, 4)))
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["boxes.txt"]


def test_failed_write_keeps_the_previous_file(tmp_path: Path) -> None:
    path = tmp_path / "run.json"
    write_json(path, {"ok": 1})
    with pytest.raises(TypeError):
        write_json(path, {"bad": object()})
    assert read_json(path) == {"ok": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["run.json"]


def test_write_json_converts_numpy(tmp_path: Path) -> None:
    obj = {"a": np.float32(0.5), "b": np.arange(3), "c": np.int64(7), "d": [np.bool_(True)], "p": tmp_path}
    write_json(tmp_path / "x.json", obj)
    text = (tmp_path / "x.json").read_text()
    assert text.startswith('{\n  "a": 0.5') and text.endswith("}\n")
    assert json.loads(text) == {"a": 0.5, "b": [0, 1, 2], "c": 7, "d": [True], "p": str(tmp_path)}
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(InputError, match="bad.json"):
        read_json(tmp_path / "bad.json")


# ---------------------------------------------------------------------------------------- label PNGs


def test_palette_mask_round_trip(shared: Path, tmp_path: Path) -> None:
    src = sorted((shared / "data/aot_demo/masks").glob("*.png"))[0]
    labels, palette = read_label_png(src)
    assert palette is not None and palette.shape == (256, 3)
    ids = ObjectIds.from_labels(labels)
    assert len(ids) == len(np.unique(labels)) - 1 > 10
    engine = ids.to_engine(labels)
    assert engine.max() == len(ids)
    out = tmp_path / "masks" / src.name
    write_label_png(out, ids.to_original(engine), palette)
    back, back_palette = read_label_png(out)
    np.testing.assert_array_equal(back, labels)
    np.testing.assert_array_equal(back_palette, palette)
    mode, pal = _png(out)
    assert mode == "P" and pal[: 3 * 64] == _png(src)[1][: 3 * 64]


def test_grayscale_0_255_mask_round_trip(davis: Path, tmp_path: Path) -> None:
    src = davis / "Annotations/480p/car-shadow/00000.png"
    labels, palette = read_label_png(src)
    assert palette is None and set(np.unique(labels)) == {0, 255}
    np.testing.assert_array_equal(mask_to_box(labels), [313, 88, 342, 194])
    ids = ObjectIds.from_labels(labels)
    assert ids.values == (255,)
    engine = ids.to_engine(labels)
    assert set(np.unique(engine)) == {0, 1}
    write_label_png(tmp_path / "m.png", ids.to_original(engine))
    back, back_palette = read_label_png(tmp_path / "m.png")
    assert back_palette is None and _png(tmp_path / "m.png")[0] == "L"
    np.testing.assert_array_equal(back, labels)


def test_rgb_mask_becomes_labels_and_palette(tmp_path: Path) -> None:
    rgb = np.zeros((6, 8, 3), np.uint8)
    rgb[1, 1] = (0, 128, 0)  # first non-black colour met in raster order -> 1
    rgb[3:5, 2:4] = (128, 0, 0)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    labels, palette = read_label_png(tmp_path / "rgb.png")
    assert labels[1, 1] == 1 and labels[3, 2] == 2 and labels[0, 0] == 0
    np.testing.assert_array_equal(palette[labels], rgb)


def test_object_ids_sparse_values_and_extension() -> None:
    labels = np.array([[0, 7, 7], [3, 0, 200]], np.uint8)
    ids = ObjectIds.from_labels(labels)
    assert ids.values == (3, 7, 200)
    engine = ids.to_engine(labels)
    np.testing.assert_array_equal(engine, [[0, 2, 2], [1, 0, 3]])
    np.testing.assert_array_equal(ids.to_original(engine), labels)
    later = np.array([[5, 7, 0]], np.uint8)
    with pytest.raises(InputError, match=r"\[5\]"):
        ids.to_engine(later)
    more = ids.extend(later)
    assert more.values == (3, 7, 200, 5)  # existing objects keep their ids
    np.testing.assert_array_equal(more.to_engine(later), [[4, 2, 0]])
    with pytest.raises(ValueError):
        ids.to_original(np.array([[4]]))


def test_one_bit_and_16_bit_masks(tmp_path: Path) -> None:
    bits = np.zeros((5, 7), bool)
    bits[1:3, 2:5] = True
    Image.fromarray(bits).save(tmp_path / "bits.png")
    labels, palette = read_label_png(tmp_path / "bits.png")
    assert palette is None
    np.testing.assert_array_equal(labels, bits.astype(np.uint8) * 255)
    wide = np.zeros((5, 7), np.uint16)
    wide[0, 0] = 3
    Image.fromarray(wide).save(tmp_path / "i16.png")
    np.testing.assert_array_equal(read_label_png(tmp_path / "i16.png")[0], wide)
    wide[0, 1] = 300
    Image.fromarray(wide).save(tmp_path / "big.png")
    with pytest.raises(InputError, match="outside 0..255"):
        read_label_png(tmp_path / "big.png")


def _jpeg_of(labels: np.ndarray, path: Path, quality: int = 95, mode: str = "L") -> Path:
    Image.fromarray(labels).convert(mode).save(path, quality=quality)
    return path


def test_jpeg_mask_is_one_object_with_a_warning(davis: Path, tmp_path: Path, caplog) -> None:
    truth = np.asarray(Image.open(davis / "Annotations/480p/blackswan/00000.png"))
    path = _jpeg_of(truth, tmp_path / "mask.jpg")
    noisy = np.unique(np.asarray(Image.open(path)))
    assert len(noisy) > 10  # what used to become that many objects
    with caplog.at_level(logging.WARNING, logger="trek_tracker.results"):
        labels, palette = read_label_png(path)
    assert palette is None and ObjectIds.from_labels(labels).values == (255,)
    np.testing.assert_array_equal(labels > 0, truth > 0)
    (record,) = caplog.records
    assert str(path) in record.getMessage() and f"{len(noisy)} distinct values" in record.getMessage()
    # the same as an RGB JPEG (grey in three channels) reads the same way
    np.testing.assert_array_equal(read_label_png(_jpeg_of(truth, tmp_path / "rgb.jpg", mode="RGB"))[0], labels)


def test_ambiguous_jpeg_masks_are_refused(shared: Path, tmp_path: Path) -> None:
    palette_mask = Image.open(shared / "data/aot_demo/masks/00002058.png")
    colour = tmp_path / "colour.jpg"
    palette_mask.convert("RGB").save(colour, quality=95)
    with pytest.raises(InputError, match=r"colour.jpg is a colour JPEG.*save the mask as a PNG"):
        read_label_png(colour)
    levels = np.zeros((40, 60), np.uint8)
    levels[5:20, 5:20], levels[22:35, 30:50] = 80, 160  # two objects as grey levels
    grey = _jpeg_of(levels, tmp_path / "grey.jpg")
    with pytest.raises(InputError, match=r"grey.jpg is a JPEG with \d+ distinct values"):
        read_label_png(grey)


def test_a_file_that_is_no_image_is_named_as_such(tmp_path: Path) -> None:
    garbage = tmp_path / "first.png"
    garbage.write_bytes(b"this is not an image at all, only text that happens to end in .png" * 4)
    with pytest.raises(InputError, match=r"^cannot read mask .*first.png: it is not an image PIL knows") as err:
        read_label_png(garbage)
    assert "BytesIO" not in str(err.value)


def test_sixteen_bit_masks(tmp_path: Path, caplog) -> None:
    wide = np.zeros((6, 8), np.uint16)
    wide[1:3, 1:3], wide[4, 4] = 65535, 257 * 7  # an 8-bit mask saved with 16 bits
    Image.fromarray(wide).save(tmp_path / "scaled.png")
    with caplog.at_level(logging.WARNING, logger="trek_tracker.results"):
        labels, _ = read_label_png(tmp_path / "scaled.png")
    assert labels.dtype == np.uint8 and labels[1, 1] == 255 and labels[4, 4] == 7 and labels.sum() == 4 * 255 + 7
    assert "scaled.png" in caplog.records[0].getMessage()
    wide[0, 0] = 1000
    Image.fromarray(wide).save(tmp_path / "ids.png")
    with pytest.raises(InputError, match=r"ids.png has values outside 0..255 \(up to 65535"):
        read_label_png(tmp_path / "ids.png")


def test_object_ids_refuse_values_beyond_8_bits() -> None:
    with pytest.raises(InputError, match="0..255"):
        ObjectIds.from_labels(np.array([[0, 300]], np.uint16))
    with pytest.raises(InputError, match="0..255"):
        ObjectIds((1,)).extend(np.array([[-1, 2]]))
    with pytest.raises(InputError, match="integer"):
        ObjectIds.from_labels(np.array([[0.5, 0]]))
    with pytest.raises(InputError, match="distinct integers 1..255"):
        ObjectIds((0, 3))
    assert ObjectIds.from_labels(np.array([[0, 300]], np.uint16) // 2).values == (150,)


def test_read_label_png_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not found"):
        read_label_png(tmp_path / "none.png")
    (tmp_path / "junk.png").write_bytes(b"not a png")
    with pytest.raises(InputError, match="junk.png"):
        read_label_png(tmp_path / "junk.png")
    buf = io.BytesIO()
    Image.fromarray(np.zeros((30, 40), np.uint8)).save(buf, "PNG")
    (tmp_path / "cut.png").write_bytes(buf.getvalue()[:-20])
    with pytest.raises(InputError, match=r"mask .*cut.png is truncated \(the PNG data ends before its IEND"):
        read_label_png(tmp_path / "cut.png")
    (tmp_path / "zero.png").write_bytes(b"")
    with pytest.raises(InputError, match=r"mask .*zero.png is empty \(0 bytes\)"):
        read_label_png(tmp_path / "zero.png")
    (tmp_path / "dir.png").mkdir()
    with pytest.raises(InputError, match=r"cannot read mask .*dir.png: it is a folder"):
        read_label_png(tmp_path / "dir.png")


# ---------------------------------------------------------------------------------- streaming writer


def test_streaming_writer_commits_identical_file(tmp_path: Path) -> None:
    boxes = np.array([[1.23456, 2, 3, 4], [5, 6, 7.0005, 8]])
    final = tmp_path / "seq.txt"
    writer = StreamingTextWriter(final)
    writer.write_box(boxes[0])
    part = tmp_path / "seq.txt.part"
    assert part.read_text() == format_box(boxes[0]) + "\n"  # flushed line by line
    assert not final.exists()
    writer.write_box(boxes[1])
    assert writer.commit() == final
    assert not part.exists()
    write_boxes(tmp_path / "whole.txt", boxes)
    assert final.read_bytes() == (tmp_path / "whole.txt").read_bytes()


def test_streaming_writer_leaves_part_on_error_and_resumes(tmp_path: Path) -> None:
    final = tmp_path / "t.txt"
    with pytest.raises(RuntimeError):
        with StreamingTextWriter(final) as w:
            w.write_time(0.5)
            w.write_time(0.25)
            raise RuntimeError("killed")
    assert not final.exists()
    part = tmp_path / "t.txt.part"
    part.write_bytes(part.read_bytes() + b"0.12")  # torn last line of a killed process
    with StreamingTextWriter(final, resume=True) as w:
        assert w.lines == 2
        w.write_time(0.125)
    np.testing.assert_array_equal(read_times(final), [0.5, 0.25, 0.125])
    assert not part.exists()
    w = StreamingTextWriter(tmp_path / "x.txt")
    with pytest.raises(ValueError):
        w.write_line("a\nb")
    w.close()
    assert not (tmp_path / "x.txt").exists() and (tmp_path / "x.txt.part").exists()


@pytest.mark.parametrize("how", [{"keep": 2}, {"resume": True}])
def test_streaming_writer_takes_back_a_file_committed_by_an_unfinished_run(tmp_path: Path, how) -> None:
    """A run stopped between committing this file and completing (killed, or a full disk at its next file)
    continues from the committed lines: the file is its ``.part`` again until the run commits."""
    final = tmp_path / "boxes.txt"
    with StreamingTextWriter(final) as w:
        for t in range(3):
            w.write_box([t, 0, 1, 1])
    writer = StreamingTextWriter(final, **how)
    assert not final.exists() and writer.lines == how.get("keep", 3)
    writer.write_box([9, 0, 1, 1])
    writer.commit()
    assert read_boxes(final)[:, 0].tolist() == ([0, 1, 9] if "keep" in how else [0, 1, 2, 9])


def test_write_boxes_of_no_frames_is_an_empty_file(tmp_path: Path) -> None:
    # np.savetxt of an empty array writes nothing; [] and a (0, 4) array are both "no frames"
    for boxes in ([], np.zeros((0, 4))):
        write_boxes(tmp_path / "empty.txt", boxes)
        assert (tmp_path / "empty.txt").read_bytes() == b""
        assert read_boxes(tmp_path / "empty.txt").shape == (0, 4)


@pytest.mark.parametrize("boxes", [[1.0, 2.0, 3.0, 4.0], np.zeros((2, 3)), np.zeros((1, 2, 4))])
def test_write_boxes_refuses_what_is_not_n_by_4(tmp_path: Path, boxes) -> None:
    with pytest.raises(ValueError, match=r"shape \(N, 4\)"):
        write_boxes(tmp_path / "b.txt", boxes)
    assert not (tmp_path / "b.txt").exists()


def test_readers_and_writers_take_a_path_as_a_string(tmp_path: Path) -> None:
    write_boxes(tmp_path / "b.txt", [[1, 2, 3, 4]])
    write_times(tmp_path / "t.txt", [0.5])
    np.testing.assert_array_equal(read_boxes(str(tmp_path / "b.txt")), [[1, 2, 3, 4]])
    np.testing.assert_array_equal(read_result(str(tmp_path / "b.txt")), [[1, 2, 3, 4]])
    np.testing.assert_array_equal(read_times(str(tmp_path / "t.txt")), [0.5])
    write_label_png(str(tmp_path / "m.png"), np.array([[0, 3]], np.uint8))
    np.testing.assert_array_equal(read_label_png(str(tmp_path / "m.png"))[0], [[0, 3]])


@pytest.mark.parametrize("sep", ["\x0c", "\x1c", "\x85", "\u2028"])
def test_read_result_keeps_a_line_that_np_loadtxt_keeps_whole(tmp_path: Path, sep: str) -> None:
    # np.loadtxt splits lines only at \n (and \r): a form feed or Unicode line separator stays inside the row,
    # so the toolkit cannot read this file; read_result must refuse it too (read_boxes is lenient)
    path = tmp_path / "r.txt"
    path.write_text(f"1,2,3,4{sep}5,6,7,8\n", encoding="utf-8")
    with pytest.raises(ValueError):
        np.loadtxt(path, delimiter=",", encoding="utf-8")
    with pytest.raises(InputError, match="line 1"):
        read_result(path)


def test_malformed_rows_say_how_many_numbers_a_row_needs(tmp_path: Path) -> None:
    (tmp_path / "t.txt").write_text("0.5\n1 2\n")
    with pytest.raises(InputError, match=r"line 2: expected 1 number, got '1 2'"):
        read_times(tmp_path / "t.txt")
    (tmp_path / "b.txt").write_text("1,2,3\n")
    with pytest.raises(InputError, match=r"line 1: expected 4 numbers, got '1,2,3'"):
        read_boxes(tmp_path / "b.txt")
    with pytest.raises(InputError, match=r"line 1: expected 4 comma-separated numbers, got '1,2,3'"):
        read_result(tmp_path / "b.txt")


def test_write_times_takes_any_iterable(tmp_path: Path) -> None:
    write_times(tmp_path / "t.txt", (s for s in (0.5, 1 / 3)))
    assert (tmp_path / "t.txt").read_bytes() == b"0.50000000\n0.33333333\n"


@pytest.mark.parametrize("labels", [[[0, -1]], [[0, 256]], [[-1, 5]], [[0, 300]]])
def test_write_label_png_refuses_values_outside_0_255(tmp_path: Path, labels) -> None:
    with pytest.raises(ValueError, match=r"0\.\.255"):
        write_label_png(tmp_path / "m.png", np.array(labels, dtype=np.int64))
    assert not (tmp_path / "m.png").exists()


@pytest.mark.parametrize("palette", [None, np.arange(768).reshape(256, 3) % 256])
def test_write_label_png_keeps_wide_and_strided_labels_exactly(tmp_path: Path, palette) -> None:
    labels = np.array([[0, 1, 7], [255, 2, 0]], dtype=np.int64)
    for given in (labels, np.asfortranarray(labels.astype(np.uint8)), labels.astype(np.uint8).T.copy().T):
        write_label_png(tmp_path / "m.png", given, palette)
        assert (tmp_path / "m.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"  # a PNG, whatever the reader takes
        back, pal = read_label_png(tmp_path / "m.png")
        np.testing.assert_array_equal(back, labels)
        assert (pal is None) == (palette is None)


@pytest.mark.parametrize("values", [(256,), (0,), (1, 1), (-1,)])
def test_object_ids_are_distinct_values_1_to_255(values) -> None:
    with pytest.raises(InputError, match="distinct integers 1..255"):
        ObjectIds(values)
    assert ObjectIds((255, 1)).values == (255, 1)


@pytest.mark.parametrize("labels", [[[-1, 0]], [[256, 0]], [[255, 256]]])
def test_to_engine_refuses_values_outside_0_255_even_next_to_known_ones(labels) -> None:
    with pytest.raises(InputError, match=r"0\.\.255"):
        ObjectIds((255,)).to_engine(np.array(labels, dtype=np.int64))


@pytest.mark.parametrize("labels", [[[-1, 1]], [[0, 2]], [[2, 0]]])
def test_to_original_refuses_ids_outside_0_to_n(labels) -> None:
    with pytest.raises(ValueError, match=r"engine ids must be in 0\.\.1"):
        ObjectIds((255,)).to_original(np.array(labels, dtype=np.int64))


def test_to_original_maps_any_integer_or_bool_ids() -> None:
    ids = ObjectIds((255, 7))
    for dtype in (np.uint8, np.int64, np.int32):
        np.testing.assert_array_equal(ids.to_original(np.array([[0, 1, 2]], dtype=dtype)), [[0, 255, 7]])
    np.testing.assert_array_equal(ids.to_original(np.array([[True, False]])), [[255, 0]])


@pytest.mark.parametrize("labels", [[0.0, 1.5], [0.0, np.nan], [0.0, np.inf], ["a", "b"]])
def test_object_ids_from_labels_refuse_what_is_no_integer(labels) -> None:
    with pytest.raises(InputError, match="integer object ids 0..255"):
        ObjectIds.from_labels(np.array(labels))


def test_object_ids_from_labels_take_integer_floats_and_refuse_256() -> None:
    assert ObjectIds.from_labels(np.array([[0.0, 2.0], [9.0, 2.0]])).values == (2, 9)
    assert ObjectIds.from_labels(np.array([0, 255], dtype=np.int64)).values == (255,)
    with pytest.raises(InputError, match="fit in 8 bits"):
        ObjectIds.from_labels(np.array([0, 256], dtype=np.int64))
    with pytest.raises(InputError, match="fit in 8 bits"):
        ObjectIds((1,)).extend(np.array([0, 256], dtype=np.int64))


def test_a_new_streaming_writer_starts_afresh_and_leaves_the_old_file_until_it_commits(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "boxes.txt"  # folders made
    path.parent.mkdir(parents=True)
    path.write_text("old\n")
    (tmp_path / "a" / "b" / "boxes.txt.part").write_text("stale\n")
    w = StreamingTextWriter(path)  # neither resume nor keep: a new run
    w.write_line("x")
    w.write_line("y")
    assert w.lines == 2 and path.read_text() == "old\n"
    w.commit()
    assert path.read_text() == "x\ny\n" and not (tmp_path / "a" / "b" / "boxes.txt.part").exists()
    w = StreamingTextWriter(tmp_path / "c" / "d" / "t.txt")
    w.commit()
    assert (tmp_path / "c" / "d" / "t.txt").read_bytes() == b""


def test_keep_all_the_finished_lines_there_are(tmp_path: Path) -> None:
    (tmp_path / "t.txt.part").write_text("1\n2\n3")  # a torn third line
    w = StreamingTextWriter(tmp_path / "t.txt", keep=2)
    assert w.lines == 2
    w.write_line("9")
    w.commit()
    assert (tmp_path / "t.txt").read_text() == "1\n2\n9\n"


def test_streaming_times_and_boxes_are_the_whole_file_formats_and_are_synced(tmp_path: Path, fsync_sizes) -> None:
    synced = fsync_sizes
    w = StreamingTextWriter(tmp_path / "t.txt")
    for s in (1 / 3, 2.5):
        w.write_time(s)
    assert w.lines == 2
    w.sync()
    assert synced == [len("0.33333333\n2.50000000\n")]
    w.commit()
    write_times(tmp_path / "whole.txt", [1 / 3, 2.5])
    assert (tmp_path / "t.txt").read_bytes() == (tmp_path / "whole.txt").read_bytes() == b"0.33333333\n2.50000000\n"



def test_a_box_of_other_than_4_values_is_refused_and_nothing_is_written(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"a box has 4 values x,y,w,h, got 3"):
        format_box([1, 2, 3])
    w = StreamingTextWriter(tmp_path / "b.txt")
    w.write_box([1, 2, 3, 4])
    with pytest.raises(ValueError, match=r"a box has 4 values x,y,w,h, got 5"):
        w.write_box([1, 2, 3, 4, 5])
    assert w.lines == 1
    assert (tmp_path / "b.txt.part").read_text() == "1.000,2.000,3.000,4.000\n"


def test_write_times_refuses_what_is_not_one_dimensional(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"one-dimensional, got shape \(2, 1\)"):
        write_times(tmp_path / "t.txt", np.array([[0.5], [0.25]]))
    assert not (tmp_path / "t.txt").exists()


def test_read_times_checks_the_row_count_and_names_a_missing_file(tmp_path: Path) -> None:
    write_times(tmp_path / "t.txt", [0.5, 0.25, 0.125])
    with pytest.raises(InputError, match=r"t\.txt has 3 times, expected 2"):
        read_times(tmp_path / "t.txt", rows=2)
    with pytest.raises(InputError, match=r"times file not found: .*none\.txt"):
        read_times(tmp_path / "none.txt")


def test_a_file_that_is_not_utf8_or_is_a_folder_is_an_input_error_naming_it(tmp_path: Path) -> None:
    (tmp_path / "u.txt").write_bytes(b"1,2,3,4\n1,2,3,\xff\n")  # e.g. a file damaged on a copy
    with pytest.raises(InputError, match=r"^cannot read box file .*u\.txt: 'utf-8' codec"):
        read_boxes(tmp_path / "u.txt")
    with pytest.raises(InputError, match=r"^cannot read result file .*u\.txt: .*; delete it and run again$"):
        read_result(tmp_path / "u.txt")
    with pytest.raises(InputError, match=r"^cannot read times file .*u\.txt"):
        read_times(tmp_path / "u.txt")
    (tmp_path / "d.txt").mkdir()
    with pytest.raises(InputError, match=r"^cannot read box file .*d\.txt: .*Is a directory"):
        read_boxes(tmp_path / "d.txt")


# ------------------------------------------------------------------------------ masks of other kinds


def test_a_32_bit_mask_beyond_16_bits_is_refused_not_wrapped(tmp_path: Path) -> None:
    # 257 * 256 is a multiple of 257 too, but 256 does not fit in 8 bits: it must not become object 0
    wide = np.zeros((4, 5), np.int32)
    wide[1, 1] = 257 * 256
    Image.fromarray(wide).save(tmp_path / "i32.tif")
    assert Image.open(tmp_path / "i32.tif").mode == "I"
    with pytest.raises(InputError, match=r"i32\.tif has values outside 0\.\.255 \(up to 65792, 1 non-zero values\)"):
        read_label_png(tmp_path / "i32.tif")


@pytest.mark.parametrize(
    ("value", "message"),
    [(-3, r"outside 0\.\.255 \(min -3"), (-1, r"outside 0\.\.255 \(min -1"),
     (1.5, r"object ids must be integers 0\.\.255"), (np.nan, "NaN or infinite"), (np.inf, "NaN or infinite")],
)
def test_a_wide_mask_of_no_8_bit_ids_is_refused(tmp_path: Path, value, message: str) -> None:
    wide = np.zeros((4, 5), np.float32 if isinstance(value, float) else np.int32)
    wide[2, 3] = value
    Image.fromarray(wide).save(tmp_path / "w.tif")
    with pytest.raises(InputError, match=rf"w\.tif .*{message}"):
        read_label_png(tmp_path / "w.tif")


def test_a_float_mask_of_integer_ids_is_read_exactly(tmp_path: Path) -> None:
    ids = np.zeros((4, 5), np.float32)
    ids[0, 0], ids[3, 4] = 7, 255
    Image.fromarray(ids).save(tmp_path / "f.tif")
    assert Image.open(tmp_path / "f.tif").mode == "F"
    labels, palette = read_label_png(tmp_path / "f.tif")
    assert palette is None and labels.dtype == np.uint8
    np.testing.assert_array_equal(labels, ids)


def test_a_16_bit_mask_warning_lists_its_values_and_what_they_become(tmp_path: Path, caplog) -> None:
    wide = (np.arange(8, dtype=np.uint16) * 257).reshape(2, 4)  # 8 values: the list is cut after 6
    Image.fromarray(wide).save(tmp_path / "scaled.png")
    with caplog.at_level(logging.WARNING, logger="trek_tracker.results"):
        labels, _ = read_label_png(tmp_path / "scaled.png")
    np.testing.assert_array_equal(labels, np.arange(8).reshape(2, 4))
    (record,) = caplog.records
    assert "values [0, 257, 514, 771, 1028, 1285, ...] are 8-bit values" in record.getMessage()
    assert record.getMessage().endswith("read as [0, 1, 2, 3, 4, 5, ...]")
    caplog.clear()
    Image.fromarray(wide[:, :3] * 2).save(tmp_path / "six.png")  # 6 values: all of them, no "..."
    with caplog.at_level(logging.WARNING, logger="trek_tracker.results"):
        read_label_png(tmp_path / "six.png")
    assert caplog.records[0].getMessage().endswith("read as [0, 2, 4, 8, 10, 12]")


def test_grey_alpha_and_rgba_masks_ignore_their_alpha(tmp_path: Path) -> None:
    labels = np.array([[0, 3, 3], [9, 0, 0]], np.uint8)
    alpha = np.array([[255, 0, 128], [255, 255, 0]], np.uint8)
    Image.fromarray(np.dstack([labels, alpha]), "LA").save(tmp_path / "la.png")
    back, palette = read_label_png(tmp_path / "la.png")
    assert palette is None
    np.testing.assert_array_equal(back, labels)
    rgb = np.zeros((2, 3, 3), np.uint8)
    rgb[labels == 3], rgb[labels == 9] = (201, 3, 7), (0, 0, 91)  # odd values: every bit of each channel kept
    Image.fromarray(np.dstack([rgb, alpha]), "RGBA").save(tmp_path / "rgba.png")
    back, palette = read_label_png(tmp_path / "rgba.png")
    np.testing.assert_array_equal(back, [[0, 1, 1], [2, 0, 0]])
    assert palette.shape == (256, 3) and palette.dtype == np.uint8 and not palette[3:].any()
    np.testing.assert_array_equal(palette[back], rgb)


def test_a_short_palette_is_padded_with_black(tmp_path: Path) -> None:
    im = Image.fromarray(np.array([[0, 1], [3, 2]], np.uint8), "P")
    im.putpalette([0, 0, 0, 10, 20, 30, 40, 50, 60, 70, 80, 90])  # 4 colours
    im.save(tmp_path / "p.png")
    labels, palette = read_label_png(tmp_path / "p.png")
    np.testing.assert_array_equal(labels, [[0, 1], [3, 2]])
    assert palette.shape == (256, 3) and palette.dtype == np.uint8
    np.testing.assert_array_equal(palette[:4], [[0, 0, 0], [10, 20, 30], [40, 50, 60], [70, 80, 90]])
    assert not palette[4:].any()


def test_an_rgb_mask_of_more_than_255_colours_is_refused(tmp_path: Path) -> None:
    rgb = np.zeros((16, 16, 3), np.uint8)
    rgb[..., 0], rgb[..., 1] = np.arange(256).reshape(16, 16), 1  # 256 colours, none of them black
    Image.fromarray(rgb).save(tmp_path / "many.png")
    with pytest.raises(InputError, match=r"many\.png has 256 colours; at most 255 objects"):
        read_label_png(tmp_path / "many.png")
    rgb[0, 0] = 0  # black is background: 255 objects fit
    Image.fromarray(rgb).save(tmp_path / "255.png")
    labels, palette = read_label_png(tmp_path / "255.png")
    assert labels[0, 0] == 0 and labels.max() == 255
    np.testing.assert_array_equal(palette[labels], rgb)


def test_a_mask_of_a_mode_that_holds_no_ids_is_refused(tmp_path: Path) -> None:
    Image.new("CMYK", (4, 3)).save(tmp_path / "c.tif")
    with pytest.raises(InputError, match=r"c\.tif has PNG mode CMYK; use a palette or grayscale PNG"):
        read_label_png(tmp_path / "c.tif")


def test_a_jpeg_mask_is_cut_at_128(tmp_path: Path) -> None:
    # uniform 8 x 8 blocks survive JPEG exactly, so the file holds the levels 0, 127, 128 and 255
    grey = np.zeros((64, 64), np.uint8)
    grey[:, 32:] = 255
    grey[:8, :8], grey[8:16, :8] = 127, 128
    path = _jpeg_of(grey, tmp_path / "m.jpg")
    decoded = np.asarray(Image.open(path))
    assert set(np.unique(decoded)) == {0, 127, 128, 255}
    labels, palette = read_label_png(path)
    assert palette is None
    np.testing.assert_array_equal(labels, np.where(decoded >= 128, 255, 0))


def test_a_jpeg_mask_without_compression_noise_is_read_as_it_is(tmp_path: Path, caplog) -> None:
    empty = _jpeg_of(np.zeros((16, 24), np.uint8), tmp_path / "empty.jpg")
    two = np.zeros((16, 24), np.uint8)
    two[:8, :8] = 7  # one object of id 7, block-aligned so JPEG keeps it
    small = _jpeg_of(two, tmp_path / "seven.jpg")
    with caplog.at_level(logging.WARNING, logger="trek_tracker.results"):
        assert not read_label_png(empty)[0].any()
        np.testing.assert_array_equal(read_label_png(small)[0], two)
    assert caplog.records == []


def test_a_jpeg_mask_of_faint_levels_is_refused(tmp_path: Path) -> None:
    grey = np.zeros((32, 32), np.uint8)
    grey[:8, :8], grey[8:16, 8:16] = 10, 20  # two objects, ids 10 and 20, none of them >= 128
    path = _jpeg_of(grey, tmp_path / "faint.jpg")
    assert set(np.unique(np.asarray(Image.open(path)))) == {0, 10, 20}
    with pytest.raises(InputError, match=r"faint\.jpg is a JPEG with 3 distinct values: .*\(one object or 2\?\)"):
        read_label_png(path)


def test_write_label_png_refuses_labels_that_are_not_2d_and_takes_a_flat_palette(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"labels must be 2-D \(H, W\), got shape \(2, 3, 1\)"):
        write_label_png(tmp_path / "m.png", np.zeros((2, 3, 1), np.uint8))
    assert not (tmp_path / "m.png").exists()
    palette = (np.arange(768) * 7 % 256).astype(np.uint8)
    labels = np.array([[0, 1, 2]], np.uint8)
    write_label_png(tmp_path / "flat.png", labels, palette.tolist())
    write_label_png(tmp_path / "k3.png", labels, palette.reshape(256, 3))
    assert (tmp_path / "flat.png").read_bytes() == (tmp_path / "k3.png").read_bytes()
    np.testing.assert_array_equal(read_label_png(tmp_path / "flat.png")[1], palette.reshape(256, 3))


def test_a_boolean_mask_is_object_1() -> None:
    mask = np.array([[False, True], [True, False]])
    ids = ObjectIds.from_labels(mask)
    assert ids.values == (1,)
    np.testing.assert_array_equal(ids.to_engine(mask), mask.astype(np.uint8))


# ------------------------------------------------------------------------- streaming writer, edge cases


def test_a_closed_streaming_writer_refuses_lines_and_commit_but_a_committed_one_commits_again(tmp_path: Path) -> None:
    w = StreamingTextWriter(tmp_path / "t.txt")
    w.write_line("1")
    w.close()
    w.close()  # closing twice is harmless
    w.sync()  # so is syncing a closed writer
    with pytest.raises(RuntimeError, match=r"t\.txt\.part is closed"):
        w.write_line("2")
    with pytest.raises(RuntimeError, match=r"t\.txt\.part was closed without commit"):
        w.commit()
    assert (tmp_path / "t.txt.part").read_text() == "1\n" and not (tmp_path / "t.txt").exists()
    w = StreamingTextWriter(tmp_path / "u.txt")
    w.write_line("1")
    assert w.commit() == w.commit() == tmp_path / "u.txt"  # a second commit neither fails nor rewrites
    with pytest.raises(RuntimeError, match="is closed"):  # a committed result is not written to any more
        w.write_line("2")
    assert w.committed and (tmp_path / "u.txt").read_text() == "1\n"


@pytest.mark.parametrize("text", ["a\rb", "a\r", "\n"])
def test_a_streaming_line_with_a_line_break_is_refused(tmp_path: Path, text: str) -> None:
    w = StreamingTextWriter(tmp_path / "t.txt")
    with pytest.raises(ValueError, match="must not contain a newline"):
        w.write_line(text)
    assert w.lines == 0 and (tmp_path / "t.txt.part").read_bytes() == b""
    w.close()


def test_keeping_more_lines_than_were_finished_is_an_error_naming_the_counts(tmp_path: Path) -> None:
    (tmp_path / "t.txt.part").write_text("1\n2\n3")  # two finished lines and a torn one
    with pytest.raises(InputError, match=r"t\.txt\.part holds 2 finished lines, fewer than the 3 expected"):
        StreamingTextWriter(tmp_path / "t.txt", keep=3)
    assert (tmp_path / "t.txt.part").read_text() == "1\n2\n3"  # left as it was
    with pytest.raises(InputError, match=r"none\.txt\.part holds 0 finished lines, fewer than the 1 expected"):
        StreamingTextWriter(tmp_path / "none.txt", keep=1)


def test_resume_or_keep_0_without_any_earlier_file_starts_an_empty_one(tmp_path: Path) -> None:
    for name, how in (("r.txt", {"resume": True}), ("k.txt", {"keep": 0})):
        w = StreamingTextWriter(tmp_path / name, **how)
        assert w.lines == 0
        w.write_line("x")
        w.commit()
        assert (tmp_path / name).read_text() == "x\n"


@pytest.mark.parametrize("how", [{"keep": 1}, {"resume": True}])
def test_resume_continues_the_part_file_when_a_committed_file_is_there_too(tmp_path: Path, how) -> None:
    # the committed file is an older run's; the .part file is the newer run that was stopped
    (tmp_path / "t.txt").write_text("old 1\nold 2\nold 3\n")
    (tmp_path / "t.txt.part").write_text("new 1\n")
    w = StreamingTextWriter(tmp_path / "t.txt", **how)
    assert w.lines == 1
    assert (tmp_path / "t.txt").read_text() == "old 1\nold 2\nold 3\n"  # kept until the commit replaces it
    w.write_line("new 2")
    w.commit()
    assert (tmp_path / "t.txt").read_text() == "new 1\nnew 2\n"


def test_keep_truncates_later_lines_so_that_new_ones_follow_the_kept_ones(tmp_path: Path) -> None:
    (tmp_path / "t.txt.part").write_text("0.10000000\n0.20000000\n0.30000000\n0.40000000\n")
    w = StreamingTextWriter(tmp_path / "t.txt", keep=2)
    assert (tmp_path / "t.txt.part").read_text() == "0.10000000\n0.20000000\n"  # truncated at once
    w.write_time(0.5)
    w.commit()
    np.testing.assert_array_equal(read_times(tmp_path / "t.txt", rows=3), [0.1, 0.2, 0.5])


def test_commit_syncs_every_line_before_the_file_takes_its_name(tmp_path: Path, fsync_sizes) -> None:
    w = StreamingTextWriter(tmp_path / "b.txt")
    w.write_box([1, 2, 3, 4])
    w.write_box([5, 6, 7, 8])
    w.commit()
    assert fsync_sizes[0] == len("1.000,2.000,3.000,4.000\n5.000,6.000,7.000,8.000\n")


def test_a_16_bit_mask_refusal_counts_its_objects_also_without_background(tmp_path: Path) -> None:
    wide = np.full((4, 5), 300, np.uint16)  # a crop inside two objects: no background pixel
    wide[:, 3:] = 1000
    Image.fromarray(wide).save(tmp_path / "crop.png")
    with pytest.raises(InputError, match=r"crop\.png has values outside 0\.\.255 \(up to 1000, 2 non-zero values\)"):
        read_label_png(tmp_path / "crop.png")
    wide[0, 0] = 0
    Image.fromarray(wide).save(tmp_path / "with0.png")
    with pytest.raises(InputError, match=r"\(up to 1000, 2 non-zero values\)"):
        read_label_png(tmp_path / "with0.png")


def test_object_ids_are_an_immutable_value() -> None:
    ids = ObjectIds((3, 7))
    with pytest.raises(dataclasses.FrozenInstanceError):
        ids.values = (3,)  # type: ignore[misc]
    assert ids == ObjectIds((3, 7)) and len({ids, ObjectIds((3, 7)), ObjectIds((7, 3))}) == 2


def test_a_16_bit_mask_of_value_256_is_refused_not_wrapped_to_background(tmp_path: Path) -> None:
    wide = np.zeros((3, 4), np.uint16)
    wide[1, 2] = 256  # the smallest value that does not fit in 8 bits (and is no multiple of 257)
    Image.fromarray(wide).save(tmp_path / "w256.png")
    with pytest.raises(InputError, match=r"w256\.png has values outside 0\.\.255 \(up to 256, 1 non-zero values\)"):
        read_label_png(tmp_path / "w256.png")


def test_a_colour_jpeg_refusal_counts_its_colours(tmp_path: Path) -> None:
    rgb = np.zeros((30, 45, 3), np.uint8)
    rgb[3:17, 5:29], rgb[19:27, 11:40] = (200, 30, 60), (20, 150, 90)  # two objects, not block-aligned: noise
    Image.fromarray(rgb).save(tmp_path / "c.jpg", quality=95)
    decoded = np.asarray(Image.open(tmp_path / "c.jpg").convert("RGB")).reshape(-1, 3)
    colours = len(np.unique(decoded, axis=0))
    assert colours > 3
    with pytest.raises(InputError, match=rf"c\.jpg is a colour JPEG: compression noise gives it {colours} colours"):
        read_label_png(tmp_path / "c.jpg")


def test_a_mask_with_corrupt_image_data_is_an_input_error_naming_it(tmp_path: Path) -> None:
    # damaged compressed data under a valid checksum: whole and well-formed as a file, but PIL cannot decode it
    buf = io.BytesIO()
    Image.fromarray((np.arange(30 * 40) % 251).astype(np.uint8).reshape(30, 40)).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    at = data.find(b"IDAT")
    size = int.from_bytes(data[at - 4:at], "big")
    body = data[at + 4:at + 4 + size]
    body[5:15] = b"\xff" * 10
    data[at + 4:at + 4 + size] = body
    data[at + 4 + size:at + 8 + size] = zlib.crc32(b"IDAT" + bytes(body)).to_bytes(4, "big")
    (tmp_path / "bad.png").write_bytes(bytes(data))
    with pytest.raises(InputError, match=r"^cannot read mask .*bad\.png: "):
        read_label_png(tmp_path / "bad.png")


def test_object_id_maps_are_uint8_and_take_an_empty_label_map() -> None:
    ids = ObjectIds((255, 7))
    engine = ids.to_engine(np.array([[0, 7, 255]], np.int64))
    assert engine.dtype == np.uint8 and engine.tolist() == [[0, 2, 1]]
    original = ids.to_original(np.array([[0, 1, 2]], np.int64))
    assert original.dtype == np.uint8 and original.tolist() == [[0, 255, 7]]
    empty = np.zeros((0, 5), np.uint8)  # e.g. a crop of no pixels
    assert ObjectIds.from_labels(empty).values == () and ids.extend(empty) == ids
    assert ids.to_engine(empty).shape == ids.to_original(empty).shape == (0, 5)
    assert ObjectIds.from_labels(np.zeros((0,), np.float64)).values == ()


def _open_files() -> set[str]:
    fds = Path("/proc/self/fd")
    if not fds.is_dir():
        pytest.skip("needs /proc/self/fd to list the open files")
    paths = set()
    for fd in fds.iterdir():
        try:
            paths.add(os.readlink(fd))
        except OSError:
            pass
    return paths


def test_a_streaming_writer_leaves_no_file_open_once_closed_committed_or_failed(tmp_path: Path) -> None:
    # one writer per object and per run: a leaked descriptor adds up over a long evaluation
    w = StreamingTextWriter(tmp_path / "closed.txt")
    w.write_line("1")
    assert str((tmp_path / "closed.txt.part").resolve()) in _open_files()
    w.close()
    w = StreamingTextWriter(tmp_path / "committed.txt")
    w.write_line("1")
    w.commit()
    with pytest.raises(RuntimeError, match="killed"):
        with StreamingTextWriter(tmp_path / "failed.txt") as w:
            w.write_line("1")
            raise RuntimeError("killed")
    with pytest.raises(RuntimeError, match="is closed"):
        w.write_line("2")
    assert not {p for p in _open_files() if p.startswith(str(tmp_path.resolve()))}


def test_a_new_run_leaves_the_committed_file_of_an_earlier_one_until_it_commits(tmp_path: Path) -> None:
    write_boxes(tmp_path / "b.txt", [[1, 2, 3, 4], [5, 6, 7, 8]])
    before = (tmp_path / "b.txt").read_bytes()
    w = StreamingTextWriter(tmp_path / "b.txt")  # no resume, no keep: a new run, which may fail
    assert w.lines == 0
    w.write_box([9, 9, 9, 9])
    w.close()
    assert (tmp_path / "b.txt").read_bytes() == before
    assert (tmp_path / "b.txt.part").read_text() == "9.000,9.000,9.000,9.000\n"
