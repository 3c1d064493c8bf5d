"""VOS validation: run a model with the inference engine over DAVIS-layout sequences and score J and F.

Used by ``trek-track eval-vos`` and during training (with the EMA weights). Predictions are compared at the
annotation resolution; frames without an annotation file are propagated but not scored; DAVIS-2017 void
pixels (palette index 255) are ignored, as the benchmark does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from trek_tracker.errors import InputError
from trek_tracker.eval.vos_metrics import ObjectScore, score_sequence, summarise
from trek_tracker.inference.engine import EngineConfig, VOSEngine
from trek_tracker.train.data import IMAGE_SUFFIXES, read_image, read_label, video_dirs


@dataclass
class SequenceData:
    name: str
    frames: list[Path]
    labels: dict[int, Path]  # frame index -> annotation


def list_sequences(root: str | Path, sequences: list[str] | None = None,
                   max_frames: int | None = None) -> list[SequenceData]:
    img_dir, ann_dir = video_dirs(Path(root))
    names = sorted(p.name for p in img_dir.iterdir() if p.is_dir())
    if sequences:
        missing = sorted(set(sequences) - set(names))
        if missing:
            raise InputError(f"sequences not found in {img_dir}: {', '.join(missing)}")
        names = [n for n in names if n in sequences]
    out = []
    for name in names:
        frames = sorted(p for p in (img_dir / name).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        frames = frames[:max_frames] if max_frames else frames
        index = {p.stem: i for i, p in enumerate(frames)}
        labels = {index[p.stem]: p for p in sorted((ann_dir / name).glob("*.png")) if p.stem in index}
        if frames and 0 in labels:
            out.append(SequenceData(name, frames, labels))
    if not out:
        raise InputError(f"no sequence in {root} has frames and a first-frame annotation")
    return out


@torch.no_grad()
def predict_sequence(model: torch.nn.Module, seq: SequenceData, engine_config: EngineConfig) -> list[np.ndarray]:
    """Id maps for every frame: frame 0 is the given annotation, the rest are predicted."""
    engine = VOSEngine(model, engine_config)
    first = read_label(seq.labels[0])
    engine.add_reference(read_image(seq.frames[0]), first)
    preds = [first]
    for path in seq.frames[1:]:
        preds.append(engine.step(read_image(path)).labels.cpu().numpy().astype(np.int64))
    return preds


def evaluate_model(model: torch.nn.Module, root: str | Path, *, sequences: list[str] | None = None,
                   max_long_edge: int | None = 480, max_frames: int | None = None,
                   save_dir: str | Path | None = None, box_metrics: bool = False) -> dict:
    """J&F of ``model`` on the DAVIS-layout folder ``root`` (model put in eval mode, then restored); with
    ``box_metrics``, also the TREK-150-style box scores of :func:`score_boxes` (``box_success``,
    ``box_precision``)."""
    was_training = model.training
    model.eval()
    scores: list[ObjectScore] = []
    runs: list = []
    try:
        for seq in list_sequences(root, sequences, max_frames):
            preds = predict_sequence(model, seq, EngineConfig(max_long_edge=max_long_edge))
            if save_dir is not None:
                _save_masks(Path(save_dir) / seq.name, seq, preds)
            idx = sorted(seq.labels)
            gts = [read_label(seq.labels[i]) for i in idx]
            scores += score_sequence(seq.name, [preds[i] for i in idx], gts, [read_void(seq.labels[i]) for i in idx])
            if box_metrics:
                runs += score_boxes([preds[i] for i in idx], gts)
    finally:
        model.train(was_training)
    result = summarise(scores)
    if box_metrics:
        result.update(summarise_boxes(runs))
    return result


def mask_boxes(maps: list[np.ndarray], obj: int, *, hold: bool) -> np.ndarray:
    """One object's ``x,y,w,h`` box per frame from id maps: the tight box of its pixels. An empty frame gives
    the previous box when ``hold`` (the tracker's lost-target policy) and ``-1`` rows (absent, as TREK-150's
    ground truth marks it) otherwise."""
    from trek_tracker.geometry import mask_to_box

    out, last = [], np.full(4, -1.0)
    for m in maps:
        box = mask_to_box(m == obj)
        if box is not None:
            last = box
        out.append(box if box is not None else (last if hold else np.full(4, -1.0)))
    return np.stack(out)


def score_boxes(preds: list[np.ndarray], gts: list[np.ndarray]) -> list:
    """TREK-150 OPE-style scores (:func:`trek_tracker.eval.metrics.score_run`) of every object of a sequence:
    predicted boxes from the predicted masks against ground-truth boxes from the annotated masks, frames
    without the object in the ground truth not scored, the first frame forced to the ground truth."""
    from trek_tracker.eval.metrics import score_run

    ids = sorted(set(np.unique(np.concatenate([g.ravel() for g in gts]))) - {0})
    runs = []
    for obj in ids:
        gt = mask_boxes(gts, obj, hold=False)
        first = int(np.flatnonzero(gt[:, 0] >= 0)[0])
        runs.append(score_run(mask_boxes(preds[first:], obj, hold=True), gt[first:]))
    return runs


def summarise_boxes(runs: list) -> dict:
    """Mean box success and normalised precision over objects (the OPE scores averaged over runs)."""
    if not runs:
        return {"box_success": math.nan, "box_precision": math.nan}
    return {"box_success": float(np.mean([r.success_score for r in runs])),
            "box_precision": float(np.mean([r.normalized_precision_score for r in runs]))}


def read_void(path: Path) -> np.ndarray:
    """DAVIS-2017 "void" pixels (palette index 255) of an annotation; all False for other masks."""
    with Image.open(path) as im:
        arr = np.asarray(im)
        return (arr == 255) if im.mode == "P" else np.zeros(arr.shape[:2], bool)


def _save_masks(folder: Path, seq: SequenceData, preds: list[np.ndarray]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    palette = [0, 0, 0, 128, 0, 0, 0, 128, 0, 128, 128, 0, 0, 0, 128, 128, 0, 128, 0, 128, 128, 128, 128, 128]
    for path, pred in zip(seq.frames, preds, strict=True):
        im = Image.fromarray(pred.astype(np.uint8), mode="P")
        im.putpalette(palette + [0] * (768 - len(palette)))
        tmp = folder / f".{path.stem}.png.tmp"
        im.save(tmp, format="PNG")
        tmp.replace(folder / f"{path.stem}.png")


def evaluate_folder(pred_root: str | Path, root: str | Path, *, sequences: list[str] | None = None) -> dict:
    """J&F of saved predictions ``pred_root/<seq>/<frame>.png`` against the DAVIS-layout ``root``."""
    scores: list[ObjectScore] = []
    for seq in list_sequences(root, sequences):
        idx = sorted(seq.labels)
        preds = []
        for i in idx:
            p = Path(pred_root) / seq.name / f"{seq.labels[i].stem}.png"
            if not p.is_file():
                raise InputError(f"prediction missing: {p}")
            preds.append(read_label(p))
        gts = [read_label(seq.labels[i]) for i in idx]
        for p, g in zip(preds, gts, strict=True):
            if p.shape != g.shape:
                raise InputError(f"{seq.name}: prediction of size {p.shape[::-1]} for annotation {g.shape[::-1]}")
        scores += score_sequence(seq.name, preds, gts, [read_void(seq.labels[i]) for i in idx])
    return summarise(scores)
