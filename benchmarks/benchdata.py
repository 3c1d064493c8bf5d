"""What the benchmarks share: where the project's clips and goldens are (``TREK_TRACK_SHARED`` when it is set,
the rule the tests follow, else ``shared/`` beside the checkout), and the goldens' CPU calibration workload."""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("TREK_TRACK_SHARED", REPO.parent / "shared"))


def calibration_ms(repeats: int = 15, warmup: int = 3) -> float:
    """The goldens' calibration workload (a 1024x1024 float32 matmul plus a 64->64 3x3 convolution at
    128x128), median milliseconds after ``warmup`` runs: timings taken on different machines compare
    through it."""
    import torch

    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    x, w = torch.randn(1, 64, 128, 128), torch.randn(64, 64, 3, 3)
    times = []
    for _ in range(warmup + repeats):
        start = time.perf_counter()
        a @ b
        torch.nn.functional.conv2d(x, w, padding=1)
        times.append(1000 * (time.perf_counter() - start))
    return statistics.median(times[warmup:])
