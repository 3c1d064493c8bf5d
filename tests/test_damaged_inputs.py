"""Damaged and ambiguous frame inputs: truncated videos and images are found and reported (never read as if
whole), empty or unreadable ones are one-line errors naming the file, FFmpeg's and libjpeg's own lines stay
off stderr."""

from __future__ import annotations

import io
import logging
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from tests.damaged import (
    assert_one_line_error,
    box_types,
    faststart,
    noise_frames,
    run_cli,
    truncate,
    write_video,
)
from trek_tracker.errors import InputError
from trek_tracker.video import DamagedInputError, ImageFolderSource, image_damage, open_frames, read_image_rgb

# the smallest model, no weights, a small network input: the runs below are about the input, not tracking
TINY = ("--model", "test_deaot_tiny", "--random-weights", "--max-long-edge", "65", "--init", "box", "--quiet")


def _run(tmp_path: Path, *args) -> subprocess.CompletedProcess:
    """``trek-track run ARGS`` with the tiny model, writing to ``tmp_path/out``."""
    return run_cli("run", *args, *TINY, "--out", tmp_path / "out")


def _jpeg(rgb: np.ndarray, params: dict | None = None) -> bytes:
    flat = [int(v) for kv in (params or {}).items() for v in kv]
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), flat)
    assert ok
    return buf.tobytes()


def _folder(tmp_path: Path, n: int = 5) -> tuple[Path, list[np.ndarray]]:
    frames = noise_frames(n, (40, 56))
    folder = tmp_path / "frames"
    folder.mkdir()
    for i, f in enumerate(frames):
        (folder / f"{i:05d}.jpg").write_bytes(_jpeg(f))
    return folder, frames


# ------------------------------------------------------------------------------------- image structure


@pytest.mark.parametrize("params", [{}, {cv2.IMWRITE_JPEG_PROGRESSIVE: 1}, {cv2.IMWRITE_JPEG_RST_INTERVAL: 1}])
def test_every_cut_of_a_jpeg_is_found(params: dict) -> None:
    data = _jpeg(noise_frames(1, (24, 40))[0], params)
    assert image_damage(data) is None
    missed = [n for n in range(1, len(data)) if image_damage(data[:n]) is None]
    assert missed == []
    assert image_damage(data + b"camera trailer \xff\xd9 data") is None  # bytes after the end are allowed
    assert image_damage(b"") == "empty (0 bytes)"


def test_a_thumbnail_end_marker_does_not_hide_a_cut_main_image() -> None:
    main = _jpeg(noise_frames(1, (64, 64))[0])
    thumb = _jpeg(noise_frames(1, (8, 8), seed=1)[0])  # a whole JPEG, with its own end marker, in APP1
    app1 = b"\xff\xe1" + (len(thumb) + 8).to_bytes(2, "big") + b"Exif\x00\x00" + thumb
    data = main[:2] + app1 + main[2:]
    assert cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR) is not None
    assert image_damage(data) is None
    assert "truncated" in image_damage(data[: len(data) - 100])


def test_png_cut_is_found() -> None:
    buf = io.BytesIO()
    Image.fromarray(noise_frames(1)[0]).save(buf, "PNG")
    data = buf.getvalue()
    assert image_damage(data) is None
    assert "IEND" in image_damage(data[:-12]) and "IEND" in image_damage(data[: len(data) // 2])


# -------------------------------------------------------------------------------------------- folders


def test_truncated_jpeg_in_a_folder_is_reported_once_and_silently_decoded(tmp_path, caplog, capfd) -> None:
    folder, frames = _folder(tmp_path)
    cut = folder / "00003.jpg"
    cut.write_bytes(cut.read_bytes()[:-400])
    src = open_frames(folder)
    with caplog.at_level(logging.WARNING, logger="trek_tracker.video"):
        got = list(src)
        src[3]  # reading it again does not report it again
    assert len(got) == 5 and got[3].shape == (40, 56, 3)
    np.testing.assert_array_equal(got[2], read_image_rgb(folder / "00002.jpg")[0])  # neighbours untouched
    assert src.truncated and [(d.file, d.frame, d.kind) for d in src.damage] == [(cut, 3, "truncated-image")]
    assert str(cut) in src.damage[0].message and "truncated" in src.damage[0].message
    assert [r.getMessage() for r in caplog.records] == [src.damage[0].message]
    assert src.damage[0].to_dict()["file"] == str(cut)
    # libjpeg's own "Premature end of JPEG file" (OpenCV prints it on stderr) must not appear
    assert "JPEG" not in capfd.readouterr().err
    strict = open_frames(folder, strict=True)
    it = iter(strict)
    assert len([next(it) for _ in range(3)]) == 3
    with pytest.raises(DamagedInputError, match="00003.jpg") as info:
        next(it)
    assert info.value.damage.frame == 3 and isinstance(info.value, InputError)


def test_broken_jpeg_structure_is_damage(tmp_path: Path, capfd) -> None:
    folder, frames = _folder(tmp_path, 3)
    path = folder / "00001.jpg"
    data = path.read_bytes()
    app0_end = 4 + int.from_bytes(data[4:6], "big")
    path.write_bytes(data[:app0_end] + b"\x00\x07" + data[app0_end:])  # stray bytes libjpeg skips
    assert image_damage(path.read_bytes()) == f"damaged (no JPEG marker at byte {app0_end})"
    src = open_frames(folder)
    got = list(src)
    assert [(d.file, d.frame, d.kind) for d in src.damage] == [(path, 1, "damaged-image")]
    assert not src.truncated
    whole = cv2.cvtColor(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    assert np.abs(got[1].astype(int) - whole).mean() < 1.0  # the picture is all there
    assert "JPEG" not in capfd.readouterr().err  # libjpeg's "Corrupt JPEG data: 2 extraneous bytes"


def test_empty_frame_is_an_error_naming_it(tmp_path: Path) -> None:
    folder, _ = _folder(tmp_path)
    (folder / "00002.jpg").write_bytes(b"")
    src = open_frames(folder)
    with pytest.raises(InputError, match=r"00002.jpg is empty \(0 bytes\)"):
        list(src)
    (folder / "00000.jpg").write_bytes(b"")
    with pytest.raises(InputError, match=r"00000.jpg is empty"):
        open_frames(folder)


def test_sixteen_bit_frames_are_scaled_not_clipped(tmp_path: Path) -> None:
    folder = tmp_path / "f"
    folder.mkdir()
    wide = (np.arange(40 * 56).reshape(40, 56) * 29).astype(np.uint16)
    assert cv2.imwrite(str(folder / "0.png"), wide)
    frame = open_frames(folder)[0]
    np.testing.assert_array_equal(frame[..., 0], (wide >> 8).astype(np.uint8))
    assert frame.mean() < 128  # PIL's convert("RGB") would give nearly all white


def test_same_frame_name_with_two_extensions_is_refused(tmp_path: Path) -> None:
    folder, _ = _folder(tmp_path, 3)
    Image.fromarray(np.zeros((40, 56), np.uint8)).save(folder / "00001.png")  # e.g. a mask among the frames
    with pytest.raises(InputError, match=r"both 00001.jpg and 00001.png"):
        ImageFolderSource(folder)


def test_one_frame_number_twice_is_refused_and_odd_names_are_named(tmp_path: Path, caplog) -> None:
    folder, _ = _folder(tmp_path, 4)
    (folder / "2.jpg").write_bytes((folder / "00002.jpg").read_bytes())  # a second numbering
    with pytest.raises(InputError, match=r"both 00002.jpg and 2.jpg for one frame"):
        open_frames(folder)
    (folder / "2.jpg").unlink()
    (folder / "cover.jpg").write_bytes((folder / "00000.jpg").read_bytes())
    with caplog.at_level(logging.WARNING, logger="trek_tracker.video"):
        src = open_frames(folder)
    assert src.files[-1].name == "cover.jpg"
    (record,) = caplog.records
    assert str(folder) in record.getMessage() and "(cover.jpg)" in record.getMessage()


def test_broken_link_among_frames_is_refused(tmp_path: Path) -> None:
    folder, _ = _folder(tmp_path, 3)
    (folder / "00003.jpg").symlink_to(tmp_path / "gone.jpg")
    with pytest.raises(InputError, match=r"00003.jpg is a broken link"):
        open_frames(folder)


# ---------------------------------------------------------------------------------------------- videos


@pytest.fixture(scope="module")
def avi(tmp_path_factory) -> Path:
    return write_video(tmp_path_factory.mktemp("v") / "clip.avi", noise_frames(12))


def test_whole_video_has_no_damage(avi: Path) -> None:
    src = open_frames(avi)
    assert sum(1 for _ in src) == 12 and src.damage == [] and not src.truncated


def test_truncated_video_is_reported_at_the_end_of_iteration(avi: Path, tmp_path: Path, caplog) -> None:
    cut = truncate(avi, tmp_path / "cut.avi", 0.5)
    src = open_frames(cut)
    assert src.promised == 12
    with caplog.at_level(logging.WARNING, logger="trek_tracker.video"):
        n = sum(1 for _ in src)
    assert 0 < n < 12 and len(src) == n and src.truncated
    (damage,) = src.damage
    assert (damage.file, damage.frame, damage.kind) == (cut, n, "truncated-video")
    assert str(cut) in damage.message and f"stopped after {n} frames" in damage.message
    assert caplog.records[-1].getMessage() == damage.message
    with pytest.raises(DamagedInputError, match="cut.avi"):
        list(open_frames(cut, strict=True))
    # stopping early is not truncation
    early = open_frames(cut)
    for k, _ in enumerate(early):
        if k == 1:
            break
    assert early.damage == []


def test_cut_mp4_with_its_index_first_decodes_up_to_the_cut(shared: Path, tmp_path: Path) -> None:
    whole = faststart((shared / "data/videos/blackswan.mp4").read_bytes())
    assert box_types(whole)[:4] == [b"ftyp", b"free", b"moov", b"mdat"]
    (tmp_path / "whole.mp4").write_bytes(whole)
    ok = open_frames(tmp_path / "whole.mp4")
    assert sum(1 for _ in ok) == 50 and ok.damage == []
    cut = open_frames(truncate(whole, tmp_path / "cut.mp4", 0.6))
    n = sum(1 for _ in cut)
    assert n < 50 and cut.truncated
    assert f"stopped after {n} of the 50 frames its container lists" in cut.damage[0].message
    corrupt = bytearray(whole)
    mid = len(whole) // 2
    corrupt[mid:mid + 20000] = bytes(20000)  # damage in the middle, the end intact
    (tmp_path / "mid.mp4").write_bytes(bytes(corrupt))
    src = open_frames(tmp_path / "mid.mp4")
    assert sum(1 for _ in src) < 50 and src.truncated


def test_mp4_without_its_index_says_so(tmp_path: Path) -> None:
    mp4 = write_video(tmp_path / "rec.mp4", noise_frames(6), fourcc="mp4v")
    assert box_types(mp4.read_bytes())[-1] == b"moov"
    with pytest.raises(InputError, match=r"rec_cut.mp4: it is truncated .*'moov'"):
        open_frames(truncate(mp4, tmp_path / "rec_cut.mp4", 0.9))


def test_empty_video_and_special_files(tmp_path: Path) -> None:
    (tmp_path / "empty.mp4").write_bytes(b"")
    with pytest.raises(InputError, match=r"empty.mp4 is empty \(0 bytes\)"):
        open_frames(tmp_path / "empty.mp4")
    with pytest.raises(InputError, match="not a regular file"):
        open_frames("/dev/null")
    (tmp_path / "link.mp4").symlink_to(tmp_path / "nowhere.mp4")
    with pytest.raises(InputError, match="broken link"):
        open_frames(tmp_path / "link.mp4")


# ------------------------------------------------------------------------------ the CLI, in a subprocess


def test_ffmpeg_lines_stay_off_stderr(tmp_path: Path) -> None:
    mp4 = write_video(tmp_path / "rec.mp4", noise_frames(6), fourcc="mp4v")
    cut = truncate(mp4, tmp_path / "cut.mp4", 0.5)
    proc = _run(tmp_path, "--video", cut, "--box", "1,1,10,10")
    line = assert_one_line_error(proc, str(cut), "'moov'")
    assert "moov atom not found" not in line
    assert not (tmp_path / "out").exists()


def test_truncated_video_run_warns_naming_the_file(avi: Path, tmp_path: Path) -> None:
    cut = truncate(avi, tmp_path / "cut.avi", 0.5)
    proc = _run(tmp_path, "--video", cut, "--box", "5,5,20,20")
    assert proc.returncode == 0, proc.stderr
    damaged = [line for line in proc.stderr.splitlines() if str(cut) in line]
    assert len(damaged) == 1 and "truncated or damaged" in damaged[0], proc.stderr
    assert "overread" not in proc.stderr and "[mjpeg" not in proc.stderr  # FFmpeg's own lines
    n = len((tmp_path / "out" / "boxes.txt").read_text().splitlines())
    assert f"stopped after {n} frames" in damaged[0]


def test_empty_frame_in_a_folder_is_one_line(tmp_path: Path) -> None:
    folder, _ = _folder(tmp_path, 3)
    (folder / "00000.jpg").write_bytes(b"")
    proc = _run(tmp_path, "--video", folder, "--box", "5,5,20,20")
    assert_one_line_error(proc, str(folder / "00000.jpg"), "empty (0 bytes)")


def test_jpeg_init_mask_is_one_object_with_one_warning_line(tmp_path: Path) -> None:
    folder, _ = _folder(tmp_path, 3)
    mask = np.zeros((40, 56), np.uint8)
    mask[8:30, 10:40] = 255
    Image.fromarray(mask).save(tmp_path / "first.jpg", quality=90)
    values = np.unique(np.asarray(Image.open(tmp_path / "first.jpg")))
    assert len(values) > 3
    proc = _run(tmp_path, "--video", folder, "--init-mask", tmp_path / "first.jpg")
    assert proc.returncode == 0, proc.stderr
    about = [line for line in proc.stderr.splitlines() if "first.jpg" in line]
    assert len(about) == 1 and f"{len(values)} distinct values" in about[0] and "one object" in about[0]
    assert sorted(p.name for p in (tmp_path / "out").glob("boxes*.txt")) == ["boxes.txt"]  # not one per value


def test_colour_jpeg_init_mask_is_one_line(tmp_path: Path) -> None:
    folder, _ = _folder(tmp_path, 2)
    mask = np.zeros((40, 56, 3), np.uint8)
    mask[5:20, 5:20] = (128, 0, 0)
    mask[22:35, 30:50] = (0, 128, 0)
    Image.fromarray(mask).save(tmp_path / "first.jpg", quality=95)
    proc = _run(tmp_path, "--video", folder, "--init-mask", tmp_path / "first.jpg")
    assert_one_line_error(proc, str(tmp_path / "first.jpg"), "colour JPEG", "PNG")
