"""Test-time augmentation with the official evaluator's semantics (docs/inference.md#test-time-augmentation).

Every (scale, flip) view tracks with its own memory, as in the official evaluator, where each view is an
engine of its own; here the plain and mirrored views of a scale are one batch of one
:class:`~trek_tracker.inference.engine.VOSEngine` (they share the input size), which computes the same. Per
frame each view's probabilities come back at the original resolution, already un-flipped; they are
averaged and the arg-max is the output. Each view's memory takes **its own** arg-max label (the official
choice; ``memory_label='ensemble'`` feeds the averaged label instead). Views are ordered scale by scale,
each followed by its flipped copy.

With more than one scale (or any scale other than 1) the official evaluator also caps the short edge at
``max_resolution`` (624) before scaling; :func:`tta_engine` does the same unless a cap is already set.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from trek_tracker.errors import InputError
from trek_tracker.inference.engine import EngineConfig, FrameOutput, VOSEngine
from trek_tracker.inference.ensemble import combine_outputs, load_each

OFFICIAL_MAX_RESOLUTION = 624.0


def parse_scales(text: str | Sequence[float] | None) -> list[float]:
    """``"1.2,1.3,1.4"`` (or a sequence) -> ``[1.2, 1.3, 1.4]``; positive, finite, no duplicates."""
    if text is None or text == "":
        return [1.0]
    items = text.split(",") if isinstance(text, str) else list(text)
    try:
        scales = [float(s) for s in items]
    except (TypeError, ValueError):
        raise InputError(f"TTA scales must be numbers separated by commas, e.g. 1.2,1.3,1.4; got {text!r}") from None
    if not scales or not all(s > 0 and s < 10 for s in scales):
        raise InputError(f"TTA scales must be positive (and below 10), got {scales}")
    if len(set(scales)) != len(scales):
        raise InputError(f"TTA scales repeat a value: {scales}")
    return scales


@dataclass
class TTAConfig:
    """Test-time views: network input ``scales`` (1.0 alone: no scaling) and a flipped copy of each."""

    scales: tuple[float, ...] = (1.0,)
    flip: bool = False

    def __post_init__(self) -> None:
        self.scales = tuple(parse_scales(self.scales))

    @property
    def active(self) -> bool:
        """Whether any view differs from the plain one."""
        return self.flip or self.scales != (1.0,)

    def views(self) -> list[tuple[float, bool]]:
        return tta_views(self.scales, self.flip)


def tta_views(scales: Sequence[float], flip: bool) -> list[tuple[float, bool]]:
    """The (scale, flip) views in the official order."""
    return [(s, f) for s in scales for f in ((False, True) if flip else (False,))]


def view_configs(base: EngineConfig, scales: Sequence[float], flip: bool, *,
                 max_resolution: float = OFFICIAL_MAX_RESOLUTION) -> list[EngineConfig]:
    """One engine config per scale, holding that scale's views (plain, and mirrored with ``flip``).
    Multi-scale TTA caps the short edge at ``max_resolution`` (official)."""
    multiscale = len(scales) > 1 or any(s != 1.0 for s in scales)
    short = base.max_short_edge
    if multiscale and short is None:
        short = max_resolution
    flips = (False, True) if flip else (False,)
    return [replace(base, scale=s, flips=flips, max_short_edge=short) for s in scales]


@dataclass
class TTAEngine:
    """The views of one model tracking in lock-step: one engine per scale, its views batched.

    Answers what an ensemble member answers (``add_reference``, ``predict``, ``commit``, ``step``).
    """

    engines: list[VOSEngine]
    memory_label: str = "own"
    _views: list[list[FrameOutput]] = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        if self.memory_label not in ("own", "ensemble"):
            raise InputError(f"memory_label must be 'own' or 'ensemble', got {self.memory_label!r}")

    @property
    def members(self) -> list[VOSEngine]:
        return self.engines

    def add_reference(self, frame: np.ndarray, labels: np.ndarray | torch.Tensor) -> None:
        for e in self.engines:
            e.add_reference(frame, labels)

    def predict(self, frame: np.ndarray) -> FrameOutput:
        self._views = [e.predict_views(frame) for e in self.engines]
        return combine_outputs(self.view_outputs, "mean")

    def commit(self, labels: torch.Tensor) -> None:
        if not self._views:
            raise RuntimeError("commit() must follow predict()")
        for e, views in zip(self.engines, self._views, strict=True):
            e.commit_views([v.labels for v in views] if self.memory_label == "own" else [labels] * len(views))
        self._views = []

    def step(self, frame: np.ndarray) -> FrameOutput:
        out = self.predict(frame)
        self.commit(out.labels)
        return out

    def state(self) -> list[dict]:
        return [e.state() for e in self.engines]

    def load_state(self, state: list[dict]) -> None:
        load_each(self.engines, state, "TTA scales")

    @property
    def view_outputs(self) -> list[FrameOutput]:
        """Every view's output for the last predicted frame, in view order (until :meth:`commit`)."""
        return [v for views in self._views for v in views]


def tta_engine(model, base: EngineConfig | None = None, tta: TTAConfig | None = None, *,
               memory_label: str = "own", max_resolution: float = OFFICIAL_MAX_RESOLUTION
               ) -> VOSEngine | TTAEngine:
    """An engine for ``model`` with TTA: a plain :class:`VOSEngine` for a single unflipped scale-1 view,
    else a :class:`TTAEngine` (mean, equal weights per view)."""
    base = base or EngineConfig()
    tta = tta or TTAConfig()
    if not tta.active:
        return VOSEngine(model, base)
    configs = view_configs(base, tta.scales, tta.flip, max_resolution=max_resolution)
    return TTAEngine([VOSEngine(model, c) for c in configs], memory_label=memory_label)
