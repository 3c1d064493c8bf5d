"""VOS validation: run a model through the tracker and the one per-video loop over DAVIS-layout sequences,
and score J and F.

Used by ``trek-track eval-vos`` and during training (with the EMA weights). Predictions are compared at the
annotation resolution; frames without an annotation file are propagated but not scored; DAVIS-2017 void
pixels (palette index 255) are background, and the objects are those of the first annotation, as the official
evaluation (davis2017-evaluation) has them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from trek_tracker.device import kernel_flags_kept
from trek_tracker.errors import InputError
from trek_tracker.eval.metrics import RunScore, score_run
from trek_tracker.eval.vos_metrics import ObjectScore, score_sequence, summarise
from trek_tracker.geometry import BoxConfig, mask_to_box
from trek_tracker.init.api import InitConfig
from trek_tracker.loop import Sink, Start, track_video
from trek_tracker.modeling.base import VOSModel
from trek_tracker.pipeline import FrameResult, LoadedModel, Tracker, TrackerConfig
from trek_tracker.results import ObjectIds, write_label_png
from trek_tracker.train.data import IMAGE_SUFFIXES, read_image, read_label, video_dirs
from trek_tracker.video import IndexedFrames

# The DAVIS palette's first colours (saved masks look like DAVIS annotations).
_PALETTE = [0, 0, 0, 128, 0, 0, 0, 128, 0, 128, 128, 0, 0, 0, 128, 128, 0, 128, 0, 128, 128, 128, 128, 128]


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


class Predictions(Sink):
    """Collects each frame's label map and boxes in the annotation's ids (and saves the map when asked)."""

    needs_labels = True

    def __init__(self, seq: SequenceData, ids: ObjectIds, save_dir: Path | None) -> None:
        self.seq, self.ids, self.save_dir = seq, ids, save_dir
        self.labels: list[np.ndarray] = []
        self.boxes: list[dict[int, np.ndarray]] = []  # per frame: annotation id -> the tracker's x,y,w,h box

    def frame(self, index: int, image: np.ndarray | None, result: FrameResult) -> None:
        labels = self.ids.to_original(result.labels)
        self.labels.append(labels)
        self.boxes.append({self.ids.values[k - 1]: box for k, box in result.boxes.items()})
        if self.save_dir is not None:
            write_label_png(self.save_dir / self.seq.name / f"{self.seq.frames[index].stem}.png", labels, _PALETTE)


def predict_sequence(tracker: Tracker, seq: SequenceData, save_dir: Path | None = None,
                     on_frame: Callable[[int], None] | None = None) -> Predictions:
    """Every frame's label map and boxes (annotation ids): frame 0 is the given annotation, the rest
    predicted; ``on_frame(index)`` after each frame (a progress bar)."""
    first = read_label(seq.labels[0]).astype(np.uint8)  # void (palette 255) is background
    ids = ObjectIds.from_labels(first)
    sink = Predictions(seq, ids, save_dir)
    frames = IndexedFrames(lambda i: read_image(seq.frames[i]), range(len(seq.frames)))
    track_video(tracker, frames, Start(mask=ids.to_engine(first)), [sink], on_frame=on_frame)
    return sink


def evaluate_model(model: VOSModel, root: str | Path, *, sequences: list[str] | None = None,
                   max_long_edge: int | None = 480, max_frames: int | None = None,
                   save_dir: str | Path | None = None, box_metrics: bool = False,
                   progress: bool | str = False) -> dict:
    """J&F of ``model`` on the DAVIS-layout folder ``root`` (model put in eval mode, then restored); with
    ``box_metrics``, also the TREK-150-style box scores of :func:`score_boxes` (``box_success``,
    ``box_precision``). ``progress``: a bar of the frames on stderr (a string names it)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    loaded = LoadedModel(model, model.config.name, None, None, device)
    config = TrackerConfig(max_long_edge=max_long_edge, init=InitConfig(method="box"), box=BoxConfig(0))
    scores: list[ObjectScore] = []
    runs: list[RunScore] = []
    bar = None
    try:
        with kernel_flags_kept():  # the tracker's precision must not change the kernels training goes on with
            listed = list_sequences(root, sequences, max_frames)
            if progress:
                from tqdm import tqdm

                bar = tqdm(total=sum(len(seq.frames) for seq in listed), unit="frame", dynamic_ncols=True,
                           desc=progress if isinstance(progress, str) else "validate", leave=False)
            for seq in listed:
                pred = predict_sequence(Tracker(config, loaded=loaded), seq, Path(save_dir) if save_dir else None,
                                        on_frame=None if bar is None else lambda _i: bar.update(1))
                idx = sorted(seq.labels)
                gts = [read_label(seq.labels[i]) for i in idx]
                scores += score_sequence(seq.name, [pred.labels[i] for i in idx], gts)
                if box_metrics:
                    boxes = {obj: np.stack([pred.boxes[i][obj] for i in idx]) for obj in pred.ids.values}
                    runs += score_boxes(boxes, gts)
    finally:
        if bar is not None:
            bar.close()
        model.train(was_training)
    result = summarise(scores)
    if box_metrics:
        result.update(summarise_boxes(runs))
    return result


def mask_boxes(maps: list[np.ndarray], obj: int) -> np.ndarray:
    """One object's ground-truth ``x,y,w,h`` box per frame from id maps: the tight box of its pixels, or a
    ``-1`` row where it is absent (as TREK-150's ground truth marks it)."""
    out = [mask_to_box(m == obj) for m in maps]
    return np.stack([b if b is not None else np.full(4, -1.0) for b in out])


def score_boxes(pred: dict[int, np.ndarray], gts: list[np.ndarray]) -> list[RunScore]:
    """TREK-150 OPE-style scores of every tracked object of a sequence: the tracker's boxes ``pred``
    (annotation id -> boxes at the annotated frames, frame 0 first) against the ground-truth masks' boxes;
    frames without the object in the ground truth are not scored. Boxes are rounded to the 3 decimals of
    a result file, as the toolkit reads them."""
    return [score_run(np.round(boxes, 3), mask_boxes(gts, obj)) for obj, boxes in sorted(pred.items())]


def summarise_boxes(runs: list[RunScore]) -> dict:
    """Mean box success and normalised precision over objects (the OPE scores averaged over runs)."""
    if not runs:
        return {"box_success": math.nan, "box_precision": math.nan}
    return {"box_success": float(np.mean([r.success_score for r in runs])),
            "box_precision": float(np.mean([r.normalized_precision_score for r in runs]))}


def read_prediction(path: Path) -> np.ndarray:
    """A saved prediction as object ids: a palette or grayscale id PNG (as ``read_label`` reads it). An RGB
    file with more than one colour is refused: which colour is which object is not in the file, and reading
    every colour as one object would score a multi-object prediction silently wrong."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            rgb = np.asarray(im) if im.mode in ("RGB", "RGBA") else None
    except (OSError, ValueError) as err:
        raise InputError(f"cannot read prediction {path}: {err}") from None
    if rgb is not None:
        colours = np.unique(rgb[..., :3].reshape(-1, 3), axis=0)
        if len(colours[colours.any(axis=1)]) > 1:
            raise InputError(f"{path} is an RGB image with {len(colours) - 1} object colours; save predictions "
                             "as palette or grayscale PNGs whose values are the object ids")
    return read_label(path)


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
            preds.append(read_prediction(p))
        gts = [read_label(seq.labels[i]) for i in idx]
        for p, g in zip(preds, gts, strict=True):
            if p.shape != g.shape:
                raise InputError(f"{seq.name}: prediction of size {p.shape[::-1]} for annotation {g.shape[::-1]}")
        scores += score_sequence(seq.name, preds, gts)
    return summarise(scores)
