"""Readers for the training datasets of the reports' recipe, each in its published layout (docs/datasets.md).

``READERS[kind]`` says what a ``[[data]]`` source of that kind holds and how to list it:

- ``family = "video"``: :func:`list_videos` gives :class:`~.base.VideoItem` (annotated frames with their
  real frame numbers);
- ``family = "boxes"``: box tracks (:func:`list_tracks`), trainable once ``mask_root`` holds their masks;
- ``family = "static"``: :func:`list_static` gives :class:`~.base.StaticItem` (an image and its objects).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Reader:
    kind: str
    family: str  # video | boxes | static
    title: str
    lister: str  # "module:function" listing training items (videos or static items)
    tracks: str | None = None  # box datasets: "module:function" listing box tracks

    def load(self, which: str) -> Callable[..., Any]:
        import importlib

        module, attr = which.split(":")
        return getattr(importlib.import_module(f"trek_tracker.train.datasets.{module}"), attr)


READERS: dict[str, Reader] = {r.kind: r for r in (
    Reader("video", "video", "any DAVIS / YouTube-VOS style folder", "folders:list_folder"),
    Reader("davis", "video", "DAVIS 2017", "folders:list_davis"),
    Reader("youtubevos", "video", "YouTube-VOS 2019", "folders:list_youtubevos"),
    Reader("mose", "video", "MOSE", "folders:list_mose"),
    Reader("visor", "video", "EPIC-KITCHENS VISOR (sparse JSON, or the toolkit's DAVIS-style export)",
           "visor:list_visor"),
    Reader("vipseg", "video", "VIPSeg", "vipseg:list_vipseg"),
    Reader("lasot", "boxes", "LaSOT", "boxes:list_box_videos", "boxes:lasot_tracks"),
    Reader("got10k", "boxes", "GOT-10k", "boxes:list_box_videos", "boxes:got10k_tracks"),
    Reader("egotracks", "boxes", "EgoTracks", "boxes:list_box_videos", "boxes:egotracks_tracks"),
    Reader("static", "static", "any image folder with a mask folder", "static:list_generic"),
    Reader("coco", "static", "COCO instances", "static:list_coco"),
    Reader("voc", "static", "PASCAL VOC 2012 (+ SBD)", "static:list_voc"),
    Reader("ecssd", "static", "ECSSD", "static:list_ecssd"),
    Reader("msra10k", "static", "MSRA10K", "static:list_msra10k"),
    Reader("pascals", "static", "PASCAL-S", "static:list_pascals"),
)}


def reader(kind: str) -> Reader:
    from trek_tracker.errors import InputError

    if kind not in READERS:
        raise InputError(f"unknown dataset kind {kind!r}; choose one of: {', '.join(READERS)}")
    return READERS[kind]


def is_static(kind: str) -> bool:
    return reader(kind).family == "static"


def list_items(src) -> list:
    """The training items of a source: videos (video and box kinds) or static items; ``max_sequences`` keeps
    a fixed random subset of them (box kinds draw it among their tracks, before the masks are looked up)."""
    from trek_tracker.train.datasets.base import pick_subset

    items = reader(src.kind).load(reader(src.kind).lister)(src)
    if src.max_sequences is not None and len(items) > src.max_sequences:
        keep = set(pick_subset([it.name for it in items], src.max_sequences,
                               int(src.options.get("subset_seed", 0))))
        items = [it for it in items if it.name in keep]
    return items


def list_tracks(src) -> list:
    """The box tracks of a box dataset."""
    from trek_tracker.errors import InputError

    r = reader(src.kind)
    if r.tracks is None:
        raise InputError(f"{src.kind} is not a box-track dataset (box datasets: "
                         f"{', '.join(k for k, v in READERS.items() if v.family == 'boxes')})")
    return r.load(r.tracks)(src)
