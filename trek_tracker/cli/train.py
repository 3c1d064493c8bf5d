"""``trek-track train``: one process, or one per GPU under torchrun."""

from __future__ import annotations

import json
from pathlib import Path

import click


@click.command("train")
@click.argument("config", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--out", "out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Run folder (logs, checkpoints); overrides the config's 'out'.")
@click.option("--set", "overrides", multiple=True, metavar="SECTION.KEY=VALUE",
              help="Override a config value, e.g. --set train.steps=1000 --set data.0.root=/data/davis.")
@click.option("--resume/--no-resume", default=True, show_default=True,
              help="Continue from the newest checkpoint in the run folder when there is one (--no-resume: "
                   "refuse a folder that holds one, rather than mix two runs; start over in a new --out).")
@click.option("--until", type=int, default=None, help="Stop after this step (the schedule still spans train.steps).")
@click.option("--progress/--no-progress", default=True, show_default=True, help="Show a progress bar.")
def train_cmd(config: Path, out: Path | None, overrides: tuple[str, ...], resume: bool, until: int | None,
              progress: bool) -> None:
    """Train a VOS model from a TOML or YAML CONFIG (see configs/train/).

    Multi-GPU: torchrun --nproc_per_node=N -m trek_tracker.train CONFIG
    """
    from trek_tracker.train.config import load_config
    from trek_tracker.train.loop import train

    extra = list(overrides) + ([f"out={json.dumps(str(out))}"] if out is not None else [])
    cfg = load_config(config, extra)
    records = train(cfg, resume=resume, until=until, progress=progress)
    last = [r for r in records if r.get("kind") == "train"][-1:]
    val = [r for r in records if r.get("kind") == "val"][-1:]
    if last:
        click.echo(f"step {last[0]['step']}: loss {last[0]['loss']:.4f}", err=True)
    if val:
        click.echo(f"validation at step {val[0]['step']}: J&F {val[0]['J&F']:.4f}", err=True)
    click.echo(f"run folder: {cfg.out}", err=True)
