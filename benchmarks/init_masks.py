"""First-frame box -> mask quality of every init method on the DAVIS clips in ``../shared/data/davis``.

For the first frame of each sequence, the tight box of the ground-truth mask is given to each init
method and the IoU of the resulting mask with the ground truth is printed as a table (plus the time per
call). ``box`` and ``grabcut`` need no weights and always run; ``sam``, ``ar`` and ``fused`` run when
their checkpoints are given (paths or registry names)::

    python benchmarks/init_masks.py
    python benchmarks/init_masks.py --sam-checkpoint sam_vit_b --ar-checkpoint ARnet_seg_mask_ep0040.pth.tar
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import cv2
import numpy as np
from benchdata import SHARED

from trek_tracker.errors import UserError
from trek_tracker.geometry import mask_to_box
from trek_tracker.init.api import BoxToMask, InitConfig

REPO = Path(__file__).resolve().parents[1]


def _sequences(davis: Path) -> list[str]:
    images = davis / "JPEGImages" / "480p"
    if not images.is_dir():
        raise UserError(f"no DAVIS frames at {images} (give --davis, the folder with JPEGImages/ and Annotations/)")
    return sorted(p.name for p in images.iterdir() if p.is_dir())


def _first_frame(davis: Path, seq: str) -> tuple[np.ndarray, np.ndarray]:
    frames = sorted((davis / "JPEGImages" / "480p" / seq).glob("*.jpg"))
    masks = sorted((davis / "Annotations" / "480p" / seq).glob("*.png"))
    image = cv2.imread(str(frames[0]), cv2.IMREAD_COLOR)[..., ::-1].copy()  # RGB
    gt = cv2.imread(str(masks[0]), cv2.IMREAD_GRAYSCALE) > 0
    return image, gt


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def build_inits(args: argparse.Namespace) -> dict[str, BoxToMask]:
    """One initialiser per method; the networks are loaded once and shared."""
    inits = {m: BoxToMask(InitConfig(method=m)) for m in ("box", "grabcut")}
    common = dict(sam_model=args.sam_model, sam_second_pass=args.sam_second_pass)
    dev = args.device
    sam = ar = None
    if args.sam_checkpoint:
        loader = BoxToMask(InitConfig(method="sam", sam_checkpoint=args.sam_checkpoint, **common), dev)
        sam = loader.sam_predictor().model
        inits["sam"] = BoxToMask(InitConfig(method="sam", **common), dev, sam_model=sam)
    if args.ar_checkpoint:
        config = InitConfig(method="ar", ar_checkpoint=args.ar_checkpoint, ar_model=args.ar_model, **common)
        ar = BoxToMask(config, dev).ar_network()
        inits["ar"] = BoxToMask(InitConfig(method="ar", **common), dev, ar_network=ar)
    if sam is not None and ar is not None:
        inits["fused"] = BoxToMask(InitConfig(method="fused", **common), dev, sam_model=sam, ar_network=ar)
    return inits


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--davis", type=Path, default=SHARED / "data" / "davis")
    parser.add_argument("--sam-checkpoint")
    parser.add_argument("--sam-model", choices=("vit_b", "vit_l", "vit_h"))
    parser.add_argument("--sam-second-pass", action="store_true")
    parser.add_argument("--ar-checkpoint")
    parser.add_argument("--ar-model", choices=("seg384", "secm"))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--sequences", nargs="*", help="subset of sequence names (default: all)")
    args = parser.parse_args(argv)
    try:
        seqs = args.sequences or _sequences(args.davis)
        inits = build_inits(args)
    except UserError as err:
        print(f"init_masks: error: {err}", file=sys.stderr)
        return 2
    methods = list(inits)
    ious: dict[str, list[float]] = {m: [] for m in methods}
    times: dict[str, list[float]] = {m: [] for m in methods}
    rows = []
    for seq in seqs:
        image, gt = _first_frame(args.davis, seq)
        box = mask_to_box(gt)
        row = [seq, " ".join(f"{v:g}" for v in box)]
        for m in methods:
            start = time.perf_counter()
            res = inits[m](image, box)
            times[m].append(time.perf_counter() - start)
            ious[m].append(_iou(res.mask, gt))
            used = "" if res.method == m else f" ({res.method})"
            row.append(f"{ious[m][-1]:.3f}{used}")
        rows.append(row)
    rows.append(["mean", ""] + [f"{np.mean(ious[m]):.3f}" for m in methods])
    rows.append(["s/call", ""] + [f"{np.mean(times[m]):.2f}" for m in methods])
    header = ["sequence", "box x,y,w,h"] + [f"IoU {m}" for m in methods]
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    print("First-frame init mask vs ground truth (DAVIS, tight GT box); (x) = fallback actually used")
    print(" | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
    print("-|-".join("-" * w for w in widths))
    for r in rows:
        print(" | ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
