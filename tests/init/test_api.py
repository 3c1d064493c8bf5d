"""``BoxToMask``: method choice, messages, errors, and every init end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from trek_tracker.errors import CheckpointError, InputError, OutOfMemory, memory_errors
from trek_tracker.geometry import box_to_mask
from trek_tracker.init.alpha_refine.secm import SEcm
from trek_tracker.init.api import BoxToMask, InitConfig, choose_method

from .test_sam import tiny_sam


def _disk_image(h: int = 96, w: int = 128) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    img = rng.integers(0, 50, (h, w, 3), dtype=np.uint8)
    yy, xx = np.mgrid[0:h, 0:w]
    disk = (yy + 0.5 - 50) ** 2 + (xx + 0.5 - 60) ** 2 <= 24**2
    img[disk] = rng.integers(200, 255, (int(disk.sum()), 3), dtype=np.uint8)
    return img, disk, np.array([36.0, 26.0, 48.0, 48.0])


def test_auto_method_and_messages() -> None:
    assert choose_method(InitConfig(sam_checkpoint="s", ar_checkpoint="a")) == ("fused", None)
    method, msg = choose_method(InitConfig(sam_checkpoint="s"))
    assert method == "sam" and "--ar-checkpoint" in msg
    method, msg = choose_method(InitConfig(ar_checkpoint="a"))
    assert method == "ar" and "--sam-checkpoint" in msg
    method, msg = choose_method(InitConfig())
    assert method == "grabcut" and "--sam-checkpoint" in msg and "--ar-checkpoint" in msg and "grabcut" in msg


def test_explicit_methods_need_their_checkpoints() -> None:
    with pytest.raises(CheckpointError, match="--ar-checkpoint"):
        choose_method(InitConfig(method="fused", sam_checkpoint="s"))
    with pytest.raises(CheckpointError, match="--sam-checkpoint"):
        choose_method(InitConfig(method="sam"))
    with pytest.raises(InputError, match="unknown init method"):
        choose_method(InitConfig(method="magic"))
    with pytest.raises(CheckpointError, match="not found"):
        BoxToMask(InitConfig(method="ar", ar_checkpoint="/nonexistent"))(_disk_image()[0], [36, 26, 48, 48])


def test_bad_inputs() -> None:
    img = _disk_image()[0]
    with pytest.raises(InputError, match="zero or negative width"):
        BoxToMask(InitConfig(method="box"))(img, [10, 10, 0, 5])
    with pytest.raises(InputError, match="outside"):
        BoxToMask(InitConfig(method="box"))(img, [500, 10, 5, 5])
    with pytest.raises(InputError, match="RGB uint8"):
        BoxToMask(InitConfig(method="box"))(img.astype(np.float32), [10, 10, 5, 5])


def test_box_and_grabcut_inits() -> None:
    img, disk, box = _disk_image()
    res = BoxToMask(InitConfig(method="box"))(img, box)
    assert res.method == "box" and np.array_equal(res.mask, box_to_mask(box, img.shape[:2]))
    res = BoxToMask(InitConfig())(img, box)
    assert res.method == "grabcut" and "checkpoints missing" in res.message
    iou = (res.mask & disk).sum() / (res.mask | disk).sum()
    assert iou > 0.85  # a high-contrast disk: GrabCut separates it from the box corners
    assert res.details["winner"] == "grabcut"
    json.dumps(res.details)


@pytest.fixture(scope="module")
def tiny_networks():
    torch.manual_seed(0)
    return tiny_sam(), SEcm().eval()


def test_fused_end_to_end_records_every_candidate(tiny_networks) -> None:
    sam, ar = tiny_networks
    img, _, box = _disk_image()
    init = BoxToMask(InitConfig(sam_second_pass=True), sam_model=sam, ar_network=ar)
    assert init.method == "fused" and init.message is None
    res = init(img, box)
    names = [c["name"] for c in res.details["candidates"]]
    assert names == [
        "sam_0",
        "sam_1",
        "sam_2",
        "sam_3",
        "sam_refined",
        "ar_secm",
        "vote",
        "intersection",
        "union",
    ]
    json.dumps(res.details)  # run.json material
    assert res.mask.dtype == bool and res.mask.any()
    grown = box + np.array([-1, -1, 2, 2])  # candidates are clipped to the box with a 1 px tolerance
    assert not (res.mask & ~box_to_mask(grown, img.shape[:2])).any()
    valid = [c for c in res.details["candidates"] if c["rejected"] is None]
    if res.details["fallback"] is None:
        best = max(valid, key=lambda c: c["score"])
        assert res.details["winner"] == best["name"] and res.method == "fused"
    else:
        assert res.method in ("ar", "box") and res.message and res.details["fallback"] in res.message


def test_sam_only_and_ar_only(tiny_networks) -> None:
    sam, ar = tiny_networks
    img, _, box = _disk_image()
    res = BoxToMask(InitConfig(method="sam"), sam_model=sam)(img, box)
    assert {c["source"] for c in res.details["candidates"]} == {"sam"} and res.method in ("sam", "box")
    res = BoxToMask(InitConfig(method="ar"), ar_network=ar)(img, box)
    assert [c["name"] for c in res.details["candidates"]] == ["ar_secm"] and res.method in ("ar", "box")


def test_running_out_of_memory_names_the_init_and_what_needs_less(monkeypatch) -> None:
    """An allocation failing in SAM is one line about the first-frame mask and what needs less memory, not the
    tracking hints (--memory-cap, ...) of the run around it, which change nothing for SAM."""
    sam = tiny_sam()

    def no_memory(*args, **kwargs):
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 7.79 GiB "
                           "of which 1.00 GiB is free.")

    monkeypatch.setattr(sam.image_encoder, "forward", no_memory)
    img, _, box = _disk_image()
    with pytest.raises(OutOfMemory) as err, memory_errors("while tracking clip"):  # what the CLI wraps a run in
        BoxToMask(InitConfig(method="sam"), sam_model=sam)(img, box)
    text = str(err.value)
    assert "while making the first-frame mask (--init sam)" in text and "--init ar or --init grabcut" in text
    assert "--memory-cap" not in text and "\n" not in text

    def no_ram(*args, **kwargs):
        raise MemoryError

    monkeypatch.setattr("trek_tracker.init.sam.load_sam", no_ram)
    with pytest.raises(OutOfMemory, match=r"\(RAM\) while loading the networks of --init sam; use --init ar"):
        BoxToMask(InitConfig(method="sam", sam_checkpoint=__file__)).load()


@pytest.mark.cuda
def test_sam_and_alpha_refine_on_cuda(tiny_networks) -> None:
    """The fused init on a GPU chooses what it chooses on the CPU (same candidates, same winner)."""
    sam, ar = tiny_networks
    img, _, box = _disk_image()
    cpu = BoxToMask(InitConfig(), "cpu", sam_model=sam, ar_network=ar)(img, box)
    gpu = BoxToMask(InitConfig(), "cuda", sam_model=sam.to("cuda"), ar_network=ar.to("cuda"))(img, box)
    assert [c["name"] for c in gpu.details["candidates"]] == [c["name"] for c in cpu.details["candidates"]]
    assert gpu.details["winner"] == cpu.details["winner"]
    assert (gpu.mask != cpu.mask).mean() < 0.01
