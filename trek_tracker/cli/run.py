"""``trek-track run``: track one object (or several) through a video and write boxes, times, masks."""

from __future__ import annotations

from pathlib import Path

import click

from trek_tracker.cli.options import tracker_config_from_options, tracker_options


@click.command("run")
@click.option("--video", required=True, help="A video file (anything OpenCV decodes) or a folder of jpg/png frames.")
@click.option("--box", default=None, help="First-frame box x,y,w,h in pixels (top-left corner, width, height).")
@click.option("--init-mask", type=click.Path(dir_okay=False), default=None,
              help="First-frame mask PNG (grayscale or palette); each distinct non-zero value is one object.")
@tracker_options
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Output folder (default: runs/<video name>).")
@click.option("--save-masks", is_flag=True, help="Write one label PNG per frame to <out>/masks/.")
@click.option("--overlay", is_flag=True, help="Write <out>/overlay.mp4 with masks and boxes drawn.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def run(video: str, box: str | None, init_mask: str | None, out: str | None, save_masks: bool, overlay: bool,
        quiet: bool, **options) -> None:
    """Track from a first-frame box (or mask) and write boxes.txt, times.txt and run.json.

    \b
    Example:
      trek-track run --video clip.mp4 --box 313,88,342,194 --checkpoint r50_deaotl --out runs/clip
    """
    from trek_tracker.errors import UserError
    from trek_tracker.geometry import parse_box
    from trek_tracker.pipeline import Tracker
    from trek_tracker.results import ObjectIds, read_label_png
    from trek_tracker.video import open_frames
    from trek_tracker.video_tracking import InitMask, RunOutputs, track_video

    if (box is None) == (init_mask is None):
        raise UserError("give exactly one of --box x,y,w,h or --init-mask PNG")
    start_box = parse_box(box) if box is not None else None
    mask = None
    if init_mask is not None:
        if not Path(init_mask).is_file():
            raise UserError(f"init mask not found: {init_mask}")
        labels, palette = read_label_png(init_mask)
        if not labels.any():
            raise UserError(f"init mask {init_mask} is empty: mark the object(s) with non-zero values")
        mask = InitMask(labels, palette, ObjectIds.from_labels(labels))
    source = open_frames(video)
    config = tracker_config_from_options(**options)
    tracker = Tracker(config)
    for note in tracker.loaded.notes:
        click.echo(f"trek-track: warning: {note}", err=True)
    out_dir = Path(out) if out else Path("runs") / source.name
    summary = track_video(source, tracker, RunOutputs(out_dir, save_masks, overlay, progress=not quiet),
                          box=start_box, init_mask=mask)
    message = tracker.init_info.get("message")
    if message:
        click.echo(f"trek-track: {message}", err=True)
    lost = sum(len(v) for v in summary.lost.values())
    click.echo(f"{summary.frames} frames in {summary.seconds:.1f} s ({summary.frames / max(summary.seconds, 1e-9):.2f} "
               f"fps), {lost} lost; results in {out_dir}/")
