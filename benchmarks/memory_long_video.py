"""Peak memory against frames processed, with a capped and the uncapped (official) long-term memory.

A real clip (DAVIS ``blackswan`` from ``../shared/data`` by default) is looped back and forth to the
requested length, so the video has no cuts; its first ground-truth mask starts tracking. Each setting runs
in its own process so that peak figures do not mix. Per checkpoint the table shows the frames processed,
the long-term memory frames and tokens, the resident set size (RSS, now and peak) and, on a GPU, the CUDA
peak allocation. With the cap the curves are flat once the cap fills; without it they grow with the video::

    python benchmarks/memory_long_video.py                       # CPU, mobilenet DeAOT-L, 300 frames
    python benchmarks/memory_long_video.py --frames 2000 --device cuda --model r50_deaotl --json out.json

Weights are random unless ``--checkpoint`` is given: memory use does not depend on them (the predicted
masks do, which changes nothing in what is stored).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]


def _rss_mb() -> tuple[float, float]:
    """(current, peak) resident set size of this process in MiB (Linux /proc; getrusage elsewhere)."""
    try:
        fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines()
                      if ":" in line)
        return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024
    except (OSError, KeyError, ValueError):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        return peak, peak


def _load_clip(frames_dir: Path, mask_dir: Path, max_frames: int) -> tuple[list[np.ndarray], np.ndarray]:
    images = sorted(frames_dir.glob("*.jpg"))[:max_frames]
    masks = sorted(mask_dir.glob("*.png"))
    if not images or not masks:
        sys.exit(f"no frames in {frames_dir} or no masks in {mask_dir} (give --clip and --mask-dir)")
    frames = [cv2.imread(str(p), cv2.IMREAD_COLOR)[..., ::-1].copy() for p in images]
    mask = (cv2.imread(str(masks[0]), cv2.IMREAD_GRAYSCALE) > 0).astype(np.uint8)
    return frames, mask


def _ping_pong(n: int, length: int) -> int:
    """Frame index of step ``length`` when playing 0..n-1 forward, backward, forward, ..."""
    if n == 1:
        return 0
    period = 2 * (n - 1)
    k = length % period
    return k if k < n else period - k


def worker(args: argparse.Namespace) -> None:
    """One setting: track and print a JSON line per checkpoint."""
    import torch

    from trek_tracker.inference.engine import EngineConfig, VOSEngine
    from trek_tracker.inference.memory import MemoryConfig
    from trek_tracker.modeling.checkpoints import load_model
    from trek_tracker.modeling.registry import build_model

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    frames, mask = _load_clip(Path(args.clip), Path(args.mask_dir), args.clip_frames)
    if args.checkpoint:
        model, _ = load_model(args.checkpoint, args.model)
    else:
        torch.manual_seed(0)
        model = build_model(args.model)
    model = model.eval().to(device)
    cap = args.cap if args.worker == "capped" else None
    memory = MemoryConfig(gap=args.gap, cap=cap)
    engine = VOSEngine(model, EngineConfig(max_long_edge=args.max_long_edge, memory=memory))
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    engine.add_reference(frames[0], mask)
    marks = set(np.linspace(0, args.frames - 1, args.rows).round().astype(int).tolist())
    start = time.perf_counter()
    for t in range(1, args.frames):
        engine.step(frames[_ping_pong(len(frames), t)])
        if t in marks or t == args.frames - 1:
            rss, peak = _rss_mb()
            row = {"setting": args.worker, "frames": t + 1, "lt_frames": len(engine.groups[0].long_term),
                   "lt_tokens": engine.long_term_tokens(), "rss_mb": round(rss, 1), "peak_rss_mb": round(peak, 1),
                   "cuda_peak_mb": round(torch.cuda.max_memory_allocated(device) / 2**20, 1) if cuda else None,
                   "seconds": round(time.perf_counter() - start, 2)}
            print(json.dumps(row), flush=True)
    info = {"setting": args.worker, "input_size": list(engine.input_size), "token_grid": list(engine.token_grid),
            "model": args.model, "device": str(device)}
    print(json.dumps({"info": info}), flush=True)


def main(argv: list[str] | None = None) -> None:
    shared = Path(os.environ.get("TREK_TRACK_SHARED", REPO.parent / "shared"))
    davis = shared / "data" / "davis"
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="deaotl", help="registry name (default: deaotl, MobileNetV2)")
    p.add_argument("--checkpoint", help="weights (optional: memory use does not depend on them)")
    p.add_argument("--clip", default=str(davis / "JPEGImages" / "480p" / "blackswan"), help="folder of JPEG frames")
    p.add_argument("--mask-dir", default=str(davis / "Annotations" / "480p" / "blackswan"),
                   help="folder whose first PNG is the initial mask")
    p.add_argument("--clip-frames", type=int, default=50, help="frames of the clip to loop")
    p.add_argument("--frames", type=int, default=300, help="length of the looped video")
    p.add_argument("--gap", type=int, default=5, help="long-term memory gap in frames (official L models: 5)")
    p.add_argument("--cap", type=int, default=8, help="long-term memory cap in frames for the capped run")
    p.add_argument("--max-long-edge", type=float, default=480, help="network input long-edge cap")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--rows", type=int, default=8, help="checkpoints in the table")
    p.add_argument("--settings", default="capped,uncapped", help="which runs, comma-separated")
    p.add_argument("--json", help="also write all rows to this JSON file")
    p.add_argument("--worker", choices=("capped", "uncapped"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        return worker(args)

    rows, infos = [], []
    forwarded = [a for a in (argv if argv is not None else sys.argv[1:])]
    for setting in args.settings.split(","):
        cmd = [sys.executable, str(Path(__file__).resolve()), *forwarded, "--worker", setting]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            sys.exit(f"{setting} run failed:\n{proc.stderr[-2000:]}")
        for line in proc.stdout.splitlines():
            obj = json.loads(line)
            (infos.append(obj["info"]) if "info" in obj else rows.append(obj))
    if infos:
        i = infos[0]
        print(f"model {i['model']} on {i['device']}, input {i['input_size'][0]}x{i['input_size'][1]} "
              f"({i['token_grid'][0]}x{i['token_grid'][1]} tokens at 16x), gap {args.gap}, cap {args.cap}, "
              f"clip {Path(args.clip).name} looped to {args.frames} frames")
    head = f"{'setting':<9} {'frames':>6} {'LT frames':>9} {'LT tokens':>9} {'RSS MiB':>8} {'peak RSS':>8} " \
           f"{'CUDA peak':>9} {'s':>7}"
    print(head)
    print("-" * len(head))
    for r in rows:
        cuda = "-" if r["cuda_peak_mb"] is None else f"{r['cuda_peak_mb']:.0f}"
        print(f"{r['setting']:<9} {r['frames']:>6} {r['lt_frames']:>9} {r['lt_tokens']:>9} {r['rss_mb']:>8.0f} "
              f"{r['peak_rss_mb']:>8.0f} {cuda:>9} {r['seconds']:>7.1f}")
    if args.json:
        tmp = Path(args.json).with_name(f".{Path(args.json).name}.tmp")
        tmp.write_text(json.dumps({"settings": vars(args), "info": infos, "rows": rows}, indent=2, default=str))
        tmp.replace(args.json)


if __name__ == "__main__":
    main()
