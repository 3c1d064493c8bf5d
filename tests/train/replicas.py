"""Tiny replicas of every published dataset layout, written by the tests from the shared DAVIS clips.

Each builder takes the DAVIS root and a destination and returns what it wrote (names, frame numbers, id maps,
boxes), so a test can check that a reader recovers exactly that. Frames are DAVIS frames shrunk to
``SIZE``; every label holds two objects: the DAVIS object (id 1) and a box in a corner (id 2).
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

SIZE = (128, 72)  # (w, h)
PALETTE = [0, 0, 0, 128, 0, 0, 0, 128, 0, 128, 128, 0] + [0] * (768 - 12)


def davis_frames(davis: Path, seq: str, count: int, step: int = 1) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """``count`` frames (RGB) and two-object labels of a shared DAVIS sequence, shrunk to SIZE."""
    img_dir, ann_dir = davis / "JPEGImages" / "480p" / seq, davis / "Annotations" / "480p" / seq
    frames, labels = [], []
    for path in sorted(img_dir.glob("*.jpg"))[: count * step: step]:
        img = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
        mask = np.asarray(Image.open(ann_dir / f"{path.stem}.png")) > 0
        frames.append(cv2.resize(img, SIZE, interpolation=cv2.INTER_AREA))
        label = cv2.resize(mask.astype(np.uint8), SIZE, interpolation=cv2.INTER_NEAREST).astype(np.int64)
        label[2:14, 2:20] = 2  # a second object, away from the DAVIS one
        labels.append(label)
    return frames, labels


def save_jpg(path: Path, rgb: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])


def save_png(path: Path, label: np.ndarray, mode: str = "P") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if mode == "P":
        im = Image.fromarray(label.astype(np.uint8), mode="P")
        im.putpalette(PALETTE)
        im.save(path)
    elif mode == "16":
        cv2.imwrite(str(path), label.astype(np.uint16))
    else:  # 0/255 grayscale, one object
        Image.fromarray(((label > 0) * 255).astype(np.uint8), mode="L").save(path)


def polygons(mask: np.ndarray) -> list[list[list[float]]]:
    """Outer contours of a bool mask as lists of [x, y] points."""
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    return [c.reshape(-1, 2).astype(float).tolist() for c in contours if len(c) >= 3]


def box_of(mask: np.ndarray) -> list[float]:
    ys, xs = np.nonzero(mask)
    return [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1)]


# --------------------------------------------------------------------------------------------- video layouts
def davis2017(davis: Path, root: Path) -> dict:
    """DAVIS 2017: 480p folders, ImageSets/2017/{train,val}.txt (train: blackswan, dog; val: car-shadow)."""
    truth = {}
    for seq in ("blackswan", "dog", "car-shadow"):
        frames, labels = davis_frames(davis, seq, 4)
        for i, (f, lb) in enumerate(zip(frames, labels, strict=True)):
            save_jpg(root / "JPEGImages" / "480p" / seq / f"{i:05d}.jpg", f)
            save_png(root / "Annotations" / "480p" / seq / f"{i:05d}.png", lb)
        truth[seq] = labels
    sets = root / "ImageSets" / "2017"
    sets.mkdir(parents=True)
    (sets / "train.txt").write_text("blackswan\ndog\n")
    (sets / "val.txt").write_text("car-shadow\n")
    return truth


def youtubevos(davis: Path, root: Path) -> dict:
    """YouTube-VOS 2019 train: every 5th frame annotated (00000, 00005, 00010, 00015) and meta.json; object
    2 only on 00005 (a one-frame object: official readers drop its frames)."""
    frames, labels = davis_frames(davis, "dog", 4)
    split = root / "train"
    names = [f"{5 * i:05d}" for i in range(4)]
    for i, (name, f, lb) in enumerate(zip(names, frames, labels, strict=True)):
        lb = np.where(lb == 2, 2 if i == 1 else 0, lb)
        labels[i] = lb
        save_jpg(split / "JPEGImages" / "vid0" / f"{name}.jpg", f)
        save_jpg(split / "JPEGImages" / "vid0" / f"{5 * i + 1:05d}.jpg", f)  # an unannotated frame
        save_png(split / "Annotations" / "vid0" / f"{name}.png", lb)
    meta = {"videos": {"vid0": {"objects": {"1": {"category": "dog", "frames": names},
                                            "2": {"category": "box", "frames": [names[1]]}}}}}
    (split / "meta.json").write_text(json.dumps(meta))
    return {"vid0": labels, "numbers": [0, 5, 10, 15]}


def mose(davis: Path, root: Path) -> dict:
    frames, labels = davis_frames(davis, "bmx-trees", 5)
    for i, (f, lb) in enumerate(zip(frames, labels, strict=True)):
        save_jpg(root / "train" / "JPEGImages" / "m1" / f"{i:05d}.jpg", f)
        save_png(root / "train" / "Annotations" / "m1" / f"{i:05d}.png", lb)
    return {"m1": labels}


def vipseg(davis: Path, root: Path) -> dict:
    """VIPSeg 720p: 16-bit panomasks with a stuff value (7) around a thing instance (value 1201) and a
    second thing (value 3402)."""
    frames, labels = davis_frames(davis, "kite-surf", 3)
    top = root / "VIPSeg_720P"
    pano = []
    for i, (f, lb) in enumerate(zip(frames, labels, strict=True)):
        value = np.full(lb.shape, 7, np.int64)
        value[lb == 1] = 1201
        value[lb == 2] = 3402
        value[-4:, :] = 0  # unlabelled
        pano.append(value)
        save_jpg(top / "images" / "12_abc" / f"{i:08d}.jpg", f)
        save_png(top / "panomasks" / "12_abc" / f"{i:08d}.png", value, mode="16")
    (top / "train.txt").write_text("12_abc\n")
    (top / "val.txt").write_text("")
    return {"12_abc": pano}


VISOR_NUMBERS = [10, 40, 100, 130]


def visor(davis: Path, root: Path, zipped: bool = True) -> dict:
    """VISOR GroundTruth-SparseAnnotations: one video P01_01 with two sub-sequences (blackswan frames with
    real numbers 10, 40, 100, 130; then dog frames) in annotations/train/P01_01.json, frames zipped."""
    entries, images, truth = [], {}, {}
    for sub, seq, numbers in (("P01_01_seq_00001", "blackswan", VISOR_NUMBERS), ("P01_01_seq_00002", "dog",
                                                                                   [500, 520, 560])):
        frames, labels = davis_frames(davis, seq, len(numbers))
        truth[sub] = labels
        for n, f, lb in zip(numbers, frames, labels, strict=True):
            name = f"P01_01_frame_{n:010d}.jpg"
            images[name] = f
            # "pan" sorts after "bird": ids 1 (bird) and 2 (pan), as the toolkit numbers sorted names
            anns = [{"id": f"{sub}-{n}-b", "name": "bird", "class_id": 5, "segments": polygons(lb == 1)},
                    {"id": f"{sub}-{n}-p", "name": "pan", "class_id": 9, "segments": polygons(lb == 2)}]
            entries.append({"image": {"image_path": f"P01_01/{name}", "name": name, "subsequence": sub,
                                      "video": "P01_01"}, "annotations": anns[::-1]})
    # The second object is listed first and drawn first: the bird (drawn last) covers it where they meet.
    ann = root / "annotations" / "train" / "P01_01.json"
    ann.parent.mkdir(parents=True)
    ann.write_text(json.dumps({"video_annotations": entries[::-1]}))
    rgb = root / "rgb_frames" / "train" / "P01"
    rgb.mkdir(parents=True)
    if zipped:
        with zipfile.ZipFile(rgb / "P01_01.zip", "w") as z:
            for name, f in images.items():
                z.writestr(name, cv2.imencode(".jpg", cv2.cvtColor(f, cv2.COLOR_RGB2BGR))[1].tobytes())
    else:
        for name, f in images.items():
            save_jpg(rgb / "P01_01" / name, f)
    return truth


def visor_export(davis: Path, root: Path) -> dict:
    """The DAVIS-style export of VISOR's toolkit (VISOR_2022/...)."""
    frames, labels = davis_frames(davis, "blackswan", len(VISOR_NUMBERS))
    top = root / "VISOR_2022"
    for n, f, lb in zip(VISOR_NUMBERS, frames, labels, strict=True):
        save_jpg(top / "JPEGImages" / "480p" / "P01_01_seq_00001" / f"P01_01_frame_{n:010d}.jpg", f)
        save_png(top / "Annotations" / "480p" / "P01_01_seq_00001" / f"P01_01_frame_{n:010d}.png", lb)
    (top / "ImageSets" / "2022").mkdir(parents=True)
    (top / "ImageSets" / "2022" / "train.txt").write_text("P01_01_seq_00001")
    return {"P01_01_seq_00001": labels}


# --------------------------------------------------------------------------------------------- box layouts
def _track(davis: Path, seq: str, count: int) -> tuple[list[np.ndarray], list[np.ndarray], np.ndarray]:
    frames, labels = davis_frames(davis, seq, count)
    boxes = np.array([box_of(lb == 1) for lb in labels])
    return frames, labels, boxes


def lasot(davis: Path, root: Path) -> dict:
    """LaSOT: bird/bird-1 (blackswan, frame 3 fully occluded) and dog/dog-2; training_set.txt = both."""
    truth = {}
    for cls, name, seq in (("bird", "bird-1", "blackswan"), ("dog", "dog-2", "dog")):
        frames, labels, boxes = _track(davis, seq, 4)
        folder = root / cls / name
        for i, f in enumerate(frames):
            save_jpg(folder / "img" / f"{i + 1:08d}.jpg", f)
        np.savetxt(folder / "groundtruth.txt", boxes, fmt="%d", delimiter=",")
        occluded = [0, 0, 1, 0] if name == "bird-1" else [0, 0, 0, 0]
        (folder / "full_occlusion.txt").write_text(",".join(map(str, occluded)))
        (folder / "out_of_view.txt").write_text("0,0,0,0")
        truth[name] = {"boxes": boxes, "visible": [not o for o in occluded], "labels": labels}
    (root / "training_set.txt").write_text("bird-1\ndog-2\n")
    (root / "testing_set.txt").write_text("")
    return truth


def got10k(davis: Path, root: Path) -> dict:
    frames, labels, boxes = _track(davis, "car-shadow", 4)
    folder = root / "train" / "GOT-10k_Train_000001"
    for i, f in enumerate(frames):
        save_jpg(folder / f"{i + 1:08d}.jpg", f)
    np.savetxt(folder / "groundtruth.txt", boxes, fmt="%.4f", delimiter=",")
    (folder / "absence.label").write_text("0\n1\n0\n0\n")
    (root / "train" / "list.txt").write_text("GOT-10k_Train_000001\n")
    return {"GOT-10k_Train_000001": {"boxes": boxes, "visible": [True, False, True, True], "labels": labels}}


def egotracks(davis: Path, root: Path) -> dict:
    """EgoTracks: one clip (frames 0..5 extracted), one query set whose lt_track covers frames 1, 3, 4."""
    frames, labels, boxes = _track(davis, "dog", 6)
    for i, f in enumerate(frames):
        save_jpg(root / "frames" / "clipA" / f"{i}.jpg", f)
    track = [{"exported_clip_frame_number": n, "x": boxes[n][0], "y": boxes[n][1], "width": boxes[n][2],
              "height": boxes[n][3]} for n in (1, 3, 4)]
    ann = {"videos": [{"video_uid": "v1", "clips": [
        {"exported_clip_uid": "clipA", "annotations": [{"query_sets": {
            "1": {"is_valid": True, "object_title": "red cup", "lt_track": track,
                  "visual_crop": {"exported_clip_frame_number": 1}},
            "2": {"is_valid": False, "object_title": "knife", "lt_track": track}}}]},
        {"clip_uid": "not-exported", "annotations": []}]}]}
    (root / "egotracks_train.json").write_text(json.dumps(ann))
    return {"clipA_1_red-cup": {"boxes": boxes[[1, 3, 4]], "numbers": [1, 3, 4],
                                "labels": [labels[n] for n in (1, 3, 4)]}}


# --------------------------------------------------------------------------------------------- static layouts
def coco(davis: Path, root: Path) -> dict:
    """COCO 2017 instances: two images; instances as polygons, one as RLE, one crowd (ignored)."""
    from pycocotools import mask as mask_utils

    images, annotations, truth = [], [], {}
    for image_id, seq in ((1, "blackswan"), (2, "dog")):
        frames, labels = davis_frames(davis, seq, 1)
        name = f"{image_id:012d}.jpg"
        save_jpg(root / "train2017" / name, frames[0])
        h, w = labels[0].shape
        images.append({"id": image_id, "file_name": name, "height": h, "width": w})
        annotations.append({"id": 10 * image_id, "image_id": image_id, "category_id": 1, "iscrowd": 0,
                            "area": float((labels[0] == 1).sum()), "segmentation": polygons(labels[0] == 1)
                            and [sum(p, []) for p in polygons(labels[0] == 1)]})
        rle = mask_utils.encode(np.asfortranarray((labels[0] == 2).astype(np.uint8)))
        rle["counts"] = rle["counts"].decode()
        annotations.append({"id": 10 * image_id + 1, "image_id": image_id, "category_id": 2, "iscrowd": 0,
                            "area": float((labels[0] == 2).sum()), "segmentation": rle})
        crowd = mask_utils.encode(np.asfortranarray(np.pad(np.ones((4, 4), np.uint8), ((h - 4, 0), (w - 4, 0)))))
        crowd["counts"] = crowd["counts"].decode()
        annotations.append({"id": 10 * image_id + 2, "image_id": image_id, "category_id": 3, "iscrowd": 1,
                            "area": 16.0, "segmentation": crowd})
        truth[name[:-4]] = labels[0]
    cats = [{"id": i, "name": n} for i, n in ((1, "bird"), (2, "box"), (3, "crowd"))]
    (root / "annotations").mkdir(parents=True)
    (root / "annotations" / "instances_train2017.json").write_text(
        json.dumps({"images": images, "annotations": annotations, "categories": cats}))
    return truth


def voc(davis: Path, root: Path, sbd: Path | None = None) -> dict:
    """VOC 2012 SegmentationObject (void 255 on the object rims) + an SBD instance .mat for another image."""
    from scipy.io import savemat

    voc_root = root / "VOCdevkit" / "VOC2012"
    truth = {}
    frames, labels = davis_frames(davis, "blackswan", 1)
    lb = labels[0].copy()
    edge = cv2.dilate((lb > 0).astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool) & (lb == 0)
    save_jpg(voc_root / "JPEGImages" / "2007_000032.jpg", frames[0])
    save_png(voc_root / "SegmentationObject" / "2007_000032.png", np.where(edge, 255, lb))
    (voc_root / "ImageSets" / "Segmentation").mkdir(parents=True)
    (voc_root / "ImageSets" / "Segmentation" / "train.txt").write_text("2007_000032\n")
    truth["2007_000032"] = lb
    if sbd is not None:
        frames, labels = davis_frames(davis, "dog", 1)
        ds = sbd / "dataset"
        save_jpg(ds / "img" / "2008_000002.jpg", frames[0])
        (ds / "inst").mkdir(parents=True)
        gt = np.zeros((1, 1), dtype=[("Segmentation", object), ("Boundaries", object), ("Categories", object)])
        gt[0, 0]["Segmentation"] = labels[0].astype(np.uint8)
        gt[0, 0]["Boundaries"] = np.zeros((2, 1), object)
        gt[0, 0]["Categories"] = np.array([[12], [3]], np.uint8)
        savemat(ds / "inst" / "2008_000002.mat", {"GTinst": gt})
        (ds / "train.txt").write_text("2007_000032\n2008_000002\n")
        truth["2008_000002"] = labels[0]
    return truth


def saliency(davis: Path, root: Path, kind: str) -> dict:
    """ECSSD, MSRA10K or PASCAL-S: 0/255 masks of one object (the DAVIS one)."""
    img_rel, mask_rel, suffixes = {
        "ecssd": ("images", "ground_truth_mask", ("0001", "0002")),
        "msra10k": ("MSRA10K_Imgs_GT/Imgs", "MSRA10K_Imgs_GT/Imgs", ("75", "210")),
        "pascals": ("datasets/imgs/pascal", "datasets/masks/pascal", ("1", "2")),
    }[kind]
    truth = {}
    for name, seq in zip(suffixes, ("bmx-trees", "kite-surf"), strict=True):
        frames, labels = davis_frames(davis, seq, 1)
        save_jpg(root / img_rel / f"{name}.jpg", frames[0])
        save_png(root / mask_rel / f"{name}.png", labels[0] == 1, mode="L")
        truth[name] = (labels[0] == 1).astype(np.int64)
    return truth
