"""The runner at scale: results that are not finite are not finished, one configuration per tracker name,
launcher shards, a progress bar fed by every worker, one line for a worker's user error, no orphans."""

from __future__ import annotations

import atexit
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.damaged import allocation_failure, assert_one_line_error
from tests.eval.helpers import ConstantTracker, OracleTracker, build_synthetic, write_sequence
from trek_tracker.errors import OutOfMemory, UserError
from trek_tracker.eval.dataset import Trek150
from trek_tracker.eval.protocols import plan
from trek_tracker.eval.runner import claim_identity, execute, launcher_shard, run_done


class SlowTracker(ConstantTracker):
    """ConstantTracker that takes 30 ms per update (so that progress arrives while runs are going); with
    ``TREK_TEST_MARKERS`` set it also leaves a file there when a process starts tracking."""

    delay = 0.03

    def init(self, image, box) -> None:
        if os.environ.get("TREK_TEST_MARKERS"):
            (Path(os.environ["TREK_TEST_MARKERS"]) / str(os.getpid())).touch()
        super().init(image, box)

    def update(self, image):
        time.sleep(self.delay)
        return super().update(image)


class SlowerTracker(SlowTracker):
    """100 ms per update: a run of 5+ frames outlasts the workers' 0.2 s progress interval whatever the machine."""

    delay = 0.1


class VerySlowTracker(SlowTracker):
    delay = 0.5


class BrokenTracker(ConstantTracker):
    """A tracker whose construction is a user error (as a missing checkpoint would be)."""

    def __init__(self):
        raise UserError("checkpoint /nope.pth not found (simulated)")


class GreedyTracker(ConstantTracker):
    """Runs out of GPU memory on the second frame of sequence P01-P01_01-10 (the one starting at box 40,20)."""

    def init(self, image, box) -> None:
        super().init(image, box)
        self.greedy = tuple(self.box[:2]) == (40, 20)

    def update(self, image):
        if self.greedy:
            raise allocation_failure("gpu")
        return super().update(image)


@pytest.fixture()
def ds(tmp_path: Path) -> Trek150:
    return Trek150(build_synthetic(tmp_path / "trek"))


def test_a_result_with_nan_rows_is_not_finished(ds, tmp_path):
    runs = plan(ds, "ope")
    out = tmp_path / "res" / "t"
    execute(ds, runs, out, ConstantTracker, progress=False)
    assert run_done(out, runs[0])
    lines = (out / runs[0].relpath).read_text().splitlines()
    lines[2] = "nan,nan,nan,nan"
    (out / runs[0].relpath).write_text("\n".join(lines) + "\n")
    assert not run_done(out, runs[0])
    summary = execute(ds, runs, out, ConstantTracker, progress=False)
    assert [r.sequence for r in summary.done] == [runs[0].sequence] and run_done(out, runs[0])


@pytest.mark.parametrize("which", ["boxes", "times"])
def test_a_result_cut_short_in_its_last_line_is_not_finished(ds, tmp_path, which):
    """A writer that is not atomic (the toolkit's np.savetxt), killed mid-line, leaves a file whose last row
    may still parse with the right count (``12.345`` cut to ``12``): not a finished run, so it is redone."""
    runs = plan(ds, "ope")
    out = tmp_path / "res" / "t"
    execute(ds, runs, out, OracleTracker, progress=False)
    path = out / (runs[0].relpath if which == "boxes" else runs[0].times_relpath)
    whole = path.read_bytes()
    cut = whole[:whole.rstrip(b"\n").rindex(b".")]  # the last value loses its decimals and the newline
    path.write_bytes(cut)
    assert len(cut.splitlines()) == runs[0].length and not run_done(out, runs[0])
    summary = execute(ds, runs, out, OracleTracker, progress=False)
    assert [r.sequence for r in summary.done] == [runs[0].sequence] and run_done(out, runs[0])
    assert path.read_bytes().count(b"\n") == runs[0].length and path.read_bytes().endswith(b"\n")


def test_one_configuration_per_tracker_name(ds, tmp_path):
    runs = plan(ds, "ope")
    out = tmp_path / "res" / "t"
    execute(ds, runs, out, ConstantTracker, progress=False, identity={"settings": {"memory": {"cap": 10}}})
    with pytest.raises(UserError, match=r"another configuration.*differs in: settings.*--overwrite"):
        execute(ds, runs, out, ConstantTracker, progress=False, identity={"settings": {"memory": {"cap": 6}}})
    # the same configuration resumes; --overwrite redoes every run under the new one
    assert len(execute(ds, runs, out, ConstantTracker, progress=False,
                       identity={"settings": {"memory": {"cap": 10}}}).skipped) == len(runs)
    summary = execute(ds, runs, out, ConstantTracker, progress=False, overwrite=True,
                      identity={"settings": {"memory": {"cap": 6}}})
    assert len(summary.done) == len(runs)


@pytest.mark.parametrize("workers", [1, 2])
def test_a_configuration_whose_tracker_never_loaded_is_not_recorded(ds, tmp_path, workers):
    """A command that fails before its tracker tracks anything (a misspelt class, a missing checkpoint)
    leaves no record under the tracker's name, so the corrected command is not refused as another
    configuration; a record that results stand on stays."""
    out = tmp_path / "res" / "t"
    with pytest.raises(UserError, match="simulated"):
        execute(ds, plan(ds, "ope"), out, BrokenTracker, workers=workers, progress=False,
                identity={"tracker_class": "x:Broken"})
    assert not (out / "trek-track-tracker.json").exists()
    execute(ds, plan(ds, "ope"), out, ConstantTracker, progress=False, identity={"tracker_class": "x:Constant"})
    with pytest.raises(UserError, match="simulated"):  # the same configuration, failing now: its record stays
        execute(ds, plan(ds, "mse"), out, BrokenTracker, workers=workers, progress=False,
                identity={"tracker_class": "x:Constant"})
    assert json.loads((out / "trek-track-tracker.json").read_text()) == {"tracker_class": "x:Constant"}


def test_a_process_whose_tracker_fails_to_load_leaves_the_record_the_others_track_under(ds, tmp_path):
    """Under a launcher every process of one configuration shares its record. One whose tracker fails to load
    (its GPU has no room) while another has started tracking must not remove the record: the other's results
    would stand with none, and a later command of another configuration would take them as its own."""
    out, identity = tmp_path / "res" / "t", {"tracker_class": "x:Slower"}
    started, other = threading.Event(), {}

    class Started(SlowerTracker):
        def init(self, image, box) -> None:
            started.set()
            super().init(image, box)

    def rank0() -> None:
        other["summary"] = execute(ds, plan(ds, "ope"), out, Started, progress=False, identity=identity)

    def failing_rank1():  # loads for as long as rank 0 takes to start tracking, then fails
        thread.start()
        assert started.wait(120)
        raise UserError("the GPU ran out of memory while loading the tracker (simulated)")

    thread = threading.Thread(target=rank0)
    with pytest.raises(UserError, match="simulated"):
        execute(ds, plan(ds, "ope"), out, failing_rank1, progress=False, identity=identity)
    thread.join(120)
    assert len(other["summary"].done) == 2
    assert json.loads((out / "trek-track-tracker.json").read_text()) == identity
    with pytest.raises(UserError, match="another configuration"):
        execute(ds, plan(ds, "ope"), out, ConstantTracker, progress=False, identity={"tracker_class": "x:Other"})


def _claim(barrier, folders: list[str], identity: dict, answers) -> None:
    """One process's claims, each on a fresh folder at the same moment as the other processes'."""
    outcomes = []
    for folder in folders:
        barrier.wait()
        try:
            claim_identity(Path(folder), identity)
            outcomes.append("claimed")
        except UserError as err:
            outcomes.append(str(err))
    answers.put((json.dumps(identity), outcomes))


def _claim_at_once(tmp_path: Path, identities: list[dict], trials: int) -> tuple[list[Path], dict[str, list[str]]]:
    import multiprocessing

    ctx = multiprocessing.get_context("fork")  # the runner's module is loaded here already: each starts at once
    folders = [tmp_path / f"t{i}" for i in range(trials)]
    barrier, answers = ctx.Barrier(len(identities)), ctx.Queue()
    procs = [ctx.Process(target=_claim, args=(barrier, [str(f) for f in folders], identity, answers))
             for identity in identities]
    for proc in procs:
        proc.start()
    outcomes = dict(answers.get(timeout=60) for _ in procs)
    for proc in procs:
        proc.join(10)
    return folders, outcomes


@pytest.mark.skipif(sys.platform != "linux", reason="starts the claiming processes by fork")
def test_two_configurations_claiming_one_new_tracker_name_at_once_one_wins(tmp_path):
    """Two evaluations of different configurations started at the same moment on a fresh tracker name: exactly
    one may record its configuration and track; the other is refused in one line, whoever is first."""
    a, b = {"settings": {"memory": {"cap": 10}}}, {"settings": {"memory": {"cap": 6}}}
    folders, outcomes = _claim_at_once(tmp_path, [a, b], trials=100)
    for i, folder in enumerate(folders):
        recorded = json.loads((folder / "trek-track-tracker.json").read_text())
        for identity in (a, b):
            said = outcomes[json.dumps(identity)][i]
            if identity == recorded:
                assert said == "claimed"
            else:
                assert "another configuration" in said and "\n" not in said
    assert [p.name for p in tmp_path.glob("t*/.*")] == []  # no temporary files left behind


@pytest.mark.skipif(sys.platform != "linux", reason="starts the claiming processes by fork")
def test_processes_of_one_configuration_claiming_at_once_all_go_on(tmp_path):
    """The ranks of one evaluation all claim the same record, at once, and all track."""
    identity = {"settings": {"memory": {"cap": 10}}}
    folders, outcomes = _claim_at_once(tmp_path, [identity] * 3, trials=30)
    assert list(outcomes.values()) == [["claimed"] * 30]
    assert all(json.loads((f / "trek-track-tracker.json").read_text()) == identity for f in folders)


def test_overwrite_with_another_configuration_leaves_none_of_the_old_ones_results(ds, tmp_path):
    """`--overwrite --protocol ope` under a new configuration must not leave the old configuration's MSE and
    HOI results to be read (and scored, and reused for shorter runs) as the new one's; a result of the same
    configuration is kept."""
    out = tmp_path / "res" / "t"
    old, new = {"settings": {"memory": {"cap": 10}}}, {"settings": {"memory": {"cap": 6}}}
    execute(ds, plan(ds, "all"), out, ConstantTracker, progress=False, identity=old)
    stray = out / "notes.txt"
    stray.write_text("mine")
    execute(ds, plan(ds, "ope"), out, OracleTracker, progress=False, overwrite=True, identity=new)
    assert all(run_done(out, r) for r in plan(ds, "ope"))
    assert not any(run_done(out, r) for r in [*plan(ds, "mse"), *plan(ds, "hoi")])
    assert stray.read_text() == "mine"  # only the runner's own files are removed
    summary = execute(ds, plan(ds, "all"), out, OracleTracker, progress=False, identity=new, share=True)
    assert len(summary.skipped) == len(plan(ds, "ope"))  # the same configuration's results are kept
    fresh = tmp_path / "res" / "fresh"
    execute(ds, plan(ds, "all"), fresh, OracleTracker, progress=False, identity=new, share=True)
    runs = plan(ds, "all")
    assert [(out / r.relpath).read_text() for r in runs] == [(fresh / r.relpath).read_text() for r in runs]


@pytest.mark.parametrize("damage", ["", "[1, 2]"])  # a writer without hard links killed mid-write; hand-edited
def test_a_damaged_configuration_record_is_one_line_and_overwrite_replaces_it(ds, tmp_path, damage):
    out = tmp_path / "t"
    old, new = {"settings": {"memory": {"cap": 10}}}, {"settings": {"memory": {"cap": 6}}}
    runs = plan(ds, "ope")
    execute(ds, runs, out, ConstantTracker, progress=False, identity=old)
    before = [(out / r.relpath).read_text() for r in runs]
    (out / "trek-track-tracker.json").write_text(damage)
    for identity in (old, new):
        with pytest.raises(UserError) as err:
            execute(ds, runs, out, OracleTracker, progress=False, identity=identity)
        said = str(err.value)
        assert str(out / "trek-track-tracker.json") in said and "\n" not in said
        assert said.endswith("use another --tracker name, or --overwrite to redo every run with this configuration")
    assert [(out / r.relpath).read_text() for r in runs] == before  # refused before anything was touched
    execute(ds, runs, out, OracleTracker, progress=False, overwrite=True, identity=new)
    assert json.loads((out / "trek-track-tracker.json").read_text()) == new
    fresh = tmp_path / "fresh"
    execute(ds, runs, fresh, OracleTracker, progress=False, identity=new)
    assert [(out / r.relpath).read_text() for r in runs] == [(fresh / r.relpath).read_text() for r in runs]


def _overwrite(barrier, folder: str, identity: dict, answers) -> None:
    """One rank of a launch given ``--overwrite``: check the tracker name at the same moment as the others."""
    from trek_tracker.eval.runner import check_identity

    barrier.wait()
    try:
        check_identity(Path(folder), identity, overwrite=True)
        answers.put("ok")
    except Exception as err:  # noqa: BLE001 - the test reports what a rank met
        answers.put(f"{type(err).__name__}: {err}")


@pytest.mark.skipif(sys.platform != "linux", reason="starts the ranks by fork")
def test_ranks_given_overwrite_at_once_all_replace_the_old_configuration(tmp_path):
    """Under torchrun every rank runs the same `eval --overwrite` with a new configuration: all remove the old
    configuration's results at the same moment, and none fails on a file (or the record) another rank has
    removed first."""
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    old, new = {"settings": {"memory": {"cap": 10}}}, {"settings": {"memory": {"cap": 6}}}
    for trial in range(8):
        folder = tmp_path / f"t{trial}"
        (folder / "ope").mkdir(parents=True)
        for i in range(300):
            (folder / "ope" / f"seq{i}.txt").write_text("1,2,3,4\n")
        claim_identity(folder, old)
        barrier, answers = ctx.Barrier(3), ctx.Queue()
        ranks = [ctx.Process(target=_overwrite, args=(barrier, str(folder), new, answers)) for _ in range(3)]
        for rank in ranks:
            rank.start()
        said = [answers.get(timeout=60) for _ in ranks]
        for rank in ranks:
            rank.join(10)
        assert said == ["ok"] * 3
        assert list((folder / "ope").iterdir()) == [] and not (folder / "trek-track-tracker.json").exists()


@pytest.mark.parametrize("env,expected", [
    ({}, None),
    ({"RANK": "2", "WORLD_SIZE": "4", "LOCAL_RANK": "0"}, (2, 4)),
    ({"SLURM_PROCID": "1", "SLURM_STEP_NUM_TASKS": "3", "SLURM_NTASKS": "3"}, (1, 3)),  # srun -n 3
    ({"SLURM_PROCID": "0", "SLURM_NTASKS": "4"}, None),  # the batch script of sbatch -n 4: one process
    ({"SLURM_NTASKS": "4"}, None),  # an salloc -n 4 shell
    ({"SLURM_ARRAY_TASK_ID": "5", "SLURM_ARRAY_TASK_MIN": "4", "SLURM_ARRAY_TASK_COUNT": "8"}, (1, 8)),
    ({"SLURM_ARRAY_TASK_ID": "6", "SLURM_ARRAY_TASK_MIN": "0", "SLURM_ARRAY_TASK_MAX": "8",
      "SLURM_ARRAY_TASK_STEP": "2", "SLURM_ARRAY_TASK_COUNT": "5"}, (3, 5)),  # --array=0-9:2
    ({"RANK": "0", "WORLD_SIZE": "1"}, None),
])
def test_launcher_shard(env, expected):
    assert launcher_shard(env) == expected


def test_processes_in_each_task_of_a_slurm_array_share_the_plan_out_between_them():
    """`sbatch --array=0-2` whose tasks each run torchrun (or srun) with 2 processes: 6 shards, not the same 2
    in every task."""
    for rank, world in (("RANK", "WORLD_SIZE"), ("SLURM_PROCID", "SLURM_STEP_NUM_TASKS")):
        shards = [launcher_shard({"SLURM_ARRAY_TASK_ID": str(t), "SLURM_ARRAY_TASK_COUNT": "3", rank: str(r),
                                  world: "2"}) for t in range(3) for r in range(2)]
        assert sorted(shards) == [(i, 6) for i in range(6)]


def _torchrun(node: int, nodes: int, rank: int, local: int, rendezvous: bool) -> dict[str, str]:
    """What ``srun -N<nodes> --ntasks-per-node=1 torchrun --nproc-per-node=<local> ...`` sets in local process
    ``rank`` of node ``node``: ``--standalone`` makes each node's torchrun a world of its own (torchrun's
    variables as it sets them, checked against torch's torchrun), a rendezvous one world of every node's
    processes (the nodes' group ranks in Slurm's order here; torchrun may order them otherwise)."""
    env = {"SLURM_PROCID": str(node), "SLURM_STEP_NUM_TASKS": str(nodes), "SLURM_NTASKS": str(nodes),
           "SLURM_LOCALID": "0", "LOCAL_RANK": str(rank), "LOCAL_WORLD_SIZE": str(local)}
    if rendezvous:
        return {**env, "RANK": str(node * local + rank), "WORLD_SIZE": str(nodes * local),
                "GROUP_RANK": str(node), "GROUP_WORLD_SIZE": str(nodes)}
    return {**env, "RANK": str(rank), "WORLD_SIZE": str(local), "GROUP_RANK": "0", "GROUP_WORLD_SIZE": "1"}


@pytest.mark.parametrize("rendezvous", [False, True])
def test_torchrun_in_each_task_of_an_srun_step_gives_every_process_its_own_shard(rendezvous):
    """`srun -N2 --ntasks-per-node=1 torchrun --standalone --nproc-per-node=4`: each node's torchrun numbers its
    processes 0..3 of 4, and without the task's place both nodes would run the same four shards (and none of
    the other four). With one rendezvous over both nodes torchrun's ranks already span them."""
    shards = [launcher_shard(_torchrun(node, 2, rank, 4, rendezvous)) for node in range(2) for rank in range(4)]
    assert sorted(shards) == [(i, 8) for i in range(8)]
    # standalone: the node's place first (node 1's local rank 3 is shard 1 * 4 + 3); a rendezvous: torchrun's rank
    assert launcher_shard(_torchrun(1, 2, 3, 4, rendezvous)) == (1 * 4 + 3, 8)
    assert launcher_shard({**_torchrun(1, 2, 3, 4, rendezvous=True), "RANK": "2", "GROUP_RANK": "0"}) == (2, 8)
    in_array = [launcher_shard({**_torchrun(node, 2, rank, 2, rendezvous), "SLURM_ARRAY_TASK_ID": str(t),
                                "SLURM_ARRAY_TASK_COUNT": "3"})
                for t in range(3) for node in range(2) for rank in range(2)]
    assert sorted(in_array) == [(i, 12) for i in range(12)]  # and each task of an array splits its share


def test_torchrun_of_one_process_in_each_task_of_an_srun_step_takes_the_task_s_shard():
    assert [launcher_shard(_torchrun(node, 3, 0, 1, rendezvous=False)) for node in range(3)] == [(0, 3), (1, 3), (2, 3)]


@pytest.mark.parametrize("env,name", [
    ({"WORLD_SIZE": "2"}, "RANK is not set"),
    ({"WORLD_SIZE": "two", "RANK": "0"}, "WORLD_SIZE is 'two', not a whole number"),
    ({"SLURM_STEP_NUM_TASKS": "3"}, "SLURM_PROCID is not set"),
    ({"SLURM_ARRAY_TASK_COUNT": "4"}, "SLURM_ARRAY_TASK_ID is not set"),
])
def test_a_launcher_variable_missing_or_malformed_is_one_line(env, name):
    with pytest.raises(UserError, match=f"^environment variable {name}, .*--shard I/N$"):
        launcher_shard(env)


def test_a_rank_outside_the_world_is_one_line():
    with pytest.raises(UserError, match=r"^RANK=4 is not one of the 4 processes of WORLD_SIZE"):
        launcher_shard({"RANK": "4", "WORLD_SIZE": "4"})


def test_every_task_of_a_stepped_slurm_array_has_its_own_shard_and_an_uneven_one_is_refused():
    base = {"SLURM_ARRAY_TASK_MIN": "1", "SLURM_ARRAY_TASK_MAX": "13", "SLURM_ARRAY_TASK_STEP": "3",
            "SLURM_ARRAY_TASK_COUNT": "5"}  # --array=1-13:3
    shards = [launcher_shard({**base, "SLURM_ARRAY_TASK_ID": str(t)}) for t in range(1, 14, 3)]
    assert shards == [(i, 5) for i in range(5)]
    uneven = {"SLURM_ARRAY_TASK_MIN": "1", "SLURM_ARRAY_TASK_MAX": "7", "SLURM_ARRAY_TASK_COUNT": "3",
              "SLURM_ARRAY_TASK_ID": "3"}  # --array=1,3,7
    with pytest.raises(UserError, match="not an evenly spaced range.*--array=0-N.*--shard I/N"):
        launcher_shard(uneven)


def test_the_progress_bar_counts_frames_from_every_worker(ds, tmp_path, monkeypatch):
    updates = []

    class Bar:
        def __init__(self, total=None, **kwargs):
            self.total = total

        def update(self, n=1):
            updates.append(n)

        def set_description(self, text):
            pass

        def close(self):
            pass

    monkeypatch.setattr("tqdm.tqdm", Bar)
    runs = plan(ds, "ope")
    summary = execute(ds, runs, tmp_path / "t", SlowerTracker, workers=2, progress=True)
    assert sum(updates) == sum(r.length for r in runs) == summary.frames
    assert len(updates) > len(runs)  # frames arrive while runs go, not only when a run ends


def test_a_worker_user_error_is_the_same_one_line(ds, tmp_path):
    with pytest.raises(UserError, match=r"^checkpoint /nope.pth not found \(simulated\)$"):
        execute(ds, plan(ds, "ope"), tmp_path / "t", BrokenTracker, workers=2, progress=False)


def test_cli_worker_error_is_one_line_without_traceback(ds, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "trek_tracker.cli", "eval", "--root", str(ds.root), "--tracker",
                           "b", "--results", str(tmp_path / "res"), "--workers", "2", "--quiet", "--device", "cpu",
                           "--tracker-class", "tests.eval.test_workers:BrokenTracker"],
                          capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == ["trek-track: error: checkpoint /nope.pth not found (simulated)"]


def test_a_worker_error_on_a_plan_larger_than_a_pipe_still_exits(tmp_path):
    """TREK-150's plan is about 1,500 runs, queued for the workers at once: more than a pipe holds. When the
    workers stop early (here at once, on a user error), the parent must still exit after its one line
    instead of waiting for ever to hand the rest of the queue over."""
    root = tmp_path / "root"
    (root / "TREK-150-annotations").mkdir(parents=True)
    (root / "TREK-150-annotations" / "sequences.txt").write_text("P01-P01_01-1\n")
    gt = [(10 + i % 5, 10, 16, 8) for i in range(40)]
    intervals = [(s, e, 0) for s in range(39) for e in range(s + 1, 40)][:600]
    write_sequence(root, "P01-P01_01-1", gt, anchors=[(0, 0)], hoi=intervals)
    proc = subprocess.run([sys.executable, "-m", "trek_tracker.cli", "eval", "--root", str(root), "--tracker", "b",
                           "--results", str(tmp_path / "res"), "--workers", "2", "--quiet", "--device", "cpu",
                           "--protocol", "hoi", "--tracker-class", "tests.eval.test_workers:BrokenTracker"],
                          capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == ["trek-track: error: checkpoint /nope.pth not found (simulated)"]


def test_running_out_of_memory_names_the_run_and_keeps_the_finished_ones(ds, tmp_path):
    runs = sorted(plan(ds, "ope"), key=lambda r: r.sequence == "P01-P01_01-10")  # the greedy one last
    with pytest.raises(OutOfMemory, match=r"^the GPU ran out of memory while tracking ope P01-P01_01-10 \(GPU 0: "
                                          r"asked for 2.00 GiB .*; 1 of the 2 runs of this command is finished "
                                          r"and kept: run the same command"):
        execute(ds, runs, tmp_path / "t", GreedyTracker, progress=False)
    assert [run_done(tmp_path / "t", r) for r in runs] == [True, False]


@pytest.mark.parametrize("workers", [1, 2])
def test_the_summary_holds_the_peak_memory_of_the_largest_worker(ds, tmp_path, workers, caplog, monkeypatch):
    monkeypatch.setattr(logging.getLogger("trek_tracker"), "propagate", True)  # the CLI's handler may be set
    caplog.set_level("INFO", logger="trek_tracker")
    summary = execute(ds, plan(ds, "ope"), tmp_path / "t", ConstantTracker, workers=workers, progress=False)
    assert len(summary.done) == 2
    assert summary.peak_memory["host_rss_mib"] > 50 and "gpu_mib" not in summary.peak_memory  # torch is loaded
    assert "peak memory of a worker: RAM" in caplog.text


def test_a_worker_out_of_memory_is_one_line(ds, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "trek_tracker.cli", "eval", "--root", str(ds.root), "--tracker",
                           "g", "--results", str(tmp_path / "res"), "--workers", "2", "--quiet", "--device", "cpu",
                           "--protocol", "ope", "--tracker-class", "tests.eval.test_workers:GreedyTracker"],
                          capture_output=True, text=True, cwd=REPO, timeout=300)
    assert_one_line_error(proc, "the GPU ran out of memory while tracking ope P01-P01_01-10", "fewer --workers",
                          "finished and", "run the same command again to resume")


class KilledTracker(SlowerTracker):
    """Its process is killed (as the kernel's out-of-memory killer would) when it starts on a 16x16 box."""

    def init(self, image, box) -> None:
        if tuple(box[2:]) == (16, 16):
            os.kill(os.getpid(), signal.SIGKILL)
        super().init(image, box)


def test_a_dead_worker_is_said_at_once_not_after_the_others_have_tracked_everything(tmp_path):
    """The other workers' progress messages must not hide a worker killed mid-evaluation until they have
    tracked the rest of the plan (hours on TREK-150): the parent says so at once, and counts what is kept on
    disk: here one run finished by an earlier command, none by this one."""
    root = tmp_path / "trek"
    (root / "TREK-150-annotations").mkdir(parents=True)
    (root / "TREK-150-annotations" / "sequences.txt").write_text("P01-P01_01-1\nP01-P01_01-2\nP01-P01_01-3\n")
    write_sequence(root, "P01-P01_01-1", [(10 + i % 5, 10, 16, 8) for i in range(200)])  # 20 s at 0.1 s a frame
    write_sequence(root, "P01-P01_01-2", [(10, 10, 16, 16)] * 3)  # its worker is killed as it starts
    write_sequence(root, "P01-P01_01-3", [(10, 10, 16, 8)] * 3)  # finished before
    ds = Trek150(root)
    runs = plan(ds, "ope")
    execute(ds, [r for r in runs if r.sequence == "P01-P01_01-3"], tmp_path / "t", ConstantTracker, progress=False)
    with pytest.raises(UserError, match=r"^a worker process was killed by SIGKILL \(out of memory\?\); 1 of the 3 "
                                        r"runs of this command is finished and kept: run the same command again to "
                                        r"resume$"):
        execute(ds, runs, tmp_path / "t", KilledTracker, workers=2, progress=False)
    done = {r.sequence: run_done(tmp_path / "t", r) for r in runs}  # stopped, not left to track on
    assert done == {"P01-P01_01-1": False, "P01-P01_01-2": False, "P01-P01_01-3": True}


class CrashAtExitTracker(SlowerTracker):
    """Its process dies by a signal as it exits, after its last run (as a GPU library's teardown can)."""

    def __init__(self):
        atexit.register(os.kill, os.getpid(), signal.SIGKILL)


def test_a_worker_that_dies_after_its_last_run_loses_nothing(tmp_path):
    root = tmp_path / "trek"
    (root / "TREK-150-annotations").mkdir(parents=True)
    (root / "TREK-150-annotations" / "sequences.txt").write_text("P01-P01_01-1\nP01-P01_01-2\n")
    write_sequence(root, "P01-P01_01-1", [(10 + i % 5, 10, 16, 8) for i in range(80)])  # 8 s at 0.1 s a frame
    write_sequence(root, "P01-P01_01-2", [(10, 10, 16, 8)] * 3)  # done, and its worker gone, long before
    ds = Trek150(root)
    summary = execute(ds, plan(ds, "ope"), tmp_path / "t", CrashAtExitTracker, workers=2, progress=False)
    assert len(summary.done) == 2 and all(run_done(tmp_path / "t", r) for r in plan(ds, "ope"))


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux /proc to see the workers")
def test_workers_exit_when_the_parent_is_killed(ds, tmp_path):
    """SIGKILL of `trek-track eval` while its workers track: they stop too, leaving nothing half-written."""
    markers = tmp_path / "markers"
    markers.mkdir()
    proc = subprocess.Popen([sys.executable, "-m", "trek_tracker.cli", "eval", "--root", str(ds.root), "--tracker",
                             "slow", "--results", str(tmp_path / "res"), "--workers", "2", "--quiet", "--device",
                             "cpu", "--protocol", "mse", "--tracker-class", "tests.eval.test_workers:VerySlowTracker"],
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "TREK_TEST_MARKERS": str(markers)})
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and len(list(markers.iterdir())) < 2 and proc.poll() is None:
        time.sleep(0.2)
    workers = [int(p.name) for p in markers.iterdir()]
    assert len(workers) == 2 and proc.poll() is None  # both workers are tracking
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and any(_running(w) for w in workers):
        time.sleep(0.1)
    assert [w for w in workers if _running(w)] == []
    out = tmp_path / "res" / "slow"
    assert all(run_done(out, r) or not (out / r.relpath).exists() for r in plan(ds, "mse"))  # nothing torn


def _running(pid: int) -> bool:
    stat = Path(f"/proc/{pid}/stat")
    try:
        return stat.read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (FileNotFoundError, ProcessLookupError):
        return False


_SLOW_START_PARENT = """
import os, sys
from tests.eval.slow_start import SlowStartTracker
from trek_tracker.eval.dataset import Trek150
from trek_tracker.eval.protocols import plan
from trek_tracker.eval.runner import execute
os.environ["TREK_TEST_SLOW_START"] = sys.argv[2]  # for the workers, which import SlowStartTracker slowly
ds = Trek150(sys.argv[1])
execute(ds, plan(ds, "ope"), sys.argv[3], SlowStartTracker, workers=2, progress=False)
"""


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux /proc to see the workers")
def test_workers_exit_when_the_parent_is_killed_while_they_start(ds, tmp_path):
    """A parent SIGKILLed while its workers still start up (import torch and the tracker's modules, seconds,
    here a minute) must not leave them running on until then: they go with it."""
    markers = tmp_path / "markers"
    markers.mkdir()
    proc = subprocess.Popen([sys.executable, "-c", _SLOW_START_PARENT, str(ds.root), str(markers), str(tmp_path / "t")],
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    workers: list[int] = []
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and len(list(markers.iterdir())) < 2 and proc.poll() is None:
            time.sleep(0.05)
        workers = [int(p.name) for p in markers.iterdir()]
        assert len(workers) == 2 and proc.poll() is None  # both workers are still starting
        proc.kill()
        proc.wait()
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline and any(_running(w) for w in workers):
            time.sleep(0.05)
        assert [w for w in workers if _running(w)] == []
    finally:
        proc.kill()
        for w in workers:
            if _running(w):
                os.kill(w, signal.SIGKILL)
