"""How fast ``trek-track run --start-frame S`` reaches frame S of a video file.

A video reaches its start frame by decoding every frame before it, without converting them to RGB
(``VideoFileSource.frames``): exact on any video, at the decoder's speed. This measures that speed (frames
skipped per second) beside the speed of reading frames (decoding and converting, what tracking reads), on
the shared H.264 clips and on a 1920x1080 clip written here with OpenCV's MPEG-4 Part 2 encoder (the
``aot_demo`` frames, looped; OpenCV's wheels carry no H.264 encoder, so its codec is lighter than EPIC's
H.264). Each figure is the median of ``--repeats`` passes; FFmpeg decodes with its own threads::

    python benchmarks/start_frame.py
    python benchmarks/start_frame.py --repeats 5 --json start_frame.json

A folder of frames starts at once, at any frame: to start far into a long video many times, extract it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from benchdata import SHARED

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from trek_tracker.video import open_frames  # noqa: E402


def write_1080p_clip(path: Path, images: list[Path], frames: int) -> Path:
    """``frames`` frames cycling through ``images`` (1920x1080 JPEGs), MPEG-4 Part 2 at 60 fps."""
    import cv2

    first = cv2.imread(str(images[0]))
    h, w = first.shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 60.0, (w, h))
    decoded = [cv2.imread(str(p)) for p in images]
    for t in range(frames):
        writer.write(decoded[t % len(decoded)])
    writer.release()
    return path


def rates(path: Path, repeats: int) -> dict:
    """Frames per second of reaching the last frame (skipping every other) and of reading every frame."""
    n = sum(1 for _ in open_frames(path).frames())  # the exact count, and a warm file cache
    skip, read = [], []
    for _ in range(repeats):
        source = open_frames(path)
        start = time.perf_counter()
        last = next(iter(source.frames(n - 1)))
        skip.append((n - 1) / (time.perf_counter() - start))
        start = time.perf_counter()
        count = sum(1 for _ in open_frames(path).frames())
        read.append(count / (time.perf_counter() - start))
    h, w = last.shape[:2]
    return {"video": path.name, "size": f"{w}x{h}", "frames": n, "skip_fps": statistics.median(skip),
            "read_fps": statistics.median(read)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=SHARED)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--frames-1080p", type=int, default=300, help="length of the 1080p clip written here")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    videos = sorted((args.shared / "data/videos").glob("*.mp4"))
    if not videos:
        print(f"no clips under {args.shared}/data/videos: give --shared", file=sys.stderr)
        return 2
    rows = []
    with tempfile.TemporaryDirectory(prefix="start-frame-") as tmp:
        images = sorted((args.shared / "data/aot_demo/images").glob("*.jpg"))
        clips = [*videos, write_1080p_clip(Path(tmp) / "aot_demo_1080p_mp4v.mp4", images, args.frames_1080p)]
        for clip in clips:
            rows.append(rates(clip, args.repeats))
            row = rows[-1]
            print(f"{row['video']:<28} {row['size']:>9} {row['frames']:>6} frames: reaching the last at "
                  f"{row['skip_fps']:7.0f} frames/s, reading at {row['read_fps']:6.0f} frames/s", flush=True)
    print(f"medians of {args.repeats} passes; FFmpeg's own decoding threads")
    if args.json is not None:
        args.json.write_text(json.dumps({"repeats": args.repeats, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
