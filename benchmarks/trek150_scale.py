"""A TREK-150-shaped workload through the evaluation runner: throughput, time outside the network, peak
memory against sequence length, and the projected wall time of the whole benchmark on this machine.

The dataset is synthetic but shaped like TREK-150: 150 sequence lengths drawn (seeded) to match the
published summary (161 to 4,640 frames, median 484, 97,434 frames in all), 1080p frames (hard links to
the shared 1920x1080 ``aot_demo`` images, so every frame is really decoded), OPE over every sequence, MSE
anchors every ``--anchor-spacing`` frames tracked towards the longer side (the VOT2020 style the IJCV
paper describes; the real ``anchors.txt`` decides), and ``--hoi`` intervals per sequence. A sample of that
plan is tracked (``--sequences``, ``--length-scale``) with any model, and the per-frame figures project the
full plan as ``trek-track eval`` runs it: each group of runs that are the first frames of a longer one
tracked once, as that run (docs/trek150.md#shared-runs). Every tracked run starts with a box-to-mask init;
its time (fused SAM and Alpha-Refine, ``--init-sam``) is measured on a 1080p frame and added once per
tracked run.

    python benchmarks/trek150_scale.py --model test_deaot_tiny --random-weights --device cpu --threads 1 \
        --init-sam none
    python benchmarks/trek150_scale.py --model r50_deaotl --checkpoint r50_deaotl --device cuda --sequences 10

"Outside the network" is each frame's wall time minus the time spent in the model's own calls (encode,
ID embedding, propagation, decoding, ID fusion; on a GPU their spans between CUDA events, so that timing
adds no synchronisation): decoding, preprocessing, upsampling and arg-max, boxes, memory writes and result
files. With the tiny test model on a CPU this is the pipeline's own overhead. It is split in two: "work",
the tensor work around the network that a GPU run does on the device (:class:`FrameWorkClock`: network
input, upsampling, soft-max and arg-max, the labels' one-hot and the memory's writes, the objects'
extents), and "host", the rest (waiting for decoded frames, boxes, result files, Python): on a GPU the
host's share.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from benchdata import SHARED

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

REAL = {"sequences": 150, "frames": 97_434, "min": 161, "median": 484, "max": 4_640}


def draw_lengths(seed: int = 0) -> list[int]:
    """150 lengths with TREK-150's minimum, median, maximum and total (a log-normal, rescaled)."""
    rng = np.random.default_rng(seed)
    x = np.sort(rng.lognormal(mean=np.log(REAL["median"]), sigma=0.75, size=REAL["sequences"]))
    x = (x - x[0]) / (x[-1] - x[0])  # 0..1, ordered
    lengths = REAL["min"] + x * (REAL["max"] - REAL["min"])
    mid = REAL["sequences"] // 2
    # pin the median and the ends, and scale the rest to the total
    for _ in range(200):
        lengths = np.clip(lengths * REAL["frames"] / lengths.sum(), REAL["min"], REAL["max"])
        lengths[0], lengths[-1] = REAL["min"], REAL["max"]
        lengths[mid - 1:mid + 1] = REAL["median"]
        low, high = lengths[:mid - 1], lengths[mid + 1:]  # keep the order around the pinned median
        lengths[:mid - 1], lengths[mid + 1:] = np.minimum(low, REAL["median"]), np.maximum(high, REAL["median"])
    return [int(round(v)) for v in lengths]


def anchors(n: int, spacing: int) -> list[tuple[int, int]]:
    """Anchors every ``spacing`` frames, each tracked towards the longer side (0 forward, 1 backward)."""
    return [(a, 0 if n - a >= a + 1 else 1) for a in range(0, n, spacing)]


def hoi_intervals(n: int, count: int) -> list[tuple[int, int, int]]:
    """``count`` intervals of a quarter of the sequence (at most 300 frames), spread over it."""
    length = max(2, min(300, n // 4))
    starts = np.linspace(0, n - length, count + 2)[1:-1].astype(int) if count else []
    return [(int(s), int(s) + length - 1, k % 3) for k, s in enumerate(starts)]


def build(root: Path, lengths: list[int], images: list[Path], box: tuple[int, int, int, int], spacing: int,
          hoi: int) -> None:
    """The official layout, frames hard-linked (or symlinked) to ``images``."""
    ann = root / "TREK-150-annotations"
    ann.mkdir(parents=True)
    names = [f"P{i // 10 + 1:02d}-P{i // 10 + 1:02d}_{i % 10 + 1:02d}-{i + 1}" for i in range(len(lengths))]
    (ann / "sequences.txt").write_text("".join(n + "\n" for n in names))
    for name, n in zip(names, lengths, strict=True):
        seq = root / name
        (seq / "img").mkdir(parents=True)
        ids = [1 + i for i in range(n)]
        (seq / "groundtruth_rect.txt").write_text("".join(",".join(map(str, box)) + "\n" for _ in range(n)))
        (seq / "frames.txt").write_text("".join(f"{f}\n" for f in ids))
        for i, fid in enumerate(ids):
            dst, src = seq / "img" / f"frame_{fid:010d}.jpg", images[i % len(images)]
            try:
                os.link(src, dst)
            except OSError:
                dst.symlink_to(src)
        (seq / "anchors.txt").write_text("".join(f"{a},{d}\n" for a, d in anchors(n, spacing)))
        if hoi:
            (seq / "anchors_hoi.txt").write_text("".join(f"{s},{e},{t}\n" for s, e, t in hoi_intervals(n, hoi)))


class SpanClock:
    """Adds up the time spent in chosen calls, without changing how the run goes.

    On a GPU each call is bracketed by two CUDA events on the current stream, read once at the end
    (:meth:`seconds` synchronises then): synchronising around every call would drain the GPU's queue five
    times a frame and slow down the very run being measured. A span is then the GPU's time from the call's
    first kernel to its last (idle gaps inside the call included). On a CPU it is the call's wall time.
    A call made inside another timed call of the same clock counts once, in the outer one.
    """

    def __init__(self) -> None:
        self._spans: list = []  # (start, end): CUDA events, or perf_counter readings
        self._cuda = False
        self._inside = threading.local()  # per thread: whether a timed call is under way

    def wrap(self, owner: object, names: tuple[str, ...], *, cuda: bool) -> None:
        """Time the calls ``owner.<name>`` from now on (an instance, a class or a module)."""
        self._cuda = cuda
        for name in names:
            original = getattr(owner, name)

            def timed(*args, _original=original, **kwargs):
                if getattr(self._inside, "now", False):
                    return _original(*args, **kwargs)
                self._inside.now = True
                try:
                    start = self._mark()
                    out = _original(*args, **kwargs)
                    self._spans.append((start, self._mark()))
                finally:
                    self._inside.now = False
                return out

            setattr(owner, name, timed)

    def _mark(self):
        if not self._cuda:
            return time.perf_counter()
        import torch

        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def __len__(self) -> int:
        """Calls timed so far (a mark for :meth:`seconds`)."""
        return len(self._spans)

    def seconds(self, begin: int = 0, end: int | None = None) -> float:
        """Total time of calls ``begin`` to ``end`` (indices as :func:`len` gave them)."""
        spans = self._spans[begin:end]
        if not self._cuda:
            return sum(b - a for a, b in spans)
        import torch

        torch.cuda.synchronize()
        return sum(a.elapsed_time(b) for a, b in spans) / 1000

    def reset(self) -> None:
        self._spans.clear()


class NetworkClock(SpanClock):
    """The model's own calls: encoding, ID embedding, propagation, decoding, ID fusion."""

    METHODS = ("encode", "id_embedding", "propagate", "decode", "fuse_id")

    def attach(self, model) -> None:
        self.wrap(model, self.METHODS, cuda=next(model.parameters()).is_cuda)


class FrameWorkClock(SpanClock):
    """The rest of a frame's tensor work, on the device of a GPU run: the network input (upload, resize,
    normalise, mirror), the logits' upsampling to the frame, the soft-max and arg-max, the label map's
    resize and one-hot for the memory, the memory's writes, and the objects' extents for their boxes. Every
    engine of this process is timed (their class's methods are wrapped): with :class:`NetworkClock`, what is
    left of a frame's wall time is the host's own work (decoding waits, boxes, results, Python). In fp32, the
    parity mode, the network input is prepared on the host (the official CPU path), and counts here."""

    def attach(self, cuda: bool) -> None:
        from trek_tracker import pipeline
        from trek_tracker.inference import engine, memory

        self.wrap(engine.VOSEngine, ("_network_input", "_upsample", "merge_groups", "_one_hot"), cuda=cuda)
        self.wrap(memory.Memory, ("remember",), cuda=cuda)
        self.wrap(engine, ("channel_argmax",), cuda=cuda)
        self.wrap(pipeline, ("object_extents",), cuda=cuda)


class PeakRSS:
    """Peak resident memory while a run goes, sampled every 20 ms (MiB)."""

    def __init__(self) -> None:
        self.peak, self._stop = 0.0, threading.Event()

    def _rss(self) -> float:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def __enter__(self):
        self.peak = self._rss()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, self._rss())

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shared", type=Path, default=SHARED)
    parser.add_argument("--model", default="test_deaot_tiny")
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--random-weights", action="store_true")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--memory-cap", default=None, help="as trek-track (default: the model's, bounded)")
    parser.add_argument("--sequences", type=int, default=3, help="sequences of the plan to track (a sample)")
    parser.add_argument("--length-scale", type=float, default=0.1,
                        help="tracked sequences are this fraction of their drawn length (the projection uses "
                             "the full lengths)")
    parser.add_argument("--budget-frames", type=int, default=3000,
                        help="track the sample's OPE runs, then its MSE and HOI runs in a seeded random order "
                             "until this many frames (MSE frames grow with the square of the length)")
    parser.add_argument("--max-long-edge", type=int, default=1040, help="network input long edge (as trek-track)")
    parser.add_argument("--anchor-spacing", type=int, default=100)
    parser.add_argument("--hoi", type=int, default=2, help="HOI intervals per sequence")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (fixed, for stable timings)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", default=None, metavar="N[,N...]",
                        help="also run the same sample through `trek-track eval`'s runner with N processes on the "
                             "device (e.g. 1,2: does a second process per GPU raise throughput?)")
    parser.add_argument("--init-sam", choices=("none", *INIT_SAMS), default="vit_b",
                        help="time the box-to-mask init every run starts with (fused SAM of this size and "
                             "Alpha-Refine seg384, as the README's eval command; random weights) and add it to the "
                             "projection; none leaves it out")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)

    import torch

    from trek_tracker.eval.dataset import Trek150
    from trek_tracker.eval.protocols import Run, group_runs, hoi_runs, mse_runs, ope_runs, plan
    from trek_tracker.eval.runner import as_step_tracker, track_run
    from trek_tracker.inference.memory import MemoryConfig
    from trek_tracker.init.api import InitConfig
    from trek_tracker.pipeline import Tracker, TrackerConfig
    from trek_tracker.video import decode_threads, open_frames

    torch.set_num_threads(args.threads)
    images = sorted((args.shared / "data/aot_demo/images").glob("*.jpg"))
    frame = open_frames(args.shared / "data/aot_demo/images")[0]
    h, w = frame.shape[:2]
    box = (w // 3, h // 3, w // 5, h // 4)
    lengths = draw_lengths(args.seed)
    rng = np.random.default_rng(args.seed)
    sample = sorted(rng.choice(len(lengths), size=min(args.sequences, len(lengths)), replace=False))
    sample_lengths = [max(8, int(lengths[i] * args.length_scale)) for i in sample]

    cap = args.memory_cap if args.memory_cap in (None, "none") else int(args.memory_cap)
    config = TrackerConfig(model=args.model, checkpoint=args.checkpoint, random_weights=args.random_weights,
                           device=args.device, precision=args.precision, init=InitConfig(method="box"),
                           memory=MemoryConfig(cap=cap), max_long_edge=args.max_long_edge)
    tracker = Tracker(config)
    clock = NetworkClock()
    for member in tracker.members:
        clock.attach(member.model)
    step = as_step_tracker(tracker)
    cuda = tracker.device.type == "cuda"
    work = FrameWorkClock()
    work.attach(cuda)

    # the full plan (projection) and the sample (tracked)
    full = [r for i, n in enumerate(lengths) for r in _plan_of(n, args.anchor_spacing, args.hoi, Run, ope_runs,
                                                                mse_runs, hoi_runs, name=f"s{i}")]
    tracked = [g.carrier for g in group_runs(full)]  # what eval tracks: the rest are first frames of these
    rows = []
    with tempfile.TemporaryDirectory(prefix="trek150-scale-") as tmp:
        root = Path(tmp)
        build(root, sample_lengths, images, box, max(2, int(args.anchor_spacing * args.length_scale)), args.hoi)
        dataset = Trek150(root)
        runs = plan(dataset, "all")
        ope = [r for r in runs if r.protocol == "ope"]
        rest = [r for r in runs if r.protocol != "ope"]
        rest = [rest[i] for i in rng.permutation(len(rest))]
        chosen, budget = [], args.budget_frames
        for run in ope + rest:
            if run.protocol == "ope" or run.length <= budget:
                chosen.append(run)
                budget -= run.length
        longest = max(dataset, key=len)
        counts = sorted({1, decode_threads()})
        decode = {t: decode_rate(tracker, longest, t) for t in counts}
        toolkit_decode = {t: decode_rate(None, longest, t) for t in counts}
        for what, rates in (("for ours (OpenCV, into arrays)", decode), ("for toolkit trackers (PIL images)",
                                                                          toolkit_decode)):
            print(f"decoding 1080p JPEG frames {what}: " + ", ".join(
                f"{fps:.0f} frames/s with {t} thread{'s' * (t > 1)}" for t, fps in rates.items()), flush=True)
        print(f"tracking {len(chosen)} of the sample's {len(runs)} runs ({sum(r.length for r in chosen)} frames)",
              flush=True)
        for run in chosen:
            if cuda:
                torch.cuda.reset_peak_memory_stats(tracker.device)
            clock.reset()
            work.reset()
            with PeakRSS() as rss:
                start = time.perf_counter()
                track_run(step, dataset[run.sequence], run)
                wall = time.perf_counter() - start
            network = clock.seconds()
            rows.append({"protocol": run.protocol, "sequence": run.sequence, "frames": run.length, "seconds": wall,
                         "network_seconds": network, "frame_work_seconds": work.seconds(), "peak_rss_mib": rss.peak,
                         "peak_cuda_mib": torch.cuda.max_memory_allocated(tracker.device) / 2**20 if cuda else None})
            print(f"  {run.protocol} {run.sequence} {run.length} frames: {wall:.1f} s, network {network:.1f} s",
                  flush=True)
        init = None if args.init_sam == "none" else init_seconds(fused_init(args.init_sam, tracker.device), frame, box)
        if init is not None:
            print(f"box-to-mask init (fused SAM {args.init_sam} + Alpha-Refine seg384, random weights) on a 1080p "
                  f"frame: {init:.2f} s per run", flush=True)
        frames = sum(r["frames"] for r in rows)
        seconds = sum(r["seconds"] for r in rows)
        network = sum(r["network_seconds"] for r in rows)
        frame_work = sum(r["frame_work_seconds"] for r in rows)
        per_frame = seconds / frames
        full_frames = {p: sum(r.length for r in full if r.protocol == p) for p in ("ope", "mse", "hoi")}
        print(f"device {tracker.device}, precision {tracker.precision}, model {tracker.loaded.name}, "
              f"memory {tracker.describe().get('memory') or config.memory}, {args.threads} CPU thread(s)")
        print(f"sample: {len(sample)} sequences at {args.length_scale:g} of their length, {len(rows)} runs, "
              f"{frames} frames tracked; network input long edge {args.max_long_edge}")
        print("ms per frame; outside = frame work (the tensor work around the network: on the device on a GPU) + host")
        print(f"{'protocol':<9} {'runs':>5} {'frames':>7} {'fps':>8} {'ms/frame':>9} {'network':>8} {'outside':>8} "
              f"{'work':>8} {'host':>8}")
        for p in ("ope", "mse", "hoi", "all"):
            sel = [r for r in rows if p in ("all", r["protocol"])]
            if not sel:
                continue
            f, s = sum(r["frames"] for r in sel), sum(r["seconds"] for r in sel)
            n = sum(r["network_seconds"] for r in sel)
            w = sum(r["frame_work_seconds"] for r in sel)
            print(f"{p:<9} {len(sel):>5} {f:>7} {f / s:>8.1f} {1000 * s / f:>9.2f} {1000 * n / f:>8.2f} "
                  f"{1000 * (s - n) / f:>8.2f} {1000 * w / f:>8.2f} {1000 * (s - n - w) / f:>8.2f}")
        print("peak memory by run length (frames):")
        for lo, hi in ((0, 100), (100, 300), (300, 1000), (1000, 10**9)):
            sel = [r for r in rows if lo <= r["frames"] < hi]
            if sel:
                cuda_peak = max((r["peak_cuda_mib"] or 0) for r in sel)
                rss = max(r["peak_rss_mib"] for r in sel)
                print(f"  {lo:>5}-{hi if hi < 10**9 else '':<5} {len(sel):>4} runs  RSS {rss:8.0f} MiB"
                      + (f"  CUDA {cuda_peak:8.0f} MiB" if cuda else ""))
        full_runs = {p: sum(r.protocol == p for r in full) for p in full_frames}
        tracked_frames = {p: sum(r.length for r in tracked if r.protocol == p) for p in full_frames}
        tracked_runs = {p: sum(r.protocol == p for r in tracked) for p in full_frames}
        projected = project(tracked_frames, tracked_runs, per_frame, init or 0.0)
        print(f"full plan: {sum(full_frames.values())} frames (OPE {full_frames['ope']}, MSE {full_frames['mse']}, "
              f"HOI {full_frames['hoi']}) in {len(full)} runs, of which eval tracks {sum(tracked_frames.values())} "
              f"frames in {len(tracked)} runs (OPE {tracked_frames['ope']}, MSE {tracked_frames['mse']}, HOI "
              f"{tracked_frames['hoi']}; the others are the first frames of one of these: MSE's forward run from "
              f"frame 0 is OPE's)")
        print(f"projected on this machine at {1000 * per_frame:.1f} "
              f"ms/frame" + ("" if init is None else f" and {init:.2f} s of init per run") + ": "
              f"{sum(projected.values()) / 3600:.1f} h (OPE {projected['ope'] / 3600:.1f} h, MSE "
              f"{projected['mse'] / 3600:.1f} h, HOI {projected['hoi'] / 3600:.1f} h)"
              + (" without the box-to-mask init (--init-sam none)" if init is None else ""))
        # written now and after each runner's rate: a run stopped during those (a time limit) keeps
        # the sample's figures and the projection
        result = {
            "device": str(tracker.device), "precision": tracker.precision, "model": tracker.loaded.name,
            "threads": args.threads, "max_long_edge": args.max_long_edge, "sample_runs": rows, "frames": frames,
            "seconds": seconds,
            "network_seconds": network, "ms_per_frame": 1000 * per_frame,
            "ms_per_frame_outside_network": 1000 * (seconds - network) / frames,
            "ms_per_frame_frame_work": 1000 * frame_work / frames,
            "ms_per_frame_host": 1000 * (seconds - network - frame_work) / frames,
            "decode_fps_by_threads": decode, "toolkit_decode_fps_by_threads": toolkit_decode,
            "runner_by_workers": [],
            "full_plan_frames": full_frames, "full_plan_runs": full_runs, "tracked_plan_frames": tracked_frames,
            "tracked_plan_runs": tracked_runs, "init_seconds_per_run": init,
            "init_sam": args.init_sam, "projected_hours": {p: v / 3600 for p, v in projected.items()},
            "assumptions": {"lengths": "drawn to TREK-150's min/median/max/total", "anchor_spacing":
                            args.anchor_spacing, "hoi_intervals_per_sequence": args.hoi,
                            "frames": "1920x1080 JPEG (aot_demo)"}}
        _save(args.json, result)
        for n in (int(v) for v in args.workers.split(",")) if args.workers else ():
            result["runner_by_workers"].append(runner_rate(dataset, chosen, root / f"results-{n}", config,
                                                         str(tracker.device), n))
            rate = result["runner_by_workers"][-1]
            print(f"  the runner with {n} process{'es' * (n > 1)} on {tracker.device}: "
                  f"{rate['fps']:.1f} frames/s ({rate['seconds']:.1f} s, model loading included)", flush=True)
            _save(args.json, result)
    return 0


INIT_SAMS = ("vit_b", "vit_l", "vit_h")


def _save(path: Path | None, result: dict) -> None:
    """``result`` as JSON at ``path`` (if any), whole or not at all: a run stopped while it writes keeps the last."""
    if path is not None:
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(result, indent=2))
        tmp.replace(path)


def project(frames: dict[str, int], runs: dict[str, int], per_frame: float, init: float) -> dict[str, float]:
    """Projected seconds of the full plan, per protocol: its ``frames`` at ``per_frame`` seconds each, and
    each of its ``runs``' box-to-mask init at ``init`` seconds (a sample run's own start, from the box, is in
    ``per_frame``)."""
    return {p: frames[p] * per_frame + runs[p] * init for p in frames}


def fused_init(sam: str, device):
    """The fused box-to-mask init ``trek-track eval`` runs at the start of every run, with a SAM of size
    ``sam`` and Alpha-Refine seg384, at random (seeded) weights: its time does not depend on their values."""
    import torch
    from segment_anything import sam_model_registry

    from trek_tracker.init.alpha_refine.seg384 import ARSegMask
    from trek_tracker.init.api import BoxToMask, InitConfig

    torch.manual_seed(0)
    return BoxToMask(InitConfig(method="fused"), str(device), sam_model=sam_model_registry[sam]().to(device).eval(),
                     ar_network=ARSegMask().to(device).eval())


def init_seconds(init, frame: np.ndarray, box, calls: int = 3) -> float:
    """Median seconds of ``calls`` box-to-mask inits on ``frame`` (after one untimed call), synchronised."""
    import torch

    from trek_tracker.device import synchronize

    device = torch.device(init.device)
    times = []
    for i in range(calls + 1):
        start = time.perf_counter()
        init(frame, np.asarray(box, dtype=np.float64))
        synchronize(device)
        if i:
            times.append(time.perf_counter() - start)
    return float(np.median(times))


def build_tracker(config, device: str | None = None):
    """A worker's tracker (module level, so that spawned worker processes can build it)."""
    import dataclasses

    from trek_tracker.pipeline import Tracker

    return Tracker(dataclasses.replace(config, device=device or config.device))


def runner_rate(dataset, runs, results: Path, config, device: str, workers: int) -> dict:
    """Frames per second of the evaluation runner (``trek-track eval``'s) over ``runs`` with ``workers``
    processes on ``device``, wall clock from start to the last result file (each process loads its model)."""
    import functools

    from trek_tracker.eval.runner import execute

    start = time.perf_counter()
    summary = execute(dataset, runs, results, functools.partial(build_tracker, config), workers=workers,
                      progress=False, devices=[device])
    seconds = time.perf_counter() - start
    return {"workers": workers, "frames": summary.frames, "seconds": seconds, "fps": summary.frames / seconds}


def decode_rate(tracker, seq, threads: int, frames: int = 120) -> float:
    """Frames per second the evaluation runner's decoding delivers ``tracker`` for ``seq`` with ``threads``
    decoding threads, nothing else running: for ours, arrays decoded by OpenCV; for anything else (None: a
    toolkit tracker), PIL images."""
    from trek_tracker.eval.runner import run_frames
    from trek_tracker.video import prefetch

    n = min(frames, len(seq))
    next(iter(run_frames(tracker, seq, range(1))))  # the decoder's own first-use set-up is not a frame's cost
    start = time.perf_counter()
    for _ in prefetch(run_frames(tracker, seq, range(n)), depth=4, threads=threads):
        pass
    return n / (time.perf_counter() - start)


class _Planned:
    """A sequence as the protocol planners see it (no files): name, length, anchors, HOI intervals."""

    def __init__(self, n: int, spacing: int, hoi: int, name: str = "s") -> None:
        self.name, self.n = name, n
        self.anchors, self.hoi = anchors(n, spacing), hoi_intervals(n, hoi)

    def __len__(self) -> int:
        return self.n


def _plan_of(n, spacing, hoi, Run, ope_runs, mse_runs, hoi_runs, name: str = "s"):
    """The runs of sequence ``name`` of ``n`` frames under this benchmark's assumptions."""
    seq = _Planned(n, spacing, hoi, name)
    return ope_runs(seq) + mse_runs(seq) + hoi_runs(seq)


if __name__ == "__main__":
    raise SystemExit(main())
