"""Peak memory against video length, with the default (bounded) and the official (unbounded) memory.

A real clip (DAVIS ``blackswan`` from ``../shared/data`` by default) is looped back and forth to each
requested length, so the video has no cuts; its first ground-truth mask starts tracking. Every (setting,
length) runs in its own process so that peak figures do not mix. The table shows the long-term memory
frames and tokens at the end, the peak resident set size (RSS) and, on a GPU, the CUDA peak allocation,
the time per frame, and each peak against the shortest video's. With the default memory the peaks are
flat in the video's length; without a cap they grow with it::

    python benchmarks/memory_long_video.py                       # CPU, MobileNet DeAOT-L, 150/600/4640 frames
    python benchmarks/memory_long_video.py --lengths 150,600,4640 --device cuda --model r50_deaotl --json out.json

Weights are random unless ``--checkpoint`` is given: memory use does not depend on them (the predicted
masks do, which changes nothing in what is stored).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
from benchdata import SHARED

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

    from trek_tracker.device import synchronize
    from trek_tracker.inference.engine import EngineConfig, VOSEngine
    from trek_tracker.inference.memory import MemoryConfig
    from trek_tracker.inference.preprocess import Frame, Uploader
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
    memory = MemoryConfig(gap=args.gap, cap="none" if args.worker == "official" else None)
    engine = VOSEngine(model, EngineConfig(max_long_edge=args.max_long_edge, memory=memory, precision=args.precision))
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    upload = Uploader(device)  # frames reach the GPU as the tracker sends them: from pinned memory, once
    engine.add_reference(Frame(frames[0], upload), mask)
    start = time.perf_counter()
    for t in range(1, args.frames):
        engine.step(Frame(frames[_ping_pong(len(frames), t)], upload))
    synchronize(device)
    rss, peak = _rss_mb()
    row = {"setting": args.worker, "frames": args.frames, "lt_frames": len(engine.memory.frames),
           "lt_tokens": engine.long_term_tokens(), "rss_mb": round(rss, 1), "peak_rss_mb": round(peak, 1),
           "cuda_peak_mb": round(torch.cuda.max_memory_allocated(device) / 2**20, 1) if cuda else None,
           "seconds": round(time.perf_counter() - start, 2),
           "ms_per_frame": round(1000 * (time.perf_counter() - start) / max(1, args.frames - 1), 2)}
    print(json.dumps(row), flush=True)
    info = {"setting": args.worker, "input_size": list(engine.input_size), "token_grid": list(engine.token_grid),
            "model": args.model, "device": str(device), "memory": engine.schedule.to_dict()}
    print(json.dumps({"info": info}), flush=True)


def main(argv: list[str] | None = None) -> None:
    davis = SHARED / "data" / "davis"
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="deaotl", help="registry name (default: deaotl, MobileNetV2)")
    p.add_argument("--checkpoint", help="weights (optional: memory use does not depend on them)")
    p.add_argument("--clip", default=str(davis / "JPEGImages" / "480p" / "blackswan"), help="folder of JPEG frames")
    p.add_argument("--mask-dir", default=str(davis / "Annotations" / "480p" / "blackswan"),
                   help="folder whose first PNG is the initial mask")
    p.add_argument("--clip-frames", type=int, default=50, help="frames of the clip to loop")
    p.add_argument("--lengths", default="150,600,4640", help="lengths of the looped video, comma-separated")
    p.add_argument("--frames", type=int, default=None, help=argparse.SUPPRESS)  # one length, in a worker
    p.add_argument("--gap", type=int, default=None, help="long-term memory gap (default: the model's)")
    p.add_argument("--precision", default="fp32", help="fp32, bf16 or fp16 (GPU)")
    p.add_argument("--max-long-edge", type=float, default=480, help="network input long-edge cap")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--settings", default="default,official",
                   help="default (the model's bounded memory) and/or official (unbounded), comma-separated")
    p.add_argument("--json", help="also write all rows to this JSON file")
    p.add_argument("--worker", choices=("default", "official"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        return worker(args)

    rows, infos = [], []
    forwarded = [a for a in (argv if argv is not None else sys.argv[1:])]
    lengths = [int(v) for v in args.lengths.split(",")]
    head = (f"{'setting':<9} {'frames':>6} {'LT frames':>9} {'LT tokens':>9} {'peak RSS MiB':>12} {'x first':>7} "
            f"{'CUDA peak MiB':>13} {'x first':>7} {'ms/frame':>8}")
    for setting in args.settings.split(","):
        for length in lengths:
            if setting == "official" and length > 1000 and args.device == "cpu":
                continue  # grows without bound: hours on a CPU; run it on a GPU (or pass --lengths)
            cmd = [sys.executable, str(Path(__file__).resolve()), *forwarded, "--worker", setting, "--frames",
                   str(length)]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                sys.exit(f"{setting} run of {length} frames failed:\n{proc.stderr[-2000:]}")
            for line in proc.stdout.splitlines():
                obj = json.loads(line)
                (infos.append(obj["info"]) if "info" in obj else rows.append(obj))
            # each row as its run ends, table and JSON: a run stopped later (a time limit) leaves these
            if len(rows) == 1 and infos:
                i = infos[0]
                print(f"model {i['model']} on {i['device']}, {args.threads} CPU thread(s), input {i['input_size'][0]}x"
                      f"{i['input_size'][1]} ({i['token_grid'][0]}x{i['token_grid'][1]} tokens at 16x), default "
                      f"memory {i['memory']}, clip {Path(args.clip).name} looped")
                print(head)
                print("-" * len(head))
            r = rows[-1]
            first = next(x for x in rows if x["setting"] == r["setting"])
            cuda = "-" if r["cuda_peak_mb"] is None else f"{r['cuda_peak_mb']:.0f}"
            cuda_ratio = "-" if r["cuda_peak_mb"] is None else f"{r['cuda_peak_mb'] / first['cuda_peak_mb']:.2f}"
            print(f"{r['setting']:<9} {r['frames']:>6} {r['lt_frames']:>9} {r['lt_tokens']:>9} "
                  f"{r['peak_rss_mb']:>12.0f} {r['peak_rss_mb'] / first['peak_rss_mb']:>7.2f} {cuda:>13} "
                  f"{cuda_ratio:>7} {r['ms_per_frame']:>8.1f}", flush=True)
            if args.json:
                tmp = Path(args.json).with_name(f".{Path(args.json).name}.tmp")
                tmp.write_text(json.dumps({"settings": vars(args), "info": infos, "rows": rows}, indent=2,
                                          default=str))
                tmp.replace(args.json)


if __name__ == "__main__":
    main()
