"""TREK-150 protocols as run plans: which frames each run tracks, and where its result goes.

The plan is derived from the annotation files in the toolkit's order (sequences in the toolkit's order,
docs/trek150.md#sequence-order; anchors and intervals in file order), so resumed runs, file names and
submission keys match the official ones.

- OPE: one run per sequence over all frames.
- MSE: one run per anchor ``(a, d)``: forward ``a..N-1`` when ``d < 1``, else backward ``a..0``;
  results are stored in tracking order.
- HOI: one run per interval ``(s, e, type)`` of sequences with ``anchors_hoi.txt``: forward ``s..e``.

Runs that start on one frame of one sequence and go one way are prefixes of the longest of them (OPE and
MSE's forward run from frame 0 are one run; a HOI interval starting on an anchor is the first frames of that
anchor's forward run). :func:`group_runs` finds them, so that a causal, deterministic tracker tracks each
group once (docs/trek150.md#shared-runs).
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


def starts_with(run: Run, prefix: Run) -> bool:
    """Whether ``prefix`` tracks the first frames of ``run``, in the same order, from the same box (the
    ground truth of the same first frame of the same sequence)."""
    return (run.sequence == prefix.sequence and prefix.length <= run.length
            and prefix.frames == run.frames[:prefix.length])


@dataclass(frozen=True)
class RunGroup:
    """Runs answered by tracking one of them, the ``carrier``: every run of ``runs`` (the carrier first)
    is its first frames. A run that records times is only ever answered by a carrier that records them."""

    carrier: Run
    runs: tuple[Run, ...]


def group_runs(runs: list[Run]) -> list[RunGroup]:
    """``runs`` in groups, each the prefixes of its longest run (ties: the one that records times, then the
    first in ``runs``), in the order of their carriers in ``runs``; a run no other run starts with is a
    group of its own."""
    order = sorted(range(len(runs)), key=lambda i: (-runs[i].length, not runs[i].records_times, i))
    members: dict[int, list[Run]] = {}
    by_start: dict[tuple[str, int], list[int]] = {}  # carriers by their first frame
    for i in order:
        run = runs[i]
        carriers = by_start.setdefault((run.sequence, run.frames[0]), [])
        c = next((c for c in carriers if starts_with(runs[c], run) and (runs[c].records_times
                                                                         or not run.records_times)), None)
        if c is None:
            carriers.append(i)
            members[i] = [run]
        else:
            members[c].append(run)
    return [RunGroup(runs[i], tuple(members[i])) for i in sorted(members)]


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


def balanced_shard(runs: list[Run], index: int, count: int, cost: Callable[[Run], float] = expected_cost,
                   share: bool = False) -> list[Run]:
    """Runs of shard ``index`` (0-based) of ``count``, balanced by expected cost: runs by decreasing cost,
    each to the least-loaded shard (ties to the lowest index). Deterministic, so every machine computes the
    same split from the same plan; the shard's runs keep the plan's order. ``share``: each
    :func:`group_runs` group goes to one shard whole, at its carrier's cost (the one run tracked)."""
    if count < 1 or not 0 <= index < count:
        raise InputError(f"bad shard {index}/{count}: use i/n with 0 <= i < n")
    groups = group_runs(runs) if share else [RunGroup(r, (r,)) for r in runs]
    costs = [cost(g.carrier) for g in groups]
    loads = [0.0] * count
    mine: set[Run] = set()
    for i in sorted(range(len(groups)), key=lambda i: (-costs[i], i)):
        k = min(range(count), key=lambda s: (loads[s], s))
        loads[k] += costs[i]
        if k == index:
            mine.update(groups[i].runs)
    return [r for r in runs if r in mine]
