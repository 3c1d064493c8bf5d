"""Frame sources and decoding ahead (trek_tracker.video)."""

from __future__ import annotations

import re
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest

from trek_tracker.errors import InputError
from trek_tracker.video import (
    ArraySource,
    DamagedInputError,
    ImageFolderSource,
    IndexedFrames,
    VideoFileSource,
    _check_frame_names,
    decode_rgb,
    natural_key,
    open_frames,
    prefetch,
)


def _write_rgb(path: Path, rgb: np.ndarray) -> None:
    assert cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))


def _frame(value: int, size: tuple[int, int] = (12, 16)) -> np.ndarray:
    """A frame whose red channel is ``value`` and blue channel is 0 (so a channel swap is visible)."""
    img = np.zeros((*size, 3), np.uint8)
    img[..., 0] = value
    img[..., 1] = 100
    return img


def _write_video(path: Path, frames: list[np.ndarray], fps: float = 10.0) -> None:
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    assert writer.isOpened()
    for f in frames:
        writer.write(cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
    writer.release()


# ------------------------------------------------------------------------------------------- folders


def test_natural_sort() -> None:
    names = ["10.jpg", "2.jpg", "1.jpg", "frame_10.png", "frame_9.png", "a.png"]
    assert sorted(names, key=natural_key) == [
        "1.jpg",
        "2.jpg",
        "10.jpg",
        "a.png",
        "frame_9.png",
        "frame_10.png",
    ]


def test_folder_natural_order_extensions_and_values(tmp_path: Path) -> None:
    # PNG is lossless, so the values identify the frames; mixed-case extensions and a non-image are present.
    for i, name in enumerate(["1.png", "2.PNG", "10.png"]):
        _write_rgb(tmp_path / name, _frame(10 * (i + 1)))
    (tmp_path / "notes.txt").write_text("not a frame")
    (tmp_path / ".hidden.png").write_bytes(b"junk")
    src = open_frames(tmp_path)
    assert isinstance(src, ImageFolderSource)
    assert len(src) == 3 and src.size == (12, 16) and src.fps is None and src.name == tmp_path.name
    assert [f.name for f in src.files] == ["1.png", "2.PNG", "10.png"]
    frames = list(src)
    assert [int(f[0, 0, 0]) for f in frames] == [10, 20, 30]
    assert all(f.dtype == np.uint8 and f.shape == (12, 16, 3) for f in frames)
    assert frames[0][0, 0, 2] == 0  # RGB, not BGR
    np.testing.assert_array_equal(src[-1], frames[2])
    np.testing.assert_array_equal(src[1], frames[1])
    with pytest.raises(IndexError):
        src[3]


def test_a_gap_in_a_folders_numbering_is_warned_of_and_a_constant_step_is_not(tmp_path: Path, caplog,
                                                                              monkeypatch) -> None:
    """Frames are taken in name order: with 00010-00019 deleted, frame 10 of the run is file 00020, which the
    user must hear of. An extraction that keeps every other frame numbers with a constant step: no gap."""
    import logging

    monkeypatch.setattr(logging.getLogger("trek_tracker"), "propagate", True)  # the CLI's handler may be set
    caplog.set_level("WARNING", logger="trek_tracker")
    for name, numbers in (("gaps", [*range(10), *range(20, 30)]), ("every_other", range(0, 40, 2)),
                          ("whole", range(20))):
        folder = tmp_path / name
        folder.mkdir()
        for i in numbers:
            (folder / f"{i:05d}.png").touch()
        caplog.clear()
        _check_frame_names(folder, sorted(p.name for p in folder.iterdir()))
        if name == "gaps":
            assert "numbering skips after 00009.png (next: 00020.png), 10 frame(s) missing" in caplog.text
        else:
            assert caplog.text == "", name


def test_folder_jpeg_count_and_random_access(davis: Path) -> None:
    src = open_frames(davis / "JPEGImages/480p/car-shadow")
    assert len(src) == 40 and src.size == (480, 854)
    assert src.files[0].name == "00000.jpg" and src.files[-1].name == "00039.jpg"
    direct = cv2.cvtColor(cv2.imread(str(src.files[7])), cv2.COLOR_BGR2RGB)
    np.testing.assert_array_equal(src[7], direct)


def test_missing_path(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such"):
        open_frames(tmp_path / "nope.mp4")


def test_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="empty"):
        open_frames(tmp_path)


def test_folder_without_images(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("x")
    (tmp_path / "b.csv").write_text("x")
    with pytest.raises(InputError, match="no .jpg/.jpeg/.png images.*a.txt"):
        open_frames(tmp_path)


def test_mixed_sizes_named_when_met(tmp_path: Path) -> None:
    _write_rgb(tmp_path / "0.png", _frame(1))
    _write_rgb(tmp_path / "1.png", _frame(2))
    _write_rgb(tmp_path / "2.png", _frame(3, size=(12, 15)))
    src = open_frames(tmp_path)  # opening reads only the first frame
    it = iter(src)
    next(it), next(it)
    with pytest.raises(InputError, match=r"2\.png is 15x12.*16x12"):
        next(it)


def test_corrupt_image_in_folder(tmp_path: Path) -> None:
    _write_rgb(tmp_path / "0.png", _frame(1))
    (tmp_path / "1.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (tmp_path / "2.jpg").write_bytes(b"\xff\xd8\xff\xe0\x00\x10JFIF")  # a JPEG cut before any picture
    src = open_frames(tmp_path)
    with pytest.raises(InputError, match=r"cannot decode image \S*1.jpg; is it a valid JPEG/PNG file\?$"):
        src[1]
    with pytest.raises(InputError, match=r"cannot decode image \S*2.jpg: truncated \(the JPEG data ends before its "
                                         r"end-of-image marker\); is it a valid JPEG/PNG file\?$"):
        src[2]


def test_single_image_is_refused(tmp_path: Path) -> None:
    _write_rgb(tmp_path / "0.png", _frame(1))
    with pytest.raises(InputError, match="single image"):
        open_frames(tmp_path / "0.png")


# ----------------------------------------------------------------------------------------- video files


def test_corrupt_video(tmp_path: Path) -> None:
    path = tmp_path / "broken.mp4"
    path.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8)
    with pytest.raises(InputError, match="broken.mp4"):
        open_frames(path)


def test_video_file_source(tmp_path: Path) -> None:
    frames = [_frame(v, size=(32, 48)) for v in (0, 60, 120, 180, 240)]
    path = tmp_path / "clip.mp4"
    _write_video(path, frames, fps=12.0)
    src = open_frames(path)
    assert isinstance(src, VideoFileSource)
    assert src.size == (32, 48) and src.fps == pytest.approx(12.0) and src.name == "clip"
    assert len(src) == 5
    decoded = list(src)
    assert len(decoded) == 5 and src.len_is_exact and len(src) == 5
    reds = [float(f[..., 0].mean()) for f in decoded]
    np.testing.assert_allclose(reds, [0, 60, 120, 180, 240], atol=8)  # RGB order, lossy codec
    assert all(float(f[..., 2].mean()) < 8 for f in decoded)
    # random access: forward, backward (reopens), same frame twice
    for i in (3, 1, 1, 4, 0):
        np.testing.assert_array_equal(src[i], decoded[i])
    np.testing.assert_array_equal(src[-1], decoded[-1])
    with pytest.raises(IndexError):
        src[5]
    src.close()


def test_mp4_and_jpeg_folder_agree(shared: Path) -> None:
    video = open_frames(shared / "data/videos/blackswan.mp4")
    folder = open_frames(shared / "data/davis/JPEGImages/480p/blackswan")
    assert len(video) == len(folder) == 50
    assert video.size == folder.size == (480, 854)
    assert video.fps == pytest.approx(30.0)
    n = 0
    for i, (a, b) in enumerate(zip(video, folder, strict=True)):
        if i % 10 == 0:  # a few frames suffice to catch a colour-order bug
            a16, b16 = a.astype(np.int16), b.astype(np.int16)
            same = np.abs(a16 - b16).mean()
            swapped = np.abs(a16[..., ::-1] - b16).mean()
            assert same < 8.0, f"frame {i}: mean |diff| {same:.2f}"  # measured 4.5 on average
            assert swapped > 2 * same, f"frame {i}: RGB vs BGR {swapped:.2f} is not far from {same:.2f}"
        n += 1
    assert n == 50 and video.len_is_exact and len(video) == 50


# ------------------------------------------------------------------------------------ a range of frames


@pytest.mark.parametrize("clip", ["videos/blackswan.mp4", "videos/bedroom.mp4", "davis/JPEGImages/480p/blackswan"])
def test_a_range_of_frames_is_exactly_those_frames(shared: Path, clip: str) -> None:
    """``frames(start, stop)`` gives frames ``start`` .. ``stop - 1`` of a whole iteration, pixel for pixel:
    a video reaches ``start`` by decoding the frames before it, so the index is the decoding order's."""
    every = list(open_frames(shared / "data" / clip))
    n = len(every)
    for start, stop in [(0, 3), (17, 29), (n - 4, None), (n - 1, n)]:
        src = open_frames(shared / "data" / clip)
        got = list(src.frames(start, stop))
        want = every[start:stop]
        assert len(got) == len(want) and all(np.array_equal(a, b) for a, b in zip(got, want, strict=True))
    ranged = open_frames(shared / "data" / clip)
    assert isinstance(ranged.frames(5, 8), IndexedFrames) == ranged.path.is_dir()
    with pytest.raises(InputError, match=f"cannot start at frame {n}: .* has {n} frames \\(0-{n - 1}\\)"):
        ranged.frames(n)
    with pytest.raises(InputError, match=f"cannot track up to frame {n}: .*leave the last frame out"):
        ranged.frames(0, n + 1)
    with pytest.raises(InputError, match="must not come before the first"):
        ranged.frames(10, 10)
    with pytest.raises(InputError, match="start at 0"):
        ranged.frames(-1)


def test_reaching_a_far_start_frame_shows_a_bar(shared: Path, monkeypatch, capsys) -> None:
    """Decoding up to a start frame far into a video shows a bar with ``progress`` (from 1000 frames; 40 here)
    and nothing without it."""
    import trek_tracker.video as video

    monkeypatch.setattr(video, "_SKIP_BAR_FRAMES", 40)
    src = open_frames(shared / "data/videos/blackswan.mp4")
    assert len(list(src.frames(39, progress=True))) == 11 and "to frame" not in capsys.readouterr().err
    err = (len(list(src.frames(40, progress=True))), capsys.readouterr().err)
    assert err[0] == 10 and "blackswan: to frame 40" in err[1]
    assert "40/40" in err[1]  # it ends full, not at its last block of 256 (here 0)
    assert re.search(r"frame/s|s/frame", err[1])  # counted in frames
    assert len(list(src.frames(40))) == 10 and capsys.readouterr().err == ""


def test_an_array_range_and_a_range_past_a_truncated_videos_end(shared: Path, tmp_path: Path) -> None:
    """Arrays slice like the rest; a cut MP4 lists 50 frames but decodes fewer: starting past the last
    decodable one is an error that says how many there are, and records the damage."""
    from tests.damaged import faststart, truncate

    src = open_frames(np.stack([_frame(v) for v in (5, 6, 7, 8)]))
    assert [int(f[0, 0, 0]) for f in src.frames(1, 3)] == [6, 7]
    whole = faststart((shared / "data/videos/blackswan.mp4").read_bytes())
    cut = truncate(whole, tmp_path / "cut.mp4", 0.6)
    n = sum(1 for _ in open_frames(cut))
    assert n < 50
    late = open_frames(cut)
    with pytest.raises(InputError, match=f"cannot start at frame 49: .* has {n} decodable frames \\(0-{n - 1}\\)"):
        late.frames(49)
    assert late.truncated and late.len_is_exact and len(late) == n
    assert f"stopped after {n} of the 50 frames its container lists; only frames 0-{n - 1} were read" in (
        late.damage[0].message)
    tail = open_frames(cut)
    assert len(list(tail.frames(n - 2))) == 2 and tail.truncated  # the range ends where decoding does


# ------------------------------------------------------------------------------ arrays and prefetching


def test_array_source() -> None:
    frames = np.stack([_frame(v) for v in (5, 6, 7)])
    src = open_frames(frames)
    assert isinstance(src, ArraySource) and len(src) == 3 and src.size == (12, 16)
    assert src.name == "frames" and ArraySource(frames, fps=5.0, name="clip").name == "clip"
    assert [int(f[0, 0, 0]) for f in src] == [5, 6, 7]
    assert int(src[-1][0, 0, 0]) == 7
    with pytest.raises(InputError, match="frame 1 is 15x12"):
        list(open_frames([_frame(1), _frame(2, size=(12, 15))]))
    with pytest.raises(InputError, match="RGB uint8"):
        ArraySource([np.zeros((4, 4), np.uint8)])
    with pytest.raises(InputError, match="no frames"):
        ArraySource([])


def test_prefetch_keeps_order_and_raises_where_the_source_fails(tmp_path: Path) -> None:
    for i in range(6):
        _write_rgb(tmp_path / f"{i}.png", _frame(i))
    src = open_frames(tmp_path)
    assert [int(f[0, 0, 0]) for f in prefetch(src, depth=2)] == list(range(6))
    _write_rgb(tmp_path / "6.png", _frame(6, size=(10, 16)))
    got = []
    with pytest.raises(InputError, match="6.png"):
        for f in prefetch(open_frames(tmp_path)):
            got.append(int(f[0, 0, 0]))
    assert got == list(range(6))


def test_prefetch_stops_its_thread_on_break() -> None:
    import threading

    def endless():
        i = 0
        while True:
            yield np.full((2, 2, 3), i % 256, np.uint8)
            i += 1

    gen = prefetch(endless(), depth=3)
    for k, _ in enumerate(gen):
        assert any(t.name == "frame-prefetch" and t.is_alive() for t in threading.enumerate())
        if k == 4:
            break
    gen.close()
    assert not any(t.name == "frame-prefetch" and t.is_alive() for t in threading.enumerate())



def test_parallel_decoding_keeps_order_bounds_lookahead_and_raises_where_a_frame_fails(tmp_path: Path) -> None:
    """Frame files decoded by several threads (``IndexedFrames``): frames arrive in order even when later
    ones finish first, at most ``depth`` are read ahead, a frame's error is raised at that frame, and the
    decoding threads are gone when the loop stops."""
    import threading
    import time

    read_so_far: list[int] = []
    lock = threading.Lock()

    def read(i: int) -> np.ndarray:
        time.sleep(0.02 if i % 3 == 0 else 0.001)  # every third frame is slow: others overtake it
        with lock:
            read_so_far.append(i)
        if i == 13:
            raise InputError("frame 13 is damaged")
        return np.full((2, 2, 3), i, np.uint8)

    frames = IndexedFrames(read, range(20))
    got, ahead = [], []
    with pytest.raises(InputError, match="frame 13"):
        for f in prefetch(frames, depth=4, threads=3):
            got.append(int(f[0, 0, 0]))
            with lock:
                ahead.append(len(read_so_far) - len(got))
            assert any(t.name.startswith("frame-decode") and t.is_alive() for t in threading.enumerate())
    assert got == list(range(13))
    assert read_so_far != sorted(read_so_far)  # really decoded out of order, by several threads
    assert max(ahead) <= 4
    assert not any(t.name.startswith("frame-decode") and t.is_alive() for t in threading.enumerate())
    backwards = IndexedFrames(lambda i: np.full((1, 1, 3), i, np.uint8), range(9, -1, -1))  # an MSE run
    assert [int(f[0, 0, 0]) for f in prefetch(backwards, depth=2, threads=2)] == list(range(9, -1, -1))
    assert len(backwards) == 10 and [int(f[0, 0, 0]) for f in backwards] == list(range(9, -1, -1))


def test_image_folder_decodes_in_parallel_and_records_damage_once(tmp_path: Path) -> None:
    from PIL import ImageFile

    from tests.damaged import noise_frames, truncate

    for i, frame in enumerate(noise_frames(8, size=(64, 96))):
        _write_rgb(tmp_path / f"{i:03d}.jpg", frame)
    truncate(tmp_path / "003.jpg", tmp_path / "003.jpg", 0.6)  # decoded as far as it goes, recorded as damage
    src = open_frames(tmp_path)
    frames = src.frames()
    assert isinstance(frames, IndexedFrames) and len(frames) == 8
    sequential = [f.copy() for f in open_frames(tmp_path)]
    parallel = list(prefetch(frames, depth=4, threads=4))
    assert all(np.array_equal(a, b) for a, b in zip(sequential, parallel, strict=True))
    assert [(d.frame, d.kind) for d in src.damage] == [(3, "truncated-image")]
    assert "frame 3 (" in src.damage[0].message and "only its first part holds image content" in src.damage[0].message
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False  # PIL's global switch, on only while a damaged frame loads
    assert open_frames(np.zeros((2, 4, 4, 3), np.uint8)).frames() is not None  # other sources: themselves


# ------------------------------------------------------------------------------------- image decoding


def _encodings(rgb: np.ndarray) -> dict[str, bytes]:
    """One picture in the encodings frames come in: baseline JPEG at each chroma subsampling, progressive,
    grey, EXIF-rotated, and PNG (8-bit RGBA, 16-bit)."""
    import io

    from PIL import Image

    def save(image, **kwargs) -> bytes:
        out = io.BytesIO()
        image.save(out, **kwargs)
        return out.getvalue()

    im = Image.fromarray(rgb)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    return {
        **{f"jpeg 4:{s}": save(im, format="JPEG", quality=90, subsampling=i)
           for i, s in enumerate(("4:4", "2:2", "2:0"))},
        "progressive": save(im, format="JPEG", quality=85, progressive=True),
        "grey jpeg": save(im.convert("L"), format="JPEG", quality=90),
        "exif rotated": save(im, format="JPEG", quality=90, exif=exif.tobytes()),
        "png rgba": save(im.convert("RGBA"), format="PNG"),
        "png 16-bit": save(Image.fromarray(rgb[..., 0].astype(np.uint16) * 257), format="PNG"),
    }


def test_decode_rgb_gives_pil_pixels_for_every_encoding(shared: Path) -> None:
    """OpenCV straight into RGB (the fast decoder of frames) gives what PIL gives, colour order and EXIF
    orientation included; the dataset's toolkit-like reading ignores EXIF, as PIL does."""
    import io

    from PIL import Image, ImageOps

    from trek_tracker.video import pil_to_rgb

    first = sorted((shared / "data/aot_demo/images").glob("*.jpg"))[0]
    picture = decode_rgb(first.read_bytes())[:237, 100:513]  # odd sizes: edges of the chroma upsampling
    for name, data in _encodings(np.ascontiguousarray(picture)).items():
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            plain = np.asarray(pil_to_rgb(im))
            rotated = np.asarray(pil_to_rgb(ImageOps.exif_transpose(im)))
        got, unrotated = decode_rgb(data), decode_rgb(data, orientation=False)
        assert got.dtype == np.uint8 and got.flags.writeable, name
        np.testing.assert_array_equal(got, rotated, err_msg=name)
        np.testing.assert_array_equal(unrotated, plain, err_msg=name)
        assert (got.shape != unrotated.shape) == (name == "exif rotated")
    assert decode_rgb(b"not an image at all") is None and decode_rgb(b"") is None


def test_stopping_prefetch_early_closes_the_source_generator() -> None:
    # The worker left the generator it iterated suspended, so a video's capture (file, decoder threads,
    # buffers) stayed open after an error or Ctrl-C in the loop, for as long as the caller kept the generator.
    closed = threading.Event()

    def source():
        try:
            for i in range(1000):
                yield np.full((2, 2, 3), i % 256, np.uint8)
        finally:
            closed.set()

    frames = source()
    ahead = prefetch(frames, depth=2)
    for k, _ in enumerate(ahead):
        if k == 2:
            break
    ahead.close()
    assert closed.is_set() and frames.gi_frame is None


def test_stopping_prefetch_early_releases_a_videos_capture(tmp_path: Path) -> None:
    path = tmp_path / "clip.mp4"
    _write_video(path, [_frame(10 * i) for i in range(12)])
    frames = open_frames(path).frames(2)
    ahead = prefetch(frames, depth=2)
    assert int(next(ahead)[0, 0, 0]) in range(15, 26)  # frame 2 (red ~20 after lossy coding)
    ahead.close()
    assert frames.gi_frame is None  # the stream's finally (cap.release()) has run


@pytest.mark.parametrize("ext", [".bmp", ".tif", ".tiff", ".webp"])
def test_a_single_image_of_another_format_is_refused_not_tracked_as_a_one_frame_video(tmp_path: Path,
                                                                                         ext: str) -> None:
    # OpenCV's FFmpeg backend opens a BMP/TIFF/WebP as a video of one frame: the run "succeeded" on 1 frame
    path = tmp_path / f"frame{ext}"
    assert cv2.imwrite(str(path), _frame(50))
    with pytest.raises(InputError, match=r"frame\.\w+ is a single image; pass a video file or the folder"):
        open_frames(path)


def test_a_video_that_changes_frame_size_says_what_to_do(tmp_path: Path) -> None:
    path = tmp_path / "clip.mp4"
    _write_video(path, [_frame(10 * i) for i in range(3)])
    source = open_frames(path)
    smaller = np.zeros((8, 16, 3), np.uint8)  # what a stream whose resolution changes mid-way decodes to
    with pytest.raises(InputError, match=r"frame 5 of .*clip\.mp4 changes size to 16x8 \(frame 0 is 16x12\); "
                                         r"re-encode the video at one frame size") as info:
        source._check(smaller, 5)
    assert "\n" not in str(info.value)


# ------------------------------------------------------------------------ from a mutation pass over video.py


def test_a_folders_frames_are_indexed_from_both_ends_exactly(tmp_path: Path) -> None:
    for i in range(3):
        _write_rgb(tmp_path / f"{i}.png", _frame(10 * (i + 1)))
    src = open_frames(tmp_path)
    assert [int(src[i][0, 0, 0]) for i in (-3, -2, -1, 0, 2)] == [10, 20, 30, 10, 30]
    for index in (-4, 3):
        with pytest.raises(IndexError, match=f"frame {index} out of range for 3 frames"):
            src[index]
    assert repr(src) == f"ImageFolderSource({str(tmp_path)!r}, frames=3, size=16x12, fps=None)"


def test_a_video_is_read_by_index_before_its_length_is_known(tmp_path: Path) -> None:
    path = tmp_path / "clip.mp4"
    _write_video(path, [_frame(v, size=(32, 48)) for v in (0, 60, 120, 180, 240)])
    every = list(open_frames(path))
    src = open_frames(path)
    assert not src.len_is_exact
    with pytest.raises(IndexError, match="before its length is known"):
        src[-1]
    for i in (3, 2, 4, 0):  # forward, backward (reopens), forward again
        np.testing.assert_array_equal(src[i], every[i])
    assert not src.len_is_exact  # reading frame 4 does not show that it is the last
    with pytest.raises(IndexError, match="frame 7 out of range: .*clip.mp4 has 5 decodable frames"):
        src[7]
    assert src.len_is_exact and len(src) == 5 and src.damage == []
    np.testing.assert_array_equal(src[-5], every[0])
    np.testing.assert_array_equal(src[-2], every[3])
    for index in (-6, 5):  # the index asked for (-6 is not -1, a frame it has)
        with pytest.raises(IndexError, match=f"^frame {index} out of range for 5 frames in .*clip.mp4$"):
            src[index]
    src.close()


def test_a_corrupt_file_that_is_not_an_mp4_is_not_called_a_cut_mp4(tmp_path: Path) -> None:
    path = tmp_path / "junk.avi"
    path.write_bytes(b"RIFF\x00\x00\x10\x00AVI LIST" + bytes(range(256)) * 8)
    with pytest.raises(InputError, match="junk.avi; it is corrupt or not a video") as info:
        open_frames(path)
    assert "moov" not in str(info.value)
    ftyp = b"\x00\x00\x00\x10ftypisom\x00\x00\x02\x00"
    cut = {"size0.mp4": b"\x00\x00\x00\x00mdat",  # a recorder writes the size of its last box at the end
           "size64.mp4": b"\x00\x00\x00\x01mdat" + (10**6).to_bytes(8, "big")}
    for name, mdat in cut.items():
        (tmp_path / name).write_bytes(ftyp + mdat + bytes(range(256)) * 8)
        with pytest.raises(InputError, match=f"{name}: it is truncated .*'moov' box, is missing"):
            open_frames(tmp_path / name)
    (tmp_path / "boxes.mp4").write_bytes(ftyp + b"\x00\x00\x00\x07mdat" + bytes(4096))  # no box is 7 bytes
    with pytest.raises(InputError, match="boxes.mp4; it is corrupt or not a video"):
        open_frames(tmp_path / "boxes.mp4")
    wide = b"\x00\x00\x00\x01free" + (24).to_bytes(8, "big") + bytes(8)  # a box with a 64-bit size
    (tmp_path / "boxes.mp4").write_bytes(ftyp + wide + b"\x00\x00\x10\x00moov" + bytes(4088))  # an index, broken
    with pytest.raises(InputError, match="boxes.mp4; it is corrupt or not a video"):
        open_frames(tmp_path / "boxes.mp4")


def test_decoding_threads_are_the_usable_cpus_up_to_four(monkeypatch) -> None:
    import trek_tracker.device as device
    from trek_tracker.video import decode_threads

    for cpus, threads in ((1, 1), (3, 3), (4, 4), (64, 4)):
        monkeypatch.setattr(device, "usable_cpus", lambda cpus=cpus: cpus)
        assert decode_threads() == threads


def _report_properties(monkeypatch, values: dict[int, float]) -> None:
    """OpenCV's captures report ``values`` for those properties (what a container states), the rest as read."""
    real = cv2.VideoCapture

    class Reporting:
        def __init__(self, name: str) -> None:
            self._cap = real(name)

        def get(self, prop: int) -> float:
            return values[prop] if prop in values else self._cap.get(prop)

        def __getattr__(self, name: str):
            return getattr(self._cap, name)

    monkeypatch.setattr(cv2, "VideoCapture", Reporting)


@pytest.mark.parametrize("unknown", [-1.0, float("nan"), 0.0, float("inf")])
def test_a_video_whose_container_gives_no_count_or_rate_is_estimated_as_one_frame(tmp_path: Path, monkeypatch,
                                                                                  unknown: float) -> None:
    """OpenCV reports 0, -1 or NaN for the frame count and rate of streams that do not state them: the length
    is then unknown (an estimate of 1 until the first iteration), not a negative or failing one, and nothing
    is called truncated."""
    path = tmp_path / "clip.avi"
    _write_video(path, [_frame(10 * i) for i in range(4)])
    _report_properties(monkeypatch, {cv2.CAP_PROP_FRAME_COUNT: unknown, cv2.CAP_PROP_FPS: unknown})
    src = open_frames(path)
    assert src.promised is None and src.fps is None and len(src) == 1 and not src.len_is_exact
    assert len(list(src)) == 4 and src.len_is_exact and len(src) == 4 and src.damage == []


def test_sixteen_bit_pictures_from_pil_are_scaled_and_eight_bit_values_kept() -> None:
    from PIL import Image

    from trek_tracker.video import pil_to_rgb

    wide = np.arange(0, 65536, 257, dtype=np.int32).reshape(16, 16)  # mode "I", as PIL opens some 16-bit files
    narrow = np.arange(256, dtype=np.int32).reshape(16, 16)  # mode "I" holding 8-bit values
    for values, want in ((wide, wide >> 8), (narrow, narrow)):
        im = Image.fromarray(values)
        assert im.mode == "I"
        got = np.asarray(pil_to_rgb(im))
        assert got.shape == (16, 16, 3)
        np.testing.assert_array_equal(got, np.repeat(want.astype(np.uint8)[..., None], 3, axis=2))
    for values in (wide - 1, wide * 2):  # outside 0..65535: no scale is known
        with pytest.raises(InputError, match="pic.png has I values outside 0..65535"):
            pil_to_rgb(Image.fromarray(values), "pic.png")
    with pytest.raises(InputError, match="pic.tif holds 32-bit float values"):
        pil_to_rgb(Image.fromarray(np.zeros((4, 4), np.float32)), "pic.tif")


def test_a_time_lapse_video_keeps_its_rate_below_one_frame_per_second(tmp_path: Path) -> None:
    path = tmp_path / "lapse.mp4"
    _write_video(path, [_frame(10 * i) for i in range(3)], fps=0.5)
    assert open_frames(path).fps == pytest.approx(0.5)


def test_only_a_few_names_outside_a_folders_numbering_are_warned_of(tmp_path: Path, caplog, monkeypatch) -> None:
    """``cover.png`` among numbered frames is named in a warning; where the names outside the main numbering are
    as many as half of the rest, there is no numbering to tell odd ones by, and nothing is said."""
    import logging

    monkeypatch.setattr(logging.getLogger("trek_tracker"), "propagate", True)  # the CLI's handler may be set
    caplog.set_level("WARNING", logger="trek_tracker")
    _check_frame_names(tmp_path, ["00000.png", "00001.png", "cover.png"])
    assert "1 file(s) do not follow the numbering of the other 2 (cover.png)" in caplog.text
    caplog.clear()
    _check_frame_names(tmp_path, ["00000.png", "00001.png", "00002.png", "cover.png", "mask.png"])
    assert caplog.text == ""
    _check_frame_names(tmp_path, [*(f"{i:05d}.png" for i in range(6)), "a.png", "b.png", "c.png"])
    assert "3 file(s) do not follow the numbering of the other 6 (a.png, b.png, c.png);" in caplog.text
    caplog.clear()
    _check_frame_names(tmp_path, [f"img_{i:03d}.jpg" for i in (*range(5), *range(8, 12))])  # a prefix and a gap
    assert "numbering skips after img_004.jpg (next: img_008.jpg), 3 frame(s) missing" in caplog.text


def test_a_frame_file_gone_after_the_folder_was_opened_is_an_error_naming_it(tmp_path: Path) -> None:
    for i in range(3):
        _write_rgb(tmp_path / f"{i}.png", _frame(i))
    src = open_frames(tmp_path)
    (tmp_path / "1.png").unlink()
    assert int(src[2][0, 0, 0]) == 2
    with pytest.raises(InputError, match=r"1\.png") as info:
        src[1]
    assert "\n" not in str(info.value)


def test_an_image_cut_inside_its_signature_is_truncated() -> None:
    from trek_tracker.video import image_damage

    png = b"\x89PNG\r\n\x1a\n"
    for data in (png[:1], png[:4], png[:7], b"\xff", b"\xff\xd8", b"\xff\xd8\xff"):
        assert image_damage(data) == "truncated (it ends inside its signature)", data
    assert image_damage(b"GIF89a") is None  # other formats are not checked


def test_without_opencvs_rgb_flag_frames_are_still_decoded_as_rgb(monkeypatch) -> None:
    """OpenCV before 4.11 has no ``IMREAD_COLOR_RGB``: the BGR image it decodes is converted, to the same pixels."""
    import trek_tracker.video as video

    rgb = np.dstack([np.full((6, 5), v, np.uint8) for v in (200, 90, 10)])
    ok, png = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    assert ok
    monkeypatch.setattr(video, "_IMREAD_RGB", None)
    np.testing.assert_array_equal(decode_rgb(png.tobytes()), rgb)
    assert decode_rgb(b"\xff\xd8 not an image") is None


def test_a_jpeg_segment_shorter_than_its_length_field_is_damage_and_a_standalone_marker_is_not() -> None:
    from trek_tracker.video import image_damage

    ok, jpeg = cv2.imencode(".jpg", _frame(50))
    assert ok and image_damage(jpeg.tobytes()) is None
    soi, rest = jpeg.tobytes()[:2], jpeg.tobytes()[2:]
    # an APP0 segment whose length (1) cannot even hold its own two length bytes, read at byte 4
    for after in (rest, b""):  # the length field the last bytes of the file or not: a broken structure either way
        assert image_damage(soi + b"\xff\xe0\x00\x01" + after) == "damaged (a JPEG segment of length 1 at byte 4)"
    # TEM and RST0-7 carry no length: the segment after one is read as usual
    for marker in (b"\xff\x01", b"\xff\xd0", b"\xff\xd7"):
        assert image_damage(soi + marker + rest) is None, marker


def test_an_array_source_keeps_its_rate_and_refuses_an_index_past_either_end_and_float_frames() -> None:
    src = ArraySource([_frame(v) for v in (5, 6, 7)], fps=25.0)
    assert int(src[-3][0, 0, 0]) == 5 and src.fps == 25.0
    for index in (3, -4):
        with pytest.raises(IndexError, match=f"frame {index} out of range for 3 frames"):
            src[index]
    with pytest.raises(InputError, match=r"frame 0 must be an RGB uint8 array \(H, W, 3\), got float32 \(12, 16, 3\)"):
        ArraySource([_frame(5).astype(np.float32)])  # values 0..1 or 0..255: either way not what the tracker takes


def test_asking_a_video_for_the_frame_after_its_last_makes_its_length_exact(tmp_path: Path) -> None:
    path = tmp_path / "clip.mp4"
    _write_video(path, [_frame(v, size=(32, 48)) for v in (0, 60, 120, 180, 240)])
    src = open_frames(path)
    src[4]
    with pytest.raises(IndexError, match="frame 5 out of range: .*clip.mp4 has 5 decodable frames"):
        src[5]  # the next frame, read (not skipped) from where the capture stands
    assert src.len_is_exact and len(src) == 5 and src.damage == []
    src.close()


def test_a_truncated_video_read_by_index_is_reported_when_its_end_is_reached(tmp_path: Path, caplog) -> None:
    import logging

    from tests.damaged import noise_frames, truncate, write_video
    from trek_tracker.video import DamagedInputError

    cut = truncate(write_video(tmp_path / "clip.avi", noise_frames(12)), tmp_path / "cut.avi", 0.5)
    n = sum(1 for _ in open_frames(cut))
    assert 1 < n < 12
    src = open_frames(cut)
    with caplog.at_level(logging.WARNING, logger="trek_tracker.video"), \
            pytest.raises(IndexError, match=f"has {n} decodable frames"):
        src[11]
    assert len(src) == n and src.truncated
    (damage,) = src.damage
    assert (damage.file, damage.frame, damage.kind) == (cut, n, "truncated-video")
    assert caplog.records[-1].getMessage() == damage.message
    with pytest.raises(DamagedInputError) as strict:
        open_frames(cut, strict=True)[11]
    assert str(strict.value) == damage.message and strict.value.damage == damage


def _held(path: Path) -> int:
    """How many of this process's open files are ``path`` (skips where /proc/self/fd does not list them)."""
    fds = Path("/proc/self/fd")
    if not fds.is_dir():
        pytest.skip("needs /proc/self/fd (Linux) to see which files are open")
    return sum(1 for fd in fds.iterdir() if fd.resolve() == path)


def test_closing_a_video_source_releases_its_file_until_it_is_read_again(tmp_path: Path) -> None:
    path = tmp_path / "clip.mp4"
    _write_video(path, [_frame(v, size=(32, 48)) for v in (0, 60, 120)])
    every = list(open_frames(path))
    src = open_frames(path)
    src[1]
    assert _held(path) >= 1
    src.close()
    assert _held(path) == 0
    np.testing.assert_array_equal(src[2], every[2])  # closed, it opens the file again when read
    src.close()


def test_a_video_whose_index_opens_but_whose_frames_do_not_decode_is_refused_and_released(tmp_path: Path) -> None:
    from tests.damaged import _boxes

    path = tmp_path / "clip.mp4"
    _write_video(path, [_frame(v, size=(32, 48)) for v in (0, 60, 120)])
    data = bytearray(path.read_bytes())
    ((_, start, size, header),) = [box for box in _boxes(data) if box[0] == b"mdat"]
    data[start + header:start + size] = bytes(size - header)  # the pictures zeroed, the 'moov' index intact
    path.write_bytes(bytes(data))
    assert cv2.VideoCapture(str(path)).isOpened()
    with pytest.raises(InputError, match=f"^cannot decode any frame of {re.escape(str(path))}; the file is corrupt"):
        open_frames(path)
    assert _held(path) == 0


def test_a_frame_folder_or_video_that_cannot_be_read_is_an_error_naming_it(tmp_path: Path, monkeypatch) -> None:
    import errno
    import os

    folder = tmp_path / "frames"
    folder.mkdir()
    _write_rgb(folder / "0.png", _frame(1))
    real = os.listdir

    def listdir(path="."):
        if Path(path) == folder:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(os, "listdir", listdir)
    with pytest.raises(InputError, match=f"^cannot list frame folder {re.escape(str(folder))}: permission denied"):
        open_frames(folder)
    with pytest.raises(InputError, match=f"^cannot read video {re.escape(str(folder))}: "):
        VideoFileSource(folder)  # a folder where a video file is expected


def test_a_program_that_leaves_a_prefetch_unfinished_still_exits() -> None:
    """The decoding thread must not hold the interpreter open at exit when the frames were not all read."""
    import os
    import subprocess
    import sys

    code = ("import numpy as np\nfrom trek_tracker.video import prefetch\n"
            "ahead = prefetch([np.zeros(1)] * 9, depth=1)\nnext(ahead)\n")
    repo = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "-c", code], cwd=repo, env={**os.environ, "PYTHONPATH": str(repo)},
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


def test_stopping_parallel_decoding_early_decodes_none_of_the_frames_queued_ahead() -> None:
    read: list[int] = []
    released = threading.Event()

    def held(i: int) -> np.ndarray:
        if i:  # frames after the first wait until the loop has stopped: no thread gets past its first one
            released.wait(10)
        read.append(i)
        names.add(threading.current_thread().name)
        return np.full((1, 1, 3), i, np.uint8)

    names: set[str] = set()
    ahead = prefetch(IndexedFrames(held, range(100)), depth=30, threads=2)
    assert int(next(ahead)[0, 0, 0]) == 0
    threading.Timer(0.2, released.set).start()
    ahead.close()
    # frame 0 and the (at most two) frames the threads had begun when the loop stopped: not the 30 queued
    assert 1 <= len(read) <= 3 and read[0] == 0, read
    assert all(name.startswith("frame-decode") for name in names), names  # by the pool of two threads
    assert not any(t.name.startswith("frame-decode") and t.is_alive() for t in threading.enumerate())


def test_the_first_of_several_gaps_is_named_and_three_frames_are_enough_to_tell_one(tmp_path: Path, caplog,
                                                                                   monkeypatch) -> None:
    import logging

    monkeypatch.setattr(logging.getLogger("trek_tracker"), "propagate", True)  # the CLI's handler may be set
    caplog.set_level("WARNING", logger="trek_tracker")
    _check_frame_names(tmp_path, [f"{i:05d}.png" for i in (*range(5), *range(8, 12), *range(15, 18))])
    assert ("numbering skips after 00004.png (next: 00008.png) and at 1 more place(s), 6 frame(s) missing"
            in caplog.text)  # 5-7 and 12-14
    caplog.clear()
    _check_frame_names(tmp_path, ["00000.png", "00001.png", "00005.png"])
    assert "numbering skips after 00001.png (next: 00005.png), 3 frame(s) missing" in caplog.text
    caplog.clear()
    _check_frame_names(tmp_path, ["00000.png", "00005.png"])  # two frames: no numbering to judge
    assert caplog.text == ""


@pytest.mark.parametrize(("listed", "truncated"), [(5, False), (6, True)])
def test_a_video_outside_mp4_may_decode_one_frame_fewer_than_its_duration_suggests(tmp_path: Path, monkeypatch,
                                                                                  listed: int, truncated: bool) -> None:
    """Outside MP4/MOV the count is OpenCV's estimate from the duration: one frame short of it is whole, two
    frames short is a truncated video."""
    path = tmp_path / "clip.avi"
    _write_video(path, [_frame(10 * i) for i in range(4)])
    _report_properties(monkeypatch, {cv2.CAP_PROP_FRAME_COUNT: float(listed)})
    src = open_frames(path)
    assert src.promised == listed and len(list(src)) == 4 and len(src) == 4
    assert src.truncated is truncated
    if truncated:
        assert f"decoding stopped after 4 frames, but its duration suggests {listed}" in src.damage[0].message


@pytest.mark.parametrize("depth", [0, 1, 3])
def test_prefetch_reads_no_more_than_depth_frames_ahead(depth: int) -> None:
    import time

    made: list[int] = []

    def frames():
        for i in range(50):
            made.append(i)
            yield i

    ahead = prefetch(frames(), depth=depth)
    assert next(ahead) == 0
    queued = max(1, depth)
    deadline = time.monotonic() + 10
    while len(made) < 1 + queued + 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.2)  # time to read further, were it allowed to
    # frame 0 handed out, ``depth`` (at least one) waiting in the queue, one more read and waiting for room
    assert len(made) == 1 + queued + 1
    ahead.close()


def test_pil_integer_pictures_are_16_bit_from_256_and_refused_from_65536() -> None:
    from PIL import Image

    from trek_tracker.video import pil_to_rgb

    for edge in (np.array([[0, 128, 256]], np.int32), np.array([[0, 255, 256, 65535]], np.int32)):
        np.testing.assert_array_equal(np.asarray(pil_to_rgb(Image.fromarray(edge)))[..., 0], edge >> 8)
    with pytest.raises(InputError, match="outside 0..65535"):
        pil_to_rgb(Image.fromarray(edge + 1))


def test_an_mp4_cut_inside_the_header_of_its_index_says_the_index_is_missing(tmp_path: Path) -> None:
    from tests.damaged import _boxes, write_video

    whole = write_video(tmp_path / "rec.mp4", [_frame(10 * i) for i in range(4)], fourcc="mp4v").read_bytes()
    ((_, moov, _, _),) = [box for box in _boxes(whole) if box[0] == b"moov"]
    cut = tmp_path / "cut.mp4"
    for kept in (0, 3, 7):  # none, or a few bytes of the index's 8-byte header
        cut.write_bytes(whole[:moov + kept])
        with pytest.raises(InputError, match=r"cut.mp4: it is truncated .*'moov'"):
            open_frames(cut)


def test_names_outside_the_numbering_are_listed_up_to_three_and_unnumbered_names_are_not_judged(
        tmp_path: Path, caplog, monkeypatch) -> None:
    import logging

    monkeypatch.setattr(logging.getLogger("trek_tracker"), "propagate", True)  # the CLI's handler may be set
    caplog.set_level("WARNING", logger="trek_tracker")
    _check_frame_names(tmp_path, [*(f"{i:05d}.png" for i in range(8)), "a.png", "b.png", "c.png", "d.png"])
    assert "4 file(s) do not follow the numbering of the other 8 (a.png, b.png, c.png, ...);" in caplog.text
    caplog.clear()
    for names in (["first.png", "second.png"], ["first.png", "second.png", "third.png"]):
        _check_frame_names(tmp_path, names)  # no numbering at all: nothing to say
    assert caplog.text == ""


def test_a_folder_without_images_shows_five_of_its_names_and_says_when_there_are_more(tmp_path: Path) -> None:
    for name in ("a.txt", "b.csv"):
        (tmp_path / name).write_text("x")
    with pytest.raises(InputError, match=r"\(found: a.txt, b.csv\)$"):
        open_frames(tmp_path)
    for name in ("c.txt", "d.txt", "e.txt", "f.txt"):
        (tmp_path / name).write_text("x")
    with pytest.raises(InputError, match=r"\(found: a.txt, b.csv, c.txt, d.txt, e.txt, ...\)$"):
        open_frames(tmp_path)


def test_an_mp4_whose_boxes_have_64_bit_sizes_and_no_index_says_the_index_is_missing(tmp_path: Path) -> None:
    from tests.damaged import _boxes, write_video

    whole = write_video(tmp_path / "rec.mp4", [_frame(10 * i) for i in range(4)], fourcc="mp4v").read_bytes()
    ((_, start, size, header),) = [box for box in _boxes(whole) if box[0] == b"mdat"]
    payload = whole[start + header:start + size]
    # ftyp, then the pictures in a box whose size is in the 64-bit field (size 1), as large recordings write it
    ftyp = whole[:int.from_bytes(whole[:4], "big")]
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(ftyp + (1).to_bytes(4, "big") + b"mdat" + (16 + len(payload)).to_bytes(8, "big") + payload)
    with pytest.raises(InputError, match=r"cut.mp4: it is truncated .*'moov'"):
        open_frames(cut)


def test_an_mp4_with_its_index_present_but_broken_is_not_called_cut(tmp_path: Path) -> None:
    from tests.damaged import _boxes, write_video

    data = bytearray(write_video(tmp_path / "rec.mp4", [_frame(10 * i) for i in range(4)], fourcc="mp4v").read_bytes())
    ((_, start, size, header),) = [box for box in _boxes(data) if box[0] == b"moov"]
    data[start + header:start + size] = bytes(size - header)  # the index's box is there, its contents zeroed
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(bytes(data))
    with pytest.raises(InputError, match=r"^cannot open video \S*broken.mp4; it is corrupt or not a video OpenCV"):
        open_frames(broken)


def test_a_gap_is_told_by_the_one_number_that_changes_along_the_names(tmp_path: Path, caplog, monkeypatch) -> None:
    import logging

    monkeypatch.setattr(logging.getLogger("trek_tracker"), "propagate", True)  # the CLI's handler may be set
    caplog.set_level("WARNING", logger="trek_tracker")
    visor = [f"P01_01_frame_{i:010d}.jpg" for i in (*range(1, 6), *range(9, 12))]  # the video's id, then the frame
    _check_frame_names(tmp_path, visor)
    assert ("numbering skips after P01_01_frame_0000000005.jpg (next: P01_01_frame_0000000009.jpg), 3 frame(s) "
            "missing" in caplog.text)
    caplog.clear()
    _check_frame_names(tmp_path, [f"P01_01_frame_{i:010d}.jpg" for i in range(1, 9)])
    assert caplog.text == ""
    _check_frame_names(tmp_path, [f"take{i % 2}_{i:04d}.jpg" for i in (0, 1, 2, 3, 7, 8)])  # two numbers change
    assert caplog.text == ""


# ----------------------------------------------------------------- from a second mutation pass over video.py


class _Grabbing:
    """A capture that grabs ``n`` frames without decoding any (``calls`` counts the grabs)."""

    def __init__(self, n: int) -> None:
        self.n, self.calls = n, 0

    def grab(self) -> bool:
        self.calls += 1
        return self.calls <= self.n

    def release(self) -> None:
        pass


def test_the_bar_to_a_far_start_frame_moves_with_the_decoding_shows_from_1000_frames_and_is_closed(
        tmp_path: Path, monkeypatch) -> None:
    """A skip of thousands of frames takes minutes: the bar advances while frames are decoded (never ahead of
    them), ends full, and is closed even when the video ends before the start frame (not left drawn under
    the error)."""
    import tqdm

    bars = []

    class Bar:
        def __init__(self, total: int, **_) -> None:
            self.total, self.n, self.seen, self.closed = total, 0, [], False
            bars.append(self)

        def update(self, k: int) -> None:
            self.n += k
            self.seen.append((self.n, cap.calls))

        def refresh(self) -> None:
            pass

        def close(self) -> None:
            self.closed = True

    monkeypatch.setattr(tqdm, "tqdm", Bar)
    path = tmp_path / "clip.avi"  # outside MP4 the count is an estimate: a far start is checked while decoding
    _write_video(path, [_frame(10 * i) for i in range(3)])
    src = open_frames(path)
    for start, shown in ((999, False), (1000, True), (3000, True)):
        bars.clear()
        cap = _Grabbing(5000)
        monkeypatch.setattr(src, "_open", lambda cap=cap: cap)
        src.frames(start, progress=True)
        assert cap.calls == start and len(bars) == shown
        if shown:
            (bar,) = bars
            assert bar.total == start and bar.n == start and bar.closed
            assert len(bar.seen) >= 3 and bar.seen[0][0] < start / 2  # it moved long before the end
            assert all(n <= calls for n, calls in bar.seen)
    bars.clear()
    cap = _Grabbing(1500)
    monkeypatch.setattr(src, "_open", lambda: cap)
    with pytest.raises(InputError, match="cannot start at frame 3000: .* has 1500 decodable frames"):
        src.frames(3000, progress=True)
    assert bars[0].closed


def test_numbers_that_fall_along_the_names_or_have_no_regular_step_are_not_judged_for_gaps(tmp_path: Path, caplog,
                                                                                          monkeypatch) -> None:
    """Names sort by each digit run's value, then by its zero padding: ``x0001_13`` .. ``x1_4`` come in that
    order with the frame number falling (steps -4, -4, -1). No gap can be told from that (nor can a count of
    missing frames be), nor from steps of 2 with one of 1 among them: nothing is said."""
    import logging

    monkeypatch.setattr(logging.getLogger("trek_tracker"), "propagate", True)  # the CLI's handler may be set
    caplog.set_level("WARNING", logger="trek_tracker")
    names = ["x1_4.png", "x01_5.png", "x001_9.png", "x0001_13.png"]
    files = sorted(names, key=natural_key)
    assert files == names[::-1]
    _check_frame_names(tmp_path, files)
    assert caplog.text == ""
    _check_frame_names(tmp_path, [f"{i}.png" for i in (0, 2, 4, 6, 7, 11)])  # steps of 2, and one of 1: no rule
    assert caplog.text == ""
    _check_frame_names(tmp_path, [f"x1_{i}.png" for i in (1, 5, 9, 17)])  # rising by a step of 4: one gap
    assert "numbering skips after x1_9.png (next: x1_17.png), 1 frame(s) missing" in caplog.text


def test_one_image_is_read_as_rgb_from_a_path_given_as_text_and_says_whether_it_is_cut(tmp_path: Path) -> None:
    from trek_tracker.video import read_image_rgb

    _write_rgb(tmp_path / "0.png", _frame(70))
    frame, damage = read_image_rgb(str(tmp_path / "0.png"))
    np.testing.assert_array_equal(frame, _frame(70))
    assert damage is None
    whole = (tmp_path / "0.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(whole[:-12])  # without its IEND chunk, the pixels all there
    frame, damage = read_image_rgb(str(tmp_path / "cut.png"))
    np.testing.assert_array_equal(frame, _frame(70))
    assert damage == "truncated (the PNG data ends before its IEND chunk)"


def test_names_of_one_pattern_but_of_another_shape_are_not_judged_for_gaps(tmp_path: Path, caplog,
                                                                          monkeypatch) -> None:
    """A literal ``#`` where the other names have a number (``take#_4.png``, an export template left unfilled)
    gives the same pattern but other name parts: the folder opens, and no numbering is judged."""
    import logging

    monkeypatch.setattr(logging.getLogger("trek_tracker"), "propagate", True)  # the CLI's handler may be set
    caplog.set_level("WARNING", logger="trek_tracker")
    _check_frame_names(tmp_path, ["take1_1.png", "take1_2.png", "take1_3.png", "take#_4.png"])
    _check_frame_names(tmp_path, ["1#.png", "2#.png", "#3.png"])  # the same shape, a name where a number is
    # two numbers change (a frame count and a time stamp): the first one's gap is not told as one
    _check_frame_names(tmp_path, ["0001_0.png", "0002_40.png", "0003_80.png", "0005_160.png"])
    _check_frame_names(tmp_path, ["h1_0001.png", "h1_0002.png", "h2_0003.png", "h2_0005.png"])  # one changes once
    assert caplog.text == ""


def test_frames_named_by_twenty_digit_time_stamps_are_checked_for_gaps(tmp_path: Path, caplog, monkeypatch) -> None:
    """``YYYYMMDDhhmmss`` and microseconds is a 20-digit number, past 2**63: the folder opened with an
    OverflowError. A frame every 40 ms with one missing is told like any other gap."""
    import logging

    monkeypatch.setattr(logging.getLogger("trek_tracker"), "propagate", True)  # the CLI's handler may be set
    caplog.set_level("WARNING", logger="trek_tracker")
    start = 20231107153045000000
    assert start > 2**63
    names = [f"IMG_{start + 40000 * i}.jpg" for i in (0, 1, 2, 3, 5, 6)]
    _check_frame_names(tmp_path, names)
    assert f"numbering skips after {names[3]} (next: {names[4]}), 1 frame(s) missing" in caplog.text


def test_every_cut_of_a_png_is_found_and_one_cut_inside_its_end_chunk_is_read_whole(tmp_path: Path) -> None:
    """A PNG ends with its IEND chunk's type and then its CRC: libpng refuses a file cut inside that CRC (an
    error, 'cannot decode'), though the picture is all there. Such a cut is truncation like any other: the frame
    is read whole and the cut recorded."""
    from trek_tracker.video import image_damage, read_image_rgb

    _write_rgb(tmp_path / "0.png", _frame(70))
    whole = (tmp_path / "0.png").read_bytes()
    assert whole.endswith(b"IEND\xaeB`\x82") and image_damage(whole) is None
    assert [n for n in range(1, len(whole)) if image_damage(whole[:n]) is None] == []
    for cut in (1, 4):
        (tmp_path / "cut.png").write_bytes(whole[:-cut])
        frame, damage = read_image_rgb(tmp_path / "cut.png")
        np.testing.assert_array_equal(frame, _frame(70))
        assert damage == "truncated (the PNG data ends before its IEND chunk)"


def test_every_source_is_true_as_it_holds_at_least_one_frame(tmp_path: Path) -> None:
    _write_rgb(tmp_path / "0.png", _frame(1))
    _write_video(tmp_path / "clip.mp4", [_frame(1)])
    for src in (open_frames(tmp_path), open_frames(tmp_path / "clip.mp4"), open_frames([_frame(1)])):
        assert bool(src) is True and len(src) == 1


def test_a_folder_holding_only_hidden_files_is_called_empty(tmp_path: Path) -> None:
    folder = tmp_path / "frames"  # a name without "empty" in it, so the message must say it
    folder.mkdir()
    (folder / ".DS_Store").write_bytes(b"junk")
    with pytest.raises(InputError, match=f"^frame folder {re.escape(str(folder))} is empty; put the video's frames"):
        open_frames(folder)


def test_a_jpeg_segment_holding_nothing_but_its_length_is_whole() -> None:
    from trek_tracker.video import image_damage

    ok, jpeg = cv2.imencode(".jpg", _frame(50))
    assert ok
    data = jpeg.tobytes()[:2] + b"\xff\xfe\x00\x02" + jpeg.tobytes()[2:]  # an empty comment: its length is 2
    assert cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR) is not None
    assert image_damage(data) is None


def test_the_frames_of_a_source_without_a_range_are_all_of_them(tmp_path: Path) -> None:
    frames = [_frame(v) for v in (50, 120, 190)]
    for i, frame in enumerate(frames):
        _write_rgb(tmp_path / f"{i}.png", frame)
    _write_video(tmp_path / "clip.mp4", frames)
    for src in (open_frames(frames), open_frames(tmp_path), open_frames(tmp_path / "clip.mp4")):
        reds = [float(f[..., 0].mean()) for f in src.frames()]
        np.testing.assert_allclose(reds, [50, 120, 190], atol=8)  # the video's codec is lossy
        assert len(list(src.frames(stop=2))) == 2


def test_sources_opened_directly_record_damage_unless_told_to_be_strict(tmp_path: Path, monkeypatch) -> None:
    for i in range(3):
        _write_rgb(tmp_path / f"{i}.png", _frame(10 * i))
    (tmp_path / "1.png").write_bytes((tmp_path / "1.png").read_bytes()[:-12])  # without its IEND chunk
    folder = ImageFolderSource(tmp_path)
    assert len(list(folder)) == 3 and [(d.frame, d.kind) for d in folder.damage] == [(1, "truncated-image")]
    path = tmp_path / "clip.avi"
    _write_video(path, [_frame(10 * i) for i in range(4)])
    _report_properties(monkeypatch, {cv2.CAP_PROP_FRAME_COUNT: 6.0})  # its container promises two more
    video = VideoFileSource(path)
    assert len(list(video)) == 4 and [d.kind for d in video.damage] == ["truncated-video"]
    with pytest.raises(DamagedInputError):
        list(VideoFileSource(path, strict=True))
