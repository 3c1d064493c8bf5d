"""A tracker whose module takes long to import in a worker process, as torch and a model's code do: with
``TREK_TEST_SLOW_START`` set (by the parent, after its own import), a process importing it leaves a file named
by its pid in that folder and then sleeps for a minute, still starting up."""

from __future__ import annotations

import os
import time
from pathlib import Path

from tests.eval.helpers import ConstantTracker

if os.environ.get("TREK_TEST_SLOW_START"):
    (Path(os.environ["TREK_TEST_SLOW_START"]) / str(os.getpid())).touch()
    time.sleep(60)


class SlowStartTracker(ConstantTracker):
    pass
