"""DeAOT against the official aot-benchmark code: output agreement and CPU speed, in one table.

Agreement: our engine with the seeded weights of ``../shared/golden`` against the official outputs stored
there (max |Δ| of the 4x logits, differing label pixels). Speed: median ms per propagated frame over the
same span the official FPS counter times (encoder to memory update, no image reading), next to the official
code's own CPU timings from ``../shared/golden/deaot/README.md`` §8. Both are rescaled by a calibration
workload (a 1024² float32 matmul plus a 64->64 3x3 convolution at 128²; 18 ms on the machine that timed the
official code), so the ratio compares implementations rather than machines.

    python benchmarks/deaot_vs_official.py [--shared ../shared] [--threads 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from benchdata import SHARED, calibration_ms
from PIL import Image

from trek_tracker.inference.engine import EngineConfig, VOSEngine
from trek_tracker.modeling.checkpoints import load_official_state_dict
from trek_tracker.modeling.registry import build_model

# (model, case, max long edge) -> official median ms/frame on the reference host (goldens README §8).
OFFICIAL_MS = {
    ("deaott", "car-shadow", 480): 256,
    ("r50_deaotl", "car-shadow", 480): 531,
    ("swinb_deaotl", "car-shadow", 480): 1039,
    ("r50_deaotl", "car-shadow", 1040): 1768,
    ("r50_deaotl", "aot_demo", 480): 4738,
}
OFFICIAL_CALIBRATION_MS = 18.0


def _rgb(path: Path) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)


def load_case(shared: Path, case: str) -> tuple[list[np.ndarray], np.ndarray]:
    if case == "car-shadow":
        root = shared / "data/davis"
        frames = [_rgb(root / f"JPEGImages/480p/car-shadow/{i:05d}.jpg") for i in range(8)]
        mask = np.array(Image.open(root / "Annotations/480p/car-shadow/00000.png"))
        return frames, (mask > 0).astype(np.uint8)
    root = shared / "data/aot_demo"
    names = sorted(p.stem for p in (root / "images").glob("*.jpg"))[:4]
    frames = [_rgb(root / "images" / f"{n}.jpg") for n in names]
    mask = np.array(Image.open(root / "masks" / f"{names[0]}.png"))
    ids = np.unique(mask[mask > 0])
    return frames, ((np.searchsorted(ids, mask) + 1) * (mask > 0)).astype(np.uint8)


def seeded_model(shared: Path, name: str):
    spec = importlib.util.spec_from_file_location("seeded_weights", shared / "golden/seeded_weights.py")
    sw = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sw)
    keys = json.loads((shared / "golden/deaot" / name / "keys.json").read_text())
    model = build_model(name).eval()
    load_official_state_dict(model, sw.seeded_state_dict(keys), model_name=name)
    return model


def run_case(shared: Path, name: str, case: str, long_edge: int, rounds: int) -> dict:
    model = seeded_model(shared, name)
    frames, labels = load_case(shared, case)
    golden_file = shared / "golden/deaot" / name / f"{case}.npz"
    gold = np.load(golden_file) if long_edge == 480 and golden_file.exists() else None
    times, max_dlogit, max_dlabel = [], 0.0, 0
    for r in range(rounds):
        engine = VOSEngine(model, EngineConfig(max_long_edge=long_edge))
        engine.add_reference(frames[0], labels)
        for t in range(1, len(frames)):
            t0 = time.perf_counter()
            out = engine.step(frames[t])
            dt = time.perf_counter() - t0
            if t > 1:  # the first propagated frame is warm-up, as in the official timing
                times.append(dt)
            if gold is not None and r == 0:
                logits = torch.cat(out.logits).numpy()
                ref = gold["logits4x"][t - 1]
                max_dlogit = max(max_dlogit, float(np.abs(logits.reshape(ref.shape) - ref).max()))
                max_dlabel = max(max_dlabel, int((out.labels.numpy() != gold["label"][t - 1]).sum()))
    return {
        "model": name, "case": case, "long_edge": long_edge, "input_size": list(engine.input_size),
        "objects": int(labels.max()), "ms_per_frame": 1000 * statistics.median(times),
        "max_abs_dlogit": max_dlogit if gold is not None else None,
        "max_label_px": max_dlabel if gold is not None else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shared", type=Path, default=SHARED)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    with torch.inference_mode():
        for (name, case, edge), official in OFFICIAL_MS.items():
            row = run_case(args.shared, name, case, edge, 1 if case == "aot_demo" else args.rounds)
            row["official_ms_per_frame"] = official
            rows.append(row)
    calib = calibration_ms()
    scale = OFFICIAL_CALIBRATION_MS / calib
    print(f"calibration workload: {calib:.1f} ms here, {OFFICIAL_CALIBRATION_MS:.0f} ms on the official host; "
          f"threads {args.threads}; device cpu; fp32; pure-PyTorch local attention")
    header = f"{'model':<13} {'case':<11} {'input':>9} {'obj':>3} {'max|Δlogit|':>11} {'Δlabel px':>9} " \
             f"{'ours ms':>8} {'ours ms*':>8} {'official ms':>11} {'speed-up':>8}"
    print(header)
    print("-" * len(header))
    for row in rows:
        row["ours_ms_rescaled"] = row["ms_per_frame"] * scale
        row["speedup_vs_official"] = row["official_ms_per_frame"] / row["ours_ms_rescaled"]
        dl = "-" if row["max_abs_dlogit"] is None else f"{row['max_abs_dlogit']:.1e}"
        dp = "-" if row["max_label_px"] is None else str(row["max_label_px"])
        size = "x".join(map(str, row["input_size"]))
        print(f"{row['model']:<13} {row['case']:<11} {size:>9} {row['objects']:>3} {dl:>11} {dp:>9} "
              f"{row['ms_per_frame']:>8.0f} {row['ours_ms_rescaled']:>8.0f} {row['official_ms_per_frame']:>11} "
              f"{row['speedup_vs_official']:>7.2f}x")
    print("ours ms* = ours rescaled to the official host by the calibration workload")
    if args.json:
        args.json.write_text(json.dumps({"calibration_ms": calib, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
