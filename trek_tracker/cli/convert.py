"""``trek-track convert``: an official checkpoint -> our single-file format (config + weights)."""

from __future__ import annotations

import click


@click.command("convert")
@click.argument("source", type=click.Path(dir_okay=False))
@click.option("--model", default=None,
              help="The model the file is for (e.g. r50_deaotl); needed for an official file, optional for one of "
                   "ours (its own model). An MSDeAOT name with a DeAOT file starts the MSDeAOT from it: shared parts "
                   "load, new parts keep their random initialisation.")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Output file (.pth).")
def convert(source: str, model: str | None, out: str) -> None:
    """Write SOURCE (an official aot-benchmark .pth, or one of ours) as OUT in our format.

    Our format is the official container ({'state_dict': ...}, official key names, so the official code
    still reads it) plus 'format' and the model 'config', without optimizer state; it loads with
    weights_only=True and rebuilds its model without --model.

    \b
    Example:
      trek-track convert R50_DeAOTL_PRE_YTB_DAV.pth --model r50_deaotl --out r50_deaotl.pth
      trek-track convert R50_DeAOTL_PRE_YTB_DAV.pth --model r50_msdeaot --out r50_msdeaot_init.pth
    """
    from pathlib import Path

    from trek_tracker.errors import UserError
    from trek_tracker.modeling.checkpoints import load_model, save_checkpoint

    if Path(out).resolve() == Path(source).resolve():
        raise UserError(f"--out {out} is SOURCE itself, which would be replaced; choose another --out file")
    net, init = load_model(source, model)
    extra = {"converted_from": Path(source).name}
    if init is not None:
        extra["partial_init"] = init.to_dict()
    path = save_checkpoint(out, net, extra=extra)
    size = path.stat().st_size / 2**20
    click.echo(f"wrote {path} ({net.config.name}, {size:.1f} MiB)")
    if init is not None:
        click.echo(f"initialised from a DeAOT checkpoint: {len(init.loaded)} tensors loaded; unused: "
                   f"{', '.join(init.to_dict()['unused']) or 'none'}; new (untrained): "
                   f"{', '.join(init.to_dict()['new'])}")
