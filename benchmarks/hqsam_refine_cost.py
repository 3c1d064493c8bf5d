"""Per-frame CPU cost of HQTrack's HQ-SAM refinement (``trek_tracker.init.refine.HQSamRefiner``).

A refined frame costs one HQ-SAM image encoding (the 1024x1024 ViT; computed once per frame, whatever the
number of objects) plus, per object, one prompt encoding, one mask-decoder call and the upsampling of five
256x256 logit maps to the frame. The cost does not depend on the weights, so the official sizes are timed
with untrained weights built from the package's modules (no download); ``tiny`` is the test model.

    python benchmarks/hqsam_refine_cost.py --models tiny vit_b --threads 1 --json hqsam_cost.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _frame(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
    labels = np.zeros((h, w), np.uint8)
    labels[h // 4: h // 2, w // 4: w // 2] = 1
    return img, labels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["tiny", "vit_b"], choices=["tiny", "vit_b", "vit_l", "vit_h"])
    parser.add_argument("--size", type=int, nargs=2, default=(480, 854), metavar=("H", "W"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from trek_tracker.init.hqsam import HQSamBoxPredictor, build_hqsam
    from trek_tracker.init.refine import HQSamRefiner

    img, labels = _frame(*args.size)
    rows = []
    for name in args.models:
        if name == "tiny":
            sys.path.insert(0, str(ROOT))
            from tests.init.test_hqsam import tiny_hqsam

            model = tiny_hqsam()
        else:
            model = build_hqsam(name)
        predictor = HQSamBoxPredictor(model)
        refiner = HQSamRefiner(predictor)
        encode, decode, frame = [], [], []
        with torch.inference_mode():
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                predictor.set_image(img)
                t1 = time.perf_counter()
                predictor.predict_box_hq([200.0, 120.0, 420.0, 240.0])
                t2 = time.perf_counter()
                refiner(img, labels)
                t3 = time.perf_counter()
                encode.append(1000 * (t1 - t0))
                decode.append(1000 * (t2 - t1))
                frame.append(1000 * (t3 - t2))
        rows.append({"model": name, "encode_ms": round(statistics.median(encode), 1),
                     "per_object_ms": round(statistics.median(decode), 1),
                     "frame_one_object_ms": round(statistics.median(frame), 1), "repeats": args.repeats})
        del model, predictor, refiner
    print(f"threads {args.threads}, frame {args.size[0]}x{args.size[1]}")
    print(f"{'model':6s} {'encode ms':>10s} {'per object ms':>14s} {'frame (1 object) ms':>20s}")
    for r in rows:
        print(f"{r['model']:6s} {r['encode_ms']:10.1f} {r['per_object_ms']:14.1f} {r['frame_one_object_ms']:20.1f}")
    if args.json:
        args.json.write_text(json.dumps({"threads": args.threads, "size": list(args.size), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
