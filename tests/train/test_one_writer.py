"""One training writes a run folder at a time."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from trek_tracker.errors import UserError
from trek_tracker.files import hold_folder
from trek_tracker.train.loop import train

FAST = ("train.batch_size=2", "train.log_every=1", "train.checkpoint_every=2", "val.root=''", "train.steps=2")


def test_a_second_training_into_a_folder_in_use_is_refused_and_writes_nothing(tiny_config):
    """The same command given twice, or `srun -n 2 trek-track train` (two first processes, no torchrun over them):
    the second would prune, log and resume among the first one's files."""
    cfg = tiny_config("run", *FAST)
    os.makedirs(cfg.out)
    other = hold_folder(cfg.out)  # another process's training
    try:
        with pytest.raises(UserError, match=r"is being written by another trek-track process; wait for it to end, "
                                            r"or choose another --out folder"):
            train(cfg, progress=False)
        assert os.listdir(cfg.out) == []
    finally:
        os.close(other)
    records = train(cfg, progress=False)  # once it has ended
    assert records and os.path.isfile(os.path.join(cfg.out, "log.csv"))
    held = hold_folder(cfg.out)  # and the training let the folder go
    os.close(held)


def test_only_the_first_process_of_a_launch_holds_the_folder(tiny_config, monkeypatch):
    """The other ranks of one torchrun write nothing there: they must not be refused by the first one's hold."""
    import trek_tracker.train.loop as loop

    cfg = tiny_config("ranked", *FAST)
    seen = []
    monkeypatch.setattr(loop, "hold_folder", lambda path: seen.append(path) or os.open(path, os.O_RDONLY))
    monkeypatch.setattr(loop, "Trainer", _NoTrainer)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    loop.train(cfg, progress=False)
    monkeypatch.setenv("RANK", "0")
    loop.train(cfg, progress=False)
    assert seen == [cfg.out]
    # without a world, a RANK left in the environment is one process that writes, so it holds the folder
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("RANK", "1")
    loop.train(cfg, progress=False)
    assert seen == [cfg.out] * 2


class _NoTrainer:
    def __init__(self, *args, **kwargs) -> None:
        self.dist = type("D", (), {"world": 1})()

    def run(self, until):
        return []


@pytest.mark.parametrize(("env", "said"), [
    ({"WORLD_SIZE": "two", "RANK": "0"}, "WORLD_SIZE is 'two', not a whole number"),
    ({"WORLD_SIZE": "2"}, "RANK is not set"),
    ({"WORLD_SIZE": "2", "RANK": "2"}, "RANK=2 is not one of the WORLD_SIZE=2 processes"),
    ({"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": ""}, "LOCAL_RANK is '', not a whole number"),
])
def test_a_launch_environment_a_shell_left_wrong_is_one_line_before_the_folder_is_made(
        tiny_config, monkeypatch, env, said):
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    cfg = tiny_config("launched")
    with pytest.raises(UserError, match=said):
        train(cfg, progress=False)
    assert not os.path.exists(cfg.out)


def test_the_first_process_removes_what_a_killed_training_was_writing_and_nothing_else(tiny_config, monkeypatch):
    """A training killed mid-write (SIGKILL after a preemption's SIGTERM was ignored) leaves a hidden temporary
    checkpoint as large as the checkpoint; the next training into that folder, the only writer there, removes it."""
    import trek_tracker.train.loop as loop

    cfg = tiny_config("killed", *FAST)
    out = Path(cfg.out)
    temporaries = [".log.csv.k3y.tmp", "checkpoints/.step_0000004.state.pth.k3y.tmp"]
    kept = [".hidden", "notes.tmp", "checkpoints/step_0000002.state.pth", "checkpoints/val/.x.tmp"]
    for name in temporaries + kept:
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_bytes(b"x")
    monkeypatch.setattr(loop, "Trainer", _NoTrainer)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")  # another process of a launch writes nothing, so it removes nothing either
    loop.train(cfg, progress=False)
    assert all((out / name).exists() for name in temporaries + kept)
    monkeypatch.setenv("RANK", "0")
    loop.train(cfg, progress=False)
    assert [name for name in temporaries + kept if (out / name).exists()] == kept


def test_a_leftover_that_cannot_be_removed_is_one_line_and_the_folder_is_let_go(tiny_config, monkeypatch):
    import trek_tracker.train.loop as loop

    cfg = tiny_config("stuck", *FAST)

    def refuse(*folders):
        raise PermissionError(13, "Permission denied", os.path.join(cfg.out, ".log.csv.k3y.tmp"))

    monkeypatch.setattr(loop, "remove_temporaries", refuse)
    monkeypatch.setattr(loop, "Trainer", _NoTrainer)
    with pytest.raises(UserError, match=r"^cannot remove \S*/stuck/\.log\.csv\.k3y\.tmp: .*choose another --out$"):
        loop.train(cfg, progress=False)
    os.close(hold_folder(cfg.out))  # the failed training let the folder go
