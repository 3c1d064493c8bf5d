"""Choosing one first-frame mask from SAM and Alpha-Refine candidates (docs/init.md#fusion-rule).

The TREK-150 report combined SAM and AR but never published how, so our rule is explicit and every
number behind the choice is returned for ``run.json``: each candidate is clipped to the (tight) box, rid
of speckles (every larger part stays: an object split by a hand is still one object) and scored by how well
its tight rectangle matches the box, plus a small confidence term. Candidates that are mostly outside the
box or cover only a sliver of it are rejected. Fallbacks keep the VOS engine from ever receiving an empty
reference: the AR mask, then the filled box.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from trek_tracker.geometry import box_to_mask, iou, mask_to_box, remove_small_components


@dataclass
class FusionConfig:
    """Thresholds of the selection rule (docs/init.md#fusion-thresholds)."""

    fusion_lambda: float = 0.15  # weight of the confidence term
    clip_margin_px: int = 1  # pixels outside the box still tolerated
    min_fill: float = 0.05  # reject masks covering less than this share of the box
    max_outside: float = 0.3  # reject masks with more than this share outside the box (before clipping)
    min_rect_iou: float = 0.5  # below this the winner is replaced by a fallback
    min_box_px: float = 8.0  # boxes narrower than this use the filled box directly
    # Components smaller than this are speckles and dropped (never all of them); larger ones all stay: an object
    # split by an occluding hand keeps both parts (spec MB2, as the reported boxes do).
    min_component_px: int = 100


@dataclass
class Candidate:
    """One proposed mask: ``mask`` bool (H, W) at frame resolution, ``confidence`` in [0, 1]."""

    name: str
    mask: np.ndarray
    confidence: float
    source: str  # sam | ar | fused | grabcut


@dataclass
class CandidateScore:
    name: str
    source: str
    area: int
    outside: float
    fill: float
    rect_iou: float
    confidence: float
    score: float
    rejected: str | None = None


@dataclass
class FusionResult:
    mask: np.ndarray  # bool (H, W), never empty for a box inside the frame
    winner: str  # candidate name, or "box" for the filled-box fallback
    source: str  # sam | ar | fused | grabcut | box
    fallback: str | None  # why the best-scoring candidate was not used, if it was not
    scores: list[CandidateScore] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "winner": self.winner,
            "source": self.source,
            "fallback": self.fallback,
            "candidates": [asdict(s) for s in self.scores],
        }


def _box_region(box: np.ndarray, shape: tuple[int, int], margin: int) -> np.ndarray:
    grown = np.array([box[0] - margin, box[1] - margin, box[2] + 2 * margin, box[3] + 2 * margin])
    return box_to_mask(grown, shape)


def clean_candidate(mask: np.ndarray, box: np.ndarray, config: FusionConfig) -> tuple[np.ndarray, float]:
    """Clip to the box (with margin), drop speckles; return the mask and the share outside the box."""
    mask = np.asarray(mask, dtype=bool)
    region = _box_region(box, mask.shape, config.clip_margin_px)
    area = int(mask.sum())
    outside = float((mask & ~region).sum() / area) if area else 0.0
    clipped = mask & region
    if clipped.any():
        clipped = remove_small_components(clipped, config.min_component_px)
    return clipped, outside


def score_candidate(cand: Candidate, box: np.ndarray, config: FusionConfig) -> tuple[np.ndarray, CandidateScore]:
    """The cleaned mask and its numbers, rounded to 6 decimals as ``run.json`` records them: every test of the
    rule is made on these, so a choice can be re-derived from ``run.json``."""
    mask, outside = clean_candidate(cand.mask, box, config)
    area = int(mask.sum())
    fill = round(area / max(float(box[2] * box[3]), 1e-9), 6)
    outside = round(outside, 6)
    rect = mask_to_box(mask)
    rect_iou = float(iou(rect, box)) if rect is not None else 0.0
    score = round(rect_iou + config.fusion_lambda * float(cand.confidence), 6)
    rejected = None
    if area == 0:
        rejected = "empty"
    elif fill < config.min_fill:
        rejected = f"fill {fill:.3f} < {config.min_fill}"
    elif outside > config.max_outside:
        rejected = f"outside {outside:.3f} > {config.max_outside}"
    return mask, CandidateScore(
        name=cand.name,
        source=cand.source,
        area=area,
        outside=outside,
        fill=fill,
        rect_iou=round(rect_iou, 6),
        confidence=round(float(cand.confidence), 6),
        score=score,
        rejected=rejected,
    )


def fuse(candidates: list[Candidate], box, image_shape: tuple[int, int], config: FusionConfig) -> FusionResult:
    """Score every candidate and pick one, with fallbacks (AR mask, then the filled box)."""
    box = np.asarray(box, dtype=np.float64).reshape(4)
    filled = box_to_mask(box, image_shape)
    if min(box[2], box[3]) < config.min_box_px:
        return FusionResult(filled, "box", "box", f"box smaller than {config.min_box_px:g} px: used the filled box", [])
    cleaned: dict[str, np.ndarray] = {}
    scores: list[CandidateScore] = []
    for cand in candidates:
        mask, s = score_candidate(cand, box, config)
        cleaned[cand.name] = mask
        scores.append(s)
    valid = [s for s in scores if s.rejected is None]
    best = max(valid, key=lambda s: s.score, default=None)
    if best is not None and best.rect_iou >= config.min_rect_iou:
        return FusionResult(cleaned[best.name], best.name, best.source, None, scores)
    reason = (
        "no usable candidate"
        if best is None
        else f"best candidate {best.name} has rect IoU {best.rect_iou:.3f} < {config.min_rect_iou}"
    )
    ar = [s for s in scores if s.source == "ar" and s.area > 0 and s.rect_iou >= config.min_rect_iou]
    if ar:
        return FusionResult(cleaned[ar[0].name], ar[0].name, "ar", reason + ": used the AR mask", scores)
    return FusionResult(filled, "box", "box", reason + ": used the filled box", scores)


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def combined_candidates(
    sam_logits: np.ndarray, sam_conf: float, ar_prob: np.ndarray, ar_conf: float, ar_threshold: float = 0.5
) -> list[Candidate]:
    """Soft vote, intersection and union of the best SAM mask and the AR mask (confidence: their mean)."""
    sam_mask = sam_logits > 0
    ar_mask = ar_prob > ar_threshold
    conf = 0.5 * (sam_conf + ar_conf)
    vote = 0.5 * (sigmoid(sam_logits) + ar_prob) > 0.5
    return [
        Candidate("vote", vote, conf, "fused"),
        Candidate("intersection", sam_mask & ar_mask, conf, "fused"),
        Candidate("union", sam_mask | ar_mask, conf, "fused"),
    ]
