"""TREK-150 evaluation: dataset, protocols, runner, metrics, reports, submission.

Scores are computed exactly as the official TREK-150 toolkit computes them (see ``metrics`` and
``report``); result files and the challenge JSON are byte-compatible with it.
"""

from __future__ import annotations

from trek_tracker.eval.adapter import ToolkitTracker
from trek_tracker.eval.dataset import Sequence, Trek150
from trek_tracker.eval.metrics import score_run
from trek_tracker.eval.protocols import Run, plan
from trek_tracker.eval.report import evaluate
from trek_tracker.eval.runner import execute
from trek_tracker.eval.submission import write_submission

__all__ = ["Run", "Sequence", "ToolkitTracker", "Trek150", "evaluate", "execute", "plan", "score_run",
           "write_submission"]
