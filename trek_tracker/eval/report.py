"""Score result folders and report: the official performance JSON, a text table and plots.

Aggregation follows the toolkit exactly (same loops, same operation order, float64):

- OPE: per-sequence curves, overall curves = unweighted mean over sequences; speed = mean of per-frame
  rates, overall = sum over sequences with a speed / their count (-1 when none);
- MSE: per sequence, runs weighted by full run length; overall, sequences weighted by full length;
- HOI: all intervals of all sequences pooled, weighted by interval length; ``seq_wise`` is empty.

Unlike the toolkit, a missing or malformed result file is reported (all of them, by name) instead of
crashing on the first, and sequences without HOI intervals are skipped instead of crashing.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from trek_tracker.errors import InputError, listing
from trek_tracker.eval.dataset import Trek150
from trek_tracker.eval.metrics import THR_GSR, THR_IOU, THR_NCE, RunScore, score_run, speed_fps
from trek_tracker.eval.protocols import Run, expand_protocols, plan
from trek_tracker.files import atomic_write
from trek_tracker.results import read_result, read_times

SCORE_KEYS = ("success_score", "normalized_precision_score", "generalized_success_robustness_score")
SHORT = {"success_score": "SS", "normalized_precision_score": "NPS",
         "generalized_success_robustness_score": "GSR", "recall_score": "recall", "speed_fps": "fps"}


def check_results(dataset: Trek150, tracker_dir: str | Path, protocol: str) -> list[str]:
    """Problems with the result files of ``protocol`` under ``tracker_dir`` (empty list when complete)."""
    tracker_dir = Path(tracker_dir)
    problems = []
    for run in plan(dataset, protocol):
        try:
            read_result(tracker_dir / run.relpath, run.length)
        except InputError as err:
            problems.append(str(err))
    return problems


def missing_folder_advice(tracker_dir: str | Path) -> str | None:
    """What to do when the tracker folder does not exist (a wrong ``--results`` or ``--tracker`` more likely
    than runs never tracked), or None when it does."""
    tracker_dir = Path(tracker_dir)
    if tracker_dir.is_dir():
        return None
    nested = tracker_dir.parent / "TREK-150" / tracker_dir.name
    if nested.is_dir():
        return f"{tracker_dir} does not exist, but {nested} does: use --results {nested.parent}"
    return (f"{tracker_dir} does not exist: check --results (the folder that holds <tracker>/ope, mse and hoi; "
            "the official toolkit's is <result_dir>/TREK-150) and --tracker, or run the tracker first")


def require_results(dataset: Trek150, results: Path, trackers: Sequence[str], protocols: Sequence[str]) -> None:
    """Refuse in one line that names what is missing or invalid of every tracker and protocol (under
    ``results/<tracker>``), before anything is scored: scoring before every shard is done would otherwise tell
    one protocol's gaps per try."""
    problems, counts, advice = [], [], None
    for name in trackers:
        for p in protocols:
            found = check_results(dataset, results / name, p)
            if found:
                problems += found
                counts.append((len(found), p.upper(), name))
                advice = advice or missing_folder_advice(results / name)
    if not problems:
        return
    if len(counts) == 1:
        what = f"{counts[0][0]} {counts[0][1]} result file(s) of {counts[0][2]}"
    else:
        owners = sorted({c[2] for c in counts})
        what = (f"{len(problems)} result file(s) of {', '.join(owners)} ("
                + ", ".join(f"{n} {p}" + (f" of {t}" if len(owners) > 1 else "") for n, p, t in counts) + ")")
    advice = advice or ("run the tracker first (trek-track eval without --report-only resumes where it stopped; "
                        "with --shard, every shard must finish)")
    raise InputError(f"{what} are missing or invalid:{listing(problems)} {advice}")


def _require(dataset: Trek150, tracker_dir: Path, protocol: str) -> None:
    require_results(dataset, tracker_dir.parent, [tracker_dir.name], [protocol])


def _score(dataset: Trek150, tracker_dir: Path, run: Run) -> RunScore:
    seq = dataset[run.sequence]
    return score_run(read_result(tracker_dir / run.relpath, run.length), run.ground_truth(seq))


def _speed(path: Path) -> float:
    """The run's speed (:func:`speed_fps`); 0 without a readable times file (reported as -1)."""
    try:
        return speed_fps(read_times(path))
    except InputError:
        return 0.0


def evaluate_ope(dataset: Trek150, tracker_dir: str | Path) -> dict:
    """``{"overall": ..., "seq_wise": ...}`` of one tracker, as ``report_ope`` writes it."""
    tracker_dir = Path(tracker_dir)
    _require(dataset, tracker_dir, "ope")
    n = len(dataset)
    succ = np.zeros((n, len(THR_IOU)))
    prec = np.zeros((n, len(THR_NCE)))
    rob = np.zeros((n, len(THR_GSR)))
    speeds = np.zeros(n)
    seq_wise = {}
    for s, run in enumerate(plan(dataset, "ope")):
        sc = _score(dataset, tracker_dir, run)
        succ[s], prec[s], rob[s] = sc.success_curve, sc.normalized_precision_curve, sc.robustness_curve
        speeds[s] = _speed(tracker_dir / run.times_relpath)
        seq_wise[run.sequence] = {
            "success_curve": succ[s].tolist(),
            "normalized_precision_curve": prec[s].tolist(),
            "generalized_success_robustness_curve": rob[s].tolist(),
            "success_score": float(np.mean(succ[s])),
            "normalized_precision_score": float(np.mean(prec[s])),
            "generalized_success_robustness_score": float(np.mean(rob[s])),
            "speed_fps": float(speeds[s]) if speeds[s] > 0 else -1,
        }
    succ_c, prec_c, rob_c = np.mean(succ, axis=0), np.mean(prec, axis=0), np.mean(rob, axis=0)
    nonzero = np.count_nonzero(speeds)
    overall = {
        "success_curve": succ_c.tolist(),
        "normalized_precision_curve": prec_c.tolist(),
        "generalized_success_robustness_curve": rob_c.tolist(),
        "success_score": float(np.mean(succ_c)),
        "normalized_precision_score": float(np.mean(prec_c)),
        "generalized_success_robustness_score": float(np.mean(rob_c)),
        "speed_fps": float(np.sum(speeds) / nonzero) if nonzero > 0 else -1,
    }
    return {"overall": overall, "seq_wise": seq_wise}


def evaluate_mse(dataset: Trek150, tracker_dir: str | Path) -> dict:
    """``{"overall": ..., "seq_wise": ...}`` of one tracker, as ``report_mse`` writes it."""
    tracker_dir = Path(tracker_dir)
    _require(dataset, tracker_dir, "mse")
    total = [0.0, 0.0, 0.0]
    total_len = 0
    seq_wise = {}
    for seq in dataset:
        acc = [0.0, 0.0, 0.0]
        frames = 0
        for run in plan_for(dataset, seq.name, "mse"):
            sc = _score(dataset, tracker_dir, run)
            for i, v in enumerate((sc.success_score, sc.normalized_precision_score, sc.robustness_score)):
                acc[i] += v * run.length
            frames += run.length
        acc = [a / frames for a in acc]
        seq_wise[seq.name] = dict(zip(SCORE_KEYS, acc, strict=True))
        for i in range(3):
            total[i] += acc[i] * len(seq)
        total_len += len(seq)
    overall = dict(zip(SCORE_KEYS, [t / total_len for t in total], strict=True))
    return {"overall": overall, "seq_wise": seq_wise}


def evaluate_hoi(dataset: Trek150, tracker_dir: str | Path) -> dict:
    """``{"overall": ..., "seq_wise": {}}`` of one tracker, as ``report_hoi`` writes it (intervals pooled)."""
    tracker_dir = Path(tracker_dir)
    _require(dataset, tracker_dir, "hoi")
    total = [0.0, 0.0, 0.0, 0.0]
    frames = 0
    runs = plan(dataset, "hoi")
    if not runs:
        raise InputError(f"no sequence under {dataset.root} has an HOI interval (anchors_hoi.txt missing or "
                         "empty), so there is nothing to score for HOI; re-extract the annotations (older "
                         "extractions lack the HOI files)")
    for run in runs:
        sc = _score(dataset, tracker_dir, run)
        values = (sc.success_score, sc.normalized_precision_score, sc.robustness_score, sc.recall_score)
        for i, v in enumerate(values):
            total[i] += v * run.length
        frames += run.length
    keys = (*SCORE_KEYS, "recall_score")
    return {"overall": dict(zip(keys, [t / frames for t in total], strict=True)), "seq_wise": {}}


def plan_for(dataset: Trek150, name: str, protocol: str) -> list[Run]:
    from trek_tracker.eval.protocols import hoi_runs, mse_runs, ope_runs

    return {"ope": ope_runs, "mse": mse_runs, "hoi": hoi_runs}[protocol](dataset[name])


_EVALUATORS = {"ope": evaluate_ope, "mse": evaluate_mse, "hoi": evaluate_hoi}


def evaluate(dataset: Trek150, results_dir: str | Path, trackers: list[str], protocol: str) -> dict:
    """The performance dict of ``protocol`` for several trackers: ``{tracker: {overall, seq_wise}}``,
    reading ``<results_dir>/<tracker>/<protocol>/...``."""
    (p,) = expand_protocols(protocol)
    return {name: _EVALUATORS[p](dataset, Path(results_dir) / name) for name in trackers}


def performance_json(performance: dict) -> str:
    """The JSON text the toolkit writes (``json.dump(..., indent=4)``)."""
    return json.dumps(performance, indent=4)


def write_json(performance: dict, path: str | Path) -> None:
    with atomic_write(path) as f:
        f.write(performance_json(performance))


def _fmt(key: str, value: float) -> str:
    if key == "speed_fps":
        return f"{value:.2f}" if value > 0 else "-"
    return f"{value:.10f}"


def format_table(performance: dict, protocol: str, per_sequence: bool = True) -> str:
    """A plain-text table: overall scores per tracker, then per-sequence scores (OPE and MSE).

    Scores are printed with 10 decimals, the JSON's values rounded, so they can be compared with the
    official report directly.
    """
    lines = [f"TREK-150 {protocol.upper()}"]
    first = next(iter(performance.values()))
    keys = [k for k in (*SCORE_KEYS, "recall_score", "speed_fps") if k in first["overall"]]
    width = max(12, *(len(n) for n in performance))
    header = f"{'tracker':<{width}}  " + "  ".join(f"{SHORT[k]:>12}" for k in keys)
    lines += [header, "-" * len(header)]
    for name, perf in performance.items():
        lines.append(f"{name:<{width}}  " + "  ".join(f"{_fmt(k, perf['overall'][k]):>12}" for k in keys))
    if per_sequence:
        for name, perf in performance.items():
            if not perf["seq_wise"]:
                continue
            seqs = list(perf["seq_wise"])
            sw = max(12, *(len(s) for s in seqs))
            lines += ["", f"{name}: per sequence"]
            head = f"{'sequence':<{sw}}  " + "  ".join(f"{SHORT[k]:>12}" for k in keys)
            lines += [head, "-" * len(head)]
            for s in seqs:
                row = perf["seq_wise"][s]
                lines.append(f"{s:<{sw}}  " + "  ".join(f"{_fmt(k, row[k]):>12}" for k in keys))
    return "\n".join(lines) + "\n"


_PLOTS = (
    ("success_plots.png", "success_curve", "success_score", THR_IOU, "Overlap threshold", "Success rate",
     "Success plots of OPE"),
    ("normalized_precision_plots.png", "normalized_precision_curve", "normalized_precision_score", THR_NCE,
     "Normalized location error threshold", "Normalized precision", "Normalized precision plots of OPE"),
    ("generalized_success_robustness_plots.png", "generalized_success_robustness_curve",
     "generalized_success_robustness_score", THR_GSR, "Overlap threshold", "Normalized extent",
     "Generalized success robustness plots of OPE"),
)


def plot_ope(performance: dict, out_dir: str | Path, dpi: int = 150) -> list[Path]:
    """The toolkit's three OPE plots (one curve per tracker, best first, legend ``name: [score]``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    styles = [c + m for m in ("-", "--", "-.") for c in [""] * 10]
    written = []
    trackers = list(performance)
    for fname, curve_key, score_key, thr, xlabel, ylabel, title in _PLOTS:
        # the toolkit's order: an ascending argsort reversed, so tied trackers come in reverse of the given
        # order (stable here, as numpy's small-array sort is; NaN scores sort first, as there)
        scores = np.array([performance[n]["overall"][score_key] for n in trackers], dtype=np.float64)
        names = [trackers[i] for i in np.argsort(scores, kind="stable")[::-1]]
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for i, name in enumerate(names):
            o = performance[name]["overall"]
            ax.plot(thr, o[curve_key], styles[i % len(styles)], linewidth=1.6,
                    label=f"{name}: [{o[score_key]:.3f}]")
        # a little headroom so that curves at 1.0 (a perfect tracker) are not hidden by the frame
        ax.set(xlabel=xlabel, ylabel=ylabel, xlim=(0, float(thr.max())), ylim=(0, 1.02), title=title)
        ax.grid(True, alpha=0.4)
        legend = ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, frameon=False)
        path = out_dir / fname
        with atomic_write(path, "wb") as f:
            fig.savefig(f, dpi=dpi, bbox_extra_artists=(legend,), bbox_inches="tight", format="png")
        plt.close(fig)
        written.append(path)
    return written


def attribute_scores(dataset: Trek150, performance: dict) -> dict[str, dict[str, float]]:
    """Scores of one tracker's OPE/MSE ``performance`` over the sequences that carry each attribute of
    ``attributes.txt`` (not an official number; the paper reports per-attribute OPE this way), aggregated
    as the protocol aggregates its sequences: OPE the plain mean of per-sequence scores, MSE the mean
    weighted by sequence length (an MSE ``performance`` has no curves), so that an attribute every
    sequence carries scores the overall number. Keys are sorted attribute names; each value also has
    ``sequences``, the count."""
    weighted = "success_curve" not in performance["overall"]
    groups: dict[str, list[str]] = {}
    for seq in dataset:
        for attr in seq.attributes:
            groups.setdefault(attr, []).append(seq.name)
    out = {}
    for attr in sorted(groups):
        names = [n for n in groups[attr] if n in performance["seq_wise"]]
        if names:
            rows = [performance["seq_wise"][n] for n in names]
            if weighted:  # as evaluate_mse: sum_s N_s M_s / sum_s N_s
                lengths = [len(dataset[n]) for n in names]
                out[attr] = {k: sum(r[k] * n for r, n in zip(rows, lengths, strict=True)) / sum(lengths)
                             for k in SCORE_KEYS}
            else:
                out[attr] = {k: float(np.mean([r[k] for r in rows])) for k in SCORE_KEYS}
            out[attr]["sequences"] = len(rows)
    return out


def format_attribute_table(scores: dict[str, dict[str, float]], title: str) -> str:
    lines = [title, f"{'attribute':<10} {'seqs':>5}  " + "  ".join(f"{SHORT[k]:>8}" for k in SCORE_KEYS)]
    lines.append("-" * len(lines[1]))
    for attr, row in scores.items():
        lines.append(f"{attr:<10} {row['sequences']:>5}  " + "  ".join(f"{row[k]:8.4f}" for k in SCORE_KEYS))
    return "\n".join(lines) + "\n"
