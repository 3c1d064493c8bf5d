"""Run a tracker over a protocol plan and write the official results layout.

``<results>/<tracker>/{ope,mse,hoi}/...`` (``<results>`` is usually ``./results/TREK-150``). The runner

- drives our :class:`trek_tracker.pipeline.Tracker`, or any toolkit-style tracker (``init(image, box)`` /
  ``update(image) -> [x, y, w, h]``), through the one per-video loop; trackers come from a factory so that
  each worker process builds its own;
- hands frames over as RGB ``PIL.Image`` (as the toolkit does), decoded ahead in a background thread;
  times only the tracker's call (the toolkit's definition of speed);
- resumes: a run is finished when its result file is complete and finite (the toolkit only checks that
  the file exists); every file is written atomically; results under one tracker name come from one
  configuration (:func:`check_identity`, :func:`claim_identity`);
- runs in parallel, one worker process per GPU (or as many as asked for), and splits across machines or
  launcher processes by expected cost (:func:`balanced_shard`, :func:`launcher_shard`);
- with ``share``, tracks each group of runs that are the first frames of one longer run once, and writes
  every run of the group from its rows (:func:`~trek_tracker.eval.protocols.group_runs`; for our tracker,
  which is causal and deterministic: docs/trek150.md#shared-runs).
"""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import logging
import os
import queue
import signal
import sys
import time
import traceback
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from multiprocessing import get_context
from multiprocessing import process as mp_process
from multiprocessing.reduction import ForkingPickler
from pathlib import Path
from typing import Any

import numpy as np

from trek_tracker.device import peak_memory, usable_cpus
from trek_tracker.errors import TRACKING_MEMORY_HINT, CheckpointError, InputError, OutOfMemory, UserError, memory_errors
from trek_tracker.eval.adapter import StepAdapter
from trek_tracker.eval.dataset import Sequence, Trek150
from trek_tracker.eval.protocols import Run, RunGroup, group_runs
from trek_tracker.files import naming, read_json, remove_stale_temporaries, write_json
from trek_tracker.launch import env_int
from trek_tracker.loop import Sink, Start, StepTracker, track_video
from trek_tracker.pipeline import FrameResult, Tracker
from trek_tracker.results import read_result, read_times, write_boxes, write_times
from trek_tracker.signals import born_ignoring_interrupts, child_of, work_started
from trek_tracker.video import IndexedFrames

log = logging.getLogger(__name__)


TrackerFactory = Callable[..., Any]  # () -> tracker, or (device=...) -> tracker


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
    return tracker if isinstance(tracker, Tracker | StepAdapter) else StepAdapter(tracker)


def run_frames(tracker: StepTracker, seq: Sequence, indices: range) -> IndexedFrames:
    """The frames of a run as ``tracker`` gets them: toolkit trackers get PIL images, as the toolkit hands
    them; ours gets the same pixels as arrays, decoded straight into one by the decoding threads, outside
    its timed call (docs/trek150.md#timing)."""
    read = seq.load_array if isinstance(tracker, Tracker) else seq.load_frame
    return IndexedFrames(read, indices)


def track_run(tracker: StepTracker, seq: Sequence, run: Run, prefetch: int = 4,
              on_frame: Callable[[int], None] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Track one run; return boxes (L x 4) and per-call seconds. Row 0 is the ground-truth init box as the
    file gives it, as the toolkit writes it, even where the tracker starts from it clipped to the frame.

    A run whose first frame has no box (the target is absent there: `dataset check` warns of such anchors and
    intervals) gives our tracker nothing to start from: it is not tracked, and every row holds that box, with
    no time, so that one such run neither stops an evaluation of hours nor scores as anything but lost."""
    first = run.ground_truth(seq)[0].copy()
    if isinstance(tracker, Tracker) and not (first[2] > 0 and first[3] > 0):
        log.warning("%s starts on a frame without a target box (%s): not tracked, every row holds that box",
                    run.label, ",".join(f"{v:g}" for v in first))
        for _ in range(run.length):
            if on_frame is not None:
                on_frame(0)
        return np.tile(first, (run.length, 1)), np.zeros(run.length)
    rows = ResultRows(run.length)
    track_video(tracker, run_frames(tracker, seq, run.frames), Start(box=first.copy()), [rows],
                on_frame=on_frame, prefetch_depth=prefetch)
    rows.boxes[0] = first
    return rows.boxes, rows.times


def write_run(tracker_dir: Path, run: Run, boxes: np.ndarray, times: np.ndarray | None) -> None:
    """Write a run's files; times first, so that a result file implies its times file."""
    if run.records_times and times is not None:
        write_times(tracker_dir / run.times_relpath, times)
    write_boxes(tracker_dir / run.relpath, boxes)


#: A result file's temporary that nothing has written to for this long is a killed write's (a live write fills
#: it in moments); an eval removes those of the runs it is about to track.
STALE_TEMPORARY_SECONDS = 3600.0


def remove_killed_writes(tracker_dir: Path, run: Run) -> None:
    """Remove what a killed write of ``run``'s files left (best effort: a folder it cannot read is reported by
    the write that follows). Only old temporaries, as other ranks or commands may be writing beside them."""
    for relpath in (run.relpath, run.times_relpath):
        if relpath is not None:
            with contextlib.suppress(OSError):
                remove_stale_temporaries(tracker_dir / relpath, STALE_TEMPORARY_SECONDS)


def write_group(tracker_dir: Path, group: RunGroup, boxes: np.ndarray, times: np.ndarray | None) -> None:
    """Write every run of ``group`` from its carrier's rows (each run's first rows of them), the carrier
    last: a finished carrier means a finished group."""
    for run in group.runs:
        if run != group.carrier:
            write_run(tracker_dir, run, boxes[:run.length], None if times is None else times[:run.length])
    write_run(tracker_dir, group.carrier, boxes, times)


def _answer_from_carrier(tracker_dir: Path, group: RunGroup) -> None:
    """Write ``group``'s runs from the result files of its carrier, finished before."""
    carrier = group.carrier
    boxes = read_result(tracker_dir / carrier.relpath, carrier.length)
    times = read_times(tracker_dir / carrier.times_relpath, carrier.length) if carrier.records_times else None
    for run in group.runs:
        write_run(tracker_dir, run, boxes[:run.length], None if times is None else times[:run.length])


def _whole_last_line(path: Path) -> bool:
    """Whether ``path`` ends with a newline, as every complete file of ours and of the toolkit's
    ``np.savetxt`` does: a writer that is not atomic (the toolkit's), killed mid-line, can leave a last row
    that still parses as four numbers (``12.345`` cut to ``12``)."""
    try:
        with path.open("rb") as f:
            f.seek(-1, os.SEEK_END)
            return f.read(1) == b"\n"
    except OSError:
        return False


def run_done(tracker_dir: Path, run: Run) -> bool:
    """A run is done when its result file parses with the right number of rows, all finite, and ends with a
    whole line (and, for OPE, its times file likewise has one finite time per frame). A file with NaN rows,
    or one cut short in its last line, is not a finished run."""
    files = [tracker_dir / run.relpath] + ([tracker_dir / run.times_relpath] if run.records_times else [])
    try:
        boxes = read_result(files[0], run.length)
        times = read_times(files[1], run.length) if run.records_times else np.zeros(1)
    except InputError:
        return False
    return bool(np.isfinite(boxes).all() and np.isfinite(times).all() and all(map(_whole_last_line, files)))


@dataclass
class RunSummary:
    """What :func:`execute` did: the runs it tracked (``done``), the runs it wrote from the first rows of a
    longer run's (``shared``), and those already finished (``skipped``)."""

    done: list[Run] = field(default_factory=list)
    skipped: list[Run] = field(default_factory=list)
    shared: list[Run] = field(default_factory=list)
    seconds: float = 0.0
    planned: int = 0  # the runs asked for
    overwrite: bool = False  # every run asked for is redone
    peak_memory: dict[str, float | None] = field(default_factory=dict)  # the largest of any worker, MiB

    def saw(self, peak: dict[str, float | None]) -> None:
        """Fold one worker's :func:`~trek_tracker.device.peak_memory` into :attr:`peak_memory`."""
        for key, value in peak.items():
            if value is not None:
                self.peak_memory[key] = max(value, self.peak_memory.get(key) or 0.0)

    @property
    def frames(self) -> int:
        """Frames tracked."""
        return sum(r.length for r in self.done)

    def finished(self, group: RunGroup) -> None:
        """``group`` was tracked and written."""
        self.done.append(group.carrier)
        self.shared.extend(r for r in group.runs if r != group.carrier)


# --------------------------------------------------------------------------- the tracker's identity
IDENTITY_FILE = "trek-track-tracker.json"


def check_identity(tracker_dir: Path, identity: dict[str, Any] | None, overwrite: bool) -> None:
    """Results under one tracker name come from one tracker configuration, recorded in
    ``<tracker_dir>/trek-track-tracker.json`` (:func:`claim_identity`); a command with another configuration
    is refused before it loads anything. With ``overwrite`` the new configuration replaces the old one: every
    result file of the old one is removed (the runs of other protocols and sequences too, which this command
    may not redo), so that none is ever read as the new configuration's, and then its record. Every process
    of a launch given ``--overwrite`` does this, at once: what another has removed first is not an error."""
    if identity is None:
        return
    path = tracker_dir / IDENTITY_FILE
    if not path.is_file():
        return
    try:
        recorded = _read_record(path)
    except InputError as err:
        if not overwrite:
            raise _damaged(tracker_dir, err) from None
        recorded = None
    if recorded is _NONE or recorded == _normal(identity):
        return  # none (another process of this launch removed it since), or this configuration's
    if not overwrite:
        raise _another_configuration(tracker_dir, recorded, identity)
    old = _result_files(tracker_dir)
    for f in old:  # the other processes of one launch remove them too, at the same moment
        f.unlink(missing_ok=True)
    path.unlink(missing_ok=True)
    if old:
        log.info("removed %d result files of the previous configuration of tracker %r", len(old), tracker_dir.name)


def claim_identity(tracker_dir: Path, identity: dict[str, Any] | None) -> None:
    """Record ``identity`` as the configuration of the results under ``tracker_dir``, once this command is
    about to write the first of them (its tracker loaded). Not before: a command whose tracker never loads
    (a misspelt class, a missing checkpoint, a GPU without room) leaves no record that would refuse the
    corrected command, and needs none removed on its way out, which under a launcher would remove the record
    of the other processes, tracking on under it. Refused if another process recorded another configuration
    since :func:`check_identity`."""
    if identity is None:
        return
    path = tracker_dir / IDENTITY_FILE
    while not _create_once(path, identity):
        try:
            recorded = _read_record(path)
        except InputError as err:
            raise _damaged(tracker_dir, err) from None
        if recorded is _NONE:
            continue  # removed since by a process of this launch given --overwrite: claim it afresh
        if recorded != _normal(identity):
            raise _another_configuration(tracker_dir, recorded, identity)
        return


def _create_once(path: Path, record: dict[str, Any]) -> bool:
    """Create ``path`` holding ``record`` unless it exists, in one step: True if this call created it. Two
    processes of two configurations starting at one moment must not both find no record and both write
    theirs (each would then track under its own, into one folder). The record is written whole beside it and
    hard-linked into place, so that no reader sees it half-written; on a file system without hard links it is
    created with ``O_EXCL`` instead."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    with naming(path, instead_of=tmp):  # a failure is the record's, not a hidden name's
        write_json(tmp, record)
    try:
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    except OSError as err:
        if err.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS):
            raise
    finally:
        tmp.unlink(missing_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(json.dumps(record, indent=2) + "\n")
        f.flush()
        os.fsync(f.fileno())
    return True


_NONE = object()  # no record (any more)


def _read_record(path: Path) -> Any:
    """The record at ``path`` (a mapping), or ``_NONE`` if there is none; one that does not parse yet is
    read again for a moment (created with ``O_EXCL``, it is empty until its writer has written it). One
    that never parses, or is not a mapping, raises :class:`InputError`."""
    tries = 40
    while True:
        try:
            record = read_json(path)
            break
        except InputError:
            if not path.exists():
                return _NONE
            if tries == 0:
                raise
            tries -= 1
            time.sleep(0.05)
    if not isinstance(record, dict):
        raise InputError(f"{path} holds a JSON {type(record).__name__}, not a tracker configuration")
    return record


def _damaged(tracker_dir: Path, err: InputError) -> UserError:
    return UserError(f"{err}; it records the configuration that made the results in {tracker_dir}: use another "
                     "--tracker name, or --overwrite to redo every run with this configuration")


def _normal(identity: dict[str, Any]) -> Any:
    """``identity`` as its record reads back (tuples as lists)."""
    return json.loads(json.dumps(identity))


def _another_configuration(tracker_dir: Path, recorded: dict[str, Any], identity: dict[str, Any]) -> UserError:
    normal = _normal(identity)  # a setting only one of them holds differs, whatever its value (null too)
    changed = sorted(k for k in set(recorded) | set(normal) if recorded.get(k, _NONE) != normal.get(k, _NONE))
    return UserError(f"the results in {tracker_dir} were made by another configuration of tracker "
                     f"{tracker_dir.name!r} (differs in: {', '.join(changed)}; see {tracker_dir / IDENTITY_FILE}); "
                     "use another --tracker name, or --overwrite to redo every run with this configuration")


def _result_files(tracker_dir: Path) -> list[Path]:
    """The result and times files of every protocol under ``tracker_dir`` (the runner's layout; nothing else)."""
    return [f for pattern in ("ope/*.txt", "ope/times/*_time.txt", "mse/*.txt", "hoi/*.txt")
            for f in tracker_dir.glob(pattern) if f.is_file()]


# --------------------------------------------------------------------------- launchers
def _env_int(env: Mapping[str, str], name: str, default: int | None = None) -> int:
    """An integer the launcher set; a missing or malformed one is said in one line (a shell that exported
    WORLD_SIZE for another program, an ``salloc`` shell that holds a job's SLURM_NTASKS)."""
    return env_int(env, name, default, stops="this process cannot tell its share of the evaluation",
                   remedy="run it under torchrun, srun or a Slurm array as they set it, or unset the launcher's "
                          "variables and give --shard I/N")


def _process_shard(env: Mapping[str, str]) -> tuple[int, int] | None:
    """This process's place among the processes of one launch: ``torchrun`` (``RANK``/``WORLD_SIZE``) or an
    ``srun`` step (``SLURM_PROCID``/``SLURM_STEP_NUM_TASKS``). Not the job's ``SLURM_NTASKS``: a batch script
    (or an ``salloc`` shell) of a job with several tasks holds it too, and there the command is one process.

    Both: ``srun`` started one ``torchrun`` in each of its tasks. One rendezvous across them makes a world
    that spans every node (``WORLD_SIZE`` is more than ``LOCAL_WORLD_SIZE``), and its ranks are the shards; a
    ``torchrun --standalone`` in each task makes a world of that node's processes only, the same ranks on
    every node, so the task's place comes first (shard ``task * processes + rank``)."""
    torchrun, step = (_launch(env, rank, world) for rank, world in (("RANK", "WORLD_SIZE"),
                                                                     ("SLURM_PROCID", "SLURM_STEP_NUM_TASKS")))
    if torchrun is None or step is None:
        return torchrun or step
    (rank, world), (task, tasks) = torchrun, step
    if _env_int(env, "LOCAL_WORLD_SIZE", 0) == world:  # each task's torchrun is a world of its own
        return task * world + rank, tasks * world
    return torchrun


def _launch(env: Mapping[str, str], rank_name: str, world_name: str) -> tuple[int, int] | None:
    """``(rank, world)`` from one launcher's variables; None when its world is one process (or not set)."""
    world = _env_int(env, world_name, 1)
    if world <= 1:
        return None
    rank = _env_int(env, rank_name)
    if not 0 <= rank < world:
        raise UserError(f"{rank_name}={rank} is not one of the {world} processes of {world_name}; run "
                        "under the launcher as it sets them, or give --shard I/N")
    return rank, world


def _array_shard(env: Mapping[str, str]) -> tuple[int, int] | None:
    """This task's place in a Slurm array: ``--array=0-9:2`` is tasks 0, 2, ... 8, shards 0..4."""
    count = _env_int(env, "SLURM_ARRAY_TASK_COUNT", 1)
    if count <= 1:
        return None
    first, step = _env_int(env, "SLURM_ARRAY_TASK_MIN", 0), _env_int(env, "SLURM_ARRAY_TASK_STEP", 1)
    last = _env_int(env, "SLURM_ARRAY_TASK_MAX", first + step * (count - 1))
    place, off = divmod(_env_int(env, "SLURM_ARRAY_TASK_ID") - first, max(step, 1))
    if off or not 0 <= place < count or first + step * (count - 1) != last:
        raise UserError(f"this Slurm array's task ids (min {first}, max {last}, step {step}, {count} tasks) "
                        "are not an evenly spaced range, so a task cannot tell its shard; submit it as "
                        "--array=0-N (a step is fine), or give each task --shard I/N")
    return place, count


def under_launcher(environ: Mapping[str, str] | None = None) -> bool:
    """Whether a launcher started this process as one of several that share this machine's GPUs
    (``torchrun``, an ``srun`` step of several tasks): each then takes its own GPU (``LOCAL_RANK``,
    ``SLURM_LOCALID``). A task of a Slurm array is a job of its own, which uses every GPU it is given."""
    env = os.environ if environ is None else environ
    return any(_env_int(env, k, 1) > 1 for k in ("WORLD_SIZE", "SLURM_STEP_NUM_TASKS"))


def launcher_shard(environ: Mapping[str, str] | None = None) -> tuple[int, int] | None:
    """This process's share when a launcher started several: ``torchrun`` (``RANK``/``WORLD_SIZE``), an
    ``srun`` step (``SLURM_PROCID``/``SLURM_STEP_NUM_TASKS``), a ``torchrun --standalone`` in each task of an
    ``srun`` step (:func:`_process_shard`), a Slurm array (``SLURM_ARRAY_TASK_ID`` with
    ``SLURM_ARRAY_TASK_MIN``/``_STEP``/``_COUNT``), or processes of one launch in each task of an array
    (shard ``task * processes + process``); None when alone. Every launcher variable that is read must be a
    whole number (else one line)."""
    env = os.environ if environ is None else environ
    inner, outer = _process_shard(env), _array_shard(env)
    if inner is None and outer is None:
        return None
    (rank, world), (place, count) = inner or (0, 1), outer or (0, 1)
    return place * world + rank, count * world


# --------------------------------------------------------------------------- worker processes
# Several workers: each may share its GPU (or the machine's memory) with others.
_SHARED_HINT = f"{TRACKING_MEMORY_HINT}, fewer --workers"


def _peak(tracker: StepTracker) -> dict[str, float | None]:
    """The worker's peak memory; on its GPU only for trackers that say where they run (ours)."""
    import torch

    return peak_memory(getattr(tracker, "device", None) or torch.device("cpu"))


def _kept(summary: RunSummary) -> str:
    """What is finished on disk of the runs this command was asked for: those finished before it (a resumed
    evaluation) as well as its own."""
    n = len(summary.skipped) + len(summary.done) + len(summary.shared)
    if summary.overwrite:  # the same command would redo them all again
        return f"{n} of the {summary.planned} runs of this command {'is' if n == 1 else 'are'} redone and kept: " \
               "run it again without --overwrite to keep them, or with it to redo every run"
    return f"{n} of the {summary.planned} runs of this command {'is' if n == 1 else 'are'} finished and kept: " \
           "run the same command again to resume"


def _make_tracker(factory: TrackerFactory, device: str | None):
    return as_step_tracker(factory(device=device) if device is not None else factory())


class _Progress:
    """Frames tracked by a worker, sent to the parent at most every 0.2 s."""

    def __init__(self, messages) -> None:
        self.messages, self.pending, self.last = messages, 0, time.monotonic()

    def __call__(self, _index: int) -> None:
        self.pending += 1
        if time.monotonic() - self.last > 0.2:
            self.flush()

    def flush(self) -> None:
        if self.pending:
            self.messages.put(("frames", self.pending))
            self.pending, self.last = 0, time.monotonic()


def _worker(factory: TrackerFactory, device: str | None, root: str, names: list[str], tracker_dir: str,
            prefetch: int, threads: int, tasks, messages) -> None:
    """A worker process: build one tracker, then track runs from ``tasks`` until it gets None. Every outcome
    goes to ``messages``; a user error is passed on as its one line. Started through
    :func:`~trek_tracker.signals.child_of`, which makes it ignore SIGINT and die with its parent first."""
    import cv2
    import torch

    torch.set_num_threads(threads)  # N workers with torch's and OpenCV's default threads each would
    cv2.setNumThreads(threads)  # oversubscribe the CPU N times
    try:
        with memory_errors("while loading the tracker", _SHARED_HINT):
            tracker = _make_tracker(factory, device)
        messages.put(("ready",))
        dataset = Trek150(root, names=names)
        while (group := tasks.get()) is not None:
            run = group.carrier
            progress = _Progress(messages)
            with memory_errors(f"while tracking {run.label}", _SHARED_HINT):
                boxes, times = track_run(tracker, dataset[run.sequence], run, prefetch, on_frame=progress)
            write_group(Path(tracker_dir), group, boxes, times)
            progress.flush()
            messages.put(("done", group, _peak(tracker)))
        messages.put(("idle", os.getpid()))  # what becomes of it now (a crash in teardown) loses no run
    except UserError as err:
        messages.put(("user-error", type(err).__name__, str(err)))
    except OSError as err:
        messages.put(("user-error", "UserError", f"cannot write results in {tracker_dir}: {err.strerror or err}"))
    except BaseException as err:  # noqa: BLE001 - reported by the parent
        messages.put(("crash", f"{type(err).__name__}: {err}", traceback.format_exc()))


def execute(dataset: Trek150, runs: list[Run], tracker_dir: str | Path, factory: TrackerFactory,
            workers: int = 1, progress: bool = True, overwrite: bool = False, prefetch: int = 4,
            devices: list[str] | None = None, identity: dict[str, Any] | None = None, share: bool = False,
            others: Iterable[Run] = ()) -> RunSummary:
    """Execute ``runs`` (skipping finished ones unless ``overwrite``) and write their results under
    ``tracker_dir`` (``<results>/<tracker name>``).

    ``share``: a run that is the first frames of a longer one (:func:`~trek_tracker.eval.protocols.group_runs`)
    is not tracked itself but written from the longer run's rows, tracked now or finished before. Only for
    trackers whose output at a frame depends on nothing that follows it, and that give the same output for
    the same input (ours). ``others`` (e.g. the other protocols' runs): finished ones among them may answer
    ``runs`` too (they are read, never tracked; not with ``overwrite``, which asks for every run afresh).

    With ``workers > 1`` runs are spread over that many processes, each building one tracker with
    ``factory`` (then picklable: a module-level function or class, or a ``functools.partial`` of one), on
    ``devices`` in turn (``factory(device=...)``; None leaves the device to the factory). Longest runs go
    first, so that the processes finish together. The progress bar counts frames as every worker tracks
    them. A worker's user error, or a worker's death, ends the evaluation with one line as soon as it is
    seen; finished runs are always kept. ``identity`` (the tracker's configuration) is checked against the
    results already there (:func:`check_identity`) and recorded once a tracker has loaded
    (:func:`claim_identity`).
    """
    tracker_dir = Path(tracker_dir)
    check_identity(tracker_dir, identity, overwrite)
    return _execute(dataset, runs, tracker_dir, factory, workers, progress, overwrite, prefetch, devices, share,
                    others, functools.partial(_begin, tracker_dir, identity))


def _begin(tracker_dir: Path, identity: dict[str, Any] | None) -> None:
    """A tracker has loaded and results are about to be written: claim the tracker name, and from now on an
    interrupt keeps finished work (:func:`~trek_tracker.signals.work_started`)."""
    claim_identity(tracker_dir, identity)
    work_started()


def _execute(dataset: Trek150, runs: list[Run], tracker_dir: Path, factory: TrackerFactory, workers: int,
             progress: bool, overwrite: bool, prefetch: int, devices: list[str] | None, share: bool,
             others: Iterable[Run], claim: Callable[[], None]) -> RunSummary:
    from tqdm import tqdm

    summary = RunSummary(planned=len(runs), overwrite=overwrite)
    pending = set()
    for run in runs:
        if not overwrite and run_done(tracker_dir, run):
            summary.skipped.append(run)
        else:
            pending.add(run)
            remove_killed_writes(tracker_dir, run)
    if summary.skipped:
        work_started()  # what an earlier command finished is there whatever stops this one
        log.info("%d of %d runs already finished, skipped", len(summary.skipped), len(runs))
    todo: list[RunGroup] = []  # what to track: each group's carrier, and the runs its rows answer
    groups = [RunGroup(r, (r,)) for r in runs]
    if share:
        starts = {(r.sequence, r.frames[0]) for r in pending}
        planned = set(runs)
        finished = [] if overwrite else [o for o in others if (o.sequence, o.frames[0]) in starts
                                         and o not in planned and run_done(tracker_dir, o)]
        groups = group_runs([*runs, *finished])
    for group in groups:
        wanted = tuple(r for r in group.runs if r in pending)
        if group.carrier in pending:
            todo.append(RunGroup(group.carrier, wanted))
        elif wanted:  # the carrier finished before: its rows answer the rest now
            if not summary.shared:
                claim()
            _answer_from_carrier(tracker_dir, RunGroup(group.carrier, wanted))
            summary.shared.extend(wanted)
    if summary.shared:
        log.info("%d runs written from the first rows of a longer run finished before", len(summary.shared))
    if not todo:
        return summary
    for group in todo:  # check the images of every sequence before spending time tracking
        dataset[group.carrier.sequence].img_files  # noqa: B018
    start = time.perf_counter()
    bar = tqdm(total=sum(g.carrier.length for g in todo), unit="frame", disable=not progress, dynamic_ncols=True,
               smoothing=0.05)
    try:
        if workers <= 1:
            tracker = _make_tracker(factory, devices[0] if devices else None)
            claim()
            for group in todo:
                run = group.carrier
                bar.set_description(run.label)
                with memory_errors(f"while tracking {run.label}", kept=_kept(summary)):
                    boxes, times = track_run(tracker, dataset[run.sequence], run, prefetch,
                                             on_frame=lambda _: bar.update(1))
                write_group(tracker_dir, group, boxes, times)
                summary.finished(group)
            summary.saw(_peak(tracker))
        else:
            _run_workers(dataset, sorted(todo, key=lambda g: -g.carrier.length), tracker_dir, factory, workers,
                         devices, prefetch, bar, summary, claim)
    finally:
        bar.close()
    summary.seconds = time.perf_counter() - start
    if summary.done and summary.seconds > 0:
        peak = summary.peak_memory
        sizes = [f"{name} {peak[key] / 1024:.2f} GiB" for key, name in (("gpu_mib", "GPU"), ("host_rss_mib", "RAM"))
                 if peak.get(key) is not None]
        log.info("tracked %d frames in %.1f s (%.1f fps wall clock); peak memory of a worker: %s", summary.frames,
                 summary.seconds, summary.frames / summary.seconds, ", ".join(sizes) or "not measured")
    return summary


def worker_threads(workers: int) -> int:
    """torch's and OpenCV's CPU threads for each of ``workers`` processes: the CPUs this process may use,
    shared out (the default in each would be all of them, and N workers would oversubscribe them N times)."""
    return max(1, usable_cpus() // workers)


def _how_it_ended(exitcode: int) -> str:
    """A dead worker's end in words: the signal that killed it (SIGKILL is most often the kernel's
    out-of-memory killer), or its exit code."""
    if exitcode >= 0:
        return f"exited with code {exitcode}"
    if -exitcode == signal.SIGKILL:
        return "was killed by SIGKILL (out of memory?)"
    try:
        return f"was killed by {signal.Signals(-exitcode).name}"
    except ValueError:  # a signal without a name (a real-time one)
        return f"was killed by signal {-exitcode}"


_QUIET_TRACKER = "ignore::UserWarning:multiprocessing.resource_tracker"


def _run_workers(dataset: Trek150, todo: list[RunGroup], tracker_dir: Path, factory: TrackerFactory, workers: int,
                 devices: list[str] | None, prefetch: int, bar, summary: RunSummary,
                 claim: Callable[[], None]) -> None:
    ctx = get_context("spawn")  # fork is unsafe once torch or CUDA threads exist
    if _QUIET_TRACKER not in sys.warnoptions:
        # multiprocessing's resource tracker, started with the first queue and given this process's -W options,
        # removes the queues' semaphores that an eval stopped while its workers start leaves behind, and warns of
        # each in lines of its own beside the command's one line: the removal is what matters here.
        sys.warnoptions.append(_QUIET_TRACKER)
    n = min(workers, len(todo))
    tasks, messages = ctx.Queue(), ctx.Queue()
    for group in todo:
        tasks.put(group)
    for _ in range(n):
        tasks.put(None)
    names = sorted({g.carrier.sequence for g in todo})
    threads = worker_threads(n)

    def payload(i: int) -> bytes:
        """Worker i's own arguments, pickled here and unpickled only once it is armed to die with this process
        (:func:`~trek_tracker.signals.child_of`): unpickling them imports torch and the tracker's modules."""
        device = devices[i % len(devices)] if devices else None
        return bytes(ForkingPickler.dumps((_worker, (factory, device, str(dataset.root), names, str(tracker_dir),
                                                     prefetch, threads))))

    procs = [ctx.Process(target=child_of, daemon=True, name=f"trek-track-worker-{i}",
                         args=(os.getpid(), payload(i), tasks, messages)) for i in range(n)]
    with born_ignoring_interrupts():
        for proc in procs:
            proc.start()

    def handle(message: tuple) -> None:
        kind = message[0]
        if kind == "frames":
            bar.update(message[1])
        elif kind == "ready":  # a worker's tracker loaded: its results are about to be written
            claim()
        elif kind == "idle":
            idle.add(message[1])
        elif kind == "done":
            summary.finished(message[1])
            summary.saw(message[2])
            bar.set_description(message[1].carrier.label)
        elif kind == "user-error":
            error = {"InputError": InputError, "CheckpointError": CheckpointError,
                     "OutOfMemory": OutOfMemory}.get(message[1], UserError)
            kept = f"; {_kept(summary)}" if error is OutOfMemory else ""  # what the other workers finished
            raise error(message[2] + kept)
        else:
            raise RuntimeError(f"a worker failed: {message[1]}\n{message[2]}")

    def lost() -> mp_process.BaseProcess | None:
        """A worker that died before it had finished every run it took."""
        return next((p for p in procs if p.pid not in idle and p.exitcode not in (None, 0)), None)

    idle: set[int] = set()
    done_before = len(summary.done)
    try:
        while len(summary.done) - done_before < len(todo):
            try:
                handle(messages.get(timeout=1.0))
                quiet = False
            except queue.Empty:
                quiet = True
            # Checked after every message, not only when none comes: the others' progress arrives several
            # times a second, and would hide a dead worker until they had tracked the whole plan (hours).
            if lost() is not None:
                with contextlib.suppress(queue.Empty):  # what it and the others said before it died counts
                    while True:
                        handle(messages.get_nowait())
                if (dead := lost()) is not None:
                    raise UserError(f"a worker process {_how_it_ended(dead.exitcode)}; {_kept(summary)}")
            if quiet and all(p.exitcode is not None for p in procs):
                raise UserError("the worker processes stopped before every run was done; run the same command "
                                "again to resume")
    finally:
        # Tasks no worker will take may still wait in this process's feeder thread (the whole plan is queued
        # at once: far more than a pipe holds); at exit Python would wait for it to hand them over, forever.
        tasks.cancel_join_thread()
        for proc in procs:
            if proc.is_alive():
                proc.terminate()
        for proc in procs:
            proc.join(timeout=10)
