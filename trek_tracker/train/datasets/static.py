"""Static image datasets of the phase-1 recipe, each in its published layout:

- COCO instances: ``<split>2017/*.jpg`` and ``annotations/instances_<split>2017.json`` (read with
  ``pycocotools``); every non-crowd instance is an object, in annotation order.
- PASCAL VOC 2012: ``VOC2012/JPEGImages``, ``SegmentationObject`` (palette PNGs, 255 = void) and
  ``ImageSets/Segmentation/<split>.txt``; with ``options.sbd`` (the SBD ``benchmark_RELEASE`` root), SBD's
  instance masks ``dataset/inst/<id>.mat`` of its ``<split>.txt`` are added for images VOC does not annotate.
- ECSSD: ``images/*.jpg`` + ``ground_truth_mask/*.png`` (0/255, one object).
  The three saliency sets' masks are one object each, thresholded at half scale (PASCAL-S's are graded:
  each segment's value is the share of subjects who chose it).
- MSRA10K: ``MSRA10K_Imgs_GT/Imgs/<id>.jpg`` + ``<id>.png`` in the same folder.
- PASCAL-S: ``datasets/imgs/pascal/<n>.jpg`` + ``datasets/masks/pascal/<n>.png``.
- ``static``: any folder pair with matching names (``images`` / ``masks`` settings), e.g. the flattened
  ``JPEGImages/COCO`` + ``Annotations/COCO`` folders of the AOT pre-training preparation.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from trek_tracker.errors import InputError
from trek_tracker.train.datasets.base import (
    FileLabel,
    StaticItem,
    images_in,
    read_binary_label,
    read_label,
    read_list,
    restrict,
)
from trek_tracker.train.datasets.source import DataSource


def paired(img_dir: Path, mask_dir: Path, src: DataSource, what: str, reader=read_label) -> list[StaticItem]:
    """Images and masks with matching stems (a PNG beside its own mask is a mask, as in MSRA10K); ``reader``
    turns a mask file into ids."""
    if not img_dir.is_dir() or not mask_dir.is_dir():
        raise InputError(f"{what} root {src.root}: {img_dir} and {mask_dir} must both exist")
    masks = {p.stem: p for p in mask_dir.glob("*.png")}
    images = {stem: p for stem, p in images_in(img_dir).items() if p not in masks.values()}
    if img_dir == mask_dir:
        images = {p.stem: p for p in img_dir.iterdir() if p.suffix.lower() in (".jpg", ".jpeg")}
    names = restrict(sorted(set(images) & set(masks)), src.sequences, src.exclude, str(img_dir))
    if not names:
        raise InputError(f"no image/mask pairs with matching names in {img_dir} and {mask_dir}")
    return [StaticItem(n, images[n], FileLabel(masks[n], reader), masks[n]) for n in names]


def _first_dir(root: Path, options: list[str], what: str) -> Path:
    for rel in options:
        if (root / rel).is_dir():
            return root / rel
    raise InputError(f"{root} is not a {what} root: none of {', '.join(options)} exists")


def list_generic(src: DataSource) -> list[StaticItem]:
    root = Path(src.root)
    return paired(root / src.images, root / src.masks, src, "static")


def list_ecssd(src: DataSource) -> list[StaticItem]:
    root = Path(src.root)
    return paired(_first_dir(root, ["images", "ECSSD/images"], "ECSSD"),
                  _first_dir(root, ["ground_truth_mask", "ECSSD/ground_truth_mask"], "ECSSD"), src, "ECSSD",
                  read_binary_label)


def list_msra10k(src: DataSource) -> list[StaticItem]:
    folder = _first_dir(Path(src.root), ["MSRA10K_Imgs_GT/Imgs", "Imgs", "."], "MSRA10K")
    return paired(folder, folder, src, "MSRA10K", read_binary_label)


def list_pascals(src: DataSource) -> list[StaticItem]:
    root = Path(src.root)
    return paired(_first_dir(root, ["datasets/imgs/pascal", "imgs/pascal"], "PASCAL-S"),
                  _first_dir(root, ["datasets/masks/pascal", "masks/pascal"], "PASCAL-S"), src, "PASCAL-S",
                  read_binary_label)


class SBDLabel:
    """An SBD instance mask (``GTinst.Segmentation`` of ``inst/<id>.mat``)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __call__(self) -> np.ndarray:
        from scipy.io import loadmat

        try:
            return np.asarray(loadmat(str(self.path))["GTinst"]["Segmentation"][0, 0], np.int64)
        except (OSError, ValueError, KeyError, IndexError) as err:
            raise InputError(f"cannot read SBD instance mask {self.path}: {err}") from None


def list_voc(src: DataSource) -> list[StaticItem]:
    root = Path(src.root)
    voc = _first_dir(root, ["VOCdevkit/VOC2012", "VOC2012", "."], "PASCAL VOC 2012")
    if not (voc / "SegmentationObject").is_dir():
        raise InputError(f"{voc} is not a PASCAL VOC 2012 root: SegmentationObject/ is missing")
    split = src.split or "train"
    names = read_list(voc / "ImageSets" / "Segmentation" / f"{split}.txt")
    items = [StaticItem(n, voc / "JPEGImages" / f"{n}.jpg", FileLabel(voc / "SegmentationObject" / f"{n}.png"),
                        voc / "SegmentationObject" / f"{n}.png") for n in names]
    if src.options.get("sbd"):
        sbd = Path(str(src.options["sbd"]))
        sbd = sbd / "dataset" if (sbd / "dataset").is_dir() else sbd
        if not (sbd / "inst").is_dir():
            raise InputError(f"options.sbd {src.options['sbd']} is not an SBD root (dataset/inst/ missing)")
        have = {it.name for it in items}
        for n in read_list(sbd / f"{src.options.get('sbd_split', split)}.txt"):
            if n not in have:
                items.append(StaticItem(n, sbd / "img" / f"{n}.jpg", SBDLabel(sbd / "inst" / f"{n}.mat"),
                                        sbd / "inst" / f"{n}.mat"))
    names = restrict([it.name for it in items], src.sequences, src.exclude, str(voc))
    keep = set(names)
    return [it for it in items if it.name in keep]


class CocoLabel:
    """The instances of one COCO image drawn in annotation order (ids 1..N, crowds skipped)."""

    def __init__(self, anns: list[dict], height: int, width: int) -> None:
        self.anns, self.height, self.width = anns, height, width

    def __call__(self) -> np.ndarray:
        from pycocotools import mask as mask_utils

        label = np.zeros((self.height, self.width), np.int64)
        for i, ann in enumerate(self.anns, start=1):
            seg = ann["segmentation"]
            if isinstance(seg, list):
                rle = mask_utils.merge(mask_utils.frPyObjects(seg, self.height, self.width))
            elif isinstance(seg.get("counts"), list):
                rle = mask_utils.frPyObjects(seg, self.height, self.width)
            else:
                rle = seg
            label[mask_utils.decode(rle).astype(bool)] = i
        return label


def _pycocotools():
    try:
        from pycocotools.coco import COCO
    except ImportError:
        raise InputError("reading COCO needs pycocotools (pip install pycocotools)") from None
    return COCO


def list_coco(src: DataSource) -> list[StaticItem]:
    root = Path(src.root)
    split = src.split or "train"
    year = str(src.options.get("year", "2017"))
    ann_file = root / "annotations" / f"instances_{split}{year}.json"
    img_dir = root / f"{split}{year}"
    if not ann_file.is_file() or not img_dir.is_dir():
        raise InputError(f"{root} is not a COCO root: annotations/instances_{split}{year}.json and "
                         f"{split}{year}/ are needed")
    coco_cls = _pycocotools()
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        try:
            coco = coco_cls(str(ann_file))
        except (OSError, ValueError, KeyError) as err:
            raise InputError(f"cannot read COCO annotations {ann_file}: {err}") from None
    items = []
    for image_id in sorted(coco.getImgIds()):
        info = coco.imgs[image_id]
        anns = [a for a in coco.loadAnns(coco.getAnnIds(imgIds=image_id, iscrowd=False)) if a.get("area", 1) > 0]
        if anns:
            name = Path(info["file_name"]).stem
            items.append(StaticItem(name, img_dir / info["file_name"], CocoLabel(anns, info["height"], info["width"])))
    names = set(restrict([it.name for it in items], src.sequences, src.exclude, str(ann_file)))
    items = [it for it in items if it.name in names]
    if not items:
        raise InputError(f"no COCO image with instances in {ann_file}")
    return items
