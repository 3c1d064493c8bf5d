"""TREK-150 protocols as run plans: which frames each run tracks, and where its result goes.

The plan is derived from the annotation files in the toolkit's order (sequences in the toolkit's order,
docs/trek150.md#sequence-order; anchors and intervals in file order), so resumed runs, file names and
submission keys match the official ones.

- OPE: one run per sequence over all frames.
- MSE: one run per anchor ``(a, d)``: forward ``a..N-1`` when ``d < 1``, else backward ``a..0``;
  results are stored in tracking order.
- HOI: one run per interval ``(s, e, type)`` of sequences with ``anchors_hoi.txt``: forward ``s..e``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

from trek_tracker.errors import InputError
from trek_tracker.eval.dataset import Sequence, Trek150

PROTOCOLS = ("ope", "mse", "hoi")


@dataclass(frozen=True)
class Run:
    """One tracking run: start at ``frames[0]`` with its ground-truth box, then update on the rest."""

    protocol: str
    sequence: str
    #: Key inside the sequence: ``""`` for OPE, ``anchor-<a>`` for MSE, ``hoi-<s>-<e>-<type>`` for HOI
    #: (the submission JSON keys).
    key: str
    #: Row indices of the sequence in tracking order.
    frames: range
    #: Result file relative to ``<results>/<tracker>/``.
    relpath: str

    @property
    def length(self) -> int:
        return len(self.frames)

    @property
    def records_times(self) -> bool:
        """Only OPE writes per-frame times in the official layout."""
        return self.protocol == "ope"

    @property
    def times_relpath(self) -> str | None:
        if not self.records_times:
            return None
        return f"ope/times/{self.sequence}_time.txt"

    @property
    def label(self) -> str:
        return f"{self.protocol} {self.sequence}" + (f" {self.key}" if self.key else "")

    def ground_truth(self, seq: Sequence) -> np.ndarray:
        """The run's ground truth in tracking order."""
        return seq.gt[np.asarray(self.frames, dtype=np.int64)]


def ope_runs(seq: Sequence) -> list[Run]:
    return [Run("ope", seq.name, "", range(len(seq)), f"ope/{seq.name}.txt")]


def mse_runs(seq: Sequence) -> list[Run]:
    if seq.anchors is None:
        raise InputError(f"sequence {seq.name} has no anchors.txt, which MSE needs; re-extract its "
                         "annotations (trek-track dataset prepare)")
    runs = []
    for a, d in seq.anchors:
        frames = range(a, len(seq)) if d < 1 else range(a, -1, -1)
        runs.append(Run("mse", seq.name, f"anchor-{a}", frames, f"mse/{seq.name}-anchor-{a}.txt"))
    return runs


def hoi_runs(seq: Sequence) -> list[Run]:
    if seq.hoi is None:
        return []  # as the toolkit's runner and exporter do: HOI covers only sequences with intervals
    return [Run("hoi", seq.name, f"hoi-{s}-{e}-{t}", range(s, e + 1), f"hoi/{seq.name}-hoi-{s}-{e}-{t}.txt")
            for s, e, t in seq.hoi]


_BUILDERS = {"ope": ope_runs, "mse": mse_runs, "hoi": hoi_runs}


def expand_protocols(protocol: str | Iterable[str]) -> list[str]:
    """``"all"`` or one name or several names -> list of protocol names in canonical order."""
    names = [protocol] if isinstance(protocol, str) else list(protocol)
    if "all" in names:
        return list(PROTOCOLS)
    bad = [p for p in names if p not in PROTOCOLS]
    if bad:
        raise InputError(f"unknown protocol {', '.join(bad)}; choose from {', '.join(PROTOCOLS)} or all")
    return [p for p in PROTOCOLS if p in names]


def plan(dataset: Trek150, protocol: str | Iterable[str]) -> list[Run]:
    """All runs of the given protocol(s), protocol by protocol, in the toolkit's order."""
    runs: list[Run] = []
    for p in expand_protocols(protocol):
        for seq in dataset:
            runs.extend(_BUILDERS[p](seq))
    return runs


# One long-term memory frame costs about a fifth of the rest of a frame's work (R50-DeAOT-L at 577x1041:
# ~40 GFLOP of long-term attention per memory frame, against ~200 GFLOP for the network).
MEMORY_FRAME_COST = 0.2


def expected_cost(run: Run, gap: int = 5, cap: int | None = 10) -> float:
    """Relative cost of tracking ``run``: one unit per frame plus its long-term memory's share, which grows
    with the run until the memory is full (quadratically in the length without a cap)."""
    memory = 1 + np.arange(run.length) // gap  # long-term frames attended to at each frame
    if cap is not None:
        memory = np.minimum(memory, cap)
    return float(run.length + MEMORY_FRAME_COST * memory.sum())


def balanced_shard(runs: list[Run], index: int, count: int, cost: Callable[[Run], float] = expected_cost
                   ) -> list[Run]:
    """Runs of shard ``index`` (0-based) of ``count``, balanced by expected cost: runs by decreasing cost,
    each to the least-loaded shard (ties to the lowest index). Deterministic, so every machine computes the
    same split from the same plan; the shard's runs keep the plan's order."""
    if count < 1 or not 0 <= index < count:
        raise InputError(f"bad shard {index}/{count}: use i/n with 0 <= i < n")
    costs = [cost(r) for r in runs]
    loads = [0.0] * count
    owner: dict[int, int] = {}
    for i in sorted(range(len(runs)), key=lambda i: (-costs[i], i)):
        k = min(range(count), key=lambda s: (loads[s], s))
        loads[k] += costs[i]
        owner[i] = k
    return [r for i, r in enumerate(runs) if owner[i] == index]
