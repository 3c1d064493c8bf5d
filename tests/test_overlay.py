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
