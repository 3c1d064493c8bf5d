"""The overlay video (trek_tracker.overlay): per-object tint and boxes, written whole or not at all."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from trek_tracker.errors import InputError
from trek_tracker.overlay import OverlayWriter, draw_overlay, id_color
from trek_tracker.video import open_frames


def _frame(value: int, size: tuple[int, int]) -> np.ndarray:
    """A frame whose red channel is ``value`` (green 100, blue 0)."""
    img = np.zeros((*size, 3), np.uint8)
    img[..., 0] = value
    img[..., 1] = 100
    return img


def test_id_colors_distinct() -> None:
    assert id_color(1) == (128, 0, 0) and id_color(2) == (0, 128, 0)
    assert len({id_color(i) for i in range(1, 60)}) == 59


def test_draw_overlay_tints_per_object() -> None:
    frame = np.full((20, 30, 3), 100, np.uint8)
    labels = np.zeros((20, 30), np.uint8)
    labels[2:6, 2:6] = 1
    labels[10:15, 20:25] = 2
    out = draw_overlay(frame, labels)
    np.testing.assert_array_equal(out[3, 3], [114, 50, 50])  # halfway to (128, 0, 0)
    np.testing.assert_array_equal(out[12, 22], [50, 114, 50])
    np.testing.assert_array_equal(out[18, 2], [100, 100, 100])
    np.testing.assert_array_equal(frame[3, 3], [100, 100, 100])  # input untouched
    boxed = draw_overlay(frame, None, {2: [5, 5, 10, 8]}, thickness=1)
    assert tuple(boxed[5, 10]) != (100, 100, 100) and tuple(boxed[9, 10]) == (100, 100, 100)


def test_overlay_writer_writes_on_close(tmp_path: Path) -> None:
    path = tmp_path / "out" / "overlay.mp4"
    frame = _frame(50, size=(32, 48))
    mask = np.zeros((32, 48), bool)
    mask[8:24, 8:24] = True
    with OverlayWriter(path, 10, (32, 48)) as writer:
        for _ in range(3):
            writer.write(frame, mask, np.array([8, 8, 16, 16]))
        assert not path.exists()
    assert path.exists()
    back = list(open_frames(path))
    assert len(back) == 3
    assert abs(float(back[0][16, 16, 0]) - (0.5 * 50 + 0.5 * 128)) < 12  # tinted red inside the mask
    assert list(tmp_path.glob("out/.*")) == []


def test_overlay_writer_removes_temp_on_error(tmp_path: Path) -> None:
    path = tmp_path / "overlay.mp4"
    with pytest.raises(RuntimeError, match="boom"):
        with OverlayWriter(path, 10, (32, 48)) as writer:
            writer.write(_frame(1, size=(32, 48)))
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_overlay_writer_rejects_wrong_size(tmp_path: Path) -> None:
    with OverlayWriter(tmp_path / "o.mp4", 10, (32, 48)) as writer:
        with pytest.raises(InputError, match="size"):
            writer.write(_frame(1, size=(30, 48)))


def test_a_video_that_did_not_fit_is_an_error_naming_it_and_leaves_nothing(tmp_path: Path) -> None:
    """OpenCV's writer only warns when a write fails (a full disk; here a file-size limit, as real): the
    truncated video must not be moved into place as if complete."""
    import errno

    resource = pytest.importorskip("resource")
    path = tmp_path / "overlay.mp4"
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (240, 320, 3), dtype=np.uint8) for _ in range(40)]  # noise: ~60 kB a frame
    writer = OverlayWriter(path, 30.0, (240, 320))
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (500_000, hard))
    try:
        for frame in frames:
            writer.write(frame)
        with pytest.raises(OSError) as err:
            writer.close()
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert err.value.errno == errno.EFBIG and err.value.filename == str(path)
    assert list(tmp_path.iterdir()) == []


def test_id_colors_follow_the_davis_palette() -> None:
    # the PASCAL VOC / DAVIS palette: bits 0, 1, 2 of the id set the top bit of red, green, blue, then the next
    palette = {3: (128, 128, 0), 4: (0, 0, 128), 5: (128, 0, 128), 6: (0, 128, 128), 7: (128, 128, 128),
               8: (64, 0, 0), 12: (64, 0, 128), 63: (192, 192, 192)}
    assert {i: id_color(i) for i in palette} == palette


def test_the_tint_covers_the_whole_mask_and_nothing_else() -> None:
    frame = np.full((20, 30, 3), 100, np.uint8)
    labels = np.zeros((20, 30), np.uint8)
    labels[2:6, 2:6] = 1
    tinted = np.any(draw_overlay(frame, labels) != frame, axis=2)
    np.testing.assert_array_equal(tinted, labels > 0)  # the last row and column of an object included
    with pytest.raises(InputError, match=r"mask of shape \(20, 31\) does not match the frame \(20, 30\)"):
        draw_overlay(frame, np.zeros((20, 31), np.uint8))


def test_a_box_is_drawn_where_its_xywh_polygon_is_in_object_one_colour() -> None:
    frame = np.zeros((20, 30, 3), np.uint8)
    xywh = [5, 5, 10, 8]
    polygon = [5, 5, 15, 5, 15, 13, 5, 13]
    boxed = draw_overlay(frame, None, xywh, thickness=1)
    np.testing.assert_array_equal(boxed, draw_overlay(frame, None, {1: polygon}, thickness=1))
    assert not np.array_equal(boxed, draw_overlay(frame, None, {2: xywh}, thickness=1))
    for row, col in ((5, 10), (13, 10), (9, 5), (9, 15)):  # the middle of each side, the closing one included
        assert boxed[row, col].any(), (row, col)
    assert not boxed[9, 10].any() and not boxed[17, 10].any()
    assert np.array_equal(draw_overlay(frame, None, [np.nan, 5, 10, 8]), frame)  # no box known: nothing drawn


@pytest.mark.parametrize(("fps", "expected"), [(10, 10.0), (None, 30.0), (0, 30.0), (-5, 30.0)])
def test_overlay_writer_fps_defaults_to_30_when_unknown(tmp_path: Path, fps, expected) -> None:
    import cv2

    path = tmp_path / "o.mp4"
    with OverlayWriter(path, fps, (32, 48)) as writer:
        assert writer.fps == expected
        writer.write(_frame(1, size=(32, 48)))
    video = cv2.VideoCapture(str(path))
    try:
        assert video.get(cv2.CAP_PROP_FPS) == pytest.approx(expected)
    finally:
        video.release()


def test_a_closed_writer_refuses_frames_and_closes_once(tmp_path: Path) -> None:
    writer = OverlayWriter(tmp_path / "o.mp4", 10, (32, 48))
    writer.write(_frame(1, size=(32, 48)))
    writer.close()
    writer.close()  # a second close is a no-op
    with pytest.raises(RuntimeError, match="OverlayWriter is closed"):
        writer.append(_frame(1, size=(32, 48)))
    assert writer.frames == 1 and (tmp_path / "o.mp4").exists()


class _NoEncoder:
    """A ``cv2.VideoWriter`` of an OpenCV build without the mp4v encoder: it never opens."""

    def __init__(self, path, *args) -> None:
        self.path = path

    def isOpened(self) -> bool:  # noqa: N802 - OpenCV's naming
        return False

    def release(self) -> None:
        pass


def test_an_opencv_without_the_encoder_is_a_user_error(tmp_path: Path, monkeypatch) -> None:
    from trek_tracker import overlay
    from trek_tracker.errors import UserError

    overlay.check_overlay_encoder()  # this OpenCV writes mp4v (the writer tests above need it)
    monkeypatch.setattr(overlay.cv2, "VideoWriter", _NoEncoder)
    with pytest.raises(UserError, match="no mp4v encoder; run without --overlay"):
        overlay.check_overlay_encoder()
    with pytest.raises(UserError, match=f"cannot write video {tmp_path / 'o.mp4'}"):
        OverlayWriter(tmp_path / "o.mp4", 10, (32, 48))
    assert list(tmp_path.iterdir()) == []
