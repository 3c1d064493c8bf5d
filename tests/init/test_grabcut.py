"""GrabCut, the weight-free init: the filled-box cases and the downscaled region mapped back to the frame."""

from __future__ import annotations

import numpy as np

from trek_tracker.geometry import box_to_mask
from trek_tracker.init.api import BoxToMask, InitConfig
from trek_tracker.init.grabcut import grabcut_mask


def _disk(h: int, w: int, cy: float, cx: float, r: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A bright disk on a dark noisy background, and its tight x,y,w,h box."""
    rng = np.random.default_rng(3)
    img = rng.integers(0, 50, (h, w, 3), dtype=np.uint8)
    yy, xx = np.mgrid[0:h, 0:w]
    disk = (yy + 0.5 - cy) ** 2 + (xx + 0.5 - cx) ** 2 <= r**2
    img[disk] = rng.integers(200, 255, (int(disk.sum()), 3), dtype=np.uint8)
    rows, cols = np.flatnonzero(disk.any(1)), np.flatnonzero(disk.any(0))
    box = np.array([cols[0], rows[0], cols[-1] + 1 - cols[0], rows[-1] + 1 - rows[0]], np.float64)
    return img, disk, box


def test_a_box_thinner_than_3_px_or_covering_the_frame_is_returned_filled() -> None:
    img, _, _ = _disk(60, 80, 30, 40, 15)
    for box in ([10, 10, 2, 30], [10, 10, 30, 2], [0, 0, 80, 60]):  # no colour model, or no background
        np.testing.assert_array_equal(grabcut_mask(img, box), box_to_mask(box, img.shape[:2]))
    three = grabcut_mask(img, [38, 10, 3, 40])  # 3 px is enough for a colour model: not the filled box
    assert not np.array_equal(three, box_to_mask([38, 10, 3, 40], img.shape[:2]))


def test_a_large_region_is_cut_at_reduced_size_and_mapped_back_onto_the_object() -> None:
    """A region far above 320 px is downscaled for GrabCut; the mask comes back at frame resolution, on the
    object (a shifted or scaled mapping would cut into it or spill over the box corners)."""
    img, disk, box = _disk(600, 800, 330, 430, 220)
    mask = grabcut_mask(img, box)
    assert mask.shape == disk.shape and not (mask & ~box_to_mask(box, disk.shape)).any()
    assert (mask & disk).sum() / (mask | disk).sum() > 0.97


class _FakeGrabCut:
    """Records what ``cv2.grabCut`` is given and marks its rectangle as probable foreground."""

    def __init__(self) -> None:
        self.calls: list[dict] = []
        self.seeds: list[int] = []
        self.images: list[np.ndarray] = []

    def grab_cut(self, img, mask, rect, bgd, fgd, iterations, mode):
        import cv2

        x, y, w, h = rect
        mask[:] = cv2.GC_BGD
        mask[y : y + h, x : x + w] = cv2.GC_PR_FGD
        self.calls.append(dict(shape=img.shape, rect=tuple(rect), iterations=iterations, mode=mode))
        self.images.append(img.copy())
        return mask, bgd, fgd


def test_grabcut_is_given_the_padded_region_and_the_box_within_it(monkeypatch) -> None:
    """docs/init.md#grabcut: the box's span padded by ceil(0.25 side) + 1 px, 5 iterations from the box
    rectangle, seed 0; what GrabCut keeps is mapped back onto the frame."""
    import cv2

    fake = _FakeGrabCut()
    monkeypatch.setattr(cv2, "grabCut", fake.grab_cut)
    monkeypatch.setattr(cv2, "setRNGSeed", fake.seeds.append)
    img, _, _ = _disk(120, 160, 60, 80, 20)
    box = [50, 40, 40, 20]  # pad x: ceil(10) + 1 = 11, pad y: ceil(5) + 1 = 6
    mask = grabcut_mask(img, box)
    assert fake.calls == [dict(shape=(20 + 12, 40 + 22, 3), rect=(11, 6, 40, 20), iterations=5,
                               mode=cv2.GC_INIT_WITH_RECT)]
    assert fake.seeds == [0]
    np.testing.assert_array_equal(mask, box_to_mask(box, img.shape[:2]))
    # Near the frame's corner the padding is clipped: the box starts at the region's corner.
    fake.calls.clear()
    grabcut_mask(img, [2, 1, 40, 20], iterations=2)
    assert fake.calls[0]["shape"] == (1 + 20 + 6, 2 + 40 + 11, 3) and fake.calls[0]["rect"] == (2, 1, 40, 20)
    assert fake.calls[0]["iterations"] == 2
    fake.calls.clear()  # --init grabcut: the same call, with InitConfig's default of 5 iterations
    res = BoxToMask(InitConfig(method="grabcut"))(img, box)
    assert fake.calls[0]["rect"] == (11, 6, 40, 20) and fake.calls[0]["iterations"] == 5
    assert res.method == "grabcut" and np.array_equal(res.mask, box_to_mask(box, img.shape[:2]))
    assert res.details["candidates"][0]["confidence"] == 1.0  # GrabCut's candidate has confidence 1


def test_a_large_region_is_downscaled_to_320_px_on_its_longer_side(monkeypatch) -> None:
    import cv2

    fake = _FakeGrabCut()
    monkeypatch.setattr(cv2, "grabCut", fake.grab_cut)
    img, _, _ = _disk(600, 800, 300, 400, 100)
    box = np.array([200.0, 150.0, 400.0, 300.0])  # region (300 + 2 x 76) x (400 + 2 x 101) = 452 x 602
    mask = grabcut_mask(img, box)
    (call,) = fake.calls
    scale = 320 / 602
    assert call["shape"] == (round(452 * scale), 320, 3)
    region = img[150 - 76 : 450 + 76, 200 - 101 : 600 + 101]  # area-averaged, as docs/init.md#grabcut says
    np.testing.assert_array_equal(fake.images[0], cv2.resize(region, (320, round(452 * scale)),
                                                               interpolation=cv2.INTER_AREA))
    x, y, w, h = call["rect"]
    assert abs(x - 101 * scale) <= 1 and abs(y - 76 * scale) <= 1
    assert abs(w - 400 * scale) <= 1 and abs(h - 300 * scale) <= 1
    filled = box_to_mask(box, img.shape[:2])
    assert not (mask & ~filled).any() and mask.sum() / filled.sum() > 0.98  # mapped back onto the box


def test_a_box_spanning_the_frame_on_one_axis_still_runs_grabcut(monkeypatch) -> None:
    """Only a box covering the whole padded region leaves GrabCut no background; a box across the full width
    or height still has background beside it."""
    import cv2

    fake = _FakeGrabCut()
    monkeypatch.setattr(cv2, "grabCut", fake.grab_cut)
    for shape, box, runs in (((60, 80), [0, 10, 80, 40], True), ((60, 80), [20, 0, 40, 60], True),
                             ((40, 200), [40, 0, 100, 40], True), ((60, 80), [0, 0, 80, 60], False),
                             ((60, 80), [10, 10, 30, 3], True), ((60, 80), [10, 10, 3, 30], True)):
        img = np.zeros((*shape, 3), np.uint8)
        fake.calls.clear()
        mask = grabcut_mask(img, box)
        assert bool(fake.calls) == runs, box
        np.testing.assert_array_equal(mask, box_to_mask(box, shape))  # the fake keeps the box rectangle
