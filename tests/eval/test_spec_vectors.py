"""The spec's aggregation test vectors (TV2 MSE, TV3 HOI, TV6 files) through result files on disk."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

from tests.eval.helpers import write_sequence
from trek_tracker.errors import InputError
from trek_tracker.eval import report as R
from trek_tracker.eval.dataset import Trek150
from trek_tracker.eval.submission import build_submission, submission_json, write_submission
from trek_tracker.files import atomic_write
from trek_tracker.results import read_result, write_boxes

A = (-1, -1, -1, -1)
GT_A = [(100, 100, 50, 50)] * 2 + [A] + [(100, 100, 50, 50)] * 3
GT_B = [(10, 10, 20, 20)] * 4
TV1_PRED = [(100, 100, 50, 50), (110, 100, 50, 50), (0, 0, 0, 0), (130, 100, 50, 50), (400, 400, 50, 50),
            (100, 100, 50, 50)]


@pytest.fixture()
def tv(tmp_path: Path) -> tuple[Trek150, Path]:
    root = tmp_path / "trek"
    write_sequence(root, "A", GT_A, size=(600, 600), anchors=[(0, 0), (5, 1)], hoi=[(3, 5, 0)])
    write_sequence(root, "B", GT_B, size=(64, 64), anchors=[(1, 0)], hoi=[(0, 3, 2)])
    d = tmp_path / "results" / "t"
    files = {
        "ope/A.txt": TV1_PRED,
        "ope/B.txt": [(0, 0, 0, 0), (10, 10, 20, 20), (20, 10, 20, 20), (10, 10, 20, 20)],
        "mse/A-anchor-0.txt": TV1_PRED,
        "mse/A-anchor-5.txt": [(1, 1, 1, 1), (400, 400, 50, 50), (130, 100, 50, 50), (0, 0, 0, 0),
                               (110, 100, 50, 50), (100, 100, 50, 50)],
        "mse/B-anchor-1.txt": [(0, 0, 0, 0), (10, 10, 20, 20), (20, 10, 20, 20)],
        "hoi/A-hoi-3-5-0.txt": [(7, 7, 7, 7), (400, 400, 50, 50), (100, 100, 50, 50)],
        "hoi/B-hoi-0-3-2.txt": [(7, 7, 7, 7), (10, 10, 20, 20), (20, 10, 20, 20), (10, 10, 20, 20)],
    }
    for rel, boxes in files.items():
        write_boxes(d / rel, np.array(boxes, float))
    with atomic_write(d / "ope/times/A_time.txt") as f:
        f.write("0.50000000\n0.02000000\n0.02500000\n0.00000000\n0\n0\n")
    return Trek150(root), d


def test_tv2_mse(tv) -> None:
    ds, d = tv
    perf = R.evaluate_mse(ds, d)
    assert R.evaluate_mse(ds, str(d)) == perf
    sa, sb = perf["seq_wise"]["A"], perf["seq_wise"]["B"]
    assert sa["success_score"] == pytest.approx(0.5619047619, abs=1e-9)
    assert sa["normalized_precision_score"] == pytest.approx(0.5215686275, abs=1e-9)
    assert sa["generalized_success_robustness_score"] == pytest.approx(0.3490196078, abs=1e-9)
    assert sb["success_score"] == pytest.approx(0.7460317460, abs=1e-9)
    assert sb["normalized_precision_score"] == pytest.approx(0.6732026144, abs=1e-9)
    assert sb["generalized_success_robustness_score"] == pytest.approx(0.8888888889, abs=1e-9)
    o = perf["overall"]
    assert o["success_score"] == pytest.approx(0.6355555556, abs=1e-9)
    assert o["normalized_precision_score"] == pytest.approx(0.5822222222, abs=1e-9)
    assert o["generalized_success_robustness_score"] == pytest.approx(0.5649673203, abs=1e-9)


def test_tv3_hoi(tv) -> None:
    ds, d = tv
    perf = R.evaluate_hoi(ds, d)
    assert R.evaluate_hoi(ds, str(d)) == perf
    assert perf["seq_wise"] == {}
    o = perf["overall"]
    assert o["success_score"] == pytest.approx(0.7278911565, abs=1e-9)
    assert o["normalized_precision_score"] == pytest.approx(0.7170868347, abs=1e-9)
    assert o["generalized_success_robustness_score"] == pytest.approx(0.6190476190, abs=1e-9)
    assert o["recall_score"] == pytest.approx(0.7142857143, abs=1e-7)


def test_tv1_tv5_ope(tv) -> None:
    ds, d = tv
    perf = R.evaluate_ope(ds, d)
    a = perf["seq_wise"]["A"]
    assert a["success_score"] == pytest.approx(0.5619047619, abs=1e-9)
    assert a["generalized_success_robustness_score"] == pytest.approx(0.4980392157, abs=1e-9)
    assert a["speed_fps"] == pytest.approx(30.6666666667, abs=1e-9)
    assert perf["seq_wise"]["B"]["speed_fps"] == -1  # no time file
    assert perf["overall"]["speed_fps"] == pytest.approx(30.6666666667, abs=1e-9)  # B excluded


def test_tv6_file_and_json_format(tmp_path: Path) -> None:
    run = np.array([[100, 100, 50, 50], [110.00049, 100, 50, 50]])
    write_boxes(tmp_path / "r.txt", run)
    assert (tmp_path / "r.txt").read_text() == "100.000,100.000,50.000,50.000\n110.000,100.000,50.000,50.000\n"
    text = json.dumps(read_result(tmp_path / "r.txt").tolist(), indent=4)
    assert text == "[\n    [\n        100.0,\n        100.0,\n        50.0,\n        50.0\n    ],\n    [\n" \
                   "        110.0,\n        100.0,\n        50.0,\n        50.0\n    ]\n]"
    # %.3f rounds the exact binary value
    write_boxes(tmp_path / "r.txt", np.array([[2.0005, -0.0001, 1, 1]]))
    assert (tmp_path / "r.txt").read_text() == "2.001,-0.000,1.000,1.000\n"


def test_submission_json_and_zip(tv, tmp_path: Path) -> None:
    ds, d = tv
    sub = build_submission(ds, d, "my-tracker", (0, 1, 2))
    assert list(sub) == ["challenge", "version", "tracker_name", "sls_pt", "sls_tl", "sls_td", "results"]
    assert (sub["challenge"], sub["version"]) == ("object_tracking", "0.1")
    assert (sub["sls_pt"], sub["sls_tl"], sub["sls_td"]) == (0, 1, 2)
    assert list(sub["results"]["mse"]["A"]) == ["anchor-0", "anchor-5"]  # anchors.txt order
    assert sub["results"]["mse"]["A"]["anchor-5"][0] == [1.0, 1.0, 1.0, 1.0]  # as written, tracking order
    assert sub["results"]["hoi"]["B"] == {"hoi-0-3-2": [[7.0, 7.0, 7.0, 7.0], [10.0, 10.0, 20.0, 20.0],
                                                       [20.0, 10.0, 20.0, 20.0], [10.0, 10.0, 20.0, 20.0]]}
    text = submission_json(sub)
    assert not text.endswith("\n") and text.startswith('{\n    "challenge": "object_tracking",')
    out = write_submission(ds, d, "my-tracker", tmp_path / "challenge-submission.zip")
    with zipfile.ZipFile(out) as z:
        assert z.namelist() == ["challenge-submission.json"]
        written = json.loads(z.read("challenge-submission.json"))
        assert (written["sls_pt"], written["sls_tl"], written["sls_td"]) == (-1, -1, -1)
        # compressed, as the toolkit's shutil.make_archive meant it (stored, the whole benchmark is ~7x larger)
        assert z.infolist()[0].compress_type == zipfile.ZIP_DEFLATED
    # paths as strings; an --out ending in .json is the bare JSON
    bare = write_submission(ds, str(d), "my-tracker", str(tmp_path / "s.json"))
    assert Path(bare).read_text(encoding="utf-8") == submission_json(build_submission(ds, str(d), "my-tracker"))


def test_submission_refuses_incomplete_results(tv, tmp_path: Path) -> None:
    ds, d = tv
    (d / "mse" / "A-anchor-5.txt").unlink()
    lines = (d / "hoi" / "B-hoi-0-3-2.txt").read_text().splitlines(keepends=True)
    (d / "hoi" / "B-hoi-0-3-2.txt").write_text("".join(lines[:2]))
    (d / "ope" / "B.txt").write_text((d / "ope" / "B.txt").read_text().replace("20.000,10.000", "nan,10.000"))
    with pytest.raises(InputError) as err:
        write_submission(ds, d, "t", tmp_path / "s.zip")
    msg = str(err.value)
    assert "3 problem(s)" in msg and "A-anchor-5.txt is missing" in msg
    assert "B-hoi-0-3-2.txt has 2 rows, expected 4" in msg
    assert "ope/B.txt has non-finite values on row(s) 3" in msg
    assert not (tmp_path / "s.zip").exists()


def test_submission_from_a_results_folder_one_level_too_high_names_the_right_one(tv, tmp_path: Path) -> None:
    ds, d = tv
    nested = tmp_path / "results" / "TREK-150" / "t"
    d.rename(nested.parent.mkdir(parents=True) or nested)
    with pytest.raises(InputError) as err:
        write_submission(ds, d, "t", tmp_path / "s.zip")
    msg = str(err.value)
    assert msg.endswith(f"{d} does not exist, but {nested} does: use --results {nested.parent}"), msg
    assert "run the missing protocols" not in msg and not (tmp_path / "s.zip").exists()
    assert write_submission(ds, nested, "t", tmp_path / "s.zip").is_file()


def test_hoi_recall_float32_like_the_toolkit(tv) -> None:
    """The toolkit averages recall hits in float32 and pools in float64 (numpy 1.x promotion, the only
    numpy on which its report runs); checked against it locally, encoded here."""
    ds, d = tv
    recall = R.evaluate_hoi(ds, d)["overall"]["recall_score"]
    expected = (float(np.float32(2) / np.float32(3)) * 3 + 0.75 * 4) / 7
    assert recall == expected and recall != (2 + 3) / 7


def test_one_row_runs_score_and_export_as_lists(tmp_path: Path, caplog) -> None:
    """A one-frame run (anchor on the last frame, forward) crashes the toolkit's report and is flattened by
    its exporter; here it scores SS 20/21, NPS 1, GSR 1 and stays a list of one row."""
    root = tmp_path / "trek"
    write_sequence(root, "C", GT_B, size=(64, 64), anchors=[(3, 0)])
    d = tmp_path / "res" / "t"
    write_boxes(d / "ope/C.txt", np.array(GT_B, float))
    write_boxes(d / "mse/C-anchor-3.txt", np.array([[9, 9, 9, 9]], float))
    ds = Trek150(root)
    o = R.evaluate_mse(ds, d)["overall"]
    assert o["success_score"] == pytest.approx(20 / 21) and o["generalized_success_robustness_score"] == 1.0
    sub = build_submission(ds, d, "t")
    assert sub["results"]["mse"]["C"] == {"anchor-3": [[9.0, 9.0, 9.0, 9.0]]}
    assert (sub["sls_pt"], sub["sls_tl"], sub["sls_td"]) == (-1, -1, -1)  # the toolkit's values by default
    warned = [r.getMessage() for r in caplog.records if "single row" in r.getMessage()]
    assert len(warned) == 1 and warned[0].startswith("mse/C-anchor-3.txt has a single row"), warned


def test_submission_json_keeps_non_ascii_names(tv) -> None:
    ds, d = tv
    text = submission_json(build_submission(ds, d, "trèk-ø"))
    assert '"tracker_name": "trèk-ø",' in text  # ensure_ascii=False, as the toolkit writes it


def test_ope_overall_is_the_plain_mean_over_sequences_and_slow_speeds_count(tmp_path: Path) -> None:
    """Three sequences (so a median is not the mean): the overall curves and scores are their unweighted
    means, whatever their lengths; a speed below 1 fps is a speed (only 0 means none)."""
    root = tmp_path / "trek"
    d = tmp_path / "results" / "t"
    write_sequence(root, "A", GT_A, size=(600, 600))
    write_boxes(d / "ope/A.txt", np.array(TV1_PRED, float))  # SS 59/105
    write_sequence(root, "B", GT_B, size=(64, 64))
    write_boxes(d / "ope/B.txt", np.array(GT_B, float))  # perfect: SS 20/21
    gt_c = [(10, 10, 20, 20)] * 2
    write_sequence(root, "C", gt_c, size=(64, 64))
    write_boxes(d / "ope/C.txt", np.array([gt_c[0], (40, 40, 20, 20)], float))  # IoU 1, 0: SS 10/21
    for name, n in (("A", 6), ("B", 4), ("C", 2)):
        with atomic_write(d / f"ope/times/{name}_time.txt") as f:
            f.write("2.00000000\n" * n if name != "C" else "0.50000000\n" * n)  # 0.5, 0.5 and 2 fps
    perf = R.evaluate_ope(Trek150(root), d)
    ss = [perf["seq_wise"][s]["success_score"] for s in "ABC"]
    assert ss == pytest.approx([59 / 105, 20 / 21, 10 / 21], abs=1e-12)
    o = perf["overall"]
    assert o["success_score"] == pytest.approx((59 / 105 + 20 / 21 + 10 / 21) / 3, abs=1e-12)
    assert o["success_curve"][0] == pytest.approx((0.8 + 1 + 0.5) / 3, abs=1e-12)  # IoU > 0: 4/5, 4/4, 1/2
    assert o["normalized_precision_score"] == pytest.approx(
        np.mean([perf["seq_wise"][s]["normalized_precision_score"] for s in "ABC"]), abs=1e-12)
    assert o["generalized_success_robustness_score"] == pytest.approx((127 / 255 + 1 + 0.5) / 3, abs=1e-12)
    assert [perf["seq_wise"][s]["speed_fps"] for s in "ABC"] == pytest.approx([0.5, 0.5, 2.0])
    assert o["speed_fps"] == pytest.approx(1.0)
    att = R.attribute_scores(Trek150(root), perf)  # every sequence carries SC: its scores are the overall ones
    assert att["SC"]["sequences"] == 3
    assert att["SC"]["success_score"] == pytest.approx(o["success_score"], abs=1e-12)
    assert R.evaluate_ope(Trek150(root), str(d)) == perf  # a folder given as a string
    for name in "ABC":
        (d / f"ope/times/{name}_time.txt").unlink()
    perf = R.evaluate_ope(Trek150(root), d)  # no speed anywhere: -1 everywhere
    assert perf["overall"]["speed_fps"] == -1 and {perf["seq_wise"][s]["speed_fps"] for s in "ABC"} == {-1}


def test_submission_lists_problems_of_every_sequence(tv, tmp_path: Path) -> None:
    """A sequence without anchors.txt is one problem; the sequences after it are still checked."""
    ds, d = tv
    (ds.root / "A" / "anchors.txt").unlink()
    (d / "ope" / "B.txt").unlink()
    with pytest.raises(InputError) as err:
        write_submission(Trek150(ds.root), d, "t", tmp_path / "s.zip")
    msg = str(err.value)
    assert "2 problem(s)" in msg and "A has no anchors.txt" in msg and "ope/B.txt is missing" in msg, msg


def test_hoi_report_names_every_missing_file_before_scoring(tv) -> None:
    ds, d = tv
    (d / "hoi" / "A-hoi-3-5-0.txt").unlink()
    (d / "hoi" / "B-hoi-0-3-2.txt").unlink()
    with pytest.raises(InputError, match=r"^2 HOI result file\(s\) of t are missing or invalid:") as err:
        R.evaluate_hoi(ds, d)
    assert "A-hoi-3-5-0.txt" in str(err.value) and "B-hoi-0-3-2.txt" in str(err.value)
