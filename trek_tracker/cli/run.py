"""``trek-track run``: track one object (or several) through a video and write a run folder."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click

from trek_tracker.cli.options import tracker_config_from_options, tracker_options

# What --resume may change: how fast or where the run continues, never what it computes (the tracker's
# identity is checked against the saved one).
RESUMED_RECORD = ("video", "start", "tracker", "resume")  # what a resumed run's manifest carries over
RESUME_OVERRIDES = ("resume", "video", "device", "precision", "compile", "quiet", "save_state_every")
STATE_EVERY = 300.0
PATHS = ("video", "init_mask", "checkpoint", "sam_checkpoint", "hqsam_checkpoint", "ar_checkpoint", "refine_checkpoint")


@click.command("run")
@click.option("--video", default=None, help="A video file (anything OpenCV decodes) or a folder of jpg/png frames.")
@click.option("--box", default=None, help=("The box x,y,w,h in pixels (top-left corner, width, height) on the first "
                                          "frame, or on --start-frame."))
@click.option("--init-mask", type=click.Path(dir_okay=False), default=None,
              help="The mask PNG (grayscale or palette) of the first frame, or of --start-frame; each distinct "
                   "non-zero value is one object.")
@click.option("--start-frame", type=click.IntRange(min=0), default=0, show_default=True,
              help="The frame the box or mask is on, where tracking starts (0 is the first frame). A video file "
                   "decodes the frames before it (exact on any video); a folder starts there at once.")
@click.option("--last-frame", type=click.IntRange(min=0), default=None,
              help="The last frame to track (default: the video's last).")
@tracker_options
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Output folder (default: runs/<video name>); it must be new or empty unless --overwrite.")
@click.option("--overwrite", is_flag=True,
              help="Replace the run already in --out (only the files its run.json lists are removed).")
@click.option("--save-masks", is_flag=True, help="Write one label PNG per frame to <out>/masks/.")
@click.option("--save-probs", is_flag=True,
              help="Write per-frame probabilities (uint8, compressed) to <out>/probs/ for `trek-track ensemble`.")
@click.option("--overlay", is_flag=True, help="Write <out>/overlay.mp4 with masks and boxes drawn (such a run cannot "
                                             "be resumed).")
@click.option("--resume", type=click.Path(file_okay=False), default=None,
              help="Continue the interrupted run in this folder where its saved state stands, with its own "
                   "settings (only --video, for a video that moved, --device, --precision, --compile, --quiet and "
                   "--save-state-every may be given). The result is the one an uninterrupted run writes.")
@click.option("--save-state-every", type=click.FloatRange(min=0), default=STATE_EVERY, show_default=True,
              help="Seconds between saves of the tracker's state to <out>/resume.pt, for --resume (also saved "
                   "when Ctrl-C or a signal stops the run; removed when it completes). 0: never save it.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def run(**params) -> None:
    """Track from a box (or mask) on the first frame, or on --start-frame, and write boxes.txt, times.txt and
    run.json. Frame numbers in the outputs count from the start frame. An interrupted run continues with
    --resume.

    \b
    Examples:
      trek-track run --video clip.mp4 --box 313,88,342,194 --checkpoint r50_deaotl --out runs/clip
      trek-track run --video P01_01.MP4 --start-frame 50000 --last-frame 54639 --box 313,88,342,194 \\
          --checkpoint r50_deaotl --out runs/P01_01_50000
      trek-track run --resume runs/P01_01_50000
    """
    if params["resume"] is not None:
        _resume(params)
    else:
        _track(params)


def _track(params: dict[str, Any], resumed: tuple[Any, dict[str, Any]] | None = None) -> None:
    """A run from its first frame, or (``resumed``: the reopened folder and its saved state) from a state."""
    import numpy as np

    from trek_tracker.device import peak_memory
    from trek_tracker.errors import InputError, OutOfMemory, UserError, memory_errors
    from trek_tracker.files import plain
    from trek_tracker.loop import Resumed, track_video
    from trek_tracker.overlay import check_overlay_encoder
    from trek_tracker.pipeline import Tracker, tracker_identity
    from trek_tracker.results import ObjectIds
    from trek_tracker.run_folder import Outputs, RunFolder, StateFile
    from trek_tracker.video import open_frames

    p = {k: _absolute(v) if k in PATHS else v for k, v in params.items()}  # a run may resume from elsewhere
    video, box, init_mask, start_frame, last_frame = (p["video"], p["box"], p["init_mask"], p["start_frame"],
                                                      p["last_frame"])
    # Everything that can be checked is checked before anything is written.
    if video is None:
        raise UserError("give --video (a video file or a folder of frames), or --resume RUN_FOLDER")
    if resumed is None and (box is None) == (init_mask is None):
        raise UserError("give exactly one of --box x,y,w,h or --init-mask PNG")
    if last_frame is not None and last_frame < start_frame:
        raise UserError(f"--last-frame {last_frame} comes before --start-frame {start_frame}")
    if resumed is not None and not Path(video).exists():
        raise UserError(f"the video of run {resumed[0].path}, {video}, is not there any more; if it moved, give "
                        "--video where it is now")
    source = open_frames(video)
    h, w = source.size
    fingerprint = _fingerprint(source)  # a stat per frame file at most: recorded, and checked by --resume
    start = start_record = palette = None
    if resumed is not None:
        folder, saved = resumed
        ids, palette = ObjectIds(tuple(folder.manifest["objects"])), saved["palette"]
        before = saved["video"]
        if {k: v for k, v in fingerprint.items() if k != "path"} != {k: v for k, v in before.items() if k != "path"}:
            raise UserError(f"{video} is not the video run {folder.path} tracked ({before['path']}, as it was then): "
                            "give that video (--video where it is now), or start again with --overwrite")
    else:
        start, start_record, ids, palette = _start_of(box, init_mask, source.size)
    tracker = Tracker(tracker_config_from_options(**p))
    identity = plain(tracker_identity(tracker.config, tracker.device.type))
    if resumed is not None:
        _check_same_tracker(folder.path, identity, saved["identity"])
    for member in tracker.members:
        for note in member.notes:
            click.echo(f"trek-track: warning: {note}", err=True)
    if p["overlay"]:
        check_overlay_encoder()
    kept = 0 if resumed is None else int(saved["frames"])
    # A video reaches the start frame by decoding the frames before it: before the run folder is written.
    stop = None if last_frame is None else last_frame + 1
    try:
        frames: Any = source.frames(start_frame + kept, stop, progress=not p["quiet"])
    except InputError:
        if not kept or start_frame + kept < min(stop or len(source), len(source)):
            raise
        frames = iter(())  # stopped after its last frame was tracked: nothing is left but to complete
    # An unbounded memory (the parity option) grows with the video, and so would each saved state; an
    # overlay video is written in one pass. Neither can be resumed.
    bounded = tracker.config.memory.resolve(tracker.loaded.model.config).cap is not None
    every = p["save_state_every"] if bounded and not p["overlay"] else 0
    if resumed is None:
        folder = RunFolder.create(Path(p["out"]) if p["out"] else Path("runs") / source.name, overwrite=p["overwrite"])
        content = {k: v for k, v in fingerprint.items() if k not in ("path", "size", "frames")}
        record = {"video": {"path": str(source.path), "name": source.name, "size": [h, w], "fps": source.fps,
                            "start_frame": start_frame, "last_frame": last_frame, "content": content},
                  "start": start_record, "tracker": tracker.describe(),
                  "resume": {"save_state_every": every or None, "resumed_at": []}}
    else:
        folder.remove_temporaries()
        record = {k: folder.manifest[k] for k in RESUMED_RECORD}
        record["video"] = {**record["video"], "path": str(source.path)}  # where it is now (it may have moved)
        record["resume"] = {"save_state_every": every or None, "resumed_at": [*record["resume"]["resumed_at"], kept]}
    # Damaged input found before the saved state is not read again by a resumed run (a video's frames before
    # it are only skipped to): the state carries it, so that the finished run records and says all of it.
    found_before = [] if resumed is None else list(saved.get("input_damage", []))

    def damage() -> list[dict[str, Any]]:
        return found_before + [d for d in (d.to_dict() for d in source.damage) if d not in found_before]

    saver = None
    if every:
        command = {k: v for k, v in p.items() if k not in ("resume", "quiet")}
        saver = StateFile(folder, every, {"command": plain(command), "identity": identity,
                                          "video": fingerprint,
                                          "palette": None if palette is None else np.asarray(palette).tolist()},
                          live=lambda: {"input_damage": damage()})
    with _writing(folder.path, new=resumed is None):
        sinks = folder.sinks(Outputs(masks=p["save_masks"], probs=p["save_probs"], overlay=p["overlay"]), ids=ids,
                             palette=None if palette is None else np.asarray(palette, dtype=np.uint8),
                             record=record, fps=source.fps, size=source.size, kept=kept,
                             lost=None if resumed is None else {int(k): v for k, v in saved["state"]["lost"].items()},
                             describe=lambda: {"tracker": tracker.describe(),
                                               "input_damage": damage(),
                                               "peak_memory": peak_memory(tracker.device)})
    kept_note = f"the frames tracked before are kept in {folder.path}/"
    try:
        with _writing(folder.path, new=resumed is None), memory_errors(f"while tracking {source.name}", kept=kept_note):
            result = track_video(tracker, frames, start, sinks, total=(stop or len(source)) - start_frame,
                                 progress=False if p["quiet"] else source.name, saver=saver,
                                 resume=None if resumed is None else Resumed(kept - 1, saved["state"]))
    except KeyboardInterrupt as err:
        if folder.resume_file.is_file():
            err.hint = f"continue with: trek-track run --resume {folder.path}"
        raise
    except UserError as err:  # a full disk or memory: once freed, the saved state continues the run
        if folder.resume_file.is_file() and (isinstance(err, OutOfMemory) or isinstance(err.__cause__, OSError)):
            said = f"{err} (to continue with the same settings: trek-track run --resume {folder.path})"
            raise (OutOfMemory if isinstance(err, OutOfMemory) else UserError)(said) from err.__cause__
        raise
    if resumed is None and tracker.init_info.get("message"):
        click.echo(f"trek-track: {tracker.init_info['message']}", err=True)
    _say_how_it_went(result, tracker, len(damage()), folder, start_frame, last_frame)


def _start_of(box: str | None, init_mask: str | None, size: tuple[int, int]) -> tuple[Any, dict, Any, Any]:
    """How a new run starts, from --box or --init-mask on a frame of ``size``: the loop's start, what
    ``run.json`` records of it, the object ids and the mask's palette (None for a box or a grayscale mask)."""
    from trek_tracker.errors import UserError
    from trek_tracker.geometry import Box
    from trek_tracker.loop import Start
    from trek_tracker.results import ObjectIds, read_label_png

    h, w = size
    if box is not None:
        given = Box.parse(box)
        start = Start(box=given.in_frame(size))
        if start.box != given:
            click.echo(f"trek-track: warning: the box {given} reaches outside the {w}x{h} frame; tracking "
                       f"starts from its part inside the frame, {start.box}", err=True)
        return start, {"box": list(start.box), "init_mask_ids": None}, ObjectIds((255,)), None
    if not Path(init_mask).is_file():
        raise UserError(f"init mask not found: {init_mask}")
    labels, palette = read_label_png(init_mask)
    if not labels.any():
        raise UserError(f"init mask {init_mask} is empty: mark the object(s) with non-zero values")
    if labels.shape != (h, w):
        raise UserError(f"init mask is {labels.shape[1]}x{labels.shape[0]} but the video is {w}x{h}; give a "
                        "mask of the frame size")
    ids = ObjectIds.from_labels(labels)
    return Start(mask=ids.to_engine(labels)), {"box": None, "init_mask_ids": list(ids.values)}, ids, palette


def _say_how_it_went(result: Any, tracker: Any, damaged: int, folder: Any, start_frame: int,
                     last_frame: int | None) -> None:
    """The warnings a finished run owes (damaged input, a video shorter than asked) and its summary line."""
    from trek_tracker.device import peak_memory

    if damaged:
        click.echo(f"trek-track: warning: the input is damaged ({damaged} problem(s), recorded in "
                   f"{folder.manifest_file} under input_damage); the results cover only what could be read",
                   err=True)
    if last_frame is not None and start_frame + result.frames <= last_frame:
        click.echo(f"trek-track: warning: the video ended at frame {start_frame + result.frames - 1}, before "
                   f"--last-frame {last_frame}", err=True)
    lost = sum(len(v) for v in result.lost.values())
    peak = peak_memory(tracker.device)
    gpu = "" if peak["gpu_mib"] is None else f", peak GPU memory {peak['gpu_mib'] / 1024:.2f} GiB"
    after = f" after the {result.first} tracked before" if result.first else ""
    click.echo(f"{result.tracked} frames{after} in {result.seconds:.1f} s "
               f"({result.tracked / max(result.seconds, 1e-9):.2f} fps), {lost} lost{gpu}; results in {folder.path}/")


def _resume(params: dict[str, Any]) -> None:
    """``--resume FOLDER``: the saved command, with only the options that cannot change the result."""
    from click.core import ParameterSource

    from trek_tracker.errors import UserError
    from trek_tracker.run_folder import RunFolder

    ctx = click.get_current_context()
    given = {name for name in params
             if ctx.get_parameter_source(name) in (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT)}
    extra = sorted(given - set(RESUME_OVERRIDES))
    if extra:
        flags = ", ".join("--" + name.replace("_", "-") for name in extra)
        raise UserError(f"--resume continues a run with the settings it started with; leave out {flags}")
    folder, saved = RunFolder.reopen(params["resume"], needs=RESUMED_RECORD)
    command = {k: tuple(v) if isinstance(v, list) else v for k, v in saved["command"].items()}
    command.update({k: params[k] for k in RESUME_OVERRIDES if k in given or k == "quiet"})
    _track(command, (folder, saved))


def _check_same_tracker(path: Path, now: dict[str, Any], saved: dict[str, Any]) -> None:
    """A resumed run computes what it started computing: the same settings and checkpoint files, and the same
    precision once resolved (``--precision auto`` may resolve otherwise on another device)."""
    from trek_tracker.errors import UserError

    if now["precision"] != saved["precision"]:
        raise UserError(f"run {path} computed in {saved['precision']}, which {now['precision']} would not continue "
                        f"exactly; add --precision {saved['precision']}")
    now, saved = ({**identity, "settings": {k: v for k, v in identity["settings"].items() if k != "precision"}}
                  for identity in (now, saved))
    changed = sorted(k for k in now if now[k] != saved.get(k))
    if changed:
        raise UserError(f"run {path} was tracked by another configuration ({' and '.join(changed)} differ: a "
                        "checkpoint file or a setting changed since); restore it, or start again with --overwrite")


@contextlib.contextmanager
def _writing(folder: Path, new: bool) -> Iterator[None]:
    """An ``OSError`` in writing the run's own files (a full disk) becomes one line that names the file;
    others (reading the video, say) pass."""
    import os

    from trek_tracker.errors import UserError
    from trek_tracker.files import os_error_message

    try:
        yield
    except OSError as err:
        if err.filename is None or not Path(os.path.abspath(os.fsdecode(err.filename))).is_relative_to(
                os.path.abspath(folder)):
            raise
        raise UserError(os_error_message(err, action="write", hint="choose another --out folder" if new else None)) \
            from err


def _absolute(value: Any) -> Any:
    """Paths that exist, made absolute (a run may be resumed from another folder); registry names as they are."""
    if isinstance(value, (tuple, list)):
        return type(value)(_absolute(v) for v in value)
    return str(Path(value).resolve()) if isinstance(value, str) and Path(value).exists() else value


def _fingerprint(source) -> dict[str, Any]:
    """What tells a video apart cheaply, wherever it is: frame size and count, bytes (of the file, or of the
    folder's frames), and a folder's first and last frame names; its path, to say where it was."""
    path = Path(source.path)
    files = getattr(source, "files", None)
    if files is None:
        return {"path": str(path.resolve()), "size": list(source.size), "frames": len(source),
                "bytes": path.stat().st_size}
    return {"path": str(path.resolve()), "size": list(source.size), "frames": len(files),
            "bytes": sum(f.stat().st_size for f in files), "names": [files[0].name, files[-1].name]}
