"""``trek-track run``: track one object (or several) through a video and write a run folder."""

from __future__ import annotations

from pathlib import Path

import click

from trek_tracker.cli.options import tracker_config_from_options, tracker_options


@click.command("run")
@click.option("--video", required=True, help="A video file (anything OpenCV decodes) or a folder of jpg/png frames.")
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
@click.option("--overlay", is_flag=True, help="Write <out>/overlay.mp4 with masks and boxes drawn.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def run(video: str, box: str | None, init_mask: str | None, start_frame: int, last_frame: int | None,
        out: str | None, overwrite: bool, save_masks: bool, save_probs: bool, overlay: bool, quiet: bool,
        **options) -> None:
    """Track from a box (or mask) on the first frame, or on --start-frame, and write boxes.txt, times.txt and
    run.json. Frame numbers in the outputs count from the start frame.

    \b
    Examples:
      trek-track run --video clip.mp4 --box 313,88,342,194 --checkpoint r50_deaotl --out runs/clip
      trek-track run --video P01_01.MP4 --start-frame 50000 --last-frame 54639 --box 313,88,342,194 \\
          --checkpoint r50_deaotl --out runs/P01_01_50000
    """
    from trek_tracker.device import peak_memory
    from trek_tracker.errors import UserError, memory_errors
    from trek_tracker.geometry import Box
    from trek_tracker.loop import Start, track_video
    from trek_tracker.pipeline import Tracker
    from trek_tracker.results import ObjectIds, read_label_png
    from trek_tracker.run_folder import Outputs, RunFolder
    from trek_tracker.video import check_overlay_encoder, open_frames

    # Everything that can be checked is checked before anything is written.
    if (box is None) == (init_mask is None):
        raise UserError("give exactly one of --box x,y,w,h or --init-mask PNG")
    if last_frame is not None and last_frame < start_frame:
        raise UserError(f"--last-frame {last_frame} comes before --start-frame {start_frame}")
    given = Box.parse(box) if box is not None else None
    labels = palette = None
    if init_mask is not None:
        if not Path(init_mask).is_file():
            raise UserError(f"init mask not found: {init_mask}")
        labels, palette = read_label_png(init_mask)
        if not labels.any():
            raise UserError(f"init mask {init_mask} is empty: mark the object(s) with non-zero values")
    source = open_frames(video)
    h, w = source.size
    if given is not None:
        start = Start(box=given.in_frame(source.size))
        if start.box != given:
            click.echo(f"trek-track: warning: the box {given} reaches outside the {w}x{h} frame; tracking "
                       f"starts from its part inside the frame, {start.box}", err=True)
        ids, start_record = ObjectIds((255,)), {"box": list(start.box), "init_mask_ids": None}
    else:
        if labels.shape != (h, w):
            raise UserError(f"init mask is {labels.shape[1]}x{labels.shape[0]} but the video is {w}x{h}; give a "
                            "mask of the frame size")
        ids = ObjectIds.from_labels(labels)
        start, start_record = Start(mask=ids.to_engine(labels)), {"box": None, "init_mask_ids": list(ids.values)}
    tracker = Tracker(tracker_config_from_options(**options))
    for member in tracker.members:
        for note in member.notes:
            click.echo(f"trek-track: warning: {note}", err=True)
    if overlay:
        check_overlay_encoder()
    # A video reaches the start frame by decoding the frames before it: before the run folder exists.
    stop = None if last_frame is None else last_frame + 1
    frames = source.frames(start_frame, stop, progress=not quiet)
    folder = RunFolder.create(Path(out) if out else Path("runs") / source.name, overwrite=overwrite)

    record = {"video": {"path": str(source.path), "name": source.name, "size": [h, w], "fps": source.fps,
                        "start_frame": start_frame, "last_frame": last_frame},
              "start": start_record, "tracker": tracker.describe()}
    sinks = folder.sinks(Outputs(masks=save_masks, probs=save_probs, overlay=overlay), ids=ids,
                         palette=palette if init_mask is not None else None, record=record, fps=source.fps,
                         size=source.size, describe=lambda: {"tracker": tracker.describe(),
                                                             "input_damage": [d.to_dict() for d in source.damage],
                                                             "peak_memory": peak_memory(tracker.device)})
    with memory_errors(f"while tracking {source.name}", kept=f"the frames tracked before are kept in {folder.path}/"):
        result = track_video(tracker, frames, start, sinks, total=(stop or len(source)) - start_frame,
                             progress=False if quiet else source.name)
    message = tracker.init_info.get("message")
    if message:
        click.echo(f"trek-track: {message}", err=True)
    if source.damage:
        click.echo(f"trek-track: warning: the input is damaged ({len(source.damage)} problem(s), recorded in "
                   f"{folder.manifest_file} under input_damage); the results cover only what could be read",
                   err=True)
    if last_frame is not None and start_frame + result.frames <= last_frame:
        click.echo(f"trek-track: warning: the video ended at frame {start_frame + result.frames - 1}, before "
                   f"--last-frame {last_frame}", err=True)
    lost = sum(len(v) for v in result.lost.values())
    peak = peak_memory(tracker.device)
    gpu = "" if peak["gpu_mib"] is None else f", peak GPU memory {peak['gpu_mib'] / 1024:.2f} GiB"
    click.echo(f"{result.frames} frames in {result.seconds:.1f} s ({result.frames / max(result.seconds, 1e-9):.2f} "
               f"fps), {lost} lost{gpu}; results in {folder.path}/")
