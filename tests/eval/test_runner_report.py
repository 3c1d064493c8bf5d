"""Runner and report on a synthetic dataset: oracle and constant trackers, checked by hand, resume."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from tests.eval.helpers import (
    SYN_A,
    SYN_B,
    ConstantTracker,
    FailingTracker,
    OracleTracker,
    build_shared_starts,
    build_synthetic,
    hand_scores,
)
from trek_tracker.errors import InputError
from trek_tracker.eval import report as R
from trek_tracker.eval.dataset import Trek150
from trek_tracker.eval.protocols import group_runs, plan
from trek_tracker.eval.runner import execute, run_done


@pytest.fixture(scope="module")
def tracked(tmp_path_factory) -> tuple[Trek150, Path]:
    """Oracle and constant results for all protocols on the synthetic dataset."""
    base = tmp_path_factory.mktemp("syn")
    ds = Trek150(build_synthetic(base / "trek"))
    results = base / "results" / "TREK-150"
    runs = plan(ds, "all")
    execute(ds, runs, results / "oracle", OracleTracker, progress=False)
    execute(ds, runs, results / "constant", ConstantTracker, progress=False)
    return ds, results


def test_result_files_layout_and_format(tracked) -> None:
    ds, results = tracked
    ope = (results / "oracle" / "ope" / "P01-P01_01-2.txt").read_text().splitlines()
    assert len(ope) == 8 and ope[0] == "10.000,10.000,16.000,8.000"
    assert ope[1] == "13.000,10.000,16.000,8.000"
    assert ope[2] == ope[1]  # absent frame: the oracle holds its last box
    times = (results / "oracle" / "ope" / "times" / "P01-P01_01-2_time.txt").read_text().splitlines()
    assert len(times) == 8 and all(len(t.split(".")[1]) == 8 for t in times)
    back = (results / "constant" / "mse" / "P01-P01_01-2-anchor-7.txt").read_text().splitlines()
    assert len(back) == 8 and set(back) == {"10.000,10.000,16.000,8.000"}  # frame 7's box, 8 rows
    assert sorted(p.name for p in (results / "oracle" / "hoi").iterdir()) == [
        "P01-P01_01-2-hoi-1-4-0.txt", "P01-P01_01-2-hoi-5-7-2.txt"]
    assert not list(results.rglob("*.tmp")) and not list(results.rglob(".*"))


def test_oracle_scores_are_the_maximum(tracked) -> None:
    ds, results = tracked
    for protocol in ("ope", "mse", "hoi"):
        o = R.evaluate(ds, results, ["oracle"], protocol)["oracle"]["overall"]
        assert o["success_score"] == pytest.approx(20 / 21, abs=1e-12), protocol
        assert o["normalized_precision_score"] == pytest.approx(1.0, abs=1e-12)
        assert o["generalized_success_robustness_score"] == pytest.approx(1.0, abs=1e-12)
    hoi = R.evaluate(ds, results, ["oracle"], "hoi")["oracle"]
    assert hoi["overall"]["recall_score"] == pytest.approx(1.0) and hoi["seq_wise"] == {}


def _gt_run(gt, frames):
    return [gt[i] for i in frames]


def _const(gt, frames):
    return [gt[frames[0]]] * len(frames)


def test_constant_tracker_ope_by_hand(tracked) -> None:
    ds, results = tracked
    perf = R.evaluate(ds, results, ["constant"], "ope")["constant"]
    a = hand_scores(_const(SYN_A, range(8)), SYN_A)
    b = hand_scores(_const(SYN_B, range(5)), SYN_B)
    sw = perf["seq_wise"]
    for (name, h) in (("P01-P01_01-2", a), ("P01-P01_01-10", b)):
        assert sw[name]["success_score"] == pytest.approx(float(h[0]), abs=1e-12)
        assert sw[name]["normalized_precision_score"] == pytest.approx(float(h[1]), abs=1e-12)
        assert sw[name]["generalized_success_robustness_score"] == pytest.approx(float(h[2]), abs=1e-12)
    # OPE weighs sequences equally
    assert perf["overall"]["success_score"] == pytest.approx(float((a[0] + b[0]) / 2), abs=1e-12)
    assert perf["overall"]["generalized_success_robustness_score"] == pytest.approx(float((a[2] + b[2]) / 2))
    assert len(perf["overall"]["success_curve"]) == 21
    assert len(perf["overall"]["normalized_precision_curve"]) == 51
    assert perf["overall"]["speed_fps"] > 0 and sw["P01-P01_01-2"]["speed_fps"] > 0


def test_constant_tracker_mse_and_hoi_by_hand(tracked) -> None:
    ds, results = tracked
    # MSE: runs weighted by run length within a sequence, sequences by their length
    runs_a = [range(0, 8), range(7, -1, -1), range(3, 8)]
    ha = [hand_scores(_const(SYN_A, r), _gt_run(SYN_A, r)) for r in runs_a]
    ma = [sum(h[k] * len(r) for h, r in zip(ha, runs_a, strict=True)) / 21 for k in range(3)]
    mb = hand_scores(_const(SYN_B, range(2, -1, -1)), _gt_run(SYN_B, range(2, -1, -1)))
    perf = R.evaluate(ds, results, ["constant"], "mse")["constant"]
    assert perf["seq_wise"]["P01-P01_01-2"]["success_score"] == pytest.approx(float(ma[0]), abs=1e-12)
    for k, key in enumerate(R.SCORE_KEYS):
        assert perf["overall"][key] == pytest.approx(float((ma[k] * 8 + mb[k] * 5) / 13), abs=1e-12), key
    assert set(perf["overall"]) == set(R.SCORE_KEYS)
    # HOI: intervals pooled by length (4 and 3 frames)
    h1 = hand_scores(_const(SYN_A, range(1, 5)), _gt_run(SYN_A, range(1, 5)))
    h2 = hand_scores(_const(SYN_A, range(5, 8)), _gt_run(SYN_A, range(5, 8)))
    hoi = R.evaluate(ds, results, ["constant"], "hoi")["constant"]["overall"]
    for k, key in enumerate((*R.SCORE_KEYS, "recall_score")):
        assert hoi[key] == pytest.approx(float((h1[k] * 4 + h2[k] * 3) / 7), abs=1e-7 if k == 3 else 1e-12)


def test_report_json_table_and_plots(tracked, tmp_path: Path) -> None:
    ds, results = tracked
    perf = R.evaluate(ds, results, ["oracle", "constant"], "ope")
    R.write_json(perf, tmp_path / "performance-ope.json")
    back = json.loads((tmp_path / "performance-ope.json").read_text())
    assert list(back) == ["oracle", "constant"]
    assert list(back["oracle"]["seq_wise"]) == ["P01-P01_01-10", "P01-P01_01-2"]
    assert list(back["oracle"]["overall"]) == [
        "success_curve", "normalized_precision_curve", "generalized_success_robustness_curve",
        "success_score", "normalized_precision_score", "generalized_success_robustness_score", "speed_fps"]
    table = R.format_table(perf, "ope")
    assert f"{20 / 21:.10f}" in table and "P01-P01_01-10" in table
    files = R.plot_ope(perf, tmp_path / "plots", dpi=60)
    assert [f.name for f in files] == ["success_plots.png", "normalized_precision_plots.png",
                                       "generalized_success_robustness_plots.png"]
    assert all(f.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for f in files)


def test_missing_results_are_listed(tracked, tmp_path: Path) -> None:
    ds, results = tracked
    (tmp_path / "nobody").mkdir()  # tracked nothing yet (a folder that does not exist is told apart)
    with pytest.raises(InputError, match=r"2 OPE result file\(s\) of nobody are missing") as err:
        R.evaluate(ds, tmp_path, ["nobody"], "ope")
    # the CLI prints one line: each missing file is told apart from the next and from the advice
    assert re.search(r"missing or invalid: [^;]+\.txt[^;]*; [^;]+\.txt[^;]*; run the tracker first",
                     " ".join(str(err.value).split())), str(err.value)


def test_a_results_folder_one_level_too_high_is_named_not_sent_to_be_tracked_again(tracked) -> None:
    """--results given as the toolkit's result_dir (without TREK-150): the error points at the folder that
    holds the results instead of advising to track them all again."""
    ds, results = tracked
    with pytest.raises(InputError) as err:
        R.evaluate(ds, results.parent, ["oracle"], "mse")
    msg = str(err.value)
    assert msg.endswith(f"{results.parent / 'oracle'} does not exist, but {results / 'oracle'} does: use "
                        f"--results {results}"), msg
    assert "run the tracker first" not in msg and "\n" not in msg
    with pytest.raises(InputError, match=r"nobody does not exist: check --results .* and --tracker, or run the "
                                         r"tracker first$"):
        R.evaluate(ds, results, ["nobody"], "ope")


def test_resume_after_interruption(tmp_path: Path) -> None:
    ds = Trek150(build_synthetic(tmp_path / "trek"))
    runs = plan(ds, "mse")  # run lengths 3, 8, 8, 5
    out = tmp_path / "res" / "t"
    failing = FailingTracker(fail_at=2 + 7 + 3)  # dies on the 3rd update of the third run
    with pytest.raises(KeyboardInterrupt):
        execute(ds, runs, out, lambda: failing, progress=False)
    assert [run_done(out, r) for r in runs] == [True, True, False, False]
    assert not (out / runs[2].relpath).exists()
    assert not [p for p in (out / "mse").iterdir() if p.name.startswith(".")]  # no temp file left
    # a truncated file (e.g. copied from an interrupted official run) is not accepted as done
    truncated = (out / runs[1].relpath)
    truncated.write_text("".join(truncated.read_text().splitlines(keepends=True)[:4]))
    assert not run_done(out, runs[1])
    second = FailingTracker(fail_at=-1)
    summary = execute(ds, runs, out, lambda: second, progress=False)
    assert second.inits == 3 and [r.key for r in summary.skipped] == ["anchor-2"]
    assert all(run_done(out, r) for r in runs)
    assert np.loadtxt(truncated, delimiter=",").shape == (8, 4)


def test_parallel_workers_write_the_same_files(tracked, tmp_path: Path) -> None:
    ds, results = tracked
    runs = plan(ds, "mse")
    summary = execute(ds, runs, tmp_path / "constant", ConstantTracker, workers=2, progress=False)
    assert len(summary.done) == 4
    for r in runs:
        ours = (tmp_path / "constant" / r.relpath).read_text()
        assert ours == (results / "constant" / r.relpath).read_text()


class CountingOracle(OracleTracker):
    """The oracle (causal and deterministic, as ours is), counting the runs and frames it tracks."""

    def __init__(self) -> None:
        self.inits = self.updates = 0

    def init(self, image, box) -> None:
        self.inits += 1
        super().init(image, box)

    def update(self, image):
        self.updates += 1
        return super().update(image)


def _result_files(folder: Path) -> dict[str, bytes]:
    """Every result file under ``folder`` (times files hold wall times, which differ from run to run)."""
    return {str(f.relative_to(folder)): f.read_bytes() for f in folder.rglob("*.txt") if "times" not in f.parts}


def test_shared_runs_write_what_tracking_every_run_writes(tmp_path: Path) -> None:
    """With ``share`` each group is tracked once and its runs written from the carrier's rows: the same
    files as tracking every run, for 5 of the 9 runs' tracking; a run whose carrier finished before is
    written from the carrier's file without tracking anything; workers write the same."""
    ds = Trek150(build_shared_starts(tmp_path / "trek"))
    runs = plan(ds, "all")
    carriers = [g.carrier for g in group_runs(runs)]
    each, once = CountingOracle(), CountingOracle()
    execute(ds, runs, tmp_path / "every", lambda: each, progress=False)
    summary = execute(ds, runs, tmp_path / "shared", lambda: once, progress=False, share=True)
    expected = _result_files(tmp_path / "every")
    assert len(expected) == len(runs) == 9 and _result_files(tmp_path / "shared") == expected
    assert (each.inits, once.inits) == (9, 5) and once.updates == sum(r.length - 1 for r in carriers)
    assert set(summary.done) == set(carriers) and len(summary.shared) == 4
    assert summary.frames == sum(r.length for r in carriers) < sum(r.length for r in runs)
    assert all(run_done(tmp_path / "shared", r) for r in runs)  # OPE's times file too

    for run in runs:
        if run.key in ("anchor-0", "hoi-3-5-1"):
            (tmp_path / "shared" / run.relpath).unlink()
    again = CountingOracle()
    summary = execute(ds, runs, tmp_path / "shared", lambda: again, progress=False, share=True)
    assert again.inits == 0 and sorted(r.key for r in summary.shared) == ["anchor-0", "hoi-3-5-1"]
    assert len(summary.skipped) == 7 and _result_files(tmp_path / "shared") == expected

    execute(ds, runs, tmp_path / "workers", CountingOracle, workers=2, progress=False, share=True)
    assert _result_files(tmp_path / "workers") == expected


def test_finished_runs_of_other_protocols_answer_shared_runs(tmp_path: Path) -> None:
    """OPE first, then MSE and HOI with OPE's runs as ``others``: MSE's run from frame 0 and HOI 0-2 are
    written from OPE's file, not tracked; with ``overwrite`` every run asked for is tracked afresh."""
    ds = Trek150(build_shared_starts(tmp_path / "trek"))
    ope, rest = plan(ds, "ope"), plan(ds, ["mse", "hoi"])
    execute(ds, ope, tmp_path / "every", OracleTracker, progress=False)
    execute(ds, rest, tmp_path / "every", OracleTracker, progress=False)
    execute(ds, ope, tmp_path / "split", OracleTracker, progress=False, share=True)
    later = CountingOracle()
    summary = execute(ds, rest, tmp_path / "split", lambda: later, progress=False, share=True, others=ope)
    assert sorted(r.key for r in summary.shared) == ["anchor-0", "hoi-0-2-0", "hoi-3-5-1", "hoi-7-7-0"]
    assert later.inits == 4 and _result_files(tmp_path / "split") == _result_files(tmp_path / "every")
    fresh = CountingOracle()
    summary = execute(ds, rest, tmp_path / "split", lambda: fresh, progress=False, share=True, others=ope,
                      overwrite=True)
    assert fresh.inits == 5 and "anchor-0" in {r.key for r in summary.done}


def test_bad_tracker_output_is_reported(tmp_path: Path) -> None:
    class Bad(ConstantTracker):
        def update(self, image):
            return [1, 2, 3]

    ds = Trek150(build_synthetic(tmp_path / "trek"))
    with pytest.raises(InputError, match="update\\(\\) must return four numbers"):
        execute(ds, plan(ds, "ope")[:1], tmp_path / "r", Bad, progress=False)


def test_attribute_scores(tracked) -> None:
    ds, results = tracked
    (ds.root / "P01-P01_01-10" / "attributes.txt").write_text("SC\nFM\n")
    ds2 = Trek150(ds.root)
    perf = R.evaluate(ds2, results, ["constant"], "ope")["constant"]
    att = R.attribute_scores(ds2, perf)
    sw = perf["seq_wise"]
    assert list(att) == ["FM", "POC", "SC"]
    assert att["FM"]["sequences"] == 1 and att["SC"]["sequences"] == 2
    assert att["FM"]["success_score"] == sw["P01-P01_01-10"]["success_score"]
    assert att["POC"]["success_score"] == sw["P01-P01_01-2"]["success_score"]
    assert att["SC"]["success_score"] == pytest.approx(perf["overall"]["success_score"], abs=1e-15)
    assert "FM" in R.format_attribute_table(att, "t").splitlines()[3]


def test_mse_attribute_scores_weigh_sequences_by_length_as_mse_does(tracked) -> None:
    """MSE weighs its sequences by their length: an attribute every sequence carries scores the overall
    MSE number, one sequence's attribute that sequence's score."""
    ds, results = tracked
    (ds.root / "P01-P01_01-10" / "attributes.txt").write_text("SC\nFM\n")
    ds2 = Trek150(ds.root)
    perf = R.evaluate(ds2, results, ["constant"], "mse")["constant"]
    att = R.attribute_scores(ds2, perf)
    assert perf["seq_wise"]["P01-P01_01-10"]["success_score"] != perf["seq_wise"]["P01-P01_01-2"]["success_score"]
    for key in R.SCORE_KEYS:
        assert att["SC"][key] == perf["overall"][key], key
        assert att["FM"][key] == perf["seq_wise"]["P01-P01_01-10"][key]
        assert att["POC"][key] == perf["seq_wise"]["P01-P01_01-2"][key]


def test_frames_reach_trackers_in_order_as_the_toolkit_hands_them(tracked) -> None:
    """Frames are decoded by several threads but arrive in the run's order (backwards for a backward MSE
    run); a toolkit tracker gets ``PIL`` images, as the toolkit hands them, and our pipeline gets arrays
    converted by the decoding threads, outside its timed call."""
    from PIL import Image

    from trek_tracker.eval.runner import as_step_tracker, track_run
    from trek_tracker.init.api import InitConfig
    from trek_tracker.pipeline import Tracker, TrackerConfig

    ds, _ = tracked
    seq = ds["P01-P01_01-2"]
    backward = next(r for r in plan(ds, "mse") if r.sequence == seq.name and r.frames.step < 0)

    class Recording(ConstantTracker):
        def init(self, image, box) -> None:
            self.seen = [image]
            super().init(image, box)

        def update(self, image):
            self.seen.append(image)
            return super().update(image)

    toolkit = Recording()
    track_run(as_step_tracker(toolkit), seq, backward)
    assert all(isinstance(im, Image.Image) for im in toolkit.seen)
    expected = [np.asarray(seq.load_frame(i)) for i in backward.frames]
    assert len(toolkit.seen) == len(expected) > 2
    assert all(np.array_equal(np.asarray(a), b) for a, b in zip(toolkit.seen, expected, strict=True))

    class Ours(Tracker):
        def init(self, image, box=None, **kwargs):
            self.seen = [image]
            return super().init(image, box, **kwargs)

        def step(self, image, **kwargs):
            self.seen.append(image)
            return super().step(image, **kwargs)

    ours = Ours(TrackerConfig(model="test_deaot_tiny", random_weights=True, device="cpu", max_long_edge=64,
                              init=InitConfig(method="box")))
    track_run(as_step_tracker(ours), seq, backward)
    assert all(isinstance(im, np.ndarray) for im in ours.seen)
    assert all(np.array_equal(a, b) for a, b in zip(ours.seen, expected, strict=True))


def test_our_trackers_boxes_are_computed_behind_it_as_stepping_it_gives_them(tmp_path: Path, monkeypatch) -> None:
    """In a TREK-150 run our tracker hands each frame over with its boxes still to compute (speck removal
    labels the object's crop): they are computed in the writer thread, beside the next frame's network, and
    are those of stepping the tracker by hand, with every frame's time including its boxes'."""
    import threading

    import torch

    from trek_tracker.eval.runner import track_run
    from trek_tracker.init.api import InitConfig
    from trek_tracker.pipeline import PendingBoxes, Tracker, TrackerConfig

    ds = Trek150(build_synthetic(tmp_path / "trek"))
    run = plan(ds, "ope")[0]
    seq = ds[run.sequence]

    def tracker() -> Tracker:
        torch.manual_seed(0)  # the same random weights for both
        return Tracker(TrackerConfig(model="test_deaot_tiny", random_weights=True, device="cpu", max_long_edge=64,
                                     init=InitConfig(method="box")))

    by_hand = tracker()
    by_hand.init(seq.load_array(0), run.ground_truth(seq)[0])
    expected = [by_hand.step(seq.load_array(i)).box for i in run.frames[1:]]

    threads, compute = [], PendingBoxes._compute

    def recorded(self, policies):
        threads.append(threading.current_thread().name)
        return compute(self, policies)

    monkeypatch.setattr(PendingBoxes, "_compute", recorded)
    boxes, times = track_run(tracker(), seq, run)
    np.testing.assert_array_equal(boxes[1:], np.array(expected))
    assert len(threads) >= len(expected) and set(threads[-len(expected):]) == {"sink-writer"}
    assert np.all(times > 0)


def _tiny_tracker():
    import torch

    from trek_tracker.init.api import InitConfig
    from trek_tracker.pipeline import Tracker, TrackerConfig

    torch.manual_seed(0)
    return Tracker(TrackerConfig(model="test_deaot_tiny", random_weights=True, device="cpu", max_long_edge=64,
                                 init=InitConfig(method="box")))


def test_our_tracker_writes_the_ground_truth_start_box_and_goes_past_a_run_with_no_start_box(
        tmp_path: Path, caplog, monkeypatch) -> None:
    """Row 0 of a result file is the ground-truth box as the file gives it (as the toolkit writes it), also
    where it reaches outside the frame and our tracker starts from it clipped. A HOI interval starting on a
    frame where the target is absent (`dataset check` warns of it) gives our tracker no box to start from:
    that run is written as lost from its first row, with a warning, and the evaluation goes on."""
    import logging

    from tests.eval.helpers import ABSENT, write_sequence

    monkeypatch.setattr(logging.getLogger("trek_tracker"), "propagate", True)  # the CLI's handler may be set
    root = tmp_path / "root"
    (root / "TREK-150-annotations").mkdir(parents=True)
    (root / "TREK-150-annotations" / "sequences.txt").write_text("P01-P01_01-1\n")
    gt = [(-4, 10, 20, 8), (0, 10, 16, 8), ABSENT, (10, 10, 16, 8), (12, 10, 16, 8)]
    write_sequence(root, "P01-P01_01-1", gt, anchors=[(0, 0)], hoi=[(2, 4, 1), (3, 4, 0)])
    ds = Trek150(root)
    out = tmp_path / "res" / "ours"
    execute(ds, plan(ds, "ope"), out, _tiny_tracker, progress=False)
    assert (out / "ope" / "P01-P01_01-1.txt").read_text().splitlines()[0] == "-4.000,10.000,20.000,8.000"
    caplog.set_level("WARNING", logger="trek_tracker")
    runs = plan(ds, "hoi")
    execute(ds, runs, out, _tiny_tracker, progress=False)
    assert all(run_done(out, r) for r in runs)
    lost = (out / runs[0].relpath).read_text().splitlines()
    assert lost == ["-1.000,-1.000,-1.000,-1.000"] * 3
    assert f"{runs[0].label} starts on a frame without a target box" in caplog.text
    assert (out / runs[1].relpath).read_text().splitlines()[0] == "10.000,10.000,16.000,8.000"
