"""A run folder: the one owner of what ``trek-track run`` and ``trek-track ensemble`` write, its names, its
manifest (``run.json``), and reading it back.

Layout (with ``<id>`` an object's value in the init mask, ``<index>`` the frame index, 5 digits)::

    boxes.txt | boxes_<id>.txt      one x,y,w,h line per frame (TREK-150 result format)
    times.txt                       seconds of the tracker's call per frame
    masks/<index>.png               label maps with the init mask's values and palette (--save-masks)
    probs/<index>.npz, probs/objects.json   uint8-quantised probabilities (--save-probs)
    overlay.mp4                     the video with masks and boxes drawn (--overlay)
    run.json                        the manifest

**One run per folder.** :meth:`RunFolder.create` refuses a folder that holds anything unless the caller
asks to overwrite; overwriting removes exactly the files the previous run wrote, and refuses, before it
removes anything, when the folder holds any other. The new manifest is written at once, before any other
file, with status ``running`` (so a run that is killed never leaves an older ``complete`` manifest beside
its own files) and ``writes``: the names, as ``/``-separated glob patterns (``masks/*.png``), of everything
the run may write, its ``.part`` and temporary files included. ``files``, what it did write, is known only
when it ends, so ``writes`` is what lets ``--overwrite`` replace a run killed outright (SIGKILL, a full
disk). A manifest without ``writes`` (an older version's) is read by its ``files`` and the ``.part`` and
temporary files beside them. Text outputs stream to ``<name>.part`` and are renamed only when the run
completes; the manifest ends as ``complete``, ``interrupted`` or ``failed``.

**Resuming.** A run saves the tracker's state to ``resume.pt`` now and then and when a signal stops it
(:class:`StateFile`); :meth:`RunFolder.reopen` hands it back to ``trek-track run --resume``, whose text
files keep exactly the frames the state follows. The file is removed when the run completes. A process
holds a lock on the folder while it writes it, so two runs never write one folder.

**Reading back** (``trek-track ensemble``) goes through :meth:`RunFolder.open`, which trusts only what the
manifest says the run wrote: a complete status, the frame count, the object values and the files.
"""

from __future__ import annotations

import collections
import contextlib
import fnmatch
import io
import json
import logging
import os
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from trek_tracker import __version__
from trek_tracker.errors import InputError, UserError, load_failure
from trek_tracker.files import (
    atomic_write,
    hold_folder,
    os_error_message,
    os_errors,
    read_json,
    remove_temporaries,
    write_bytes,
    write_json,
)
from trek_tracker.loop import COMPLETE, FAILED, Sink
from trek_tracker.pipeline import FrameResult
from trek_tracker.results import ObjectIds, StreamingTextWriter, read_boxes, read_label_png, read_times, write_label_png

FORMAT = "trek-track-run/1"
MANIFEST = "run.json"
MASKS, PROBS, OVERLAY, TIMES = "masks", "probs", "overlay.mp4", "times.txt"
OBJECTS = "objects.json"
RESUME = "resume.pt"
PROBE = ".trek-track-probe-*"  # the empty file that checks a folder can be written
STATE_FORMAT = "trek-track-state/1"
log = logging.getLogger(__name__)


@dataclass
class Outputs:
    """What a run writes beyond boxes, times and the manifest."""

    masks: bool = False  # masks/<index>.png
    probs: bool = False  # probs/<index>.npz
    overlay: bool = False  # overlay.mp4


def _check_manifest(path: Path, record: dict[str, Any], keys: tuple[str, ...]) -> None:
    """A manifest that lacks one of ``keys``, or whose objects or frame count are not what trek-track writes
    (edited by hand, written by another program), is one line here, not a traceback where it is used."""
    for key in keys:
        if key not in record:
            raise InputError(f"{path} has no {key!r}; it was not written by this version of trek-track: run it again")
    objects, video, resume = record["objects"], record["video"], record.get("resume", {"resumed_at": []})
    as_written = {
        "objects": isinstance(objects, list) and objects and all(type(v) is int and 0 < v < 256 for v in objects),
        "video": isinstance(video, dict) and type(video.get("frames")) is int and video["frames"] >= 0,
        "resume": isinstance(resume, dict) and isinstance(resume.get("resumed_at"), list),
    }
    wrong = next((key for key, ok in as_written.items() if not ok), None)
    if wrong is not None:
        said = json.dumps(record[wrong])
        raise InputError(f"{path}: its {wrong!r} ({said if len(said) <= 60 else said[:57] + '...'}) is not what "
                         "trek-track writes; it was changed after trek-track wrote it: run it again")


class RunFolder:
    """The files of one run in ``path``. Build with :meth:`create` (to write) or :meth:`open` (to read)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.manifest: dict[str, Any] = {}
        self._lock_fd: int | None = None

    # ------------------------------------------------------------------ names
    @property
    def manifest_file(self) -> Path:
        return self.path / MANIFEST

    def box_file(self, value: int, several: bool) -> Path:
        """``boxes.txt`` for a single object, ``boxes_<value>.txt`` for each of several."""
        return self.path / (f"boxes_{value}.txt" if several else "boxes.txt")

    def box_files(self, ids: ObjectIds) -> dict[int, Path]:
        """Box file of each object by its value."""
        return {v: self.box_file(v, len(ids) > 1) for v in ids.values}

    @property
    def times_file(self) -> Path:
        return self.path / TIMES

    def mask_file(self, index: int) -> Path:
        return self.path / MASKS / f"{index:05d}.png"

    def probs_file(self, index: int) -> Path:
        return self.path / PROBS / f"{index:05d}.npz"

    @property
    def overlay_file(self) -> Path:
        return self.path / OVERLAY

    @property
    def resume_file(self) -> Path:
        return self.path / RESUME

    # ------------------------------------------------------------------ one run per folder
    @classmethod
    def create(cls, path: str | Path, *, overwrite: bool = False) -> RunFolder:
        """A folder for a new run: new or empty, or, with ``overwrite``, emptied of a previous run's files.

        Checks that the folder can be written before anything is removed or written.
        """
        folder = cls(path)
        folder._check_writable()
        folder._lock()
        try:
            # another process's probe (its check before it finds the folder locked) is not a file of a run
            contents = sorted(p for p in folder.path.iterdir() if not fnmatch.fnmatchcase(p.name, PROBE))
            if contents:
                if not overwrite:
                    status = folder._resumable()  # the command of a run that was stopped, given again
                    if status is not None:
                        raise UserError(f"{folder.path} holds a run that stopped before it completed (status "
                                        f"{status}) and saved its state: continue it with: trek-track run --resume "
                                        f"{folder.path}, or add --overwrite to start it again")
                    raise UserError(f"{folder.path} is not empty (it holds {_names(contents)}); choose a new --out "
                                    "folder, or add --overwrite to replace the run in it")
                folder._remove_previous_run(contents)
        except BaseException:
            folder.release()
            raise
        return folder

    def _resumable(self) -> str | None:
        """The status of an unfinished run in the folder that saved a state to continue from (a status of
        ``running`` under the folder's lock: its process ended without saying how), else None."""
        record = self._readable_manifest() if self.resume_file.is_file() else None
        status = None if record is None else record.get("status")
        return None if status == COMPLETE or not isinstance(status, str) else status

    def _readable_manifest(self) -> dict[str, Any] | None:
        """The folder's ``run.json`` as it is, or None when it is missing, unreadable or not an object."""
        if not self.manifest_file.is_file():
            return None
        try:
            record = read_json(self.manifest_file)
        except InputError:
            return None
        return record if isinstance(record, dict) else None

    def _check_writable(self) -> None:
        with os_errors(self.path, hint="choose another --out folder"):
            self.path.mkdir(parents=True, exist_ok=True)
            probe = self.path / PROBE.replace("*", str(time.monotonic_ns()))
            probe.write_bytes(b"")
            probe.unlink()

    def _lock(self) -> None:
        """Hold the folder for this process (released when it exits, however it ends)."""
        self._lock_fd = hold_folder(self.path)

    def release(self) -> None:
        """Let other processes (or a later run of this one) write the folder: called when the run ends."""
        fd = getattr(self, "_lock_fd", None)
        if fd is not None:
            os.close(fd)  # closing the descriptor drops its lock
            self._lock_fd = None

    def __del__(self) -> None:
        self.release()

    @classmethod
    def reopen(cls, path: str | Path, needs: tuple[str, ...] = ()) -> tuple[RunFolder, dict[str, Any]]:
        """An unfinished run to continue: the folder (locked, its manifest read) and the state it saved last.
        ``needs``: the manifest's entries the caller reads besides the run folder's own."""
        folder = cls(path)
        if not folder.manifest_file.is_file():
            raise UserError(f"{folder.path} is not a run folder (no {MANIFEST}); give the --out folder of an "
                            "interrupted `trek-track run`")
        folder._check_writable()
        folder._lock()
        try:
            record = read_json(folder.manifest_file)
            if not isinstance(record, dict):
                raise UserError(f"{folder.manifest_file} is not a run's manifest (not a JSON object); give the --out "
                                "folder of an interrupted `trek-track run`")
            status = record.get("status")
            if status == COMPLETE:
                raise UserError(f"run {folder.path} is complete: there is nothing to resume")
            _check_manifest(folder.manifest_file, record, ("video", "objects", "files", *needs))
            if not folder.resume_file.is_file():
                raise UserError(f"{folder.path} holds no saved state to resume from (the run stopped before it "
                                "saved one, or it ran with --overlay, --memory-cap none or --save-state-every 0); "
                                "start it again with --overwrite")
            folder.manifest = record
            saved = load_state_file(folder.resume_file)
            folder._check_kept(int(saved["frames"]))
            return folder, saved
        except BaseException:
            folder.release()
            raise

    def remove_temporaries(self) -> None:
        """Remove the half-written temporary files of a process killed while writing (atomic writes that never
        finished) from the folder and its mask and probability folders, before a resumed run writes: nobody
        else writes here (the lock)."""
        remove_temporaries(self.path, self.path / MASKS, self.path / PROBS)

    def _check_kept(self, frames: int) -> None:
        """Each unfinished text file holds at least the ``frames`` a saved state follows: its ``.part`` file, or
        the file itself where the run was stopped (killed, a full disk) while it committed its files, which
        the resumed run takes back (:class:`StreamingTextWriter`)."""
        ids = ObjectIds(tuple(int(v) for v in self.manifest.get("objects", [])))
        for path in [*self.box_files(ids).values(), self.times_file]:
            part = path.with_name(path.name + ".part")
            held = part if part.is_file() or not path.is_file() else path
            lines = held.read_bytes().count(b"\n") if held.is_file() else 0
            if lines < frames:
                raise UserError(f"{held} holds {lines} frame{'s' * (lines != 1)}, fewer than the {frames} the saved "
                                "state follows (the run's files were changed); start the run again with --overwrite")

    def _remove_previous_run(self, contents: list[Path]) -> None:
        """Remove what the previous run wrote; refuse, before anything is removed, if anything else is here."""
        claimed = self._previous_claims()
        if claimed is None:
            raise UserError(f"{self.path} holds files that no trek-track run wrote ({_names(contents)}); choose "
                            "another --out folder (--overwrite only replaces a previous run)")
        doomed: list[Path] = []
        folders: list[Path] = []
        strangers: list[Path] = []
        for entry in contents:
            if entry.is_dir() and not entry.is_symlink():
                if not claimed(entry.name + "/"):
                    strangers.append(entry)
                    continue
                for child in sorted(entry.iterdir()):
                    rel = f"{entry.name}/{child.name}"
                    is_file = child.is_symlink() or not child.is_dir()
                    (doomed if is_file and claimed(rel) else strangers).append(child)
                folders.append(entry)
            elif claimed(entry.name):
                doomed.append(entry)
            else:
                strangers.append(entry)
        if strangers:
            raise UserError(f"{self.path} holds files that its previous run did not write "
                            f"({_names(strangers, self.path)}); choose another --out folder")
        # the manifest last: a removal cut short leaves a folder that --overwrite still knows as a run's
        with os_errors(self.path, "remove the previous run in", hint="choose another --out folder"):
            for entry in sorted(doomed, key=lambda p: p == self.manifest_file):
                entry.unlink()
            for entry in folders:
                entry.rmdir()

    def _previous_claims(self) -> Callable[[str], bool] | None:
        """Whether the previous run wrote a path (relative, ``/``-separated, a folder's ending in ``/``): by the
        ``writes`` of its manifest, or, for an older manifest, its ``files`` and the ``.part`` and temporary
        files of a run beside them. None without a readable manifest."""
        record = self._readable_manifest()
        files = None if record is None else record.get("files")
        if not isinstance(files, list):
            return None
        writes = record.get("writes")
        if isinstance(writes, list):
            patterns = [str(p) for p in [*writes, *files, MANIFEST, PROBE]]
            return lambda rel: any(_match(rel, pattern) for pattern in patterns)
        top = {str(f).rstrip("/").split("/")[0] for f in files} | {MANIFEST}

        def older(rel: str) -> bool:
            if rel.endswith("/"):
                return rel[:-1] in top
            if "/" not in rel:
                return rel in top or _ours(rel)
            child = rel.split("/", 1)[1]
            return _ours(child) or Path(child).suffix in (".png", ".npz", ".json")

        return older

    # ------------------------------------------------------------------ writing a run
    def sinks(self, outputs: Outputs, *, ids: ObjectIds, palette: np.ndarray | None, record: dict[str, Any],
              fps: float | None, size: tuple[int, int], describe=None, kept: int = 0,
              lost: dict[int, list[int]] | None = None) -> list[Sink]:
        """The sinks that write this run: boxes and times always, masks, probabilities and the overlay on
        request, and the manifest last (it lists what the others wrote). ``record`` is what the manifest
        knows before the first frame (``video``, ``start``, ...); ``describe()`` adds what is known at the
        end (the tracker's details). A resumed run keeps the first ``kept`` frames of its text files, and
        the objects' ``lost`` frames among them (by engine id)."""
        if outputs.overlay and kept:
            raise UserError("a run with --overlay cannot be resumed (its video is written in one pass); start it "
                            "again with --overwrite")
        makers = [(BoxFiles, lambda: BoxFiles(self, ids, kept)), (TimesFile, lambda: TimesFile(self, kept))]
        if outputs.masks:
            makers.append((MaskFiles, lambda: MaskFiles(self, ids, palette)))
        if outputs.probs:
            makers.append((ProbsFiles, lambda: ProbsFiles(self, ids)))
        if outputs.overlay:
            makers.append((OverlayFile, lambda: OverlayFile(self, fps, size)))
        # The manifest first, saying what the run writes, then the files (it lists those they wrote at the end).
        files: list[Sink] = []
        manifest = Manifest(self, record, files, ids, describe, kept, lost or {},
                            writes=[name for kind, _ in makers for name in kind.writes(self, ids)])
        try:
            for _, make in makers:
                files.append(make())
        except BaseException as err:
            for sink in (*files, manifest):  # a run that never started tracking failed
                with contextlib.suppress(Exception):
                    sink.close(FAILED, f"{type(err).__name__}: {err}")
            raise
        return [*files, manifest]

    # ------------------------------------------------------------------ manifest
    def write_manifest(self, record: dict[str, Any]) -> None:
        self.manifest = {"format": FORMAT, **record}
        write_json(self.manifest_file, self.manifest)

    # ------------------------------------------------------------------ reading back
    @classmethod
    def open(cls, path: str | Path) -> RunFolder:
        """A finished run to read: its manifest must say ``complete``."""
        folder = cls(path)
        if not folder.manifest_file.is_file():
            raise InputError(f"{folder.path} is not a run folder (no {MANIFEST}); give folders written by "
                             "`trek-track run`")
        record = read_json(folder.manifest_file)
        if not isinstance(record, dict) or record.get("status") != COMPLETE:
            status = record.get("status") if isinstance(record, dict) else None
            how = (f"continue it with: trek-track run --resume {folder.path}" if folder.resume_file.is_file()
                   else "run it again")
            raise InputError(f"run {folder.path} did not complete (status {status!r}); {how} first")
        _check_manifest(folder.manifest_file, record, ("video", "objects", "files"))
        folder.manifest = record
        return folder

    @property
    def frames(self) -> int:
        return int(self.manifest["video"]["frames"])

    @property
    def ids(self) -> ObjectIds:
        return ObjectIds(tuple(int(v) for v in self.manifest["objects"]))

    def has(self, name: str) -> bool:
        """Whether the manifest lists ``name`` (``masks/``, ``probs/``, ``times.txt``, ...)."""
        return name in self.manifest.get("files", [])

    def read_boxes(self, value: int) -> np.ndarray:
        return read_boxes(self.box_file(value, len(self.ids) > 1), rows=self.frames)

    def read_times(self) -> np.ndarray:
        return read_times(self.times_file, rows=self.frames)

    def read_mask(self, index: int) -> tuple[np.ndarray, np.ndarray | None]:
        return read_label_png(self.mask_file(index))

    def read_probs(self, index: int):
        return load_probs(self.probs_file(index))


def _ours(name: str) -> bool:
    """Names our writers use for unfinished or temporary files (and the state a run resumes from): what a
    manifest without ``writes`` (an older version's) is taken to own beside its ``files``."""
    return name.endswith((".part", ".tmp")) or name.startswith(".") or name == RESUME


def _match(rel: str, pattern: str) -> bool:
    """``rel`` matches the ``writes`` pattern component by component (a ``*`` never crosses a ``/``); a
    folder (ending in ``/``) matches only a folder's pattern."""
    if rel.endswith("/") != pattern.endswith("/"):
        return False
    parts, wanted = rel.rstrip("/").split("/"), pattern.rstrip("/").split("/")
    return len(parts) == len(wanted) and all(fnmatch.fnmatchcase(a, b) for a, b in zip(parts, wanted, strict=True))


def _temporary(name: str) -> str:
    """The pattern of :func:`~trek_tracker.files.atomic_write`'s temporary files for ``name`` (``a/b.png``
    -> ``a/.b.png.*.tmp``)."""
    folder, _, base = name.rpartition("/")
    return f"{folder}/" * bool(folder) + f".{base}.*.tmp"


# --------------------------------------------------------------------------- the state a run resumes from
class StateFile:
    """``resume.pt``: the :class:`~trek_tracker.loop.StateSaver` of a run folder. A state is due every
    ``every`` seconds (and the loop saves one when a signal stops it); each replaces the last atomically,
    with ``context`` beside it (what ``--resume`` needs to rebuild the run and check it is the same) and what
    ``live()`` says at the time (what the run found so far that a resumed run would not find again).

    Its size is that of the tracker's memory buffers: 354 MiB in float32 for R50-DeAOT-L at 1080p with the
    default cap of 10 (half in bf16), about a megabyte for the tiny test models.
    """

    def __init__(self, folder: RunFolder, every: float, context: dict[str, Any],
                 live: Callable[[], dict[str, Any]] | None = None) -> None:
        self.folder, self.every, self.context, self.live = folder, every, context, live
        self.last = time.monotonic()
        self.failed = False

    def due(self, index: int) -> bool:
        return time.monotonic() - self.last >= self.every

    def save(self, index: int, state: dict[str, Any]) -> None:
        """Replace the saved state. A state that cannot be written (a full disk: it is the run's largest file)
        does not stop the run: it is said once, the last state saved stays, and the next one is tried."""
        import torch

        try:
            with atomic_write(self.folder.resume_file, "wb") as f:
                live = self.live() if self.live is not None else {}
                torch.save({"format": STATE_FORMAT, "frames": index + 1, **self.context, **live, "state": state}, f)
        except OSError as err:
            if not self.failed:
                log.warning("could not save the state to resume from (%s); the run goes on, and --resume would "
                            "continue from the state saved before, if any",
                            os_error_message(err, self.folder.resume_file, "write"))
            self.failed = True
        self.last = time.monotonic()


def load_state_file(path: Path) -> dict[str, Any]:
    """What :class:`StateFile` saved (tensors on the CPU); a damaged or foreign file is an :class:`UserError`."""
    import pickle
    import zipfile

    import torch

    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError, zipfile.BadZipFile) as err:
        raise UserError(f"cannot read the saved state {path} ({load_failure(err)}); start the run again with "
                        "--overwrite") from None
    if not isinstance(saved, dict) or saved.get("format") != STATE_FORMAT:
        raise UserError(f"{path} is not a state saved by this version of trek-track; start the run again with "
                        "--overwrite")
    return saved


def _names(paths: Sequence[Path], base: Path | None = None) -> str:
    def name(p: Path) -> str:
        return (p.relative_to(base).as_posix() if base is not None else p.name) + ("/" if p.is_dir() else "")

    shown = ", ".join(name(p) for p in paths[:4])
    return shown + (f" and {len(paths) - 4} more" if len(paths) > 4 else "")


# --------------------------------------------------------------------------- probabilities on disk
def quantise(probs: Any) -> np.ndarray:
    """Probabilities in [0, 1] -> uint8 ``round(255 p)`` (error at most 1/510 per value)."""
    p = probs.detach().cpu().numpy() if hasattr(probs, "detach") else np.asarray(probs)
    return np.clip(np.rint(p.astype(np.float32) * 255.0), 0, 255).astype(np.uint8)


def save_probs(path: str | Path, probs: Any) -> None:
    """Write one frame's probabilities (1 + N, H, W) as a compressed ``.npz`` of uint8, atomically.

    Disk cost: at most (1 + N)·H·W bytes per frame before compression (4.1 MB for one object at 1920x1080),
    typically 5-20x less after it, since most of a frame is confidently background.
    """
    buf = io.BytesIO()
    np.savez_compressed(buf, probs=quantise(probs))
    write_bytes(path, buf.getvalue())


def load_probs(path: str | Path):
    """Read what :func:`save_probs` wrote, as float32 probabilities (a torch tensor)."""
    import torch

    try:
        with np.load(path) as data:
            return torch.from_numpy(data["probs"].astype(np.float32) / 255.0)
    except FileNotFoundError:
        raise InputError(f"probability file not found: {path}") from None
    except (OSError, KeyError, ValueError) as err:
        raise InputError(f"cannot read probability file {path}: {err}") from None


# --------------------------------------------------------------------------- sinks writing a run folder
class BoxFiles(Sink):
    """One streaming ``x,y,w,h`` file per object; renamed from ``.part`` when the run completes."""

    def __init__(self, folder: RunFolder, ids: ObjectIds, kept: int = 0) -> None:
        self.writers = {i + 1: StreamingTextWriter(p, keep=kept or None)
                        for i, p in enumerate(folder.box_files(ids).values())}
        self.names: list[str] = []

    @staticmethod
    def writes(folder: RunFolder, ids: ObjectIds) -> list[str]:
        """The names it writes (``writes`` of the manifest), its unfinished ones included."""
        return [name for p in folder.box_files(ids).values() for name in (p.name, p.name + ".part")]

    def frame(self, index: int, image: np.ndarray | None, result: FrameResult) -> None:
        for obj, writer in self.writers.items():
            writer.write_box(result.boxes[obj])

    def flush(self) -> None:
        for writer in self.writers.values():
            writer.sync()

    def close(self, status: str, error: str | None = None) -> None:
        for writer in self.writers.values():
            if status == COMPLETE:
                self.names.append(writer.commit().name)
            else:
                writer.close()


class TimesFile(Sink):
    """``times.txt``: the tracker's seconds per frame."""

    def __init__(self, folder: RunFolder, kept: int = 0) -> None:
        self.writer = StreamingTextWriter(folder.times_file, keep=kept or None)
        self.names: list[str] = []

    @staticmethod
    def writes(folder: RunFolder, ids: ObjectIds) -> list[str]:
        return [TIMES, TIMES + ".part"]

    def frame(self, index: int, image: np.ndarray | None, result: FrameResult) -> None:
        self.writer.write_time(result.seconds)

    def flush(self) -> None:
        self.writer.sync()

    def close(self, status: str, error: str | None = None) -> None:
        if status == COMPLETE:
            self.names.append(self.writer.commit().name)
        else:
            self.writer.close()


class FileWriters:
    """Per-frame outputs prepared and written by a few threads. A frame's mask or probabilities file stands
    alone, and most of its cost (PNG or zlib compression, the atomic write's fsync, drawing an overlay)
    releases the GIL: one thread writes a 1080p mask in about 12 ms, probabilities in about 26 ms and draws
    an overlay frame in about 10, which would cap a GPU run well below 100 frames per second.

    ``submit(work, *args, then=...)`` runs ``work`` in the pool; ``then(result)`` runs in the submitting
    thread in submission order (e.g. appending drawn frames to one video). At most ``2 x threads`` frames
    wait, so memory stays bounded; an error is raised at a later frame, or by :meth:`wait`.
    """

    def __init__(self, threads: int | None = None) -> None:
        from concurrent.futures import ThreadPoolExecutor

        from trek_tracker.video import decode_threads

        self.threads = threads or decode_threads()
        self.pool = ThreadPoolExecutor(self.threads, thread_name_prefix="run-files")
        self.pending: collections.deque = collections.deque()

    def submit(self, work, *args, then=None) -> None:
        self._collect(2 * self.threads - 1)
        self.pending.append((self.pool.submit(work, *args), then))

    def _collect(self, keep: int) -> None:
        """Finish the oldest submissions, in order: those done, then any beyond ``keep`` still running."""
        while self.pending and (self.pending[0][0].done() or len(self.pending) > keep):
            future, then = self.pending.popleft()
            result = future.result()  # raises that frame's error
            if then is not None:
                then(result)

    def wait(self) -> None:
        """Everything submitted done (and handed to its ``then``); the first error raised."""
        self._collect(0)

    def close(self, status: str) -> None:
        """Finish the work (frames already tracked are kept whatever ended the loop) and stop the threads;
        an error is raised only for a complete run (otherwise the loop's own error is the story)."""
        try:
            if status == COMPLETE:
                self.wait()
            else:
                with contextlib.suppress(Exception):
                    self.wait()
                self.pending.clear()
        finally:
            self.pool.shutdown(wait=True)


class MaskFiles(Sink):
    """``masks/<index>.png``: label maps with the init mask's values (and palette), written in threads."""

    needs_labels = True

    def __init__(self, folder: RunFolder, ids: ObjectIds, palette: np.ndarray | None) -> None:
        self.folder, self.ids, self.palette = folder, ids, palette
        self.names = [f"{MASKS}/"]
        self.writers = FileWriters()

    @staticmethod
    def writes(folder: RunFolder, ids: ObjectIds) -> list[str]:
        return [f"{MASKS}/", f"{MASKS}/*.png", _temporary(f"{MASKS}/*.png")]

    def frame(self, index: int, image: np.ndarray | None, result: FrameResult) -> None:
        self.writers.submit(self._write, index, result.labels)

    def _write(self, index: int, labels: np.ndarray) -> None:
        write_label_png(self.folder.mask_file(index), self.ids.to_original(labels), self.palette)

    def flush(self) -> None:
        self.writers.wait()

    def close(self, status: str, error: str | None = None) -> None:
        self.writers.close(status)


class ProbsFiles(Sink):
    """``probs/<index>.npz`` (uint8-quantised probabilities, written in threads) and ``probs/objects.json``
    (object values)."""

    needs_probs = True

    def __init__(self, folder: RunFolder, ids: ObjectIds) -> None:
        self.folder = folder
        self.names = [f"{PROBS}/"]
        write_json(folder.path / PROBS / OBJECTS, {"values": list(ids.values)})
        self.writers = FileWriters()

    @staticmethod
    def writes(folder: RunFolder, ids: ObjectIds) -> list[str]:
        return [f"{PROBS}/", f"{PROBS}/*.npz", f"{PROBS}/{OBJECTS}", _temporary(f"{PROBS}/*.npz"),
                _temporary(f"{PROBS}/{OBJECTS}")]

    def frame(self, index: int, image: np.ndarray | None, result: FrameResult) -> None:
        self.writers.submit(save_probs, self.folder.probs_file(index), result.probs)

    def flush(self) -> None:
        self.writers.wait()

    def close(self, status: str, error: str | None = None) -> None:
        self.writers.close(status)


class OverlayFile(Sink):
    """``overlay.mp4``: each frame with its masks tinted and boxes drawn; moved into place on completion."""

    needs_labels = True

    needs_image = True

    def __init__(self, folder: RunFolder, fps: float | None, size: tuple[int, int]) -> None:
        from trek_tracker.overlay import OverlayWriter

        self.writer = OverlayWriter(folder.overlay_file, fps, size)
        self.names: list[str] = []
        self.drawers = FileWriters()  # frames drawn in threads, appended to the video in order

    @staticmethod
    def writes(folder: RunFolder, ids: ObjectIds) -> list[str]:
        stem, suffix = Path(OVERLAY).stem, Path(OVERLAY).suffix
        return [OVERLAY, f".{stem}.*.tmp{suffix}"]  # OverlayWriter's temporary file

    def frame(self, index: int, image: np.ndarray | None, result: FrameResult) -> None:
        from trek_tracker.overlay import draw_overlay

        self.writer.check(image)
        self.drawers.submit(draw_overlay, image, result.labels, result.boxes, then=self.writer.append)

    def flush(self) -> None:
        self.drawers.wait()

    def close(self, status: str, error: str | None = None) -> None:
        try:
            self.drawers.close(status)
        except BaseException:
            self.writer.abort()
            raise
        if status == COMPLETE:
            self.writer.close()
            self.names.append(OVERLAY)
        else:
            self.writer.abort()


class Manifest(Sink):
    """``run.json``: written as ``running`` when the run starts and completed with the outcome at the end.

    ``record`` holds what is known before the first frame (video, start, tracker, objects); ``describe`` is
    called at the end for what is known only then (e.g. the tracker's init details and input size).
    """

    def __init__(self, folder: RunFolder, record: dict[str, Any], file_sinks: Sequence[Sink], ids: ObjectIds,
                 describe=None, kept: int = 0, lost: dict[int, list[int]] | None = None,
                 writes: Sequence[str] = ()) -> None:
        self.folder, self.record, self.file_sinks, self.ids, self.describe = folder, record, file_sinks, ids, describe
        self.frames = self.kept = kept  # a resumed run's frames count those tracked before it
        self.lost: dict[str, list[int]] = {str(v): [] for v in ids.values}
        for obj, frames in (lost or {}).items():
            self.lost[str(ids.values[obj - 1])] = [i for i in frames if i < kept]
        self.started = time.perf_counter()
        # What --overwrite may remove, said before the first file is written: a run killed outright never
        # gets to list its ``files``.
        self.writes = [*writes, RESUME, _temporary(RESUME), MANIFEST, _temporary(MANIFEST)]
        folder.write_manifest({"status": "running", **self._base(), "writes": self.writes, "files": []})

    def _base(self) -> dict[str, Any]:
        video = {**self.record.get("video", {}), "frames": self.frames}
        return {**self.record, "video": video, "objects": list(self.ids.values), "software": _software()}

    def frame(self, index: int, image: np.ndarray | None, result: FrameResult) -> None:
        self.frames = index + 1
        for obj, is_lost in result.lost.items():
            if is_lost:
                self.lost[str(self.ids.values[obj - 1])].append(index)

    def close(self, status: str, error: str | None = None) -> None:
        seconds = time.perf_counter() - self.started
        files = [name for sink in self.file_sinks for name in getattr(sink, "names", [])]
        extra = self.describe() if self.describe is not None else {}
        kept = [RESUME] if status != COMPLETE and self.folder.resume_file.is_file() else []
        tracked = self.frames - self.kept  # in this process
        self.folder.write_manifest({"status": status, "error": error, **self._base(), **extra,
                                    "lost_frames": self.lost, "seconds": round(seconds, 3),
                                    "fps": round(tracked / seconds, 3) if seconds > 0 else None,
                                    "writes": self.writes, "files": files + kept + [MANIFEST]})
        if status == COMPLETE:  # the state is of no more use once the run is complete
            self.folder.resume_file.unlink(missing_ok=True)
        self.folder.release()


def _software() -> dict[str, str | None]:
    try:
        import torch

        torch_version: str | None = torch.__version__
    except ImportError:  # pragma: no cover
        torch_version = None
    return {"trek_tracker": __version__, "python": platform.python_version(), "torch": torch_version}
