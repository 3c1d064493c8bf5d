"""Where the benchmarks find the project's shared clips and goldens: ``TREK_TRACK_SHARED`` when it is set (the
rule the tests follow), else ``shared/`` beside the checkout."""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("TREK_TRACK_SHARED", REPO.parent / "shared"))
