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
@click.option("--save-probs", is_flag=True,
              help="Write per-frame probabilities (uint8, compressed) to <out>/probs/ for `trek-track ensemble`.")
@click.option("--tta-scales", default=None,
              help="Test-time scales, comma-separated (e.g. 1.2,1.3,1.4); each view has its own memory.")
@click.option("--tta-flip", is_flag=True, help="Add a horizontally flipped view of every TTA scale.")
@click.option("--ensemble", "ensemble_mode", type=click.Choice(["mean", "vote"]), default="mean", show_default=True,
              help="How several --model members combine: mean of probabilities or weighted mask vote.")
@click.option("--weights", "ensemble_weights", default=None,
              help="Ensemble weights, one per --model in order, comma-separated (default: equal).")
@click.option("--overlay", is_flag=True, help="Write <out>/overlay.mp4 with masks and boxes drawn.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def run(video: str, box: str | None, init_mask: str | None, out: str | None, save_masks: bool, overlay: bool,
        quiet: bool, save_probs: bool, tta_scales: str | None, tta_flip: bool, ensemble_mode: str,
        ensemble_weights: str | None, **options) -> None:
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
    from dataclasses import replace

    from trek_tracker.inference.tta import parse_scales

    source = open_frames(video)
    config = tracker_config_from_options(**options)
    config = replace(config, tta_scales=tuple(parse_scales(tta_scales)) if tta_scales else None, tta_flip=tta_flip,
                     ensemble=ensemble_mode, ensemble_weights=_parse_weights(ensemble_weights))
    tracker = Tracker(config)
    for member in tracker.members:
        for note in member.notes:
            click.echo(f"trek-track: warning: {note}", err=True)
    out_dir = Path(out) if out else Path("runs") / source.name
    if save_probs:
        _attach_probs_writer(tracker, out_dir, mask.ids if mask is not None else ObjectIds((255,)))
    summary = track_video(source, tracker, RunOutputs(out_dir, save_masks, overlay, progress=not quiet),
                          box=start_box, init_mask=mask)
    message = tracker.init_info.get("message")
    if message:
        click.echo(f"trek-track: {message}", err=True)
    lost = sum(len(v) for v in summary.lost.values())
    click.echo(f"{summary.frames} frames in {summary.seconds:.1f} s ({summary.frames / max(summary.seconds, 1e-9):.2f} "
               f"fps), {lost} lost; results in {out_dir}/")


def _parse_weights(text: str | None) -> tuple[float, ...] | None:
    from trek_tracker.errors import UserError

    if not text:
        return None
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise UserError(f"--weights must be numbers separated by commas, e.g. 1,2; got {text!r}") from None


def _attach_probs_writer(tracker, out_dir: Path, ids) -> None:
    """Save each frame's probabilities to ``<out>/probs/<index>.npz`` and the object values beside them."""
    from trek_tracker.files import write_json
    from trek_tracker.inference.ensemble import PROBS_DIR, save_probs

    probs_dir = out_dir / PROBS_DIR
    probs_dir.mkdir(parents=True, exist_ok=True)
    for stale in probs_dir.glob("*.npz"):
        stale.unlink()
    write_json(probs_dir / "objects.json", {"values": list(ids.values)})
    tracker.probs_sink = lambda index, probs: save_probs(probs_dir / f"{index:05d}.npz", probs)
