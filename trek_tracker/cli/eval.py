"""``trek-track eval``, ``trek-track submit`` and ``trek-track dataset``: TREK-150 evaluation.

Heavy imports (the tracker pipeline, torch, matplotlib) happen inside the commands, so that
``trek-track --help`` stays fast.
"""

from __future__ import annotations

import functools
import importlib
import logging
from pathlib import Path
from typing import Any

import click

from trek_tracker.cli.options import tracker_options
from trek_tracker.errors import InputError, UserError

DEFAULT_RESULTS = Path("results") / "TREK-150"
DEFAULT_REPORTS = Path("reports") / "TREK-150"


def _pipeline_tracker(options: dict[str, Any], device: str | None = None):
    """Module-level (picklable) factory of our pipeline tracker, for worker processes (on ``device``)."""
    from trek_tracker.cli.options import tracker_config_from_options
    from trek_tracker.pipeline import Tracker

    return Tracker(tracker_config_from_options(**{**options, **({"device": device} if device else {})}))


def _devices(value: str) -> list[str] | None:
    """The GPUs the workers use: every visible one for auto/cuda (none under torchrun or an srun step of
    several tasks, where each process takes its own from LOCAL_RANK or SLURM_LOCALID; a task of a Slurm
    array is a job of its own, and uses every GPU it sees), the listed ones for cuda:0,cuda:2; None on the
    CPU."""
    import torch

    from trek_tracker.eval.runner import under_launcher

    value = (value or "auto").strip().lower()
    if value == "cpu":
        return None
    if value in ("auto", "cuda"):
        if not torch.cuda.is_available():
            if value == "cuda":
                raise UserError("--device cuda was asked for but no CUDA GPU is available to PyTorch; use "
                                "--device cpu (or auto)")
            return None
        return None if under_launcher() else [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    devices = [d.strip() for d in value.split(",") if d.strip()]
    from trek_tracker.device import parse_device

    for d in devices:
        parse_device(d)  # one line for a GPU that is not there (the workers make it current, not this process)
    return devices


def _class_tracker(spec: str, device: str | None = None):
    """Instantiate a toolkit-style tracker class given as ``module:Class`` (no constructor arguments)."""
    module, _, attr = spec.partition(":")
    if not module or not attr:
        raise InputError(f"--tracker-class {spec!r}: expected module:Class, "
                         "e.g. mytrackers.siamfc:TrackerSiamFC")
    try:
        cls = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as err:
        raise InputError(f"--tracker-class {spec!r}: cannot import it ({err})") from None
    if not isinstance(cls, type):
        raise InputError(f"--tracker-class {spec!r} is a {type(cls).__name__}, not a class; give a tracker class "
                         "with init(image, box) and update(image)")
    from trek_tracker.eval.adapter import tracker_code

    with tracker_code(f"{spec}()", "give it defaults for every constructor argument, or wrap it in a class "
                                   "that needs none"):
        return cls()


def _plan_if_any(dataset, protocol: str) -> list:
    """The runs of ``protocol``, or none where the dataset cannot plan it (MSE without anchors files): for
    finished runs of the protocols not asked for, which may answer the runs asked for."""
    from trek_tracker.eval import protocols as P

    try:
        return P.plan(dataset, protocol)
    except InputError:
        return []


def _parse_shard(text: str | None) -> tuple[int, int]:
    if not text:
        return 0, 1
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise InputError(f"--shard {text!r}: expected i/n, e.g. 0/4 (0-based)") from None
    if n < 1 or not 0 <= i < n:
        raise InputError(f"--shard {text!r}: need 0 <= i < n")
    return i, n


def _pipeline_identity(options: dict[str, Any], devices: list[str] | None):
    """The pipeline's identity (checked against earlier results) and the cost model of its memory schedule."""
    import torch

    from trek_tracker.cli.options import tracker_config_from_options
    from trek_tracker.eval.protocols import expected_cost
    from trek_tracker.modeling.registry import model_config
    from trek_tracker.pipeline import DEFAULT_MODEL, tracker_identity

    config = tracker_config_from_options(**options)
    kind = "cuda" if devices or (options.get("device", "auto") != "cpu" and torch.cuda.is_available()) else "cpu"
    schedule = config.memory.resolve(model_config(config.model or DEFAULT_MODEL))
    return tracker_identity(config, kind), functools.partial(expected_cost, gap=schedule.gap, cap=schedule.cap)


def _setup_logging(quiet: bool) -> None:
    """Progress lines (runs skipped, frames per second) unless ``--quiet``; warnings always."""
    logging.getLogger("trek_tracker").setLevel(logging.WARNING if quiet else logging.INFO)


def default_report_dir(tracker: str, sequences: list[str] | None) -> Path:
    """``reports/TREK-150/<tracker>``; a subset of the sequences (``--sequences``) reports into a folder of
    its own below it, named by the subset, so that it never replaces the whole benchmark's report."""
    if not sequences:
        return DEFAULT_REPORTS / tracker
    import hashlib

    chosen = sorted(set(sequences))
    digest = hashlib.sha1(",".join(chosen).encode()).hexdigest()[:8]
    return DEFAULT_REPORTS / tracker / f"sequences-{len(chosen)}-{digest}"


def _json_path(path: Path, protocol: str, several: bool) -> Path:
    if "{protocol}" in str(path):
        return Path(str(path).replace("{protocol}", protocol))
    if several:
        return path.with_name(f"{path.stem}-{protocol}{path.suffix or '.json'}")
    return path


@click.command("eval")
@click.option("--protocol", type=click.Choice(["ope", "mse", "hoi", "all"]), default="all", show_default=True,
              help="Which TREK-150 protocol(s) to run and score.")
@click.option("--root", required=True, type=click.Path(path_type=Path),
              help="Prepared TREK-150 root (one folder per sequence).")
@click.option("--tracker", "trackers", multiple=True, required=True, metavar="NAME",
              help="Results folder name of the tracker. With --report-only, repeat it to compare trackers "
                   "(the first one names the report folder).")
@click.option("--results", type=click.Path(path_type=Path), default=DEFAULT_RESULTS, show_default=True,
              help="Folder that holds <tracker>/{ope,mse,hoi}.")
@click.option("--report-only", is_flag=True, help="Score existing result files (ours or the official "
              "toolkit's) without running a tracker.")
@click.option("--json", "json_path", type=click.Path(path_type=Path), default=None,
              help="Write the official performance JSON here (with several protocols: "
                   "<stem>-<protocol>.json, or put {protocol} in the path).")
@click.option("--report-dir", type=click.Path(path_type=Path), default=None,
              help="Where performance-<protocol>.json and the OPE plots go [default: reports/TREK-150/<tracker>; "
                   "with --sequences, a folder of that subset's own below it].")
@click.option("--no-plots", is_flag=True, help="Do not draw the OPE plots.")
@click.option("--per-sequence/--overall-only", default=True, show_default=True,
              help="Print per-sequence rows in the table.")
@click.option("--attributes", is_flag=True, help="Also print OPE/MSE scores per sequence attribute "
              "(mean over the sequences with that attribute; not an official number).")
@click.option("--sequences", default=None, metavar="A,B,...", help="Only these sequences (comma-separated).")
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="Processes tracking runs in parallel, one tracker each [default: one per GPU in use "
                   "(--device auto uses every visible GPU; cuda:0,cuda:2 these), else 1].")
@click.option("--shard", default=None, metavar="I/N",
              help="Run only shard I (0-based) of N of the plan, balanced by cost (under torchrun or Slurm "
                   "the shard comes from RANK/WORLD_SIZE or SLURM_* by itself).")
@click.option("--overwrite", is_flag=True, help=(
    "Re-run finished runs instead of resuming; under another configuration of the tracker, first remove "
    "every result of the old one under that name (all protocols)."))
@click.option("--track-every-run", is_flag=True,
              help="Track every run itself, also one that is the first frames of a longer run (as MSE's forward "
                   "run from frame 0 is OPE's), which by default is written from that run's rows. Toolkit "
                   "trackers (--tracker-class) always track every run.")
@click.option("--tracker-class", default=None, metavar="MODULE:CLASS",
              help="Run a toolkit-style tracker class (init/update) instead of our pipeline.")
@click.option("--quiet", is_flag=True, help="No progress bar or log lines.")
@tracker_options
def eval_cmd(protocol: str, root: Path, trackers: tuple[str, ...], results: Path, report_only: bool,
             json_path: Path | None, report_dir: Path | None, no_plots: bool, per_sequence: bool, attributes: bool,
             sequences: str | None, workers: int, shard: str | None, overwrite: bool, track_every_run: bool,
             tracker_class: str | None, quiet: bool, **tracker_kw: Any) -> None:
    """Run a tracker on TREK-150 (OPE, MSE, HOI; resumable) and score it exactly like the official toolkit.

    Results are written in the official layout, <results>/<tracker>/{ope,mse,hoi}/..., so the official
    toolkit can read them and `--report-only` can score results written by the official toolkit.
    """
    from trek_tracker.eval import protocols as P
    from trek_tracker.eval import report as R
    from trek_tracker.eval.dataset import Trek150

    _setup_logging(quiet)
    names = [s for s in sequences.split(",") if s] if sequences else None
    dataset = Trek150(root, names=names)
    protos = P.expand_protocols(protocol)

    if not report_only:
        from trek_tracker.eval.runner import execute, launcher_shard

        if len(trackers) != 1:
            raise UserError("name exactly one --tracker to run (several names are for --report-only)")
        shard_i, shard_n = _parse_shard(shard) if shard else (launcher_shard() or (0, 1))
        devices = _devices(tracker_kw.get("device", "auto"))
        if tracker_class:
            factory = functools.partial(_class_tracker, tracker_class)
            identity, cost = {"tracker_class": tracker_class}, P.expected_cost
        else:
            factory = functools.partial(_pipeline_tracker, tracker_kw)
            identity, cost = _pipeline_identity(tracker_kw, devices)
        # Ours is causal and deterministic: a run that is the first frames of a longer one is that run's rows.
        share = not (tracker_class or track_every_run)
        runs = P.balanced_shard(P.plan(dataset, protos), shard_i, shard_n, cost, share=share)
        others = [r for p in P.PROTOCOLS if share and p not in protos for r in _plan_if_any(dataset, p)]
        summary = execute(dataset, runs, results / trackers[0], factory, workers=workers or len(devices or [1]),
                          progress=not quiet, overwrite=overwrite, devices=devices, identity=identity, share=share,
                          others=others)
        if not quiet:
            shared = f", {len(summary.shared)} written from a longer run's first rows" if summary.shared else ""
            click.echo(f"{len(summary.done)} runs tracked{shared}, {len(summary.skipped)} already finished",
                       err=True)
        if shard_n > 1:
            click.echo(f"shard {shard_i}/{shard_n} finished; score with --report-only once every shard "
                       "is done", err=True)
            return

    out_dir = report_dir if report_dir is not None else default_report_dir(trackers[0], names)
    R.require_results(dataset, results, trackers, protos)
    for p in protos:
        perf = R.evaluate(dataset, results, list(trackers), p)
        click.echo(R.format_table(perf, p, per_sequence=per_sequence))
        if attributes and p != "hoi":
            for name, tperf in perf.items():
                title = f"{name}: {p.upper()} per attribute"
                click.echo(R.format_attribute_table(R.attribute_scores(dataset, tperf), title))
        if json_path is not None:
            R.write_json(perf, _json_path(json_path, p, len(protos) > 1))
        R.write_json(perf, out_dir / f"performance-{p}.json")
        if p == "ope" and not no_plots:
            R.plot_ope(perf, out_dir)
    if not quiet:
        click.echo(f"reports written to {out_dir}", err=True)


@click.command("submit")
@click.option("--results", type=click.Path(path_type=Path), default=DEFAULT_RESULTS, show_default=True,
              help="Folder that holds <tracker>/{ope,mse,hoi}.")
@click.option("--tracker", required=True, metavar="NAME", help="Results folder name of the tracker.")
@click.option("--root", required=True, type=click.Path(path_type=Path), help="Prepared TREK-150 root.")
@click.option("--out", type=click.Path(path_type=Path), default=Path("challenge-submission.zip"),
              show_default=True, help="The zip to write (a .json path writes the bare JSON instead).")
@click.option("--tracker-name", default=None, help="tracker_name in the JSON [default: --tracker].")
@click.option("--sls-pt", type=int, default=-1, show_default=True, help="Supervision level: pre-training.")
@click.option("--sls-tl", type=int, default=-1, show_default=True, help="Supervision level: training labels.")
@click.option("--sls-td", type=int, default=-1, show_default=True, help="Supervision level: training data.")
def submit(results: Path, tracker: str, root: Path, out: Path, tracker_name: str | None, sls_pt: int,
           sls_tl: int, sls_td: int) -> None:
    """Write the EPIC-KITCHENS TREK-150 challenge submission (challenge-submission.json inside a zip).

    Refuses, listing what is missing, unless every sequence (OPE), anchor (MSE) and interval (HOI) has a
    complete result file.
    """
    from trek_tracker.eval.dataset import Trek150
    from trek_tracker.eval.submission import write_submission

    dataset = Trek150(root)
    sls = (sls_pt, sls_tl, sls_td)
    path = write_submission(dataset, results / tracker, tracker_name or tracker, out, sls)
    click.echo(f"wrote {path}")


@click.group("dataset")
def dataset() -> None:
    """Check (and prepare) a TREK-150 root."""


@dataset.command("check")
@click.option("--root", required=True, type=click.Path(path_type=Path), help="Prepared TREK-150 root.")
@click.option("--no-images", is_flag=True, help="Check annotations only (e.g. to score without frames).")
@click.option("--decode", is_flag=True,
              help="Also decode every frame, finding truncated, empty, undecodable and differently sized JPEGs "
                   "(reads the whole dataset; a progress bar shows on a terminal).")
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="Threads decoding frames with --decode [default: CPU cores, at most 8].")
def check(root: Path, no_images: bool, decode: bool, workers: int | None) -> None:
    """Validate every sequence and every annotation value; print counts and one line per problem.

    Problems (the root cannot be used as it is) fail the command with exit code 2 after all are listed;
    warnings (usable values worth a look, such as boxes reaching beyond the frame) do not.
    """
    from trek_tracker.eval.dataset import Trek150

    if decode and no_images:
        raise UserError("--decode decodes the frames, --no-images skips them: give one of them")
    report = Trek150(root).validate(images=not no_images, decode=decode, progress=True, workers=workers)
    counts = report.counts
    click.echo(f"{counts['sequences']} sequences, {counts['frames']} frames"
               + (f", {report.decoded} decoded" if decode else ""))
    click.echo(f"{counts['with_anchors']} with anchors.txt ({counts['mse_runs']} MSE runs), "
               f"{counts['with_hoi']} with anchors_hoi.txt ({counts['hoi_runs']} HOI runs)")
    if counts["with_anchors"] < counts["sequences"]:
        click.echo(f"warning: {counts['sequences'] - counts['with_anchors']} sequence(s) lack anchors.txt; MSE "
                   "cannot run on them")
    for finding in report.warnings:
        click.echo(f"warning: {finding.line()}")
    for finding in report.problems:
        click.echo(f"problem: {finding.line()}")
    if not decode and not no_images:
        click.echo("frame files were not decoded; `--decode` also checks every frame's content")
    if not report.ok:
        n, k = report.problem_count, report.sequences_with_problems()
        raise InputError(f"dataset check found {n} problem{'s' * (n != 1)} in {k} sequence{'s' * (k != 1)} of "
                         f"{root} (listed above); the first: {report.problems[0].line()}")


@dataset.command("prepare")
@click.option("--root", required=True, type=click.Path(path_type=Path), help="Where the dataset goes.")
@click.option("--annotations", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="TREK-150-annotations.zip [default: <root>/TREK-150-annotations.zip].")
@click.option("--videos", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Folder with the EK-55 videos (<video>.MP4 or <participant>/<video>.MP4).")
@click.option("--ffmpeg", default="ffmpeg", show_default=True, help="ffmpeg executable.")
@click.option("--keep-frames", is_flag=True,
              help="Keep every frame of the per-video 60 fps folders (by default frames no sequence uses are "
                   "deleted as ffmpeg writes them).")
@click.option("--jobs", type=click.IntRange(min=1), default=1, show_default=True,
              help="Videos extracted at once (one ffmpeg each).")
def prepare_cmd(root: Path, annotations: Path | None, videos: Path | None, ffmpeg: str, keep_frames: bool,
                jobs: int) -> None:
    """Build the official layout from the annotations zip and local EK-55 videos (resumable).

    Frames are extracted as the official toolkit does: `ffmpeg -i <video>.MP4 -r 60 frame_%010d.jpg`.
    Nothing is downloaded: missing videos are listed with their official URLs.
    """
    from trek_tracker.eval.prepare import PrepareConfig, prepare

    prepare(PrepareConfig(root=root, annotations_zip=annotations, videos=videos, ffmpeg=ffmpeg,
                          keep_frames=keep_frames, jobs=jobs), echo=click.echo)
