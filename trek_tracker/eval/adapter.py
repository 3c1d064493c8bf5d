"""Toolkit-style adapter around any ``init``/``update`` tracker (ours by default).

The official TREK-150 toolkit (and got10k) expect ``name``, ``init(image, box)``, ``update(image) -> box``
and ``track(img_files, box) -> (boxes, times)``. :class:`ToolkitTracker` provides exactly that, so the
official toolkit can run our pipeline, and it guarantees what scoring needs: every ``update`` returns four
finite numbers with positive width and height; otherwise the last valid box is held (a NaN or degenerate
box on a visible frame scores IoU 0, and the toolkit has no "target absent" output).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np

log = logging.getLogger(__name__)


def _valid(box: np.ndarray) -> bool:
    return box.shape == (4,) and bool(np.all(np.isfinite(box))) and box[2] > 0 and box[3] > 0


class ToolkitTracker:
    """Wrap ``tracker`` (default: our :class:`trek_tracker.pipeline.Tracker` built from ``config``)."""

    def __init__(self, tracker: Any = None, name: str | None = None, config: Any = None,
                 is_deterministic: bool = True):
        if tracker is None:
            from trek_tracker.pipeline import Tracker

            tracker = Tracker(config)
        self.tracker = tracker
        self.name = name or getattr(tracker, "name", type(tracker).__name__)
        self.is_deterministic = is_deterministic
        self.last_box: np.ndarray | None = None
        self.held = 0  # frames on which the last valid box was returned instead of the tracker's

    def init(self, image: Any, box: Any) -> None:
        self.last_box = np.asarray(box, dtype=np.float64).reshape(4).copy()
        self.held = 0
        self.tracker.init(image, self.last_box.copy())

    def update(self, image: Any) -> np.ndarray:
        out = self.tracker.update(image)
        box = np.asarray(out, dtype=np.float64).reshape(-1)
        if _valid(box):
            self.last_box = box
        else:
            self.held += 1
            if self.held == 1:
                log.warning("%s returned %r; holding the last valid box", self.name, out)
        return self.last_box.copy()

    def track(self, img_files: list[str], box: Any, visualize: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """The toolkit's ``Tracker.track``: row 0 is ``box``; ``times`` covers only init/update calls."""
        from PIL import Image

        boxes = np.zeros((len(img_files), 4))
        boxes[0] = np.asarray(box, dtype=np.float64).reshape(4)
        times = np.zeros(len(img_files))
        for f, path in enumerate(img_files):
            with Image.open(path) as im:
                image = im.convert("RGB")
            start = time.perf_counter()
            if f == 0:
                self.init(image, boxes[0])
            else:
                boxes[f] = self.update(image)
            times[f] = time.perf_counter() - start
        return boxes, times
