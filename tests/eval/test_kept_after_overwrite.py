"""What a stopped `eval --overwrite` says to do next: the same command would redo every run again."""

from __future__ import annotations

import pytest

from tests.eval.helpers import ConstantTracker, build_synthetic
from tests.eval.test_workers import GreedyTracker
from trek_tracker.errors import OutOfMemory
from trek_tracker.eval.dataset import Trek150
from trek_tracker.eval.protocols import plan
from trek_tracker.eval.runner import execute, run_done


def test_a_stopped_overwrite_says_how_to_keep_what_it_redid(tmp_path):
    ds = Trek150(build_synthetic(tmp_path / "trek"))
    runs = sorted(plan(ds, "ope"), key=lambda r: r.sequence == "P01-P01_01-10")  # the greedy one last
    with pytest.raises(OutOfMemory, match=r"; 1 of the 2 runs of this command is redone and kept: run it again "
                                          r"without --overwrite to keep them, or with it to redo every run;"):
        execute(ds, runs, tmp_path / "t", GreedyTracker, progress=False, overwrite=True)
    # as said: without --overwrite the redone run is kept and the rest tracked (with it, all would be tracked)
    summary = execute(ds, runs, tmp_path / "t", ConstantTracker, progress=False)
    assert [r.sequence for r in summary.skipped] == [runs[0].sequence]
    assert [r.sequence for r in summary.done] == [runs[1].sequence]
    assert all(run_done(tmp_path / "t", r) for r in runs)
