"""Frames per second of trek-track, end to end and of the network alone, per model, precision and input
size, with peak GPU memory; and, given an official aot-benchmark checkout, the official engine on the same
device, frames and weights in the same run, as a ratio.

    python benchmarks/gpu_speed.py --models r50_deaotl --precisions bf16 fp32 --inputs 480p 1080p
    python benchmarks/gpu_speed.py --models r50_deaotl --official /path/to/aot-benchmark --json speed.json
    python benchmarks/gpu_speed.py --models r50_deaotl --precisions bf16 --compile both   # eager vs --compile

Columns (over the frames after ``--warmup``: ``end-to-end`` and ``network`` their total time over their
count, ``tracker`` the median frame):

* ``end-to-end``: ``trek-track run`` as a user runs it, from decoding an MP4 to ``boxes.txt`` and
  ``run.json`` (wall clock, frames / seconds);
* ``tracker``: the tracker's own call per frame (the TREK-150 toolkit's speed: decoding and writing
  excluded);
* ``network``: the model's own calls only (encode, ID embedding, propagation, decoding, ID fusion), timed
  between CUDA events on a GPU (no synchronisation added to the run);
* ``GPU busy``: the GPU's kernel and copy time per frame (CUDA's profiler, over 20 further frames) against
  the end-to-end time per frame: near 100 % the GPU is the limit, well below it the host is (launching
  kernels, or the work between frames); ``gpu_kernel_ms`` in the JSON;
* ``peak GPU``: ``torch.cuda.max_memory_allocated`` over the end-to-end run;
* ``compile``: whether the run used ``--compile`` (its compilation falls in the untimed warm-up frames;
  ``end_to_end_fps_with_start`` in the JSON includes it);
* ``official`` (with ``--official``): the official engine driven as its evaluator drives it
  (``official_aot.py``: float32, under PyTorch's default TF32 and cuDNN settings, as its evaluator without
  ``--amp`` runs), its network span and its span with its CPU preprocessing, and our end-to-end speed (at
  the row's precision) against the latter.

Weights: the registry checkpoint named like the model when it is downloaded, else the goldens' seeded
weights (speed does not depend on the weights' values). Inputs: 480p is DAVIS ``blackswan`` (854x480),
1080p the shared ``aot_demo`` frames (1920x1080), each looped to ``--frames`` and encoded as an MP4 first.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
import tempfile
import time
from itertools import islice
from pathlib import Path

import cv2
import numpy as np
import torch
from benchdata import SHARED

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from trek150_scale import NetworkClock  # noqa: E402

# PyTorch's defaults for float32 matrix products and cuDNN convolutions: the official evaluator runs under them
OFFICIAL_TF32 = (False, True)

INPUTS = {"480p": ("data/davis/JPEGImages/480p/blackswan", (330, 130, 250, 170)),
          "1080p": ("data/aot_demo/images", (640, 360, 384, 270))}


def make_video(shared: Path, which: str, frames: int, folder: Path) -> Path:
    """``frames`` frames of an input, played back and forth, as an mp4v MP4 (decoded like a user's video)."""
    images = sorted((shared / INPUTS[which][0]).glob("*.jpg"))
    first = cv2.imread(str(images[0]))
    path = folder / f"{which}.mp4"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 30.0, (first.shape[1], first.shape[0]))
    period = max(1, 2 * (len(images) - 1))
    for t in range(frames):
        k = t % period
        writer.write(cv2.imread(str(images[k if k < len(images) else period - k])))
    writer.release()
    return path


def official_state(shared: Path, model: str) -> tuple[dict, str]:
    """Official-keyed weights: the downloaded checkpoint when there is one, else the seeded golden ones."""
    from trek_tracker.errors import UserError
    from trek_tracker.modeling.checkpoints import read_checkpoint
    from trek_tracker.weights import resolve_checkpoint

    try:
        path = resolve_checkpoint(model, kind="deaot")
        return read_checkpoint(path), str(path)
    except UserError:
        spec = importlib.util.spec_from_file_location("seeded_weights", shared / "golden/seeded_weights.py")
        sw = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sw)
        keys = json.loads((shared / "golden/deaot" / model / "keys.json").read_text())
        return sw.seeded_state_dict(keys), "seeded (goldens)"


def ours(video: Path, box, model: str, state: dict, device: torch.device, precision: str, out: Path,
         warmup: int, compile: bool = False) -> dict:
    from trek_tracker.geometry import Box
    from trek_tracker.inference.preprocess import autocast_dtype, resolve_precision
    from trek_tracker.init.api import InitConfig
    from trek_tracker.loop import Start, track_video
    from trek_tracker.modeling.checkpoints import load_official_state_dict
    from trek_tracker.modeling.registry import build_model
    from trek_tracker.pipeline import LoadedModel, Tracker, TrackerConfig
    from trek_tracker.results import ObjectIds
    from trek_tracker.run_folder import Outputs, RunFolder
    from trek_tracker.video import open_frames

    net = build_model(model)
    load_official_state_dict(net, state, model_name=model)
    net = net.to(device).eval()
    resolved = resolve_precision(precision, device)
    if resolved != "fp32":  # as trek-track run does with the models it loads
        net.store_for_autocast(autocast_dtype(resolved))
    if compile:
        torch._dynamo.reset()
        net.compile_inference()  # before the clock wraps the calls, so that the clock stays outside the graphs
    clock = NetworkClock()
    clock.attach(net)
    tracker = Tracker(TrackerConfig(precision=precision, init=InitConfig(method="box"), compile=compile),
                      loaded=LoadedModel(net, model, None, None, device))
    source = open_frames(video)
    folder = RunFolder.create(out, overwrite=True)
    sinks = folder.sinks(Outputs(), ids=ObjectIds((255,)), palette=None, record={"video": {"name": video.stem}},
                         fps=source.fps, size=source.size)
    per_frame = []

    def on_frame(index: int) -> None:
        per_frame.append((time.perf_counter(), len(clock)))

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    track_video(tracker, source, Start(box=Box(*box)), sinks, total=len(source), on_frame=on_frame)
    end = time.perf_counter()
    times = np.loadtxt(folder.times_file)
    steady = per_frame[warmup:]
    wall = (steady[-1][0] - steady[0][0]) / max(1, len(steady) - 1)
    network = clock.seconds(steady[0][1], steady[-1][1]) / max(1, len(steady) - 1)
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    kernels = kernel_seconds(tracker, video, skip=warmup)
    return {"frames": len(per_frame), "end_to_end_fps": 1 / wall, "end_to_end_fps_with_start": len(per_frame) /
            (end - start), "tracker_fps": 1 / statistics.median(times[warmup:]), "network_fps": 1 / network,
            "gpu_kernel_ms": None if kernels is None else 1000 * kernels,
            "gpu_busy": None if kernels is None else kernels / wall, "peak_gpu_mib": peak,
            "input_size": tracker.describe().get("network_input_size"), "precision": tracker.precision,
            "compile": compile}


def kernel_seconds(tracker, video: Path, skip: int, count: int = 20) -> float | None:
    """The GPU's own time per frame: the kernels and copies CUDA's profiler sees while ``tracker`` tracks
    ``count`` more frames (the video's, from ``skip``), per frame. Against the unprofiled wall time per
    frame it says how busy the GPU is (1.0: the GPU is the limit; much less: the host is, launching kernels
    or between frames). None on a CPU, or where the profiler cannot see the GPU (said on stderr)."""
    if tracker.device.type != "cuda":
        return None
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    from trek_tracker.video import open_frames

    frames = list(islice(open_frames(video), skip, skip + count))
    if not frames:
        return None
    try:
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            results = [tracker.step(frame, keep_labels=False) for frame in frames]
            for result in results:  # the steps do not wait for the GPU: the boxes do
                _ = result.boxes
        busy = sum(e.time_range.elapsed_us() for e in prof.events() if e.device_type == DeviceType.CUDA)
    except Exception as err:  # noqa: BLE001 - a missing profiler costs this column, not the benchmark
        print(f"GPU kernel time not measured: {type(err).__name__}: {err}", file=sys.stderr)
        return None
    return busy / 1e6 / len(frames) or None  # 0: the profiler saw no GPU work


def official(checkout: Path, video: Path, box, model: str, state: dict, device: torch.device, warmup: int) -> dict:
    from official_aot import OfficialEngine

    from trek_tracker.device import kernel_flags_kept
    from trek_tracker.geometry import box_to_mask
    from trek_tracker.video import open_frames

    frames = list(open_frames(video))
    with kernel_flags_kept():
        # the official evaluator's process sets none of these: PyTorch's defaults, not what the last of our
        # cases left (a Tracker sets them for its precision), or each input's baseline would differ
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = OFFICIAL_TF32
        torch.backends.cudnn.benchmark = False
        engine = OfficialEngine(checkout, model, state, device)
        engine.start(frames[0], box_to_mask(box, frames[0].shape[:2]).astype(np.uint8))
        network, total = [], []
        for frame in frames[1:]:
            _, _, n, t = engine.step(frame)
            network.append(n)
            total.append(t)
    return {"official_network_fps": 1 / statistics.median(network[warmup:]),
            "official_total_fps": 1 / statistics.median(total[warmup:])}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shared", type=Path, default=SHARED)
    parser.add_argument("--models", nargs="+", default=["r50_deaotl"])
    parser.add_argument("--precisions", nargs="+", default=["bf16", "fp32"])
    parser.add_argument("--inputs", nargs="+", default=["480p", "1080p"], choices=sorted(INPUTS))
    parser.add_argument("--frames", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (fixed on a CPU)")
    parser.add_argument("--compile", choices=("off", "on", "both"), default="off",
                        help="run with --compile, without, or both side by side")
    parser.add_argument("--official", type=Path, default=None, help="an aot-benchmark checkout to compare with")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    from trek_tracker.device import select_device

    device = select_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {name}; torch {torch.__version__}; {args.frames} frames per case, first {args.warmup} not timed")
    compiles = {"off": [False], "on": [True], "both": [False, True]}[args.compile]
    head = (f"{'model':<13} {'input':<6} {'precision':<9} {'compile':<7} {'net input':>10} {'end-to-end':>10} "
            f"{'tracker':>8} {'network':>8} {'GPU busy':>8} {'peak GPU':>9}")
    if args.official:
        head += f" {'official net':>12} {'official all':>12} {'x official':>10}"
    print(head)
    rows, errors = [], []
    with tempfile.TemporaryDirectory(prefix="gpu-speed-") as tmp:
        for which in args.inputs:
            video = make_video(args.shared, which, args.frames, Path(tmp))
            box = INPUTS[which][1]
            for model in args.models:
                state, source = official_state(args.shared, model)
                baseline, failed = {}, None
                if args.official:
                    try:  # the official code's own failure costs its columns, not our figures
                        baseline = official(args.official, video, box, model, state, device, args.warmup)
                    except Exception as err:  # noqa: BLE001
                        failed = f"{type(err).__name__}: {err}".splitlines()[0]
                        errors.append(f"the official evaluator failed on {model} at {which} ({failed}); its "
                                      "columns are left out")
                        print(errors[-1], file=sys.stderr, flush=True)
                for precision, compile in [(p, c) for p in args.precisions for c in compiles]:
                    row = {"model": model, "input": which, "weights": source, "device": name,
                           **ours(video, box, model, state, device, precision, Path(tmp) / "run", args.warmup,
                                  compile), **baseline}
                    if baseline:
                        row["speedup_vs_official"] = row["end_to_end_fps"] / baseline["official_total_fps"]
                    if failed:
                        row["official_error"] = failed
                    rows.append(row)
                    size = "x".join(map(str, row["input_size"] or []))
                    peak = "-" if row["peak_gpu_mib"] is None else f"{row['peak_gpu_mib']:.0f} MiB"
                    busy = "-" if row["gpu_busy"] is None else f"{100 * row['gpu_busy']:.0f} %"
                    line = (f"{model:<13} {which:<6} {row['precision']:<9} {'yes' if compile else 'no':<7} {size:>10} "
                            f"{row['end_to_end_fps']:>10.1f} "
                            f"{row['tracker_fps']:>8.1f} {row['network_fps']:>8.1f} {busy:>8} {peak:>9}")
                    if baseline:
                        line += (f" {baseline['official_network_fps']:>12.1f} {baseline['official_total_fps']:>12.1f}"
                                 f" {row['speedup_vs_official']:>9.2f}x")
                    print(line, flush=True)
                    if args.json is not None:  # after each row: a run stopped later (a time limit) keeps these
                        tmp_json = args.json.with_name(f".{args.json.name}.tmp")
                        tmp_json.write_text(json.dumps({"device": name, "rows": rows}, indent=2))
                        tmp_json.replace(args.json)
    for error in errors:  # again at the end, under the table
        print(f"gpu_speed: {error}", file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
