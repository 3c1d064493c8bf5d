"""Build a TREK-150 root from the official annotations zip and locally downloaded EK-55 videos.

This reproduces the official preparation (same file names, ``ffmpeg -i <video>.MP4 -r 60
frame_%010d.jpg``: full resolution, ffmpeg's default JPEG quality, frames renumbered at a constant 60 fps)
but, unlike the toolkit, it is an explicit step that never runs while evaluating, it deletes the frames no
sequence uses while ffmpeg writes them (a whole video at 60 fps is never on disk), it resumes per sequence,
it re-extracts a sequence whose folder lacks any file of its zip or holds one of another size (an old
extraction without ``anchors_hoi.txt`` would otherwise silently skip HOI), it never downloads, and it
records the ffmpeg version and frame counts in ``trek-track-prepare.json`` (frame pixels depend on the
ffmpeg version).

Damage is reported, never passed on: a zip that is not one, or whose member fails its CRC, is an
:class:`InputError` naming the zip (and member); every member is extracted to a temporary file and renamed,
so an interrupted or failed extraction never leaves a half-written annotation file; ffmpeg's decoding
errors on a video are echoed as a warning; file-system failures (permissions, a full or read-only disk) are
one line naming the path (:func:`trek_tracker.files.os_errors`).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
import shutil
import subprocess
import tempfile
import threading
import zipfile
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from trek_tracker.errors import InputError, UserError
from trek_tracker.eval.dataset import (
    ANNOTATIONS_DIR,
    SEQUENCES_FILE,
    Trek150,
    _ints,
    _read_text,
    frame_file_name,
)
from trek_tracker.files import normal_permissions, os_errors, write_json
from trek_tracker.signals import work_started

log = logging.getLogger(__name__)

ANNOTATIONS_URL = "https://machinelearning.uniud.it/datasets/trek150/TREK-150-annotations.zip"
EK55_VIDEO_URL = "https://data.bris.ac.uk/datasets/3h91syskeag572hl6tvuovwv4d/videos/train/{participant}/{video}.MP4"
MANIFEST = "trek-track-prepare.json"


@dataclass
class PrepareConfig:
    root: Path
    #: The official annotations zip (default ``<root>/TREK-150-annotations.zip``); not needed once extracted.
    annotations_zip: Path | None = None
    #: Folder with the EK-55 videos, as ``<video>.MP4`` or ``<participant>/<video>.MP4``.
    videos: Path | None = None
    ffmpeg: str = "ffmpeg"
    #: Keep the per-video 60 fps frame folders whole (they are large; the toolkit deletes them). Without
    #: it, the frames no sequence uses are deleted while ffmpeg writes them.
    keep_frames: bool = False
    #: Videos extracted at once (one ffmpeg each).
    jobs: int = 1


_ZIP_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, ValueError)


def _open_zip(path: Path, fix: str) -> zipfile.ZipFile:
    """Open a zip, with an :class:`InputError` naming it when it is not one (``fix``: what to do)."""
    try:
        return zipfile.ZipFile(path)
    except _ZIP_ERRORS as err:
        raise InputError(f"{path} is not a readable zip file ({err}): a damaged or incomplete download?; {fix}"
                         ) from None
    except OSError as err:
        from trek_tracker.files import os_error_message

        raise InputError(os_error_message(err, path, "read")) from None


def _safe_extract(zf: zipfile.ZipFile, dest: Path, members: list[str] | None = None, fix: str = "") -> None:
    """Extract ``members`` (default all) under ``dest``; each file goes to a temporary name first and is
    renamed once its CRC checked out, so a damaged member never leaves a file that looks extracted."""
    dest = dest.resolve()
    names = members if members is not None else zf.namelist()
    for name in names:  # by the name alone: a folder the user linked to another disk is still inside
        if os.path.isabs(name) or os.path.normpath(name).split(os.sep)[0] == os.pardir:
            raise InputError(f"{zf.filename}: member {name!r} would be written outside {dest}; not extracting")
    for name in names:
        target = dest / os.path.normpath(name)
        with os_errors(target, "write", hint="choose another --root"):
            if name.endswith("/"):
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
            try:
                with os.fdopen(fd, "wb") as out:
                    try:
                        with zf.open(name) as src:
                            shutil.copyfileobj(src, out)
                    except _ZIP_ERRORS as err:
                        raise InputError(f"{zf.filename}: member {name} is damaged ({err}); "
                                         f"{fix or 'get the zip again'}") from None
                normal_permissions(tmp)
                os.replace(tmp, target)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)


def _sequence_names(root: Path, annotations_zip: Path | None) -> tuple[Path, list[str]]:
    for ann in (root / ANNOTATIONS_DIR, root):
        if (ann / SEQUENCES_FILE).is_file():
            break
    else:
        zpath = annotations_zip or root / "TREK-150-annotations.zip"
        if not zpath.is_file():
            raise InputError(f"no {ANNOTATIONS_DIR}/{SEQUENCES_FILE} under {root} and no annotations zip at "
                             f"{zpath}; download it from {ANNOTATIONS_URL} and pass --annotations")
        fix = f"download it again from {ANNOTATIONS_URL}"
        with _open_zip(zpath, fix) as zf:
            _safe_extract(zf, root, fix=fix)
        ann = root / ANNOTATIONS_DIR if (root / ANNOTATIONS_DIR / SEQUENCES_FILE).is_file() else root
        if not (ann / SEQUENCES_FILE).is_file():
            raise InputError(f"{zpath} has no {SEQUENCES_FILE}; is it the TREK-150 annotations zip?")
    names = [line.strip() for line in _read_text(ann / SEQUENCES_FILE, "sequence list").splitlines() if line.strip()]
    return ann, names


def _extract_sequence(ann: Path, root: Path, name: str, annotations_zip: Path | None = None) -> bool:
    """Extract ``<name>.zip`` into ``<root>/<name>`` when any of its files is missing or has another size
    than in the zip. True if extracted. A missing ``<name>.zip`` (an interrupted extraction of the annotations
    zip, or a damaged one deleted) is taken again from the annotations zip when that is at hand."""
    zpath = ann / f"{name}.zip"
    seq = root / name
    if not zpath.is_file():
        if (seq / "groundtruth_rect.txt").is_file():
            return False
        outer = annotations_zip or root / "TREK-150-annotations.zip"
        member = zpath.relative_to(root).as_posix()
        if outer.is_file():
            fix = f"download it again from {ANNOTATIONS_URL}"
            with _open_zip(outer, fix) as zf:
                if member in zf.namelist():
                    _safe_extract(zf, root, [member], fix=fix)
        if not zpath.is_file():
            raise InputError(f"annotations of {name} not found: neither {zpath} nor {seq}/groundtruth_rect.txt"
                             + (f", and {outer} has no {member}" if outer.is_file() else "")
                             + f"; download the annotations zip from {ANNOTATIONS_URL} and pass --annotations")
    fix = f"download the annotations zip again from {ANNOTATIONS_URL} and delete {zpath}"
    with _open_zip(zpath, fix) as zf:
        files = [i for i in zf.infolist() if not i.filename.endswith("/")]
        stale = [i.filename for i in files if _size_or_none(seq / PurePosixPath(i.filename)) != i.file_size]
        if not stale:
            return False
        with os_errors(seq, "create", hint="choose another --root"):
            seq.mkdir(parents=True, exist_ok=True)
        _safe_extract(zf, seq, fix=fix)
    return True


def _size_or_none(path: Path) -> int | None:
    try:
        return path.stat().st_size if path.is_file() else None
    except OSError:
        return None


def _frames_done(seq: Path, frame_ids: list[int]) -> bool:
    img = seq / "img"
    if not img.is_dir():
        return False
    names = sorted(p.name for p in img.glob("*.jpg"))
    return names == sorted(frame_file_name(i) for i in frame_ids)


def _remove_stray_frames(seq: Path, frame_ids: list[int], echo: Callable[[str], None]) -> None:
    """Delete the images in ``<seq>/img`` that ``frames.txt`` does not list (frames of an older
    ``frames.txt``, a copied-in file, macOS ``._`` files): the reader lists every ``*.jpg`` there, so one
    extra would refuse the sequence however often its frames were extracted again."""
    img = seq / "img"
    if not img.is_dir():
        return
    expected = {frame_file_name(i) for i in frame_ids}
    with os_errors(img, "write", hint="choose another --root"):
        stray = sorted(p for p in img.glob("*.jpg") if p.name not in expected and not p.is_dir())
        for path in stray:
            path.unlink()
    if stray:
        echo(f"warning: {seq.name}: deleted {len(stray)} image(s) that frames.txt does not list "
             f"(first: {stray[0].name})")


def find_video(videos: Path | None, participant: str, video: str) -> Path | None:
    if videos is None:
        return None
    for cand in (videos / f"{video}.MP4", videos / participant / f"{video}.MP4", videos / f"{video}.mp4",
                 videos / participant / f"{video}.mp4"):
        if cand.is_file():
            return cand
    return None


def ffmpeg_version(ffmpeg: str) -> str:
    try:
        out = subprocess.run([ffmpeg, "-version"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as err:
        raise UserError(f"cannot run {ffmpeg!r} ({err}); install ffmpeg or pass --ffmpeg PATH") from None
    return out.splitlines()[0].strip() if out else "unknown"


def prepare(cfg: PrepareConfig, echo: Callable[[str], None] = log.info) -> dict:
    """Prepare (or finish preparing) ``cfg.root``; returns the manifest it writes."""
    root = Path(cfg.root)
    with os_errors(root, "create", hint="choose another --root"):
        root.mkdir(parents=True, exist_ok=True)
    ann, names = _sequence_names(root, cfg.annotations_zip)
    extracted = sum(_extract_sequence(ann, root, n, cfg.annotations_zip) for n in names)
    echo(f"{len(names)} sequences listed; annotations extracted for {extracted}")

    by_video: dict[tuple[str, str], list[str]] = {}
    frame_ids: dict[str, list[int]] = {}
    for name in names:
        parts = name.split("-")
        if len(parts) < 3:
            raise InputError(f"sequence name {name!r} is not <participant>-<video>-<n>")
        frame_ids[name] = _ints(root / name / "frames.txt", "frame number")
        _remove_stray_frames(root / name, frame_ids[name], echo)
        if not _frames_done(root / name, frame_ids[name]):
            by_video.setdefault((parts[0], parts[1]), []).append(name)

    missing = [(p, v) for p, v in by_video if find_video(cfg.videos, p, v) is None]
    if missing:
        urls = "\n  ".join(EK55_VIDEO_URL.format(participant=p, video=v) for p, v in missing[:10])
        more = f"\n  ... and {len(missing) - 10} more" if len(missing) > 10 else ""
        where = (f"are not in {cfg.videos}" if cfg.videos is not None else "and no videos folder was given "
                 "(--videos DIR)")
        raise InputError(f"{len(missing)} EK-55 video(s) needed for frames {where}; download them (as <video>.MP4 "
                         f"or <participant>/<video>.MP4 under the --videos folder) from:\n  {urls}{more}")
    version = ffmpeg_version(cfg.ffmpeg) if by_video else None
    videos = sorted(by_video.items())
    children = _Children()
    work_started()  # each sequence's frames are kept as they are finished: a stopped command resumes
    jobs = [functools.partial(_extract_video, cfg, root, participant, video, seqs, frame_ids, children,
                              lambda line, k=k: echo(_numbered(line, f"[{k}/{len(videos)}]")))
            for k, ((participant, video), seqs) in enumerate(videos, 1)]
    if cfg.jobs <= 1:
        for job in jobs:
            job()
    else:  # every video is tried (each is resumable on its own); the first failure is raised at the end
        pool = ThreadPoolExecutor(cfg.jobs, thread_name_prefix="prepare")
        try:
            futures = [pool.submit(job) for job in jobs]
            for future in futures:
                future.exception()  # waits
        except BaseException:  # Ctrl-C or a signal: stop every ffmpeg, start no other
            pool.shutdown(wait=False, cancel_futures=True)
            children.kill()
            raise
        pool.shutdown()
        for future in futures:
            future.result()

    ds = Trek150(root)
    counts = ds.check(images=True)
    manifest = {
        "ffmpeg": version if version is not None else _previous_ffmpeg(root),
        "ffmpeg_command": "ffmpeg -i <video>.MP4 -r 60 <dir>/frame_%010d.jpg",
        "counts": counts,
        "frames": {n: len(frame_ids[n]) for n in ds.names},
    }
    with os_errors(root / MANIFEST, "write", hint="choose another --root"):
        write_json(root / MANIFEST, manifest)
    echo(f"{counts['sequences']} sequences, {counts['frames']} frames; {counts['with_anchors']} with "
         f"anchors.txt, {counts['with_hoi']} with anchors_hoi.txt")
    return manifest


def _numbered(line: str, tag: str) -> str:
    """A video's line with its ``[k/n]`` tag (after ``warning:``, which stays first)."""
    warning = "warning: "
    return f"{warning}{tag} {line[len(warning):]}" if line.startswith(warning) else f"{tag} {line}"


class _Children:
    """The ffmpeg processes running now, so that an interrupt in the main thread can stop those that other
    threads wait for (``subprocess.run`` stops only its own thread's)."""

    def __init__(self) -> None:
        self.lock, self.running, self.stopped = threading.Lock(), set(), False

    def run(self, cmd: list[str]) -> subprocess.CompletedProcess:
        # Started and registered under the lock: after kill(), no thread starts an ffmpeg that nobody stops
        # (the interrupted command would wait for a whole extraction before it ends).
        with self.lock:
            if self.stopped:
                raise KeyboardInterrupt
            # stdin closed: ffmpeg reads keys from it, so a `prepare ... &` would stop on the terminal (SIGTTIN)
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                    text=True, errors="replace")
            self.running.add(proc)
        with proc:
            try:
                _, stderr = proc.communicate()
            except BaseException:
                proc.kill()
                raise
            finally:
                with self.lock:
                    self.running.discard(proc)
        return subprocess.CompletedProcess(cmd, proc.returncode, None, stderr)

    def kill(self) -> None:
        with self.lock:
            self.stopped = True
            for proc in self.running:
                proc.kill()


def _extract_video(cfg: PrepareConfig, root: Path, participant: str, video: str, seqs: list[str],
                   frame_ids: dict[str, list[int]], children: _Children, echo: Callable[[str], None]) -> None:
    """Extract one video's frames at 60 fps and give each of its sequences the frames it lists (hard links
    to the extracted files where the file system allows, copies elsewhere); resumable."""
    src = find_video(cfg.videos, participant, video)
    tmp = root / f".frames-{video}"
    used = sorted({fid for name in seqs for fid in frame_ids[name]})
    echo(f"{video}: extracting frames at 60 fps for {len(seqs)} sequence(s)"
         + ("" if cfg.keep_frames else f", keeping the {len(used)} they use"))
    if not _extracted(tmp, used):
        shutil.rmtree(tmp, ignore_errors=True)
        with os_errors(tmp, "create", hint="choose another --root"):
            tmp.mkdir()
        cmd = [cfg.ffmpeg, "-i", str(src), "-r", "60", str(tmp / "frame_%010d.jpg")]
        pruner = None if cfg.keep_frames else _Pruner(tmp, {frame_file_name(fid) for fid in used})
        try:
            proc = children.run(cmd)
        except OSError as err:
            raise UserError(f"cannot run {cfg.ffmpeg!r} ({err.strerror}); install ffmpeg or pass --ffmpeg PATH"
                            ) from None
        finally:
            if pruner is not None:
                pruner.stop()
        if proc.returncode != 0:
            raise UserError(f"ffmpeg failed on {src} (exit {proc.returncode}): {_last_lines(proc.stderr)}")
        errors = _decoding_errors(proc.stderr)
        if errors:
            echo(f"warning: ffmpeg reported {len(errors)} decoding error(s) on {src} (first: {errors[0]}); "
                 "the video may be damaged, and frames after the error may be wrong: check the video, and "
                 "the frames with `trek-track dataset check --decode`")
        with os_errors(tmp, "write", hint="choose another --root"):
            write_json(tmp / COMPLETE, {"frames": "all" if pruner is None else used})
    for name in seqs:
        img = root / name / "img"
        with os_errors(img, "write", hint="choose another --root"):
            img.mkdir(parents=True, exist_ok=True)
            for fid in frame_ids[name]:
                f = frame_file_name(fid)
                if not (tmp / f).is_file():
                    raise InputError(f"{src} gave no frame {f} at 60 fps (sequence {name}); the video is "
                                     "shorter than frames.txt needs: is it the full EK-55 video?")
                _place(tmp / f, img / f)
    if not cfg.keep_frames:
        shutil.rmtree(tmp, ignore_errors=True)


COMPLETE = ".complete"  # in a video's frame folder: ffmpeg finished; which frames the folder holds


def _extracted(tmp: Path, used: list[int]) -> bool:
    """Whether ``tmp`` holds a finished extraction with every frame in ``used``: all of the video's frames
    (``--keep-frames``, or a marker from before frames were deleted), or those of the sequences it was
    extracted for, which must include ``used``."""
    try:
        text = (tmp / COMPLETE).read_text()
    except OSError:
        return False
    try:
        frames = json.loads(text)["frames"] if text.strip() else "all"
    except (ValueError, KeyError, TypeError):
        return False
    return frames == "all" or (isinstance(frames, list) and set(used) <= set(frames))


class _Pruner:
    """Deletes the frames no sequence uses from ffmpeg's output folder while ffmpeg writes it, every
    ``every`` seconds and once more at :meth:`stop`: an extraction then holds about its sequences' frames on
    disk, not the whole video at 60 fps (an hour of EK-55 is 216,000 1080p JPEGs). ffmpeg runs with the
    official arguments, and the frames kept are its own files; a file it is still writing may be deleted
    (Linux frees it when ffmpeg closes it)."""

    def __init__(self, folder: Path, keep: set[str], every: float = 0.5) -> None:
        self.folder, self.keep, self.every = folder, keep, every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"prune-{folder.name}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self.prune()

    def prune(self) -> None:
        try:
            with os.scandir(self.folder) as entries:
                names = [e.name for e in entries if e.name.startswith("frame_") and e.name not in self.keep]
        except OSError:  # the folder cannot be listed: nothing to delete now
            return
        for name in names:
            try:
                os.unlink(self.folder / name)
            except OSError:  # gone already, or not ours to delete: it only costs disk space
                pass

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self.prune()


def _place(src: Path, dst: Path) -> None:
    """``dst`` becomes ``src``'s content, whole or not at all: a hard link (no copy of a 1080p JPEG, and the
    extracted folder can be deleted after) or, across file systems, a copy; through a hidden name."""
    part = dst.with_name(f".{dst.name}.part")
    part.unlink(missing_ok=True)
    try:
        os.link(src, part)
    except OSError:
        shutil.copyfile(src, part)
    os.replace(part, dst)


_FFMPEG_ERROR = re.compile(r"error|corrupt|invalid|truncat|premature", re.IGNORECASE)


def _decoding_errors(stderr: str) -> list[str]:
    """ffmpeg's log lines about damaged input (it exits 0 on them, concealing or dropping frames)."""
    return [" ".join(line.split())[:160] for line in stderr.splitlines()
            if _FFMPEG_ERROR.search(line) and not line.lstrip().startswith("configuration:")]


def _last_lines(stderr: str, n: int = 3) -> str:
    lines = [" ".join(line.split()) for line in stderr.splitlines() if line.strip()]
    return " / ".join(lines[-n:])[-400:] or "no message"


def _previous_ffmpeg(root: Path) -> str | None:
    try:
        return json.loads((root / MANIFEST).read_text()).get("ffmpeg")
    except (OSError, ValueError):
        return None
