"""Box tracks -> a mask dataset, with our own box -> mask stage (:class:`~trek_tracker.init.api.BoxToMask`).

The TREK-150 report trains on LaSOT with masks from RTS and on EgoTracks with masks from SAM;
``trek-track train-data masks-from-boxes`` makes such masks for any box dataset (LaSOT, GOT-10k, EgoTracks) with
SAM, Alpha-Refine or their fusion, on every frame or every k-th one. Output::

    <out>/manifest.json                       dataset, split, method, checkpoints (path + sha256), parameters
    <out>/Annotations/<sequence>/<frame>.png  palette PNG, object id 1, at the frame's own size
    <out>/done/<sequence>.json                written once a sequence is complete (frames, method, seconds)

Resumable: a finished sequence (its ``done`` record) is skipped and, inside an unfinished one, every mask
already written is kept; every file is written atomically. ``shard = (i, n)`` takes every n-th sequence,
as ``trek-track eval --shard`` does, so n machines or GPUs can share the work. A training source then reads
the result with ``mask_root = <out>``.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from trek_tracker import __version__
from trek_tracker.errors import InputError
from trek_tracker.files import atomic_write, read_json, sha256_of, write_json
from trek_tracker.train import datasets
from trek_tracker.train.datasets.base import BoxTrack, read_image
from trek_tracker.train.datasets.source import DataSource

MANIFEST_FORMAT = "trek-track-masks-from-boxes/1"
# Manifest fields that must agree between shards and resumed runs writing into one folder.
_SAME = ("format", "kind", "root", "split", "method", "every", "checkpoints", "params", "sequences",
         "max_sequences")
_PALETTE = [0, 0, 0, 128, 0, 0] + [0] * (768 - 6)


@dataclass
class MaskJob:
    kind: str
    root: str
    out: str
    split: str | None = None
    method: str = "fused"  # fused | sam | ar | grabcut | box
    every: int = 1  # a mask on every k-th visible frame
    sequences: list[str] | None = None
    max_sequences: int | None = None  # a fixed random subset (the report: 300 EgoTracks videos)
    shard: tuple[int, int] = (0, 1)


def write_mask(path: Path, mask: np.ndarray) -> None:
    im = Image.fromarray(mask.astype(np.uint8), mode="P")
    im.putpalette(_PALETTE)
    with atomic_write(path, "wb") as f:
        im.save(f, format="PNG")


def _checkpoints(init_config) -> list[dict]:
    from trek_tracker.weights import resolve_checkpoint

    found = []
    for role, path in (("sam", init_config.sam_checkpoint), ("alpha_refine", init_config.ar_checkpoint)):
        if path is None:
            continue
        resolved = resolve_checkpoint(path, kind=role)  # a CheckpointError names the download command
        found.append({"role": role, "path": str(Path(resolved).resolve()), "sha256": sha256_of(resolved)})
    return found


def manifest_for(job: MaskJob, init_config, checkpoints: list[dict], model_note: str | None) -> dict:
    params = dataclasses.asdict(init_config)
    for k in ("sam_checkpoint", "ar_checkpoint", "method"):
        params.pop(k, None)
    return {"format": MANIFEST_FORMAT, "kind": job.kind, "root": str(Path(job.root).resolve()), "split": job.split,
            "method": job.method, "every": job.every, "checkpoints": checkpoints, "models": model_note,
            "params": params, "sequences": job.sequences, "max_sequences": job.max_sequences,
            "trek_tracker": __version__}


def _compared(manifest: dict, key: str):
    """A manifest field as shards and resumed runs must agree on it: weights by role and content, not by where
    they lie (machines sharing one output folder keep their weight caches at different paths)."""
    value = manifest.get(key)
    if key == "checkpoints" and isinstance(value, list):
        return [(c.get("role"), c.get("sha256")) if isinstance(c, dict) else c for c in value]
    return value


def _claim_manifest(out: Path, manifest: dict) -> None:
    """Write the manifest, or check that an existing one describes the same masks."""
    path = out / "manifest.json"
    if path.is_file():
        old = read_json(path)
        diff = [k for k in _SAME if _compared(old, k) != _compared(manifest, k)]
        if diff:
            raise InputError(f"{out} already holds masks made with other settings ({', '.join(diff)} differ): "
                             "use another --out folder, or the same settings to resume")
        return
    write_json(path, manifest)


def frames_to_mask(track: BoxTrack, every: int) -> list[int]:
    """Indices of the visible frames that get a mask: every ``every``-th of them, first one included."""
    visible = np.flatnonzero(track.visible)
    return [int(i) for i in visible[::every]]


def make_masks(job: MaskJob, box_to_mask, *, manifest_extra: dict | None = None, progress: bool = True,
               log: Callable[[str], None] = print) -> dict:
    """Write the masks of ``job``'s shard with ``box_to_mask`` (a :class:`BoxToMask` or any callable
    ``(image, box) -> result with .mask``); returns counts of sequences and masks written and skipped."""
    if job.every < 1:
        raise InputError("--every must be at least 1")
    src = DataSource(job.root, kind=job.kind, split=job.split, sequences=job.sequences,
                     max_sequences=job.max_sequences)
    if datasets.reader(job.kind).family != "boxes":
        raise InputError(f"masks-from-boxes reads box-track datasets (lasot, got10k, egotracks), not {job.kind!r}")
    tracks = datasets.list_tracks(src)
    index, count = job.shard
    if count < 1 or not 0 <= index < count:
        raise InputError(f"bad shard {index}/{count}: use i/n with 0 <= i < n")
    mine = tracks[index::count]
    out = Path(job.out)
    init_config = getattr(box_to_mask, "config", None)
    checkpoints = _checkpoints(init_config) if init_config is not None else []
    note = getattr(box_to_mask, "model_note", None)
    manifest = manifest_for(job, init_config, checkpoints, note) if init_config is not None else \
        {"format": MANIFEST_FORMAT, "kind": job.kind, "method": job.method, "every": job.every}
    manifest.update(manifest_extra or {})
    _claim_manifest(out, manifest)
    stats = {"sequences": len(mine), "done_before": 0, "masks_written": 0, "masks_kept": 0, "fallbacks": 0,
             "boxes_skipped": 0}
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(mine), desc=f"masks {index}/{count}", dynamic_ncols=True)
    for track in mine:
        done = out / "done" / f"{track.name}.json"
        if done.is_file():
            stats["done_before"] += 1
        else:
            t0 = time.perf_counter()
            folder = out / "Annotations" / track.name
            written, methods, skipped = 0, {}, []
            for i in frames_to_mask(track, job.every):
                path = folder / f"{Path(str(track.images[i])).stem}.png"
                if path.is_file():
                    stats["masks_kept"] += 1
                    continue
                try:
                    result = box_to_mask(read_image(track.images[i]), track.boxes[i])
                except InputError as err:  # a box the dataset got wrong (wholly outside its frame): that frame
                    skipped.append({"frame": i, "problem": str(err)})  # has no mask, as a sparse annotation
                    log(f"warning: {track.name} frame {i}: {err}; no mask for it")
                    continue
                used = getattr(result, "method", job.method)
                methods[used] = methods.get(used, 0) + 1
                if used != job.method:
                    stats["fallbacks"] += 1
                write_mask(path, result.mask)
                written += 1
            stats["masks_written"] += written
            stats["boxes_skipped"] += len(skipped)
            write_json(done, {"sequence": track.name, "frames": len(track), "masks": len(frames_to_mask(
                track, job.every)), "written_now": written, "methods_used": methods, "skipped": skipped,
                "seconds": round(time.perf_counter() - t0, 3)})
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    log(f"{job.kind} shard {index}/{count}: {stats['sequences']} sequences ({stats['done_before']} done before), "
        f"{stats['masks_written']} masks written, {stats['masks_kept']} kept"
        + (f", {stats['fallbacks']} fell back to another method" if stats["fallbacks"] else "")
        + (f", {stats['boxes_skipped']} boxes skipped (see the warnings)" if stats["boxes_skipped"] else ""))
    return stats
