"""Combining several predictions of one frame: probability averaging and weighted mask voting
(docs/inference.md#ensembles).

Used three ways:

* test-time augmentation (``tta.py``): the views of one model, averaged;
* lock-step ensembles: several models track together, each with its own engine and memory
  (:class:`EnsembleEngine`); the combined label is produced per frame;
* post-hoc ensembles: runs save per-frame probabilities or label maps, and ``trek-track ensemble``
  (:mod:`trek_tracker.combine`) merges them later, as the VISOR entry did.

The combiners (weights default to equal, since the reports do not give them):

* ``mean``: weighted mean of the members' probabilities, then arg-max;
* ``vote``: each member votes for its own arg-max label with its weight; a pixel takes the label with the
  largest summed weight; a tie goes to the label of the highest-weighted member among those voting for a
  tied label (the first listed member when weights are equal).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch

from trek_tracker.errors import InputError
from trek_tracker.inference.engine import FrameOutput, channel_argmax

MODES = ("mean", "vote")


@dataclass(frozen=True)
class ModelSpec:
    """A model to run: a variant name and a checkpoint (file or registry name); None takes the default."""

    model: str | None = None
    checkpoint: str | None = None


@dataclass
class EnsembleConfig:
    """Further models that track beside the first one, and how all of them combine per frame."""

    members: tuple[ModelSpec, ...] = ()
    mode: str = "mean"  # mean (probabilities) | vote (weighted mask vote)
    weights: tuple[float, ...] | None = None  # one per model, the first model first; None: equal

    def __post_init__(self) -> None:
        if isinstance(self.members, (str, ModelSpec, dict)):
            self.members = (self.members,)
        self.members = tuple(model_spec(m) for m in self.members)
        check_mode(self.mode)
        if self.weights is not None:
            self.weights = tuple(check_weights(self.weights, len(self.members) + 1))


def model_spec(value: Any) -> ModelSpec:
    """A :class:`ModelSpec` from itself, a model name, a ``(model, checkpoint)`` pair or a mapping with those keys
    (as ``run.json`` records the settings); anything else is an :class:`InputError`, not a misread spec (a
    mapping unpacked by position would name a model ``"model"``)."""
    if isinstance(value, ModelSpec):
        return value
    if isinstance(value, str):
        return ModelSpec(value)
    if isinstance(value, dict) and set(value) <= {"model", "checkpoint"}:
        return ModelSpec(**value)
    if isinstance(value, (tuple, list)) and 1 <= len(value) <= 2 and all(v is None or isinstance(v, str)
                                                                         for v in value):
        return ModelSpec(*value)
    raise InputError(f"an ensemble member is a model name, a (model, checkpoint) pair or a ModelSpec, got {value!r}")


class Member(Protocol):
    """What an ensemble member must do: a :class:`~trek_tracker.inference.engine.VOSEngine`, a TTA engine or a
    nested ensemble."""

    def add_reference(self, frame: np.ndarray, labels: np.ndarray | torch.Tensor) -> None: ...

    def predict(self, frame: np.ndarray) -> FrameOutput: ...

    def commit(self, labels: torch.Tensor) -> None: ...

    def state(self) -> Any: ...

    def load_state(self, state: Any) -> None: ...


def load_each(parts: Sequence[Any], state: Sequence[Any], what: str) -> None:
    """Give each of an engine's parts (TTA scales, ensemble members) its saved state, in order."""
    if len(state) != len(parts):
        raise ValueError(f"the saved state has {len(state)} {what}, this engine {len(parts)}")
    for part, saved in zip(parts, state, strict=True):
        part.load_state(saved)


def check_weights(weights: Sequence[float] | None, n: int) -> list[float]:
    """``n`` positive finite weights (all 1 when None); an :class:`InputError` otherwise."""
    if weights is None:
        return [1.0] * n
    w = [float(x) for x in weights]
    if len(w) != n:
        raise InputError(f"got {len(w)} ensemble weights for {n} members; give one weight per member")
    if not all(np.isfinite(x) and x > 0 for x in w):
        raise InputError(f"ensemble weights must be positive numbers, got {w}")
    return w


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise InputError(f"unknown ensemble mode {mode!r}; choose one of: {', '.join(MODES)}")
    return mode


def average_probs(probs: Sequence[torch.Tensor], weights: Sequence[float] | None = None) -> torch.Tensor:
    """Weighted mean of probability maps (C, H, W) that share one shape."""
    if not probs:
        raise InputError("nothing to combine: no member outputs")
    w = check_weights(weights, len(probs))
    shape = tuple(probs[0].shape)
    for p in probs[1:]:
        if tuple(p.shape) != shape:
            raise InputError(f"member outputs differ in shape: {shape} and {tuple(p.shape)} (same video and "
                             "same objects are needed)")
    if all(x == w[0] for x in w):
        # Equal weights (TTA): the official evaluator's ``torch.mean`` over the stacked views, bit for bit; the
        # weighted sum below rounds differently when 1/n is inexact (3 or 6 views).
        return torch.stack([p.float() for p in probs]).mean(dim=0)
    total = sum(w)
    out = probs[0].float() * (w[0] / total)
    for p, wi in zip(probs[1:], w[1:], strict=True):
        out = out + p.float() * (wi / total)
    return out


def vote_scores(labels: Sequence[torch.Tensor], weights: Sequence[float] | None = None,
                num_labels: int | None = None) -> torch.Tensor:
    """Per-label summed vote weight (L, H, W) float32, normalised to sum to 1 at every pixel."""
    return _vote_totals(labels, weights, num_labels).float()


def _vote_totals(labels: Sequence[torch.Tensor], weights: Sequence[float] | None,
                 num_labels: int | None) -> torch.Tensor:
    """:func:`vote_scores` in float64 (exact enough to tell ties), L = ``num_labels`` or the largest label + 1:
    memory in proportion to the labels voted on, so callers vote in object ids, not in 8-bit mask values."""
    if not labels:
        raise InputError("nothing to combine: no member outputs")
    w = check_weights(weights, len(labels))
    shape = tuple(labels[0].shape)
    for lab in labels[1:]:
        if tuple(lab.shape) != shape:
            raise InputError(f"member label maps differ in size: {shape} and {tuple(lab.shape)}")
    n = num_labels if num_labels is not None else int(max(int(lab.max()) for lab in labels)) + 1
    scores = torch.zeros((n, *shape), dtype=torch.float64, device=labels[0].device)
    for lab, wi in zip(labels, w, strict=True):
        scores.scatter_add_(0, lab.long()[None], torch.full((1, *shape), wi, dtype=torch.float64,
                                                              device=lab.device))
    return scores / sum(w)


def vote(labels: Sequence[torch.Tensor], weights: Sequence[float] | None = None,
         num_labels: int | None = None) -> torch.Tensor:
    """Weighted per-pixel majority of label maps (H, W); ties as described in the module docstring."""
    w = check_weights(weights, len(labels))
    scores = _vote_totals(labels, w, num_labels)
    best = scores.max(dim=0).values
    tied = scores >= best[None] - 1e-9  # (L, H, W) labels with the top score
    out = torch.full(tuple(labels[0].shape), -1, dtype=torch.int64, device=labels[0].device)
    # Members by decreasing weight (stable: equal weights keep the given order).
    for i in sorted(range(len(labels)), key=lambda i: -w[i]):
        lab = labels[i].long()
        ok = (out < 0) & tied.gather(0, lab[None])[0]
        out = torch.where(ok, lab, out)
    return out


def combine_outputs(outputs: Sequence[FrameOutput], mode: str = "mean",
                    weights: Sequence[float] | None = None) -> FrameOutput:
    """One frame's member outputs -> the combined output. For ``vote``, ``probs`` are the vote shares."""
    check_mode(mode)
    if mode == "mean":
        probs = average_probs([o.probs for o in outputs], weights)
        return FrameOutput(labels=channel_argmax(probs), probs=probs, logits=[])
    n = max(o.probs.shape[0] for o in outputs)
    labels = [o.labels for o in outputs]
    return FrameOutput(labels=vote(labels, weights, n), probs=vote_scores(labels, weights, n), logits=[])


@dataclass
class EnsembleEngine:
    """Several members tracking one video in lock-step, each with its own memory.

    ``memory_label='own'`` (the official TTA semantics) feeds each member its own prediction;
    ``'ensemble'`` feeds every member the combined label.
    """

    members: list[Member]
    mode: str = "mean"
    weights: list[float] | None = None
    memory_label: str = "own"
    _last: list[FrameOutput] = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        if not self.members:
            raise InputError("an ensemble needs at least one member")
        check_mode(self.mode)
        self.weights = check_weights(self.weights, len(self.members))
        if self.memory_label not in ("own", "ensemble"):
            raise InputError(f"memory_label must be 'own' or 'ensemble', got {self.memory_label!r}")

    def add_reference(self, frame: np.ndarray, labels: np.ndarray | torch.Tensor) -> None:
        for m in self.members:
            m.add_reference(frame, labels)

    def predict(self, frame: np.ndarray) -> FrameOutput:
        self._last = [m.predict(frame) for m in self.members]
        return combine_outputs(self._last, self.mode, self.weights)

    def commit(self, labels: torch.Tensor) -> None:
        if not self._last:
            raise RuntimeError("commit() must follow predict()")
        for m, out in zip(self.members, self._last, strict=True):
            m.commit(out.labels if self.memory_label == "own" else labels)
        self._last = []

    def step(self, frame: np.ndarray) -> FrameOutput:
        out = self.predict(frame)
        self.commit(out.labels)
        return out

    def state(self) -> list:
        return [m.state() for m in self.members]

    def load_state(self, state: list) -> None:
        load_each(self.members, state, "ensemble members")

