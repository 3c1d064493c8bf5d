"""What ``trek-track run``'s saved state costs: its size, and the time to take it, write it and restore it.

A run saves its tracker's state (``resume.pt``) every ``--save-state-every`` seconds and when a signal stops
it, so that ``--resume`` continues exactly (docs/inference.md#saved-state-resuming-a-run). The state is the
memory's buffers, allocated whole on the first frame with the default cap, so one reference frame and one
tracked frame give its final size. Models have random weights (the cost does not depend on them)::

    python benchmarks/resume_state.py                       # R50-DeAOT-L, 1920x1080, on the CPU
    python benchmarks/resume_state.py --device cuda --precision fp32 bf16 --json resume_state.json

``take`` is :meth:`Tracker.state` (a copy to the host, in the loop's thread), ``write`` the atomic, synced
write of ``resume.pt`` (in the writer thread, behind the tracker), ``restore`` reading it back and
:meth:`Tracker.restore`. Each time is the median of ``--repeats``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from trek_tracker.init.api import InitConfig  # noqa: E402
from trek_tracker.pipeline import Tracker, TrackerConfig  # noqa: E402
from trek_tracker.run_folder import RunFolder, StateFile, load_state_file  # noqa: E402


def measure(model: str, size: tuple[int, int], device: str, precision: str, repeats: int, folder: Path) -> dict:
    config = TrackerConfig(model=model, random_weights=True, device=device, precision=precision,
                           init=InitConfig(method="box"))
    tracker = Tracker(config)
    h, w = size
    frame = np.random.default_rng(0).integers(0, 255, (h, w, 3), dtype=np.uint8)
    tracker.init(frame, [w // 3, h // 3, w // 4, h // 4])
    _ = tracker.step(frame).seconds  # waits for the step's GPU work, which the first take would otherwise wait for
    saver = StateFile(RunFolder.create(folder / f"{model}-{precision}"), every=0, context={})
    take, write, restore = [], [], []
    for _ in range(repeats):
        start = time.perf_counter()
        state = tracker.state()
        take.append(time.perf_counter() - start)
        start = time.perf_counter()
        saver.save(0, {"tracker": state, "lost": {}})
        write.append(time.perf_counter() - start)
        start = time.perf_counter()
        tracker.restore(load_state_file(saver.folder.resume_file)["state"]["tracker"])
        if tracker.device.type == "cuda":
            torch.cuda.synchronize(tracker.device)
        restore.append(time.perf_counter() - start)
    view = tracker._first_view()
    return {"model": model, "frame": f"{w}x{h}", "input": "x".join(map(str, view.input_size)), "device": device,
            "precision": tracker.precision, "memory_cap": view.schedule.cap,
            "state_mib": saver.folder.resume_file.stat().st_size / 2**20,
            "memory_mib": view.memory.nbytes() / 2**20, "take_s": statistics.median(take),
            "write_s": statistics.median(write), "restore_s": statistics.median(restore)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["r50_deaotl"])
    parser.add_argument("--size", default="1080x1920", help="frame HxW")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", nargs="+", default=["fp32"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads on the CPU")
    parser.add_argument("--dir", type=Path, default=None, help="where resume.pt is written (default: a temporary "
                                                                  "folder; give one on the disk runs use)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    h, w = (int(v) for v in args.size.lower().split("x"))
    rows = []
    if args.dir is not None:
        args.dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="resume-state-", dir=args.dir) as tmp:
        for model in args.models:
            for precision in args.precision:
                rows.append(measure(model, (h, w), args.device, precision, args.repeats, Path(tmp)))
                r = rows[-1]
                print(f"{r['model']:<16} {r['frame']:>9} (input {r['input']}) {r['device']} {r['precision']}: state "
                      f"{r['state_mib']:7.1f} MiB (memory {r['memory_mib']:.1f} MiB, cap {r['memory_cap']}); take "
                      f"{r['take_s']:.3f} s, write {r['write_s']:.3f} s, restore {r['restore_s']:.3f} s", flush=True)
    print(f"medians of {args.repeats}; {args.threads} torch thread(s)")
    if args.json is not None:
        args.json.write_text(json.dumps({"repeats": args.repeats, "threads": args.threads, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
