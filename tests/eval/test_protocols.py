"""Run plans: order, frames in tracking order, file names, shards."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.eval.helpers import build_shared_starts, build_synthetic
from trek_tracker.errors import InputError
from trek_tracker.eval.dataset import Trek150
from trek_tracker.eval.protocols import (
    Run,
    balanced_shard,
    expand_protocols,
    expected_cost,
    group_runs,
    plan,
    starts_with,
)


@pytest.fixture()
def ds(tmp_path: Path) -> Trek150:
    return Trek150(build_synthetic(tmp_path / "trek"))


def test_ope_plan(ds: Trek150) -> None:
    runs = plan(ds, "ope")
    assert [r.relpath for r in runs] == ["ope/P01-P01_01-10.txt", "ope/P01-P01_01-2.txt"]
    assert list(runs[1].frames) == list(range(8))
    assert runs[1].times_relpath == "ope/times/P01-P01_01-2_time.txt"


def test_mse_plan_forward_and_backward(ds: Trek150) -> None:
    runs = plan(ds, "mse")
    assert [(r.sequence, r.key) for r in runs] == [
        ("P01-P01_01-10", "anchor-2"), ("P01-P01_01-2", "anchor-0"), ("P01-P01_01-2", "anchor-7"),
        ("P01-P01_01-2", "anchor-3")]
    assert list(runs[0].frames) == [2, 1, 0]  # backward, tracking order
    assert list(runs[2].frames) == [7, 6, 5, 4, 3, 2, 1, 0]
    assert list(runs[3].frames) == [3, 4, 5, 6, 7]
    assert runs[3].relpath == "mse/P01-P01_01-2-anchor-3.txt" and runs[3].times_relpath is None
    gt = runs[0].ground_truth(ds["P01-P01_01-10"])
    assert gt[0].tolist() == [40, 21, 16, 8] and gt[-1].tolist() == [40, 20, 16, 8]


def test_hoi_plan_skips_sequences_without_intervals(ds: Trek150) -> None:
    runs = plan(ds, "hoi")
    assert [r.relpath for r in runs] == ["hoi/P01-P01_01-2-hoi-1-4-0.txt", "hoi/P01-P01_01-2-hoi-5-7-2.txt"]
    assert list(runs[0].frames) == [1, 2, 3, 4]


def test_mse_needs_anchors(ds: Trek150) -> None:
    (ds.root / "P01-P01_01-10" / "anchors.txt").unlink()
    with pytest.raises(InputError, match="P01-P01_01-10 has no anchors.txt"):
        plan(Trek150(ds.root), "mse")


def test_all_and_shards(ds: Trek150) -> None:
    assert expand_protocols("all") == ["ope", "mse", "hoi"]
    assert expand_protocols(["hoi", "ope"]) == ["ope", "hoi"]
    runs = plan(ds, "all")
    assert len(runs) == 2 + 4 + 2
    parts = [balanced_shard(runs, i, 3) for i in range(3)]
    assert sorted(r.relpath for p in parts for r in p) == sorted(r.relpath for r in runs)  # disjoint, complete
    assert parts == [balanced_shard(runs, i, 3) for i in range(3)]  # the same split on every machine
    loads = [sum(expected_cost(r) for r in p) for p in parts]
    assert max(loads) - min(loads) <= max(expected_cost(r) for r in runs)
    with pytest.raises(InputError):
        balanced_shard(runs, 3, 3)


def test_runs_that_are_the_first_frames_of_a_longer_run_are_grouped_with_it(tmp_path: Path) -> None:
    """OPE and MSE from frame 0 forward are one run (OPE carries it: it records times); a HOI interval on an
    anchor is the first frames of that anchor's run, in either direction for a single frame; runs from other
    frames, or the other way, are groups of their own. Shards keep each group whole."""
    runs = plan(Trek150(build_shared_starts(tmp_path / "trek")), "all")
    groups = {g.carrier.label: sorted(r.label for r in g.runs) for g in group_runs(runs)}
    seq = "P01-P01_01-2"
    assert groups == {
        f"ope {seq}": sorted([f"ope {seq}", f"mse {seq} anchor-0", f"hoi {seq} hoi-0-2-0"]),
        f"mse {seq} anchor-7": sorted([f"mse {seq} anchor-7", f"hoi {seq} hoi-7-7-0"]),
        f"mse {seq} anchor-3": sorted([f"mse {seq} anchor-3", f"hoi {seq} hoi-3-5-1"]),
        f"mse {seq} anchor-6": [f"mse {seq} anchor-6"],
        f"hoi {seq} hoi-1-4-2": [f"hoi {seq} hoi-1-4-2"],
    }
    assert all(g.runs[0] == g.carrier and all(starts_with(g.carrier, r) for r in g.runs) for g in group_runs(runs))
    backward, forward = (next(r for r in runs if r.key == k) for k in ("anchor-6", "anchor-3"))
    assert not starts_with(backward, Run("hoi", seq, "x", range(6, 8), "x.txt"))  # from 6, but the other way
    assert not starts_with(forward, Run("hoi", "other", "x", range(3, 5), "x.txt"))
    for n in (2, 3):
        parts = [balanced_shard(runs, i, n, share=True) for i in range(n)]
        assert sorted(r.label for p in parts for r in p) == sorted(r.label for r in runs)
        for group in group_runs(runs):
            assert sum(set(group.runs) <= set(p) for p in parts) == 1, group.carrier.label


def test_shards_balance_cost_not_run_count() -> None:
    """TREK-150's lengths run from 161 to 4,640 frames: shards of equal run counts can differ by hours."""
    lengths = [4640, 161, 161, 161, 161, 484, 484, 161, 2000, 161, 161, 161]
    runs = [Run("ope", f"s{i}", "", range(n), f"ope/s{i}.txt") for i, n in enumerate(lengths)]
    parts = [balanced_shard(runs, i, 2) for i in range(2)]
    loads = [sum(expected_cost(r) for r in p) for p in parts]
    assert max(loads) / min(loads) < 1.25
    every_other = [runs[i::2] for i in range(2)]
    naive = [sum(expected_cost(r) for r in p) for p in every_other]
    assert max(naive) / min(naive) > 2


def test_expected_cost_grows_with_memory():
    run = Run("ope", "s", "", range(1000), "ope/s.txt")
    bounded, unbounded = expected_cost(run, gap=5, cap=10), expected_cost(run, gap=5, cap=None)
    assert 1000 < bounded < unbounded
    assert expected_cost(Run("ope", "s", "", range(2000), "x"), 5, 10) < 2.1 * bounded  # linear once full


def test_runs_from_one_frame_the_other_way_are_not_grouped() -> None:
    back = Run("mse", "s", "anchor-6", range(6, -1, -1), "mse/s-anchor-6.txt")
    fwd = Run("hoi", "s", "hoi-6-7-0", range(6, 8), "hoi/s-hoi-6-7-0.txt")
    groups = group_runs([fwd, back])  # in the order of the plan, not by length
    assert [(g.carrier, g.runs) for g in groups] == [(fwd, (fwd,)), (back, (back,))]


def test_expected_cost_by_hand() -> None:
    # 10 frames, a long-term frame every 5: 1 memory frame on frames 0-4, 2 on 5-9, each a fifth of a frame
    run = Run("ope", "s", "", range(10), "ope/s.txt")
    assert expected_cost(run, gap=5, cap=10) == pytest.approx(10 + 0.2 * (5 * 1 + 5 * 2))
    assert expected_cost(run, gap=5, cap=1) == pytest.approx(10 + 0.2 * 10)
    assert expected_cost(run, gap=2, cap=None) == pytest.approx(10 + 0.2 * 2 * (1 + 2 + 3 + 4 + 5))


def test_one_shard_is_the_whole_plan(ds: Trek150) -> None:
    runs = plan(ds, "all")
    assert balanced_shard(runs, 0, 1) == runs == balanced_shard(runs, 0, 1, share=True)
    for index, count in ((0, 0), (-1, 2), (2, 2)):
        with pytest.raises(InputError, match=f"bad shard {index}/{count}"):
            balanced_shard(runs, index, count)


def test_a_run_that_records_times_is_answered_by_a_longer_one_that_records_them_too() -> None:
    long, short = (Run("ope", "s", "", range(n), f"ope/s{n}.txt") for n in (10, 4))
    assert [(g.carrier, g.runs) for g in group_runs([short, long])] == [(long, (long, short))]


def test_the_default_cost_is_that_of_the_default_pipelines_memory_schedule() -> None:
    from trek_tracker.inference.memory import MemoryConfig
    from trek_tracker.modeling.registry import model_config
    from trek_tracker.pipeline import DEFAULT_MODEL

    schedule = MemoryConfig().resolve(model_config(DEFAULT_MODEL))
    run = Run("ope", "s", "", range(200), "ope/s.txt")  # long enough to fill the memory
    assert expected_cost(run) == expected_cost(run, gap=schedule.gap, cap=schedule.cap)
    assert expected_cost(run) not in (expected_cost(run, schedule.gap + 1, schedule.cap),
                                      expected_cost(run, schedule.gap, schedule.cap + 1))


def test_runs_of_equal_cost_are_dealt_in_plan_order_from_the_first_shard() -> None:
    runs = [Run("ope", f"s{i}", "", range(50), f"ope/s{i}.txt") for i in range(4)]
    assert [balanced_shard(runs, i, 2) for i in range(2)] == [runs[0::2], runs[1::2]]


def test_of_runs_with_the_same_frames_the_first_in_the_plan_carries_the_group() -> None:
    a, b = (Run("hoi", "s", f"hoi-3-5-{t}", range(3, 6), f"hoi/s-hoi-3-5-{t}.txt") for t in (1, 2))
    assert [(g.carrier, g.runs) for g in group_runs([a, b])] == [(a, (a, b))]
    assert [(g.carrier, g.runs) for g in group_runs([b, a])] == [(b, (b, a))]


def test_the_costliest_runs_are_placed_first() -> None:
    # in plan order, 100 and 101 would take a shard each and 200 would join the first: 300 against 101
    a, b, c = (Run("ope", f"s{n}", "", range(n), f"ope/s{n}.txt") for n in (100, 101, 200))
    parts = [balanced_shard([a, b, c], i, 2, cost=lambda r: float(r.length)) for i in range(2)]
    assert parts == [[c], [a, b]]


def test_an_unknown_protocol_is_named_not_dropped() -> None:
    with pytest.raises(InputError, match="unknown protocol sot; choose from ope, mse, hoi or all"):
        expand_protocols(["ope", "sot"])


def test_a_run_that_records_times_is_never_answered_by_one_that_does_not() -> None:
    ope, mse = Run("ope", "s", "", range(4), "ope/s.txt"), Run("mse", "s", "anchor-0", range(10), "mse/s-anchor-0.txt")
    assert [(g.carrier, g.runs) for g in group_runs([ope, mse])] == [(ope, (ope,)), (mse, (mse,))]
