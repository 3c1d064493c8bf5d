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
