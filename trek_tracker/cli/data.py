"""``trek-track train-data check KIND ROOT`` and ``trek-track train-data masks-from-boxes KIND ROOT --out DIR``."""

from __future__ import annotations

import sys
from pathlib import Path

import click

KINDS = ("visor", "mose", "youtubevos", "davis", "vipseg", "lasot", "got10k", "egotracks", "coco", "voc", "ecssd",
         "msra10k", "pascals", "video", "static")
BOX_KINDS = ("lasot", "got10k", "egotracks")


def _options(items: tuple[str, ...]) -> dict:
    from trek_tracker.errors import InputError
    from trek_tracker.train.config import _parse_value

    out = {}
    for item in items:
        if "=" not in item:
            raise InputError(f"--option {item!r} must look like key=value, e.g. resolution=Full-Resolution")
        key, value = item.split("=", 1)
        out[key.strip()] = _parse_value(value)
    return out


def _sequences(text: str | None) -> list[str] | None:
    return [s for s in text.split(",") if s] if text else None


@click.group("train-data")
def data() -> None:
    """Check training datasets and turn box tracks into masks (docs/datasets.md)."""


@data.command("check")
@click.argument("kind", type=click.Choice(KINDS))
@click.argument("root", type=click.Path(path_type=Path))
@click.option("--split", default=None, help="Dataset split (default: train).")
@click.option("--mask-root", type=click.Path(path_type=Path), default=None,
              help="Box datasets: also check these masks (masks-from-boxes output or RTS masks).")
@click.option("--option", "options", multiple=True, metavar="KEY=VALUE", help="Reader option, e.g. resolution=480p.")
@click.option("--sequences", default=None, help="Comma-separated sequences to check (default: all).")
@click.option("--max-problems", type=click.IntRange(min=0), default=200, show_default=True,
              help="Print at most this many problems.")
@click.option("--progress/--no-progress", default=None,
              help="Progress bars while the root is scanned and checked (default: on a terminal).")
def check(kind: str, root: Path, split: str | None, mask_root: Path | None, options: tuple[str, ...],
          sequences: str | None, max_problems: int, progress: bool | None) -> None:
    """Validate a dataset ROOT of KIND before training: one line per problem, then counts.

    Exits with 1 when a problem was found.
    """
    from trek_tracker.train.datasets.check import check_dataset
    from trek_tracker.train.datasets.source import DataSource

    src = DataSource(str(root), kind=kind, split=split, sequences=_sequences(sequences),
                     mask_root=str(mask_root) if mask_root else None, options=_options(options))
    report = check_dataset(src, progress=progress)
    for line in report.problems[:max_problems]:
        click.echo(f"problem: {line}")
    if len(report.problems) > max_problems:
        click.echo(f"... and {len(report.problems) - max_problems} more problems")
    counts = ", ".join(f"{v} {k}" for k, v in report.counts.items())
    click.echo(f"{kind} {root}: {counts or 'nothing read'}; {len(report.problems)} problem(s)")
    if not report.ok:
        sys.exit(1)


@data.command("masks-from-boxes")
@click.argument("kind", type=click.Choice(BOX_KINDS))
@click.argument("root", type=click.Path(path_type=Path))
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Output folder (Annotations/, done/, manifest.json); resumed when it exists.")
@click.option("--split", default=None, help="Dataset split (default: train; LaSOT: all sequences).")
@click.option("--method", type=click.Choice(["fused", "sam", "ar", "grabcut", "box"]), default="fused",
              show_default=True, help="Box -> mask method (fused = SAM + Alpha-Refine, as the report).")
@click.option("--sam-checkpoint", default=None, help="SAM weights (file or registry name).")
@click.option("--sam-model", default=None, help="vit_b, vit_l or vit_h (inferred from the checkpoint).")
@click.option("--ar-checkpoint", default=None, help="Alpha-Refine weights (file or registry name).")
@click.option("--ar-model", default=None, help="seg384 or secm (inferred from the checkpoint).")
@click.option("--every", type=int, default=1, show_default=True, help="A mask on every k-th visible frame.")
@click.option("--shard", default=None, metavar="I/N", help="Only every N-th sequence starting at I (0-based).")
@click.option("--sequences", default=None, help="Comma-separated sequences (default: all).")
@click.option("--max-sequences", type=int, default=None,
              help="A fixed random subset of this many sequences (the report: 300 EgoTracks videos).")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--progress/--no-progress", default=True, show_default=True)
def masks_from_boxes(kind: str, root: Path, out: Path, split: str | None, method: str, sam_checkpoint: str | None,
                     sam_model: str | None, ar_checkpoint: str | None, ar_model: str | None, every: int,
                     shard: str | None, sequences: str | None, max_sequences: int | None, device: str,
                     progress: bool) -> None:
    """Turn the box tracks of a LaSOT, GOT-10k or EgoTracks ROOT into masks with our box -> mask stage."""
    from trek_tracker.cli.eval import _parse_shard
    from trek_tracker.device import select_device
    from trek_tracker.init.api import BoxToMask, InitConfig
    from trek_tracker.train.masks_from_boxes import MaskJob, make_masks

    chosen = select_device(device)
    job = MaskJob(kind, str(root), str(out), split=split, method=method, every=every,
                  sequences=_sequences(sequences), max_sequences=max_sequences, shard=_parse_shard(shard))
    config = InitConfig(method=method, sam_checkpoint=sam_checkpoint, sam_model=sam_model,
                        ar_checkpoint=ar_checkpoint, ar_model=ar_model)
    make_masks(job, BoxToMask(config, str(chosen)), progress=progress, log=lambda m: click.echo(m, err=True))
