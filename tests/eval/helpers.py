"""Datasets in the official TREK-150 layout, built inside the tests, and toolkit-style test trackers.

The trackers are module-level classes so that worker processes (spawn) can import them.
"""

from __future__ import annotations

import hashlib
from fractions import Fraction
from pathlib import Path

import numpy as np
from PIL import Image

ABSENT = (-1, -1, -1, -1)


def write_sequence(root: Path, name: str, gt: list, images: list[Path] | None = None,
                   size: tuple[int, int] = (96, 64), anchors: list | None = None, hoi: list | None = None,
                   first_frame: int = 101, extra: bool = True) -> Path:
    """Write one sequence folder. Without ``images``, frames are black with the GT box drawn white (so
    :class:`OracleTracker` can recover the box exactly); with ``images``, those files are linked in."""
    seq = root / name
    (seq / "img").mkdir(parents=True)
    frame_ids = [first_frame + 2 * i for i in range(len(gt))]
    (seq / "groundtruth_rect.txt").write_text("".join(",".join(f"{v:.2f}" for v in b) + "\n" for b in gt))
    (seq / "frames.txt").write_text("".join(f"{f}\n" for f in frame_ids))
    for i, (fid, box) in enumerate(zip(frame_ids, gt, strict=True)):
        dst = seq / "img" / f"frame_{fid:010d}.jpg"
        if images is not None:
            dst.symlink_to(images[i])
            continue
        im = np.zeros((size[1], size[0], 3), np.uint8)
        if not all(v < 0 for v in box):
            x, y, w, h = (int(v) for v in box)
            im[y:y + h, x:x + w] = 255
        Image.fromarray(im).save(dst, quality=95)
    if anchors is not None:
        (seq / "anchors.txt").write_text("".join(f"{a},{d}\n" for a, d in anchors))
    if hoi is not None:
        (seq / "anchors_hoi.txt").write_text("".join(f"{s},{e},{t}\n" for s, e, t in hoi))
    if extra:
        (seq / "attributes.txt").write_text("SC\nPOC\n")
        (seq / "action_target.txt").write_text("2\n11\n11\n")
    return seq


# Synthetic dataset: boxes 16x8 px chosen so that no IoU or NCE falls on a threshold.
SYN_A = [(10, 10, 16, 8), (13, 10, 16, 8), ABSENT, (17, 10, 16, 8), (50, 40, 16, 8), (10, 10, 16, 8),
         (12, 12, 16, 8), (10, 10, 16, 8)]
SYN_B = [(40, 20, 16, 8), (41, 20, 16, 8), (40, 21, 16, 8), ABSENT, (70, 50, 16, 8)]


def build_synthetic(root: Path) -> Path:
    """Two sequences; the second has no HOI intervals (the toolkit's report_hoi would crash on it)."""
    ann = root / "TREK-150-annotations"
    ann.mkdir(parents=True)
    (ann / "sequences.txt").write_text("P01-P01_01-2\nP01-P01_01-10\n")
    write_sequence(root, "P01-P01_01-2", SYN_A, anchors=[(0, 0), (7, 1), (3, 0)], hoi=[(1, 4, 0), (5, 7, 2)])
    write_sequence(root, "P01-P01_01-10", SYN_B, anchors=[(2, 1)])
    return root


def build_shared_starts(root: Path) -> Path:
    """One sequence whose runs start alike: OPE, MSE's forward run from frame 0 and HOI 0-2 are one run and
    its first frames; HOI 3-5 is the first frames of MSE's run forward from 3; HOI 7-7 is the first frame of
    MSE's run backward from 7; MSE's run backward from 6 and HOI 1-4 share nothing."""
    ann = root / "TREK-150-annotations"
    ann.mkdir(parents=True)
    (ann / "sequences.txt").write_text("P01-P01_01-2\n")
    write_sequence(root, "P01-P01_01-2", SYN_A, anchors=[(0, 0), (7, 1), (3, 0), (6, 1)],
                   hoi=[(3, 5, 1), (0, 2, 0), (1, 4, 2), (7, 7, 0)])
    return root


class OracleTracker:
    """Finds the white box in the synthetic frames (holds the last box when there is none)."""

    name = "oracle"

    def init(self, image, box) -> None:
        self.box = np.asarray(box, float)

    def update(self, image):
        a = np.asarray(image)[..., 0] > 127
        if a.any():
            ys, xs = np.nonzero(a)
            self.box = np.array([xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1], float)
        return self.box


class ConstantTracker:
    """Returns the init box on every frame."""

    name = "constant"

    def init(self, image, box) -> None:
        self.box = np.asarray(box, float).copy()

    def update(self, image):
        return self.box


def image_key(image) -> str:
    return hashlib.sha1(np.ascontiguousarray(np.asarray(image)).tobytes()).hexdigest()


class ReplayTracker:
    """Oracle for real frames: looks the frame up by content hash in a ground-truth table."""

    name = "replay"

    def __init__(self, table: dict[str, tuple]):
        self.table = table

    def init(self, image, box) -> None:
        self.box = np.asarray(box, float)

    def update(self, image):
        box = self.table[image_key(image)]
        if not all(v < 0 for v in box):
            self.box = np.asarray(box, float)
        return self.box


class FailingTracker(ConstantTracker):
    """Raises on the ``fail_at``-th update call of its life (simulates an interrupted evaluation)."""

    def __init__(self, fail_at: int):
        self.fail_at = fail_at
        self.updates = 0
        self.inits = 0

    def init(self, image, box) -> None:
        self.inits += 1
        super().init(image, box)

    def update(self, image):
        self.updates += 1
        if self.updates == self.fail_at:
            raise KeyboardInterrupt
        return super().update(image)


# Hand computation with exact fractions (independent of the package's numpy code).

def f_iou(p, g) -> Fraction:
    p = [Fraction(v) for v in p]
    g = [Fraction(v) for v in g]
    iw = max(min(p[0] + p[2], g[0] + g[2]) - max(p[0], g[0]), 0)
    ih = max(min(p[1] + p[3], g[1] + g[3]) - max(p[1], g[1]), 0)
    inter = iw * ih
    return inter / (p[2] * p[3] + g[2] * g[3] - inter)


def f_nce2(p, g) -> Fraction:
    """Squared normalised centre error (compared with squared thresholds to stay exact)."""
    dx = (Fraction(p[0]) + Fraction(p[2]) / 2 - Fraction(g[0]) - Fraction(g[2]) / 2) / max(1, Fraction(g[2]))
    dy = (Fraction(p[1]) + Fraction(p[3]) / 2 - Fraction(g[1]) - Fraction(g[3]) / 2) / max(1, Fraction(g[3]))
    return dx * dx + dy * dy


def hand_scores(pred, gt) -> tuple[Fraction, Fraction, Fraction, Fraction]:
    """(SS, NPS, GSR, recall) of one run by the spec's definitions, in exact arithmetic."""
    pred = [tuple(gt[0])] + [tuple(p) for p in pred[1:]]
    vis = [(p, g) for p, g in zip(pred, gt, strict=True) if not all(v < 0 for v in g)]
    n = len(vis)
    ious = [f_iou(p, g) for p, g in vis]
    nce2 = [f_nce2(p, g) for p, g in vis]
    ss = sum(Fraction(sum(1 for v in ious if v > Fraction(k, 20)), n) for k in range(21)) / 21
    nps = sum(Fraction(sum(1 for v in nce2 if v <= Fraction(k, 100) ** 2), n) for k in range(51)) / 51
    gsr = Fraction(0)
    for k in range(51):
        fails = [j for j, v in enumerate(ious) if v <= Fraction(k, 100)]
        gsr += Fraction(fails[0], n) if fails else Fraction(1)
    recall = Fraction(sum(1 for v in ious if v >= Fraction(1, 2)), n)
    return ss, nps, gsr / 51, recall
