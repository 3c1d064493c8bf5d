"""How fast a run folder takes each frame's outputs: can ``trek-track run`` keep a GPU's pace at 1080p?

The tracker is replaced by one that costs nothing (a precomputed 1080p label map with an ellipse that moves,
and its soft probabilities), so the loop's wall time is the output sinks' own: boxes and times always, then
``--save-masks``, ``--save-probs`` and ``--overlay``. Each output is measured with its files written by one
thread (as before they were pooled) and by the default pool (``FileWriters``: up to 4 threads, at most the
CPUs this process may use), side by side in one run, into a temporary folder::

    python benchmarks/run_outputs.py                      # 1920x1080, 60 frames per setting
    python benchmarks/run_outputs.py --frames 200 --json outputs.json

A figure below the GPU's frame rate means the outputs, not the network, set the pace of a run: the writer
runs behind the tracker with a short queue, so a slower writer stalls the loop.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from trek_tracker import video  # noqa: E402
from trek_tracker.loop import Start, track_video  # noqa: E402
from trek_tracker.pipeline import FrameResult  # noqa: E402
from trek_tracker.results import ObjectIds  # noqa: E402
from trek_tracker.run_folder import Outputs, RunFolder  # noqa: E402

OUTPUTS = {"boxes": Outputs(), "masks": Outputs(masks=True), "probs": Outputs(probs=True),
           "masks+probs": Outputs(masks=True, probs=True), "overlay": Outputs(overlay=True)}


class _Free:
    """A tracker that costs nothing: frame t's result is precomputed (an ellipse moving 4 px per frame)."""

    def __init__(self, size: tuple[int, int], n: int) -> None:
        import cv2
        import torch

        h, w = size
        self.results = []
        for t in range(n):
            labels = np.zeros((h, w), np.uint8)
            cv2.ellipse(labels, (w // 3 + 4 * t, h // 2), (w // 8, h // 6), 0, 0, 360, 1, -1)
            soft = cv2.GaussianBlur(labels.astype(np.float32), (0, 0), 3)
            probs = torch.from_numpy(np.stack([1 - soft, soft]))
            ys, xs = np.nonzero(labels)
            box = np.array([xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1], float)
            self.results.append(FrameResult({1: box}, {1: False}, labels, 0.0, probs))
        self.image = np.full((h, w, 3), 90, np.uint8)

    def init(self, image, box=None, *, mask=None, keep_probs=False, keep_labels=True):
        self.t = 0
        return self.results[0]

    def step(self, image, *, keep_probs=False, keep_labels=True):
        self.t += 1
        return self.results[self.t]


def measure(name: str, outputs: Outputs, tracker: _Free, n: int, threads: int, root: Path) -> dict:
    original = video.decode_threads
    video.decode_threads = lambda: threads  # the file writers' pool size (FileWriters asks video for it)
    try:
        folder = RunFolder.create(root / f"{name}-{threads}")
        h, w = tracker.image.shape[:2]
        sinks = folder.sinks(outputs, ids=ObjectIds((255,)), palette=None, fps=30.0, size=(h, w),
                             record={"video": {"name": "synthetic", "size": [h, w]}})
        start = time.perf_counter()
        track_video(tracker, [tracker.image] * n, Start(box=tracker.results[0].box), sinks, prefetch_depth=0)
        seconds = time.perf_counter() - start
    finally:
        video.decode_threads = original
    written = {kind: len(list((folder.path / kind).glob("*.*"))) for kind in ("masks", "probs")}
    return {"outputs": name, "writer_threads": threads, "frames": n, "fps": n / seconds,
            "ms_per_frame": 1000 * seconds / n, "mask_files": written["masks"],
            "probs_files": written["probs"] - (1 if written["probs"] else 0),  # less probs/objects.json
            "overlay_bytes": folder.overlay_file.stat().st_size if outputs.overlay else 0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=60)
    parser.add_argument("--size", default="1920x1080", help="frame size WxH")
    parser.add_argument("--outputs", default=",".join(OUTPUTS), help=f"some of {','.join(OUTPUTS)}")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    w, h = (int(v) for v in args.size.lower().split("x"))
    names = args.outputs.split(",")
    unknown = [n for n in names if n not in OUTPUTS]
    if unknown:
        sys.exit(f"unknown outputs {unknown}; choose from {', '.join(OUTPUTS)}")
    pool = video.decode_threads()
    tracker = _Free((h, w), args.frames)
    rows = []
    with tempfile.TemporaryDirectory(prefix="run-outputs-") as tmp:
        for name in names:
            for threads in sorted({1, pool}):
                rows.append(measure(name, OUTPUTS[name], tracker, args.frames, threads, Path(tmp)))
    print(f"\n{w}x{h}, {args.frames} frames per row, {os.cpu_count()} CPUs visible, writer pool {pool} threads")
    print("| outputs | file-writer threads | frames/s | ms/frame |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['outputs']} | {r['writer_threads']} | {r['fps']:.0f} | {r['ms_per_frame']:.1f} |")
    if args.json:
        args.json.write_text(json.dumps({"size": [w, h], "writer_pool": pool, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
