"""The report's text tables, OPE plots and JSON: each cell, curve and field is the right number of the right
tracker, read back from the table's text and the figures' line data."""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path

import matplotlib
import numpy as np
import pytest
from matplotlib.figure import Figure

from tests.eval.helpers import build_synthetic, write_sequence
from tests.eval.test_spec_vectors import GT_A, GT_B, TV1_PRED
from trek_tracker.errors import InputError
from trek_tracker.eval import report as R
from trek_tracker.eval.dataset import Trek150
from trek_tracker.eval.metrics import THR_GSR, THR_IOU, THR_NCE
from trek_tracker.eval.protocols import plan
from trek_tracker.files import atomic_write
from trek_tracker.results import write_boxes

# The spec's TV1 scores (10 decimals, as the official report prints them) and a perfect run's: SS 20/21, NPS 1, GSR 1
TV1 = ("0.5619047619", "0.5215686275", "0.4980392157")
PERFECT = ("0.9523809524", "1.0000000000", "1.0000000000")


@pytest.fixture()
def two_trackers(tmp_path: Path) -> tuple[Trek150, Path]:
    """Sequences A (TV1's) and B; ``perfect`` returns the ground truth everywhere, ``a-much-longer-name`` returns
    TV1's predictions on A (with TV5's times: 30.67 fps) and the ground truth on B (no times file)."""
    root = tmp_path / "trek"
    write_sequence(root, "A", GT_A, size=(600, 600))
    write_sequence(root, "B", GT_B, size=(64, 64))
    ds = Trek150(root)
    results = tmp_path / "results"
    for run in plan(ds, "ope"):
        gt = run.ground_truth(ds[run.sequence])
        write_boxes(results / "perfect" / run.relpath, gt)
        write_boxes(results / "a-much-longer-name" / run.relpath,
                    np.array(TV1_PRED, float) if run.sequence == "A" else gt)
    with atomic_write(results / "a-much-longer-name" / "ope/times/A_time.txt") as f:
        f.write("0.50000000\n0.02000000\n0.02500000\n0.00000000\n0\n0\n")
    with atomic_write(results / "perfect" / "ope/times/B_time.txt") as f:
        f.write("0.10000000\n" * 4)
    return ds, results


def _cells(line: str) -> list[str]:
    return line.split()


def test_ope_table_rows_keep_the_trackers_order_with_each_metric_in_its_column(two_trackers) -> None:
    ds, results = two_trackers
    perf = R.evaluate(ds, results, ["a-much-longer-name", "perfect"], "ope")
    lines = R.format_table(perf, "ope").splitlines()
    assert lines[0] == "TREK-150 OPE"
    width = len("a-much-longer-name")  # the tracker column widens to the longest name
    header = f"{'tracker':<{width}}  " + "  ".join(f"{k:>12}" for k in ("SS", "NPS", "GSR", "fps"))
    assert lines[1] == header and lines[2] == "-" * len(header)
    # rows in the order asked for (not sorted by score), overall = mean of the two sequences' scores
    worse = [f"{v:.10f}" for v in ((59 / 105 + 20 / 21) / 2, (133 / 255 + 1) / 2, (127 / 255 + 1) / 2)]
    assert lines[3] == f"{'a-much-longer-name':<{width}}  " + "  ".join(f"{v:>12}" for v in (*worse, "30.67"))
    assert _cells(lines[4]) == ["perfect", *PERFECT, "10.00"]
    assert lines[4].startswith("perfect" + " " * (width - len("perfect") + 2))
    # then each tracker's sequences, in the dataset's order; a sequence without times shows "-"
    assert lines[5:9] == ["", "a-much-longer-name: per sequence",
                          f"{'sequence':<12}  " + "  ".join(f"{k:>12}" for k in ("SS", "NPS", "GSR", "fps")),
                          "-" * (14 + 4 * 14 - 2)]
    assert lines[9] == f"{'A':<12}  " + "  ".join(f"{v:>12}" for v in (*TV1, "30.67"))
    assert _cells(lines[10]) == ["B", *PERFECT, "-"]
    assert lines[11:13] == ["", "perfect: per sequence"]
    assert _cells(lines[15]) == ["A", *PERFECT, "-"] and _cells(lines[16]) == ["B", *PERFECT, "10.00"]
    assert len(lines) == 17
    overall_only = R.format_table(perf, "ope", per_sequence=False)
    assert overall_only == "\n".join(lines[:5]) + "\n"


def test_table_columns_follow_the_protocols_keys_and_round_to_ten_decimals() -> None:
    """MSE has no speed, HOI adds recall and has no rows per sequence; values round half-way digits up."""
    mse = {"t": {"overall": {"success_score": 2 / 3, "normalized_precision_score": 1 / 3,
                             "generalized_success_robustness_score": 0.123456789049},
                 "seq_wise": {"a-long-sequence-name": {"success_score": 0.5, "normalized_precision_score": 0.25,
                                                       "generalized_success_robustness_score": 1.0}}}}
    lines = R.format_table(mse, "mse").splitlines()
    assert lines[0] == "TREK-150 MSE" and _cells(lines[1]) == ["tracker", "SS", "NPS", "GSR"]
    assert _cells(lines[3]) == ["t", "0.6666666667", "0.3333333333", "0.1234567890"]
    assert lines[3] == "t" + " " * 11 + "  " + "  ".join(f"{v:>12}" for v in _cells(lines[3])[1:])
    assert _cells(lines[8]) == ["a-long-sequence-name", "0.5000000000", "0.2500000000", "1.0000000000"]
    assert lines[6].startswith("sequence" + " " * (len("a-long-sequence-name") - len("sequence") + 2))
    hoi = {"u": {"overall": {"success_score": 0.75, "normalized_precision_score": 0.5,
                             "generalized_success_robustness_score": 0.25, "recall_score": 0.125},
                 "seq_wise": {}},
           "v": {"overall": {"success_score": 0.0, "normalized_precision_score": 1.0,
                             "generalized_success_robustness_score": 0.5, "recall_score": 1.0},
                 "seq_wise": {}}}
    text = R.format_table(hoi, "hoi")
    assert text.splitlines() == [
        "TREK-150 HOI", f"{'tracker':<12}  " + "  ".join(f"{k:>12}" for k in ("SS", "NPS", "GSR", "recall")),
        "-" * (14 + 4 * 14 - 2),
        f"{'u':<12}  " + "  ".join(f"{v:>12}" for v in ("0.7500000000", "0.5000000000", "0.2500000000",
                                                         "0.1250000000")),
        f"{'v':<12}  " + "  ".join(f"{v:>12}" for v in ("0.0000000000", "1.0000000000", "0.5000000000",
                                                         "1.0000000000"))]
    assert text.endswith("0\n") and not text.endswith("\n\n")


def test_speed_shows_two_decimals_and_a_dash_when_unknown() -> None:
    keys = {"success_score": 0.5, "normalized_precision_score": 0.5, "generalized_success_robustness_score": 0.5}
    perf = {f"t{i}": {"overall": {**keys, "speed_fps": fps}, "seq_wise": {}}
            for i, fps in enumerate((-1, 0.004, 0.005, 123.456))}
    speeds = [_cells(line)[-1] for line in R.format_table(perf, "ope").splitlines()[3:]]
    # -1 is the toolkit's "no times file"; any positive speed is a speed, however slow
    assert speeds == ["-", "0.00", "0.01", "123.46"]


def _curve(start: float, n: int) -> list[float]:
    """A decreasing curve with distinct points (so reversed or shifted data would show)."""
    return np.linspace(start, start / 4, n).tolist()


def _perf(ss: float, nps: float, gsr: float) -> dict:
    curves = {"success_curve": _curve(ss, len(THR_IOU)), "normalized_precision_curve": _curve(nps, len(THR_NCE)),
              "generalized_success_robustness_curve": _curve(gsr, len(THR_GSR))}
    scores = {k.replace("curve", "score"): float(np.mean(v)) for k, v in curves.items()}
    return {"overall": {**curves, **scores, "speed_fps": 10.0}, "seq_wise": {}}


@pytest.fixture()
def figures(monkeypatch) -> list:
    """The figures ``plot_ope`` draws, kept open (it closes each after saving) to read their lines back."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kept: list = []
    monkeypatch.setattr(plt, "close", kept.append)
    yield kept
    monkeypatch.undo()
    for fig in kept:
        plt.close(fig)


def test_each_plot_draws_every_trackers_overall_curve_best_first_by_its_own_score(figures, tmp_path: Path) -> None:
    # x is best in SS, y in NPS, z in GSR: each plot has its own order
    perf = {"x": _perf(0.9, 0.5, 0.6), "y": _perf(0.3, 0.8, 0.4), "z": _perf(0.6, 0.2, 0.7)}
    files = R.plot_ope(perf, tmp_path / "new" / "plots", dpi=30)
    assert [f.parent for f in files] == [tmp_path / "new" / "plots"] * 3
    expected = [
        ("success_plots.png", "success", THR_IOU, "Overlap threshold", "Success rate", "Success plots of OPE",
         ["x", "z", "y"]),
        ("normalized_precision_plots.png", "normalized_precision", THR_NCE, "Normalized location error threshold",
         "Normalized precision", "Normalized precision plots of OPE", ["y", "x", "z"]),
        ("generalized_success_robustness_plots.png", "generalized_success_robustness", THR_GSR, "Overlap threshold",
         "Normalized extent", "Generalized success robustness plots of OPE", ["z", "x", "y"]),
    ]
    assert len(figures) == 3
    for fig, path, (name, key, thr, xlabel, ylabel, title, order) in zip(figures, files, expected, strict=True):
        assert path.name == name and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        (ax,) = fig.axes
        assert (ax.get_xlabel(), ax.get_ylabel(), ax.get_title()) == (xlabel, ylabel, title)
        lines = ax.get_lines()
        scores = [perf[n]["overall"][f"{key}_score"] for n in order]
        assert [ln.get_label() for ln in lines] == [f"{n}: [{s:.3f}]" for n, s in zip(order, scores, strict=True)]
        assert [t.get_text() for t in ax.get_legend().get_texts()] == [ln.get_label() for ln in lines]
        for n, ln in zip(order, lines, strict=True):
            np.testing.assert_array_equal(ln.get_xdata(), thr)
            np.testing.assert_array_equal(ln.get_ydata(), perf[n]["overall"][f"{key}_curve"])
            assert ln.get_linestyle() == "-"
        assert ax.get_xlim() == (0.0, float(thr[-1]))
        bottom, top = ax.get_ylim()
        assert bottom == 0 and 1 < top <= 1.05  # a perfect curve at 1.0 stays visible under the frame
        assert all(g.get_visible() for g in ax.get_xgridlines() + ax.get_ygridlines())
        renderer = fig.canvas.get_renderer()  # the legend lies beside the axes, over no curve
        assert ax.get_legend().get_window_extent(renderer).x0 > ax.get_window_extent(renderer).x1


def test_plot_legends_round_scores_to_three_decimals_and_line_styles_change_every_ten_trackers(
        figures, monkeypatch, tmp_path) -> None:
    """As the toolkit draws them: ten solid lines, ten dashed, ten dash-dotted, then solid again."""
    perf = {f"t{i:02d}": _perf(0.9 - 0.025 * i, 0.5, 0.5) for i in range(31)}
    perf["t00"]["overall"]["success_score"] = 0.8995  # binary value just below 0.8995: rounds down
    monkeypatch.setattr(Figure, "savefig", lambda *args, **kwargs: None)  # only the lines are read here
    R.plot_ope(perf, tmp_path)
    lines = figures[0].axes[0].get_lines()
    assert [ln.get_linestyle() for ln in lines] == ["-"] * 10 + ["--"] * 10 + ["-."] * 10 + ["-"]
    assert lines[0].get_label() == "t00: [0.899]"
    assert [ln.get_label().split(":")[0] for ln in lines] == list(perf)


def test_trackers_with_equal_scores_are_drawn_in_reverse_of_the_given_order_as_the_toolkit_sorts(
        figures, monkeypatch, tmp_path) -> None:
    """The toolkit orders by an ascending argsort reversed: of two tied trackers, the one given later comes first."""
    perf = {"first": _perf(0.5, 0.7, 0.3), "best": _perf(0.9, 0.7, 0.3), "last": _perf(0.5, 0.7, 0.3)}
    monkeypatch.setattr(Figure, "savefig", lambda *args, **kwargs: None)
    R.plot_ope(perf, tmp_path)
    orders = [[ln.get_label().split(":")[0] for ln in fig.axes[0].get_lines()] for fig in figures]
    # success: "best" leads, then the tie; the other two plots tie all three
    assert orders == [["best", "last", "first"], ["last", "best", "first"], ["last", "best", "first"]]


def _png_size(path: Path) -> tuple[int, int]:
    return struct.unpack(">II", path.read_bytes()[16:24])


def test_plots_are_saved_at_the_dpi_asked_for_beside_the_report_with_the_whole_legend(figures, tmp_path) -> None:
    """The report folder already holds the JSON (written first); a legend beyond the figure's right edge (a long
    name) widens the image instead of being cut off."""
    perf = {"a-tracker-with-a-rather-long-name-in-the-legend": _perf(0.9, 0.5, 0.6)}
    (tmp_path / "small").mkdir()
    (tmp_path / "small" / "performance-ope.json").write_text("{}")
    with matplotlib.rc_context({"savefig.format": "pdf"}):  # a user's matplotlibrc does not change the file type
        small = R.plot_ope(perf, tmp_path / "small", dpi=25)
    assert all(f.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for f in small)
    large = R.plot_ope(perf, tmp_path / "large", dpi=50)
    for s, big, fig in zip(small, large, figures[:3], strict=True):
        (ws, hs), (wl, hl) = _png_size(s), _png_size(big)
        assert wl == pytest.approx(2 * ws, abs=2) and hl == pytest.approx(2 * hs, abs=2)
        assert ws > fig.get_figwidth() * 25
    assert sorted(p.name for p in (tmp_path / "small").iterdir()) == sorted(
        ["performance-ope.json", *(p.name for p in small)])
    assert (tmp_path / "small" / "performance-ope.json").read_text() == "{}"


def test_performance_json_is_the_toolkits_json_dump_with_indent_4(two_trackers, tmp_path: Path) -> None:
    ds, results = two_trackers
    perf = R.evaluate(ds, results, ["perfect", "a-much-longer-name"], "ope")
    R.write_json(perf, tmp_path / "out" / "performance-ope.json")
    text = (tmp_path / "out" / "performance-ope.json").read_text(encoding="utf-8")
    assert text == R.performance_json(perf) and not text.endswith("\n")  # json.dump writes no final newline
    assert text.startswith('{\n    "perfect": {\n        "overall": {\n            "success_curve": [\n'
                           '                1.0,\n')
    back = json.loads(text)
    assert back == perf and list(back) == ["perfect", "a-much-longer-name"]
    keys = ["success_curve", "normalized_precision_curve", "generalized_success_robustness_curve", "success_score",
            "normalized_precision_score", "generalized_success_robustness_score", "speed_fps"]
    assert all(list(row) == keys for p in back.values() for row in (p["overall"], *p["seq_wise"].values()))
    tv1 = back["a-much-longer-name"]["seq_wise"]["A"]
    assert tv1["success_score"] == 59 / 105
    # TV1's visible IoUs 1, 2/3, 1/4, 0, 1 (success: IoU > threshold); its first failure is frame 3 below an IoU
    # threshold of 0.25, frame 2 from there on
    ious = (1, 2 / 3, 1 / 4, 0, 1)
    assert tv1["success_curve"] == pytest.approx([sum(v > t for v in ious) / 5 for t in THR_IOU], abs=1e-12)
    assert tv1["generalized_success_robustness_curve"] == pytest.approx([0.6 if t < 0.25 else 0.4 for t in THR_GSR])
    perfect = back["perfect"]["seq_wise"]["B"]
    assert perfect["success_curve"] == [1.0] * 20 + [0.0] and perfect["normalized_precision_curve"] == [1.0] * 51
    assert back["perfect"]["seq_wise"]["A"]["speed_fps"] == -1 and back["perfect"]["overall"]["speed_fps"] == 10.0


def test_attribute_table_prints_each_attributes_count_and_scores_to_four_decimals() -> None:
    scores = {"FM": {"success_score": 0.123449, "normalized_precision_score": 1.0,
                     "generalized_success_robustness_score": 0.5, "sequences": 3},
              "SC": {"success_score": 2 / 3, "normalized_precision_score": 0.0,
                     "generalized_success_robustness_score": 0.98765, "sequences": 12}}
    text = R.format_attribute_table(scores, "me: OPE per attribute")
    assert text.endswith("0.9877\n") and not text.endswith("\n\n")  # one table per echo, a blank line between
    lines = text.splitlines()
    assert lines[0] == "me: OPE per attribute"
    assert _cells(lines[1]) == ["attribute", "seqs", "SS", "NPS", "GSR"] and lines[2] == "-" * len(lines[1])
    assert _cells(lines[3]) == ["FM", "3", "0.1234", "1.0000", "0.5000"]
    assert _cells(lines[4]) == ["SC", "12", "0.6667", "0.0000", "0.9877"]
    assert len(lines) == 5 and all(len(line) == len(lines[1]) for line in lines[3:])


def test_attribute_scores_only_count_the_sequences_that_were_scored(two_trackers) -> None:
    """A sequence the performance lacks (a --sequences subset) counts for no attribute; an attribute none of
    the scored sequences carries is left out."""
    ds, results = two_trackers
    (ds.root / "A" / "attributes.txt").write_text("SC\nFM\n")
    (ds.root / "B" / "attributes.txt").write_text("SC\nHM\n")
    only_a = Trek150(ds.root, names=["A"])
    perf = R.evaluate(only_a, results, ["a-much-longer-name"], "ope")["a-much-longer-name"]
    att = R.attribute_scores(Trek150(ds.root), perf)
    assert list(att) == ["FM", "SC"] and att["SC"]["sequences"] == 1
    assert [att["SC"][k] for k in R.SCORE_KEYS] == pytest.approx([float(v) for v in TV1], abs=1e-10)


@pytest.fixture()
def one_sequence(tmp_path: Path) -> tuple[Trek150, Path]:
    """Sequence S with two MSE anchors and one HOI interval; ``p`` has every result but the backward MSE run,
    ``q``'s folder holds none."""
    write_sequence(tmp_path / "trek", "S", GT_B, size=(64, 64), anchors=[(1, 0), (2, 1)], hoi=[(0, 2, 0)])
    ds = Trek150(tmp_path / "trek")
    results = tmp_path / "results"
    for run in plan(ds, "all"):
        if run.key != "anchor-2":
            write_boxes(results / "p" / run.relpath, run.ground_truth(ds[run.sequence]))
    (results / "q").mkdir()
    return ds, results


def test_missing_results_of_several_trackers_are_counted_by_tracker_and_protocol(one_sequence) -> None:
    ds, results = one_sequence
    R.require_results(ds, results, ["p"], ["ope", "hoi"])  # complete: nothing to say
    with pytest.raises(InputError) as err:
        R.require_results(ds, results, ["p", "q"], ["ope", "mse", "hoi"])
    missing = [results / "p/mse/S-anchor-2.txt", results / "q/ope/S.txt", results / "q/mse/S-anchor-1.txt",
               results / "q/mse/S-anchor-2.txt", results / "q/hoi/S-hoi-0-2-0.txt"]
    assert str(err.value) == (
        "5 result file(s) of p, q (1 MSE of p, 1 OPE of q, 2 MSE of q, 1 HOI of q) are missing or invalid: "
        + "; ".join(f"result file {m} is missing" for m in missing) + "; run the tracker first (trek-track eval "
        "without --report-only resumes where it stopped; with --shard, every shard must finish)")
    with pytest.raises(InputError, match=r"^1 MSE result file\(s\) of p are missing or invalid: [^;]+; run"):
        R.require_results(ds, results, ["p"], ["mse"])
    with pytest.raises(InputError, match=r"^3 result file\(s\) of q \(1 OPE, 2 MSE\) are missing or invalid: "):
        R.require_results(ds, results, ["q"], ["ope", "mse"])


def test_a_tracker_folder_that_does_not_exist_is_named_even_when_another_tracker_follows(one_sequence) -> None:
    ds, results = one_sequence
    with pytest.raises(InputError) as err:
        R.require_results(ds, results, ["ghost", "p"], ["mse"])
    msg = str(err.value)
    assert msg.startswith("3 result file(s) of ghost, p (2 MSE of ghost, 1 MSE of p) are missing or invalid: ")
    assert msg.endswith(f"; {results / 'ghost'} does not exist: check --results (the folder that holds "
                        "<tracker>/ope, mse and hoi; the official toolkit's is <result_dir>/TREK-150) and --tracker, "
                        "or run the tracker first"), msg


def test_plan_for_is_the_protocols_plan_of_one_sequence(tmp_path: Path) -> None:
    ds = Trek150(build_synthetic(tmp_path / "trek"))
    for protocol in ("ope", "mse", "hoi"):
        for seq in ds:
            expected = [r for r in plan(ds, protocol) if r.sequence == seq.name]
            assert R.plan_for(ds, seq.name, protocol) == expected, (protocol, seq.name)
    assert R.plan_for(ds, "P01-P01_01-10", "hoi") == [] and len(R.plan_for(ds, "P01-P01_01-2", "mse")) == 3


def test_hoi_without_any_interval_says_so_instead_of_scoring_nothing(two_trackers) -> None:
    ds, results = two_trackers  # no sequence has anchors_hoi.txt
    with pytest.raises(InputError, match=rf"^no sequence under {re.escape(str(ds.root))} has an HOI interval "
                                         r"\(anchors_hoi.txt missing or empty\), so there is nothing to score for "
                                         r"HOI; re-extract the annotations \(older extractions lack the HOI files\)$"):
        R.evaluate(ds, results, ["perfect"], "hoi")
