"""The one per-video loop: frames through a tracker, each frame's result handed to sinks.

Everything that walks a video frame by frame goes through :func:`track_video`: ``trek-track run`` (the run
folder's sinks), the TREK-150 runner and the toolkit adapter (result rows), VOS validation (label
scoring) and ``trek-track ensemble`` (a tracker that combines saved runs). A sink is anything that wants
each frame's result: box files, times, masks, probabilities, an overlay video, metrics, result rows.

Frames are decoded ahead in a thread (several for frame files, :func:`trek_tracker.video.prefetch`) and,
with ``write_behind``, sinks run in a writer thread behind the tracker, so neither decoding nor writing
holds the device up; so does the computation of a frame's boxes from its mask, where the tracker defers it
(:meth:`FrameResult.deferred`). Both queues are short, so memory stays bounded whatever the video's length.
The time of a frame is the tracker's own (:attr:`FrameResult.seconds`: its call, and its boxes), as the
TREK-150 toolkit defines speed.

When anything stops the loop (the end of the video, an error, Ctrl-C or a signal turned into
:class:`KeyboardInterrupt`), every frame already tracked reaches the sinks, and each sink's ``close`` is
told how the loop ended (``complete``, ``interrupted`` or ``failed``), so it can keep what is finished and
say what is not.

A loop given a :class:`StateSaver` can be resumed (``trek-track run --resume``): now and then, and when a
signal stops it, the tracker's state is handed to the saver once every frame before it is stored, and a
signal that arrives while a frame is tracked takes effect when that frame is done (a second one at once),
so the state saved is always the state between two frames. :class:`Resumed` starts a loop from it.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import queue
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

import numpy as np

from trek_tracker.errors import InputError
from trek_tracker.geometry import Box
from trek_tracker.pipeline import FrameResult
from trek_tracker.signals import HeldSignals, work_started
from trek_tracker.video import decode_threads as default_decode_threads
from trek_tracker.video import prefetch

COMPLETE, INTERRUPTED, FAILED = "complete", "interrupted", "failed"
log = logging.getLogger(__name__)


class Sink:
    """Receives every frame's result, in order, then how the loop ended. Override what you need.

    ``needs_labels`` / ``needs_probs``: the tracker must hand over each frame's label map / probabilities
    (otherwise they stay on the device). ``needs_image``: :meth:`frame` gets the frame's pixels (otherwise
    None, so that queued results do not hold frames).
    """

    needs_labels: ClassVar[bool] = False
    needs_probs: ClassVar[bool] = False
    needs_image: ClassVar[bool] = False

    def frame(self, index: int, image: np.ndarray | None, result: FrameResult) -> None:
        """Frame ``index``'s result (index 0 is the start frame)."""

    def flush(self) -> None:
        """Block until every frame handed over is stored, and raise the first error in storing one: the loop
        calls it after the last frame, before it declares the video complete (for sinks that write in
        threads of their own)."""

    def close(self, status: str, error: str | None = None) -> None:
        """The loop ended with ``status`` (``complete``, ``interrupted`` or ``failed``, then with ``error``)."""


class StepTracker(Protocol):
    """What the loop drives: :class:`trek_tracker.pipeline.Tracker` and its adapters."""

    def init(self, image: Any, box: Any = None, *, mask: np.ndarray | None = None,
             keep_probs: bool = False, keep_labels: bool = True) -> FrameResult: ...

    def step(self, image: Any, *, keep_probs: bool = False, keep_labels: bool = True) -> FrameResult: ...


@dataclass(frozen=True)
class Start:
    """How tracking starts on the first frame: a box (object 1) or a label map with ids 1..N.

    The tracker checks what it is given (our :class:`~trek_tracker.pipeline.Tracker` against the frame,
    once); a toolkit tracker gets the box as the toolkit would give it, e.g. a ground-truth row.
    """

    box: Box | np.ndarray | None = None
    mask: np.ndarray | None = None

    def __post_init__(self) -> None:
        if (self.box is None) == (self.mask is None):
            raise InputError("give exactly one of a first-frame box or an init mask")


class StateSaver(Protocol):
    """Keeps what a loop needs to resume: asked after each frame whether a state is due, and handed one
    (``{"tracker": ..., "lost": ...}``, plain values and CPU tensors) once every frame up to ``index`` has
    reached the sinks and each sink has stored it (:meth:`Sink.flush`)."""

    def due(self, index: int) -> bool: ...

    def save(self, index: int, state: dict[str, Any]) -> None: ...


@dataclass(frozen=True)
class Resumed:
    """Where a resumed loop starts: ``state`` is what a :class:`StateSaver` was given after frame ``index``;
    the loop's frames then begin at frame ``index + 1``."""

    index: int
    state: dict[str, Any]


@dataclass
class LoopResult:
    """How a loop went: frames handed to the sinks (a resumed loop's count includes those before
    ``first``, the frame it began with), how it ended, wall time, lost frames per object."""

    frames: int
    status: str
    seconds: float
    lost: dict[int, list[int]] = field(default_factory=dict)
    error: str | None = None
    first: int = 0

    @property
    def tracked(self) -> int:
        """Frames this loop tracked itself."""
        return self.frames - self.first


def track_video(tracker: StepTracker, frames: Iterable[Any], start: Start | None, sinks: Sequence[Sink], *,
                total: int | None = None, progress: bool | str = False,
                on_frame: Callable[[int], None] | None = None, prefetch_depth: int = 2,
                decode_threads: int | None = None, write_behind: bool = True,
                saver: StateSaver | None = None, resume: Resumed | None = None) -> LoopResult:
    """Track ``frames`` from ``start`` and hand each frame's result to ``sinks``.

    ``progress``: a tqdm bar on stderr (a string names it); ``on_frame(index)`` is called after each frame
    is tracked (e.g. a shared progress bar). Frames given as :class:`~trek_tracker.video.IndexedFrames` are
    decoded ahead by ``decode_threads`` threads (default :func:`~trek_tracker.video.decode_threads`), others
    by one. Exceptions propagate after the sinks are closed; a ``KeyboardInterrupt`` ends the loop as
    ``interrupted``, anything else as ``failed``.

    ``saver`` makes the loop resumable (the tracker must answer ``state()`` and ``restore()``); ``resume``
    continues one from a saved state (``start`` is then not used; ``frames`` begin after the state's frame
    and indices continue from it). :attr:`LoopResult.frames` counts every frame, those before it included.
    """
    keep = {"keep_probs": any(s.needs_probs for s in sinks), "keep_labels": any(s.needs_labels for s in sinks)}
    keep_image = any(s.needs_image for s in sinks)
    lost = _LostFrames()  # first: it reads every frame's boxes, so they are computed behind the tracker
    writer = _Writer([lost, *sinks], keep_image) if write_behind else _Direct([lost, *sinks], keep_image)
    first = 0
    if resume is not None:
        tracker.restore(resume.state["tracker"])
        lost.frames = {int(k): [int(i) for i in v] for k, v in resume.state["lost"].items()}
        first = resume.index + 1
    elif start is None:
        raise ValueError("track_video needs a start (or a resume)")
    status, error, n = FAILED, None, first
    saved = first - 1  # the last frame a saved state follows
    began = time.perf_counter()
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=total, initial=first, unit="frame", desc=progress if isinstance(progress, str) else None,
                   file=sys.stderr, dynamic_ncols=True)

    def save(index: int, state: dict[str, Any]) -> None:  # where every frame up to index is stored
        for sink in writer.sinks:
            sink.flush()
        saver.save(index, {"tracker": state, "lost": copy.deepcopy(lost.frames)})

    boundary = HeldSignals() if saver is not None else None  # a signal waits for the frame's end
    try:
        threads = decode_threads or default_decode_threads()
        with boundary or contextlib.nullcontext():
            for index, image in enumerate(prefetch(frames, prefetch_depth, threads) if prefetch_depth > 0 else frames,
                                          start=first):
                with boundary.unit() if boundary else contextlib.nullcontext():
                    if index == 0:
                        result = tracker.init(image, start.box, mask=start.mask, **keep)
                    else:
                        result = tracker.step(image, **keep)
                    writer.put(index, image, result)
                    if index == first:  # tracked frames reach the sinks however the loop ends
                        work_started()
                    n = index + 1
                    if saver is not None and saver.due(index):
                        writer.call(save, index, tracker.state())
                        saved = index
                if boundary is not None:
                    boundary.handle()  # a signal held during the frame, now that it is handed over
                if bar is not None:
                    bar.update(1)
                if on_frame is not None:
                    on_frame(index)
            writer.drain()
        status = COMPLETE
    except KeyboardInterrupt:
        status, error = INTERRUPTED, "interrupted"
        raise
    except BaseException as err:
        error = f"{type(err).__name__}: {err}"
        raise
    finally:
        if bar is not None:
            bar.close()
        try:
            writer.finish()  # frames already tracked reach the sinks whatever stopped the loop
        except BaseException:  # noqa: BLE001 - a sink failed too; the exception in flight is the one to report
            pass
        else:
            if status == INTERRUPTED and boundary is not None and not boundary.torn and n - 1 > saved:
                try:  # a signal stopped the loop between frames: keep that state
                    save(n - 1, tracker.state())
                except BaseException as err:  # noqa: BLE001 - the interrupt in flight is the one to report
                    log.warning("could not save the state to resume from (%s); an earlier one is kept if any", err)
        _close(sinks, status, error)
    return LoopResult(n, status, time.perf_counter() - began, lost.frames, error, first)


class _LostFrames(Sink):
    """The frames each object was lost on, for :class:`LoopResult`."""

    def __init__(self) -> None:
        self.frames: dict[int, list[int]] = {}

    def frame(self, index: int, image: np.ndarray | None, result: FrameResult) -> None:
        for obj, is_lost in result.lost.items():
            if is_lost:
                self.frames.setdefault(obj, []).append(index)


def _close(sinks: Sequence[Sink], status: str, error: str | None) -> None:
    """Close every sink, in order; the first error is raised after all were closed. Once one sink fails to
    close, the rest are told the loop failed with that error: a run whose box file could not be committed
    must not have its manifest say it is complete."""
    first: BaseException | None = None
    for sink in sinks:
        try:
            if first is None:
                sink.close(status, error)
            else:
                sink.close(FAILED, f"{type(first).__name__}: {first}")
        except BaseException as err:  # noqa: BLE001 - re-raised below
            first = first or err
    if first is not None:
        raise first


class _Direct:
    """Sinks called in the loop's own thread."""

    def __init__(self, sinks: Sequence[Sink], keep_image: bool) -> None:
        self.sinks, self.keep_image = sinks, keep_image

    def put(self, index: int, image: Any, result: FrameResult) -> None:
        image = image if self.keep_image else None
        for sink in self.sinks:
            sink.frame(index, image, result)

    def call(self, work: Callable[..., None], *args: Any) -> None:
        work(*args)

    def drain(self) -> None:
        for sink in self.sinks:
            sink.flush()

    def finish(self) -> None:
        pass


_STOP = object()


@dataclass(frozen=True)
class _Call:
    work: Callable[..., None]
    args: tuple


class _Writer:
    """Sinks called in order by one background thread, at most ``depth`` frames behind the tracker.

    A sink's error stops the writer for good: it is raised in the loop's thread at the next frame (or at
    the end), and no frame or call queued after it reaches any sink, so the files never skip a frame.
    """

    def __init__(self, sinks: Sequence[Sink], keep_image: bool, depth: int = 4) -> None:
        self.sinks, self.keep_image = sinks, keep_image
        self.queue: queue.Queue = queue.Queue(maxsize=depth)
        self.error: BaseException | None = None  # to raise in the loop's thread (once)
        self.failed = False  # stays set: what comes after a failure is dropped
        self.thread = threading.Thread(target=self._run, name="sink-writer", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while True:
            item = self.queue.get()
            if item is _STOP:
                return
            if self.failed:
                continue  # drop what comes after a failure; the loop raises it
            try:
                if isinstance(item, _Call):
                    item.work(*item.args)
                    continue
                index, image, result = item
                for sink in self.sinks:
                    sink.frame(index, image, result)
            except BaseException as err:  # noqa: BLE001 - handed to the loop's thread
                self.error, self.failed = err, True

    def _raise(self) -> None:
        if self.error is not None:
            err, self.error = self.error, None
            raise err

    def put(self, index: int, image: Any, result: FrameResult) -> None:
        self._raise()
        self.queue.put((index, image if self.keep_image else None, result))

    def call(self, work: Callable[..., None], *args: Any) -> None:
        """Run ``work(*args)`` in the writer thread once every frame queued before it is written."""
        self._raise()
        self.queue.put(_Call(work, args))

    def drain(self) -> None:
        """Wait until every queued frame is written (and each sink has stored it); raise a sink's error."""
        self.finish()
        self._raise()
        for sink in self.sinks:
            sink.flush()

    def finish(self) -> None:
        if self.thread.is_alive():
            self.queue.put(_STOP)
            self.thread.join()
        self._raise()
