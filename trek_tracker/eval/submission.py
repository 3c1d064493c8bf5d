"""EPIC-KITCHENS TREK-150 challenge submission: the official JSON, zipped, after a completeness check.

The JSON is byte-identical to what the toolkit's ``export_results_for_challenge`` writes for the same
result files (key order, ``json.dumps(indent=4, ensure_ascii=False)``, no trailing newline, values read
back from the 3-decimal files), except that a one-row run stays a list of one row. The zip holds that
file alone at its root (the toolkit's own zipping step is broken and never produces one).
"""

from __future__ import annotations

import io
import json
import logging
import zipfile
from pathlib import Path

import numpy as np

from trek_tracker.errors import InputError, UserError, listing
from trek_tracker.eval.dataset import Trek150
from trek_tracker.eval.protocols import hoi_runs, mse_runs, ope_runs
from trek_tracker.eval.report import missing_folder_advice
from trek_tracker.files import atomic_write, os_errors
from trek_tracker.results import read_result

log = logging.getLogger(__name__)

JSON_NAME = "challenge-submission.json"


def check_submission(dataset: Trek150, tracker_dir: str | Path) -> list[str]:
    """Everything missing or wrong for a submission: each OPE sequence, MSE anchor and HOI interval must
    have its result file with the right number of rows of 4 finite values."""
    tracker_dir = Path(tracker_dir)
    problems = []
    for seq in dataset:
        try:
            runs = ope_runs(seq) + mse_runs(seq) + hoi_runs(seq)
        except InputError as err:
            problems.append(str(err))
            continue
        for run in runs:
            try:
                boxes = read_result(tracker_dir / run.relpath, run.length)
            except InputError as err:
                problems.append(str(err))
                continue
            bad = np.flatnonzero(~np.all(np.isfinite(boxes), axis=1))
            if len(bad):
                problems.append(f"result file {tracker_dir / run.relpath} has non-finite values on row(s) "
                                f"{', '.join(str(i + 1) for i in bad[:5])}")
    return problems


def build_submission(dataset: Trek150, tracker_dir: str | Path, tracker_name: str,
                     sls: tuple[int, int, int] = (-1, -1, -1)) -> dict:
    """The submission dict in the official key order. Raises :class:`InputError` listing every problem
    when the results are incomplete."""
    tracker_dir = Path(tracker_dir)
    problems = check_submission(dataset, tracker_dir)
    if problems:
        advice = missing_folder_advice(tracker_dir) or ("run the missing protocols first (trek-track eval "
                                                        "--protocol all resumes)")
        raise InputError(f"the results in {tracker_dir} are not complete for a submission "
                         f"({len(problems)} problem(s)):{listing(problems, 20)} {advice}")
    results: dict = {"ope": {}, "mse": {}, "hoi": {}}
    for seq in dataset:
        (ope,) = ope_runs(seq)
        results["ope"][seq.name] = _rows(tracker_dir, ope)
        results["mse"][seq.name] = {run.key: _rows(tracker_dir, run) for run in mse_runs(seq)}
        if seq.hoi is not None:
            results["hoi"][seq.name] = {run.key: _rows(tracker_dir, run) for run in hoi_runs(seq)}
    return {
        "challenge": "object_tracking",
        "version": "0.1",
        "tracker_name": tracker_name,
        "sls_pt": int(sls[0]),
        "sls_tl": int(sls[1]),
        "sls_td": int(sls[2]),
        "results": results,
    }


def _rows(tracker_dir: Path, run) -> list[list[float]]:
    boxes = read_result(tracker_dir / run.relpath, run.length)
    if len(boxes) == 1:
        log.warning("%s has a single row; written as a list of one row (the toolkit would flatten it)",
                    run.relpath)
    return boxes.tolist()


def submission_json(submission: dict) -> str:
    """Serialise as the toolkit does: ``indent=4``, ``ensure_ascii=False``, no trailing newline."""
    return json.dumps(submission, indent=4, ensure_ascii=False)


def write_submission(dataset: Trek150, tracker_dir: str | Path, tracker_name: str, out: str | Path,
                     sls: tuple[int, int, int] = (-1, -1, -1)) -> Path:
    """Check, build and write ``out`` (a ``.zip`` holding only ``challenge-submission.json``, or the JSON
    itself when ``out`` ends in ``.json``). Returns ``out``. A folder for ``out``, or an ``out`` that cannot be
    written, is a :class:`UserError` naming ``--out``."""
    out = Path(out)
    if out.is_dir():  # refused before the results are read
        raise UserError(f"--out {out} is a folder; give the file to write, e.g. --out "
                        f"{out / 'challenge-submission.zip'} (or --out {out / JSON_NAME} for the bare JSON)")
    text = submission_json(build_submission(dataset, tracker_dir, tracker_name, sls))
    data = text.encode("utf-8")
    if out.suffix.lower() != ".json":
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:  # as make_archive would: ~7x smaller
            z.writestr(JSON_NAME, data)
        data = buf.getvalue()
    with os_errors(out, hint="choose another --out"), atomic_write(out, "wb") as f:
        f.write(data)
    return out
