"""Ensemble combiners on synthetic maps with known answers, lock-step members, saved probabilities."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from trek_tracker.errors import InputError
from trek_tracker.inference.engine import FrameOutput
from trek_tracker.inference.ensemble import (
    EnsembleConfig,
    EnsembleEngine,
    ModelSpec,
    average_probs,
    check_mode,
    combine_outputs,
    vote,
    vote_scores,
)


def _probs(fg: list[list[float]]) -> torch.Tensor:
    """(2, H, W) background/object probabilities from an object-probability grid."""
    p = torch.tensor(fg, dtype=torch.float32)
    return torch.stack([1 - p, p])


def test_mean_weights_change_the_answer():
    a = _probs([[0.9, 0.2]])
    b = _probs([[0.3, 0.4]])
    mean = average_probs([a, b])
    assert torch.allclose(mean[1], torch.tensor([[0.6, 0.3]]))
    weighted = average_probs([a, b], [1, 3])  # (0.9 + 3*0.3)/4 = 0.45, (0.2 + 3*0.4)/4 = 0.35
    assert torch.allclose(weighted[1], torch.tensor([[0.45, 0.35]]))
    assert weighted.argmax(0).tolist() == [[0, 0]] and mean.argmax(0).tolist() == [[1, 0]]


@pytest.mark.parametrize("n", [2, 3, 6])
def test_equal_weight_mean_is_the_official_torch_mean_bit_for_bit(n):
    # Official TTA (evaluator.py): torch.mean(torch.cat(all_preds), dim=0). Three scales with flip are 6 views,
    # where 1/6 is inexact and a weighted sum of p/6 terms rounds differently.
    torch.manual_seed(0)
    probs = [torch.softmax(3 * torch.randn(3, 40, 50), dim=0) for _ in range(n)]
    official = torch.mean(torch.cat([p[None] for p in probs]), dim=0)
    assert torch.equal(average_probs(probs), official)
    assert torch.equal(average_probs(probs, [2.0] * n), official)
    assert torch.equal(combine_outputs([FrameOutput(p.argmax(0), p, []) for p in probs]).probs, official)


def test_vote_majority_weights_and_ties():
    a = torch.tensor([[1, 1, 2, 0]])
    b = torch.tensor([[1, 0, 0, 2]])
    c = torch.tensor([[0, 0, 2, 1]])
    assert vote([a, b, c]).tolist() == [[1, 0, 2, 0]]  # last pixel: 0, 2, 1 tie -> first member's label
    assert vote([a, b, c], [1, 1, 3]).tolist() == [[0, 0, 2, 1]]  # c alone outweighs a + b
    # Equal split between labels: the label of the highest-weighted member among the tied wins.
    assert vote([a, b], [1, 1]).tolist() == [[1, 1, 2, 0]]
    assert vote([a, b], [1, 2]).tolist() == [[1, 0, 0, 2]]
    scores = vote_scores([a, b, c], [1, 1, 2], num_labels=3)
    assert torch.allclose(scores[:, 0, 0], torch.tensor([0.5, 0.5, 0.0]))
    assert torch.allclose(scores.sum(0), torch.ones(1, 4))
    assert vote([a, b, c], [1, 1, 2]).tolist()[0][0] == 0  # 0.5/0.5 tie: c (weight 2) voted 0


def test_bad_inputs_are_user_errors():
    a = _probs([[0.5]])
    with pytest.raises(InputError, match="one weight per member"):
        average_probs([a, a], [1])
    with pytest.raises(InputError, match="positive"):
        vote([torch.zeros(1, 1, dtype=torch.int64)] * 2, [1, -1])
    with pytest.raises(InputError, match="differ"):
        average_probs([a, _probs([[0.5, 0.5]])])
    with pytest.raises(InputError, match="unknown ensemble mode"):
        combine_outputs([FrameOutput(a.argmax(0), a, [])], "median")


def test_members_are_read_as_named_not_unpacked_by_position():
    """run.json records members as mappings: unpacked by position, {"model": ..., "checkpoint": ...} became a
    model named "model"; a bare name became one argument per letter."""
    spec = ModelSpec("r50_deaotl", "a.pth")
    assert EnsembleConfig(members=[{"model": "r50_deaotl", "checkpoint": "a.pth"}]).members == (spec,)
    assert EnsembleConfig(members=[("r50_deaotl", "a.pth")]).members == (spec,)
    assert EnsembleConfig(members=["r50_deaotl", spec]).members == (ModelSpec("r50_deaotl"), spec)
    assert EnsembleConfig(members="ab").members == (ModelSpec("ab"),)
    for bad in ([{"model": "x", "ckpt": "y"}], [("a", "b", "c")], [3]):
        with pytest.raises(InputError, match="ensemble member"):
            EnsembleConfig(members=bad)


class _Fixed:
    """A member that predicts given probabilities and records what it was asked to remember."""

    def __init__(self, frames: list[torch.Tensor]) -> None:
        self.frames = frames
        self.t = 0
        self.committed: list[torch.Tensor] = []

    def add_reference(self, frame, labels) -> None:
        self.reference = labels

    def predict(self, frame) -> FrameOutput:
        p = self.frames[self.t]
        self.t += 1
        return FrameOutput(p.argmax(0), p, [])

    def commit(self, labels) -> None:
        self.committed.append(labels.clone())


@pytest.mark.parametrize("memory_label", ["own", "ensemble"])
def test_lock_step_members_remember_their_own_or_the_combined_label(memory_label):
    a = _Fixed([_probs([[0.9, 0.1]])])
    b = _Fixed([_probs([[0.4, 0.45]])])
    c = _Fixed([_probs([[0.4, 0.45]])])
    ens = EnsembleEngine([a, b, c], mode="vote", memory_label=memory_label)
    ens.add_reference(np.zeros((1, 2, 3), np.uint8), np.array([[1, 0]]))
    out = ens.step(None)
    assert out.labels.tolist() == [[0, 0]]  # b and c (label 0 at pixel 0) outvote a
    assert torch.allclose(out.probs[1], torch.tensor([[1 / 3, 0.0]]))
    if memory_label == "own":
        assert a.committed[0].tolist() == [[1, 0]] and b.committed[0].tolist() == [[0, 0]]
    else:
        assert a.committed[0].tolist() == [[0, 0]]


def test_a_single_member_combines_to_itself():
    """One member (an ensemble of one, a single TTA view) is its own mean and its own vote."""
    probs = _probs([[0.2, 0.7], [0.5, 0.9]])
    assert torch.equal(average_probs([probs]), probs)
    assert torch.equal(average_probs([probs], [2.0]), probs)
    labels = torch.tensor([[0, 1], [2, 1]])
    assert torch.equal(vote([labels]), labels)
    assert torch.equal(vote_scores([labels], num_labels=3).argmax(0), labels)


def test_vote_counts_labels_up_to_the_largest_any_member_votes():
    """Without ``num_labels`` the scores have one row per label up to the largest voted (docs: vote shares), whichever
    member votes it; each row is the summed weight of its voters over the total."""
    a = torch.tensor([[0, 1, 1]])
    b = torch.tensor([[3, 1, 0]])
    assert vote([a, b]).tolist() == [[0, 1, 1]] and vote([b, a]).tolist() == [[3, 1, 0]]
    scores = vote_scores([a, b], [1, 3])
    assert scores.shape == (4, 1, 3) and scores.dtype == torch.float32
    assert torch.allclose(scores[:, 0, 0], torch.tensor([0.25, 0.0, 0.0, 0.75]))
    assert torch.allclose(scores[:, 0, 2], torch.tensor([0.75, 0.25, 0.0, 0.0]))
    with pytest.raises(InputError, match="differ in size"):
        vote([a, torch.zeros(2, 3, dtype=torch.int64), a])
    with pytest.raises(InputError, match="positive"):
        vote([a, b], [1, 0])


def test_vote_ties_within_1e9_go_to_the_heaviest_member():
    """Summed weights 0.1 + 0.2 and 0.3 are equal, though float64 makes the first one ulp larger: a tie
    (docs/inference.md#ensembles: within 1e-9 of the top), won by the label of the heaviest member."""
    a, b, c = torch.tensor([[1, 2]]), torch.tensor([[1, 2]]), torch.tensor([[2, 1]])
    assert 0.1 + 0.2 > 0.3
    assert vote([a, b, c], [0.1, 0.2, 0.3]).tolist() == [[2, 1]]
    assert vote([c, a, b], [0.3, 0.1, 0.2]).tolist() == [[2, 1]]
    # A real majority is not a tie: 0.1 + 0.2 + 1e-6 beats 0.3.
    assert vote([a, b, c], [0.1, 0.2 + 1e-6, 0.3]).tolist() == [[1, 2]]
    # Shares 0.5 and 0.5 - 5e-10 are within 1e-9: the heavier member (the lighter pair's label lost) wins;
    # 2e-9 apart they are not.
    assert vote([a, b, c], [0.25, 0.25, 0.5 - 5e-10]).tolist() == [[2, 1]]
    assert vote([a, b, c], [0.25, 0.25, 0.5 - 2e-9]).tolist() == [[1, 2]]


def test_combined_vote_has_a_share_for_every_channel_of_the_widest_member():
    """``combine_outputs(mode="vote")``: the labels are the vote, and ``probs`` the vote shares over every channel
    of the widest member's probabilities, including labels nobody voted for (a member tracking fewer objects has
    fewer channels)."""
    two = FrameOutput(torch.tensor([[1, 0, 0, 0, 0]]), torch.zeros(2, 1, 5), [])
    three = FrameOutput(torch.tensor([[2, 2, 0, 0, 0]]), torch.zeros(3, 1, 5), [])
    four = FrameOutput(torch.tensor([[1, 0, 0, 0, 0]]), torch.zeros(4, 1, 5), [])
    out = combine_outputs([two, three, four], "vote", [1, 1, 1])
    assert out.labels.tolist() == [[1, 0, 0, 0, 0]] and out.logits == []
    assert out.probs.shape == (4, 1, 5)
    assert torch.allclose(out.probs[:, 0, 0], torch.tensor([0, 2 / 3, 1 / 3, 0]))
    assert torch.allclose(out.probs[:, 0, 1], torch.tensor([2 / 3, 0, 1 / 3, 0]))
    out = combine_outputs([three, two], "vote", [1, 2])
    assert out.probs.shape == (3, 1, 5) and out.labels.tolist() == [[1, 0, 0, 0, 0]]


class _Saved(_Fixed):
    def state(self):
        return {"t": self.t}

    def load_state(self, state) -> None:
        self.t = state["t"]


def test_lock_step_reference_commit_once_and_saved_state():
    """Every member gets the reference; a commit needs a fresh prediction; each member saves and restores its
    own state, in order."""
    frames = [_probs([[0.9, 0.1]]), _probs([[0.2, 0.8]]), _probs([[0.6, 0.6]])]
    members = [_Saved(list(frames)), _Saved(list(frames[::-1]))]
    ens = EnsembleEngine(members)
    reference = np.array([[1, 0]])
    ens.add_reference(np.zeros((1, 2, 3), np.uint8), reference)
    assert all(m.reference is reference for m in members)
    out = ens.predict(None)
    ens.commit(out.labels)
    with pytest.raises(RuntimeError, match="must follow predict"):
        ens.commit(out.labels)
    assert ens.state() == [{"t": 1}, {"t": 1}]
    ens.load_state([{"t": 2}, {"t": 0}])
    assert [m.t for m in members] == [2, 0]
    out = ens.step(None)  # member 0 sees frames[2], member 1 frames[::-1][0] = frames[2]
    assert torch.allclose(out.probs, frames[2])
    with pytest.raises(ValueError, match="1 ensemble members, this engine 2"):
        ens.load_state([{"t": 0}])
    assert ens.weights == [1.0, 1.0]
    for bad in (dict(mode="median"), dict(weights=[1]), dict(memory_label="mean")):
        with pytest.raises(InputError):
            EnsembleEngine(members, **bad)
    with pytest.raises(InputError, match="at least one member"):
        EnsembleEngine([])


def test_ensemble_config_checks_its_mode_and_one_weight_per_model_the_first_included():
    """``weights`` has one entry per model, the first model (not among ``members``) first; a member given as a
    sequence is ``(model,)`` or ``(model, checkpoint)`` of names or None."""
    config = EnsembleConfig(members=["b", "c"], weights=[1, 2, 3])
    assert config.weights == (1.0, 2.0, 3.0) and EnsembleConfig(members=["b"]).weights is None
    for bad in ([1, 2], [1, 2, 3, 4], [1, 0, 2]):
        with pytest.raises(InputError):
            EnsembleConfig(members=["b", "c"], weights=bad)
    with pytest.raises(InputError, match="unknown ensemble mode"):
        EnsembleConfig(members=["b"], mode="median")
    assert check_mode("vote") == "vote"
    assert EnsembleConfig(members=[("b",), (None, "b.pth")]).members == (ModelSpec("b"), ModelSpec(None, "b.pth"))
    for bad in ([()], [("b", 3)], [(3, "b.pth")]):
        with pytest.raises(InputError, match="ensemble member"):
            EnsembleConfig(members=bad)
