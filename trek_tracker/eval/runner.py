"""Run a tracker over a protocol plan and write the official results layout.

``<results>/<tracker>/{ope,mse,hoi}/...`` (``<results>`` is usually ``./results/TREK-150``). The runner

- accepts any object with ``init(image, box)`` / ``update(image) -> [x, y, w, h]`` (our
  :class:`trek_tracker.pipeline.Tracker`, or a toolkit-style tracker), given as a factory so that each
  worker process builds its own;
- hands frames over as RGB ``PIL.Image`` (as the toolkit does), decoded ahead in a background thread;
  times only the ``init``/``update`` call (the toolkit's definition of speed);
- resumes: a run whose result file parses with the right row count is skipped (the toolkit only checks
  that the file exists), every file is written atomically;
- runs in parallel (``workers`` processes) and can be split across machines (see
  :func:`trek_tracker.eval.protocols.shard`).
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
from collections.abc import Callable
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

from trek_tracker.errors import InputError
from trek_tracker.eval.adapter import StepAdapter
from trek_tracker.eval.dataset import Sequence, Trek150
from trek_tracker.eval.protocols import Run
from trek_tracker.loop import Sink, Start, StepTracker, track_video
from trek_tracker.pipeline import FrameResult
from trek_tracker.results import read_result, read_times, write_boxes, write_times

log = logging.getLogger(__name__)


TrackerFactory = Callable[[], Any]


class ResultRows(Sink):
    """A run's rows as the toolkit writes them: object 1's box and the tracker's seconds per frame."""

    def __init__(self, length: int) -> None:
        self.boxes = np.zeros((length, 4))
        self.times = np.zeros(length)

    def frame(self, index: int, image: Any, result: FrameResult) -> None:
        self.boxes[index] = result.box
        self.times[index] = result.seconds


def as_step_tracker(tracker: Any) -> StepTracker:
    """Our pipeline as it is; any toolkit-style (``init``/``update``) tracker through a :class:`StepAdapter`."""
    from trek_tracker.pipeline import Tracker

    return tracker if isinstance(tracker, Tracker | StepAdapter) else StepAdapter(tracker)


def track_run(tracker: StepTracker, seq: Sequence, run: Run, prefetch: int = 4,
              on_frame: Callable[[int], None] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Track one run; return boxes (L x 4, row 0 = the ground-truth init box) and per-call seconds."""
    rows = ResultRows(run.length)
    frames = (seq.load_frame(i) for i in run.frames)
    track_video(tracker, frames, Start(box=run.ground_truth(seq)[0].copy()), [rows], on_frame=on_frame,
                prefetch_depth=prefetch, write_behind=False)
    return rows.boxes, rows.times


def write_run(tracker_dir: Path, run: Run, boxes: np.ndarray, times: np.ndarray | None) -> None:
    """Write a run's files; times first, so that a result file implies its times file."""
    if run.records_times and times is not None:
        write_times(tracker_dir / run.times_relpath, times)
    write_boxes(tracker_dir / run.relpath, boxes)


def run_done(tracker_dir: Path, run: Run) -> bool:
    """A run is done when its result file parses with the right number of rows (and, for OPE, its times
    file has one time per frame)."""
    try:
        read_result(tracker_dir / run.relpath, run.length)
        if run.records_times:
            read_times(tracker_dir / run.times_relpath, run.length)
    except InputError:
        return False
    return True


@dataclass
class RunSummary:
    """What :func:`execute` did."""

    done: list[Run] = field(default_factory=list)
    skipped: list[Run] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def frames(self) -> int:
        return sum(r.length for r in self.done)


# Per-process state of worker processes.
_WORKER: dict[str, Any] = {}


def _worker_init(factory: TrackerFactory, root: str, names: list[str], prefetch: int, threads: int) -> None:
    _WORKER["tracker"] = as_step_tracker(factory())
    if "torch" in sys.modules:
        # N workers with torch's default thread count each would oversubscribe the CPU many times over
        sys.modules["torch"].set_num_threads(threads)
    _WORKER["dataset"] = Trek150(root, names=names)
    _WORKER["prefetch"] = prefetch


def _worker_run(run: Run, tracker_dir: str) -> Run:
    seq = _WORKER["dataset"][run.sequence]
    boxes, times = track_run(_WORKER["tracker"], seq, run, _WORKER["prefetch"])
    write_run(Path(tracker_dir), run, boxes, times)
    return run


def execute(dataset: Trek150, runs: list[Run], tracker_dir: str | Path, factory: TrackerFactory,
            workers: int = 1, progress: bool = True, overwrite: bool = False,
            prefetch: int = 4) -> RunSummary:
    """Execute ``runs`` (skipping finished ones unless ``overwrite``) and write their results under
    ``tracker_dir`` (``<results>/<tracker name>``).

    With ``workers > 1`` runs are spread over that many processes, each building one tracker with
    ``factory`` (which must then be picklable: a module-level function or class, or a ``functools.partial``
    of one).
    """
    from tqdm import tqdm

    tracker_dir = Path(tracker_dir)
    summary = RunSummary()
    todo = []
    for run in runs:
        if not overwrite and run_done(tracker_dir, run):
            summary.skipped.append(run)
        else:
            todo.append(run)
    if summary.skipped:
        log.info("%d of %d runs already finished, skipped", len(summary.skipped), len(runs))
    if not todo:
        return summary
    for run in todo:  # check the images of every sequence before spending time tracking
        dataset[run.sequence].img_files  # noqa: B018
    start = time.perf_counter()
    bar = tqdm(total=sum(r.length for r in todo), unit="frame", disable=not progress, dynamic_ncols=True)
    try:
        if workers <= 1:
            tracker = as_step_tracker(factory())
            for run in todo:
                bar.set_description(run.label)
                boxes, times = track_run(tracker, dataset[run.sequence], run, prefetch,
                                         on_frame=lambda _: bar.update(1))
                write_run(tracker_dir, run, boxes, times)
                summary.done.append(run)
        else:
            ctx = get_context("spawn")  # fork is unsafe once torch or CUDA threads exist
            names = sorted({r.sequence for r in todo})
            pool = ProcessPoolExecutor(max_workers=min(workers, len(todo)), mp_context=ctx,
                                       initializer=_worker_init,
                                       initargs=(factory, str(dataset.root), names, prefetch,
                                                 max(1, (os.cpu_count() or 1) // workers)))
            try:
                pending = {pool.submit(_worker_run, run, str(tracker_dir)) for run in todo}
                while pending:
                    finished, pending = wait(pending, return_when=FIRST_EXCEPTION)
                    for fut in finished:
                        run = fut.result()  # re-raises a worker's error
                        summary.done.append(run)
                        bar.set_description(run.label)
                        bar.update(run.length)
            except BaseException:
                pool.shutdown(wait=False, cancel_futures=True)  # finished runs are already on disk
                raise
            pool.shutdown()
    except BaseException:
        bar.close()
        raise
    bar.close()
    summary.seconds = time.perf_counter() - start
    if summary.done and summary.seconds > 0:
        log.info("tracked %d frames in %.1f s (%.1f fps wall clock)", summary.frames, summary.seconds,
                 summary.frames / summary.seconds if not math.isclose(summary.seconds, 0) else 0.0)
    return summary
