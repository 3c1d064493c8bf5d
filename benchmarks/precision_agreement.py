"""How far mixed precision moves the tracker from float32: label IoU and box IoU against the fp32 run.

Runs the tracker (box init, the model's default memory) over shared DAVIS clips once per precision with
the goldens' seeded weights (``../shared/golden``; no checkpoint is needed), and compares every frame's
mask and box with the fp32 run's. On a CPU, bf16 runs under CPU autocast (its kernels differ in detail
from a GPU's); on a GPU under CUDA autocast, which is what ``--precision auto`` uses there.

    python benchmarks/precision_agreement.py --models deaott r50_deaotl --precisions bf16 fp16 --json out.json

Prints one row per (model, precision, clip): mean and worst per-frame mask IoU with fp32, mean and worst
box IoU, frames whose box IoU with fp32 is below 0.9, and seconds per frame of each run.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from benchdata import SHARED

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from trek_tracker.geometry import iou, mask_to_box  # noqa: E402
from trek_tracker.init.api import InitConfig  # noqa: E402
from trek_tracker.modeling.checkpoints import load_official_state_dict  # noqa: E402
from trek_tracker.modeling.registry import build_model  # noqa: E402
from trek_tracker.pipeline import LoadedModel, Tracker, TrackerConfig  # noqa: E402
from trek_tracker.video import open_frames  # noqa: E402


def seeded_model(shared: Path, name: str, device: torch.device):
    spec = importlib.util.spec_from_file_location("seeded_weights", shared / "golden/seeded_weights.py")
    sw = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sw)
    keys_file = shared / "golden/deaot" / name / "keys.json"  # the DeAOT variants; VMOS has its own golden
    keys = json.loads((keys_file if keys_file.is_file() else shared / "golden" / name / "keys.json").read_text())
    model = build_model(name)
    load_official_state_dict(model, sw.seeded_state_dict(keys), model_name=name)
    return model.to(device).eval()


def track(model, device, frames, box, precision: str, max_long_edge: int):
    loaded = LoadedModel(model, model.config.name, None, None, device)
    tracker = Tracker(TrackerConfig(precision=precision, max_long_edge=max_long_edge,
                                    init=InitConfig(method="box")), loaded=loaded)
    masks, boxes, seconds = [], [], []
    for i, frame in enumerate(frames):
        result = tracker.init(frame, box) if i == 0 else tracker.step(frame)
        masks.append(result.labels == 1)
        boxes.append(result.box)
        seconds.append(result.seconds)
    return masks, np.array(boxes), float(np.median(seconds[1:]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shared", type=Path, default=SHARED)
    parser.add_argument("--models", nargs="+", default=["deaott", "r50_deaotl"])
    parser.add_argument("--precisions", nargs="+", default=["bf16"])
    parser.add_argument("--clips", nargs="+", default=["car-shadow", "blackswan"])
    parser.add_argument("--frames", type=int, default=30)
    parser.add_argument("--max-long-edge", type=int, default=480)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (fixed, for stable timings)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    rows, started = [], time.strftime("%Y-%m-%d %H:%M")
    print(f"device {device}, {args.threads} CPU thread(s), input long edge {args.max_long_edge}")
    print(f"{'model':<12} {'precision':<9} {'clip':<12} {'mask IoU mean':>13} {'worst':>6} {'box IoU mean':>12} "
          f"{'worst':>6} {'<0.9':>5} {'s/frame':>8} {'fp32':>7}")
    for name in args.models:
        model = seeded_model(args.shared, name, device)
        for clip in args.clips:
            source = open_frames(args.shared / "data/davis/JPEGImages/480p" / clip)
            frames = [source[i] for i in range(min(args.frames, len(source)))]
            gt = np.array(__import__("PIL.Image", fromlist=["Image"]).open(
                args.shared / "data/davis/Annotations/480p" / clip / "00000.png")) > 0
            box = mask_to_box(gt)
            ref_masks, ref_boxes, ref_s = track(model, device, frames, box, "fp32", args.max_long_edge)
            for precision in args.precisions:
                masks, boxes, s = track(model, device, frames, box, precision, args.max_long_edge)
                ious = [float((a & b).sum() / max((a | b).sum(), 1)) for a, b in zip(masks[1:], ref_masks[1:],
                                                                                    strict=True)]
                box_ious = iou(boxes[1:], ref_boxes[1:])
                row = {"model": name, "precision": precision, "clip": clip, "frames": len(frames),
                       "mask_iou_mean": float(np.mean(ious)), "mask_iou_min": float(np.min(ious)),
                       "box_iou_mean": float(np.mean(box_ious)), "box_iou_min": float(np.min(box_ious)),
                       "frames_box_iou_below_0.9": int((box_ious < 0.9).sum()), "seconds_per_frame": s,
                       "fp32_seconds_per_frame": ref_s, "device": str(device), "threads": args.threads}
                rows.append(row)
                print(f"{name:<12} {precision:<9} {clip:<12} {row['mask_iou_mean']:>13.4f} {row['mask_iou_min']:>6.3f} "
                      f"{row['box_iou_mean']:>12.4f} {row['box_iou_min']:>6.3f} {row['frames_box_iou_below_0.9']:>5} "
                      f"{s:>8.3f} {ref_s:>7.3f}", flush=True)
                if args.json is not None:  # after each row: a run stopped later (a time limit) keeps these
                    tmp = args.json.with_name(f".{args.json.name}.tmp")
                    tmp.write_text(json.dumps({"rows": rows, "started": started}, indent=2))
                    tmp.replace(args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
