"""Between the loop and toolkit-style trackers, both ways.

* :class:`StepAdapter` drives any got10k / TREK-150 toolkit tracker (``init(image, box)``,
  ``update(image) -> [x, y, w, h]``) through the one per-video loop: it hands the tracker RGB ``PIL``
  images as the toolkit does, times its calls (the toolkit's definition of speed), and guarantees what
  scoring needs: every box is four finite numbers with positive width and height, else the last valid box
  is held (a NaN or degenerate box on a visible frame scores IoU 0, and the toolkit has no "target absent").
* :class:`ToolkitTracker` is a tracker of the loop (our pipeline by default, or a toolkit tracker through a
  :class:`StepAdapter`) as a toolkit tracker (``name``, ``init``, ``update``, ``track``), so the official
  toolkit can run it; ``track`` walks the files through the one loop.
"""

from __future__ import annotations

import contextlib
import logging
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from trek_tracker.errors import InputError, UserError, out_of_memory_message
from trek_tracker.geometry import Box
from trek_tracker.pipeline import FrameResult

log = logging.getLogger(__name__)


def _valid(box: np.ndarray) -> bool:
    return box.shape == (4,) and bool(np.all(np.isfinite(box))) and box[2] > 0 and box[3] > 0


def _pil(image: Any):
    """The toolkit hands trackers RGB PIL images; frames decoded as arrays are converted."""
    if isinstance(image, np.ndarray):
        from PIL import Image

        return Image.fromarray(image)
    return image


@contextlib.contextmanager
def tracker_code(call: str, advice: str = "fix the tracker") -> Iterator[None]:
    """An exception raised by a toolkit tracker's own code becomes one line naming the call, the error and
    the line of the tracker's code that raised it (the last frame of its traceback), with what to do."""
    try:
        yield
    except (UserError, KeyboardInterrupt, MemoryError):
        raise
    except Exception as err:  # noqa: BLE001 - any error of code that is not ours
        if out_of_memory_message(err, None, "") is not None:
            raise  # a failed allocation: said as such by the runner, with what to do
        tb = traceback.extract_tb(err.__traceback__)
        where = f" at {Path(tb[-1].filename).name}:{tb[-1].lineno}" if tb else ""
        raise UserError(f"{call} raised {type(err).__name__}: {err}{where}; {advice}") from None


class StepAdapter:
    """A toolkit-style tracker as the loop's tracker (boxes only; no masks)."""

    def __init__(self, tracker: Any) -> None:
        self.tracker = tracker
        self.name = getattr(tracker, "name", type(tracker).__name__)
        self.last_box: np.ndarray | None = None
        self.held = 0  # frames on which the last valid box was returned instead of the tracker's

    def init(self, image: Any, box: Box | Any = None, *, mask: np.ndarray | None = None,
             keep_probs: bool = False, keep_labels: bool = True) -> FrameResult:
        if mask is not None or box is None:
            raise InputError(f"{self.name} is a box tracker: start it from a box")
        self.last_box = np.asarray(box, dtype=np.float64).reshape(4).copy()
        self.held = 0
        image = _pil(image)
        start = time.perf_counter()
        with tracker_code(f"{self.name}.init()"):
            self.tracker.init(image, self.last_box.copy())
        return FrameResult({1: self.last_box.copy()}, {1: False}, None, time.perf_counter() - start)

    def step(self, image: Any, *, keep_probs: bool = False, keep_labels: bool = True) -> FrameResult:
        image = _pil(image)
        start = time.perf_counter()
        with tracker_code(f"{self.name}.update()"):
            out = self.tracker.update(image)
        seconds = time.perf_counter() - start
        box = np.asarray(out, dtype=np.float64).reshape(-1)
        if box.shape != (4,):
            raise InputError(f"{self.name} returned {out!r}; update() must return four numbers [x, y, w, h]")
        if _valid(box):
            self.last_box = box
        else:
            self.held += 1
            if self.held == 1:
                log.warning("%s returned %r; holding the last valid box", self.name, out)
        return FrameResult({1: self.last_box.copy()}, {1: False}, None, seconds)


class ToolkitTracker:
    """A toolkit tracker around ``tracker`` (default: our :class:`~trek_tracker.pipeline.Tracker` built from
    ``config``; a toolkit-style tracker is driven through a :class:`StepAdapter`)."""

    def __init__(self, tracker: Any = None, name: str | None = None, config: Any = None,
                 is_deterministic: bool = True) -> None:
        from trek_tracker.pipeline import Tracker

        if tracker is None:
            tracker = Tracker(config)
        self.name = name or getattr(tracker, "name", type(tracker).__name__)
        self.tracker = tracker if isinstance(tracker, Tracker) else StepAdapter(tracker)
        self.is_deterministic = is_deterministic

    @property
    def held(self) -> int:
        """Frames on which a toolkit tracker's invalid box was replaced by its last valid one."""
        return getattr(self.tracker, "held", 0)

    def init(self, image: Any, box: Any) -> None:
        self.tracker.init(image, box)

    def update(self, image: Any) -> np.ndarray:
        return self.tracker.step(image).box

    def track(self, img_files: list[str], box: Any, visualize: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """The toolkit's ``Tracker.track``: row 0 is the start box; ``times`` covers only the tracker's calls."""
        from trek_tracker.eval.dataset import load_image
        from trek_tracker.eval.runner import ResultRows
        from trek_tracker.loop import Start, track_video

        def frames():
            for path in img_files:
                yield load_image(path)

        rows = ResultRows(len(img_files))
        track_video(self.tracker, frames(), Start(box=Box.of(box)), [rows])
        rows.boxes[0] = np.asarray(box, dtype=np.float64)  # as given, even where tracking starts from it clipped
        return rows.boxes, rows.times
