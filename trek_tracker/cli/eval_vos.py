"""``trek-track eval-vos``: J and F, as the DAVIS benchmark computes them, of a model or of saved masks."""

from __future__ import annotations

import math
from pathlib import Path

import click


def _fmt(v: float) -> str:
    return "nan" if math.isnan(v) else f"{v:.4f}"


@click.command("eval-vos")
@click.argument("data", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--model", "model_name", default=None, help="Model variant (omit for a checkpoint of ours).")
@click.option("--checkpoint", default=None,
              help="Weights to evaluate (ours or official): a file or a registry name (`trek-track weights list`).")
@click.option("--predictions", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Score saved masks PRED/<seq>/<frame>.png instead of running a model.")
@click.option("--sequences", default=None, help="Comma-separated sequence names (default: all).")
@click.option("--max-long-edge", type=int, default=480, show_default=True, help="Network input size cap.")
@click.option("--max-frames", type=int, default=None, help="Only the first N frames of each sequence.")
@click.option("--save-masks", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Also write the predicted masks here (palette PNGs).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the full results (per object) to this JSON file.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda.")
def eval_vos(data: Path, model_name: str | None, checkpoint: str | None, predictions: Path | None,
             sequences: str | None, max_long_edge: int, max_frames: int | None, save_masks: Path | None,
             json_path: Path | None, device: str) -> None:
    """J and F, as the DAVIS benchmark computes them, on a DAVIS-layout folder DATA.

    Each sequence's objects are printed as soon as the sequence is scored; the dataset's means come last.
    """
    from trek_tracker.errors import InputError
    from trek_tracker.eval.vos_metrics import summarise_rows
    from trek_tracker.train import validate

    seqs = [s for s in sequences.split(",") if s] if sequences else None
    if predictions is not None:
        if checkpoint is not None or model_name is not None:
            raise InputError("give either --predictions or a model (--model/--checkpoint), not both")
        given = [name for name, value in (("--max-frames", max_frames), ("--save-masks", save_masks))
                 if value is not None]
        if given:
            verb = "apply" if len(given) > 1 else "applies"
            raise InputError(f"{' and '.join(given)} {verb} to a model's run, not to --predictions (which scores "
                             "every annotated frame of the saved masks): leave them out")

        def score(name: str) -> dict:
            return validate.evaluate_folder(predictions, data, sequences=[name])
    else:
        from trek_tracker.device import select_device
        from trek_tracker.modeling.checkpoints import load_model

        if checkpoint is None:
            raise InputError("--checkpoint is required to evaluate a model (or give --predictions)")
        from trek_tracker.weights.resolve import resolve_checkpoint

        dev = select_device(device)
        model, _ = load_model(resolve_checkpoint(checkpoint, kind="deaot"), model_name)
        model.to(dev)

        def score(name: str) -> dict:
            return validate.evaluate_model(model, data, sequences=[name], max_long_edge=max_long_edge,
                                           max_frames=max_frames, save_dir=save_masks)
    names = [seq.name for seq in validate.list_sequences(data, seqs, max_frames)]
    if save_masks is not None:  # never mix this model's masks with those of an earlier evaluation
        taken = [n for n in names if (save_masks / n).is_dir() and any((save_masks / n).iterdir())]
        if taken:
            raise InputError(f"--save-masks {save_masks} already holds masks of {', '.join(taken[:5])}"
                             f"{' and more' if len(taken) > 5 else ''}; choose a new folder (or remove them)")
    rows: list[dict] = []
    for k, name in enumerate(names, 1):
        found = score(name)["objects"]
        if not found:
            click.echo(f"{name:<24} no object in its annotations ({k}/{len(names)})")
        for row in found:
            click.echo(f"{row['sequence']:<24} obj {row['object']:<3} J {_fmt(row['J_mean'])}  "
                       f"F {_fmt(row['F_mean'])}  ({k}/{len(names)})")
        rows += found
    if not rows:
        raise InputError(f"no annotation in {data} holds an object (every mask is background): nothing to score")
    res = summarise_rows(rows)
    click.echo(f"J&F {_fmt(res['J&F'])}  J {_fmt(res['J_mean'])}  F {_fmt(res['F_mean'])}  "
               f"J-recall {_fmt(res['J_recall'])}  F-recall {_fmt(res['F_recall'])}  "
               f"J-decay {_fmt(res['J_decay'])}  F-decay {_fmt(res['F_decay'])}")
    if json_path is not None:
        from trek_tracker.files import write_json

        write_json(json_path, res)
