"""``trek-track ensemble``: combine saved runs of one video (probability mean or mask vote)."""

from __future__ import annotations

import click


@click.command("ensemble")
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(file_okay=False))
@click.option("--mode", type=click.Choice(["mean", "vote"]), default="mean", show_default=True,
              help="mean: weighted mean of saved probabilities (runs made with --save-probs); vote: weighted "
                   "per-pixel vote of saved masks (runs made with --save-masks).")
@click.option("--weights", default=None, help="One weight per run, comma-separated (default: equal).")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Output folder (a new run folder).")
@click.option("--overwrite", is_flag=True, help="Replace the run already in --out.")
@click.option("--save-probs", is_flag=True, help="With --mode mean, also write the combined probabilities.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def ensemble(run_dirs: tuple[str, ...], mode: str, weights: str | None, out: str, overwrite: bool,
             save_probs: bool, quiet: bool) -> None:
    """Combine RUN_DIRS (folders written by `trek-track run`) into the same outputs as a run.

    \b
    Disk per frame and member (1920x1080, one object): probabilities 2 x H x W bytes = 4.1 MB before
    compression (the saved .npz is usually 5-20x smaller); a label PNG usually 10-50 kB.
    \b
    Example:
      trek-track ensemble runs/a runs/b runs/c --mode vote --weights 1,1,2 --out runs/abc
    """
    from trek_tracker.combine import combine_runs
    from trek_tracker.errors import UserError

    parsed = None
    if weights:
        try:
            parsed = [float(v) for v in weights.split(",")]
        except ValueError:
            raise UserError(f"--weights must be numbers separated by commas, e.g. 1,2; got {weights!r}") from None
    result = combine_runs(run_dirs, out, mode=mode, weights=parsed, save_probs=save_probs, overwrite=overwrite,
                          progress=False if quiet else "ensemble")
    lost = sum(len(v) for v in result.lost.values())
    click.echo(f"{result.frames} frames combined from {len(run_dirs)} runs ({mode}), {lost} lost; results in {out}/")
