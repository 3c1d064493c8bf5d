"""Golden parity: our DeAOT with the seeded weights computes what the official aot-benchmark code computes.

Goldens and tolerances: ``../shared/golden/deaot/README.md`` (§2-§4 how they were made, §7 the bounds).
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from trek_tracker.device import set_fast_kernels
from trek_tracker.inference.engine import EngineConfig, VOSEngine, merged_group_logits
from trek_tracker.modeling.checkpoints import load_official_state_dict
from trek_tracker.modeling.registry import build_model

LOGIT_TOL = 2e-4
PROB_TOL = 1e-3
LABEL_PIXELS = 10


def _rgb(path: Path) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)


def _model(name: str, seeded_state, device: str = "cpu"):
    model = build_model(name).eval()
    load_official_state_dict(model, seeded_state(name), model_name=name)
    set_fast_kernels(torch.device(device), False)  # the parity mode on a GPU: float32, no TF32, no autotuning
    return model.to(device)


DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", ["deaott", "r50_deaotl", "swinb_deaotl"])
def test_car_shadow_matches_official(name, device, golden, davis, seeded_state):
    gold = np.load(golden / "deaot" / name / "car-shadow.npz")
    frames = [_rgb(davis / "JPEGImages/480p/car-shadow" / f) for f in gold["frames"]]
    mask = np.array(Image.open(davis / "Annotations/480p/car-shadow/00000.png"))
    engine = VOSEngine(_model(name, seeded_state, device), EngineConfig(max_long_edge=float(gold["max_long_edge"])))
    engine.add_reference(frames[0], (mask > 0).astype(np.uint8))
    assert engine.input_size == tuple(gold["input_size"])
    assert engine.token_grid == tuple(gold["enc_size"])
    assert engine.long_term_tokens() == gold["ltm_tokens"][0]
    for t in range(1, len(frames)):
        out = engine.step(frames[t])
        logits = out.logits[0][0].cpu().numpy()
        assert logits.shape == gold["logits4x"][t - 1].shape
        assert np.abs(logits - gold["logits4x"][t - 1]).max() <= LOGIT_TOL, f"frame {t}"
        prob = out.probs[1].cpu().numpy()
        assert np.abs(prob - gold["prob_obj1"][t - 1].astype(np.float32)).max() <= PROB_TOL, f"frame {t}"
        assert (out.labels.cpu().numpy() != gold["label"][t - 1]).sum() <= LABEL_PIXELS, f"frame {t}"
        assert engine.long_term_tokens() == gold["ltm_tokens"][t], f"frame {t}"


def test_44_objects_in_5_groups_match_official(golden, shared, seeded_state):
    """The official demo clip at 1080p: object groups of 10 and the soft logit aggregation."""
    gold = np.load(golden / "deaot" / "r50_deaotl" / "aot_demo.npz")
    root = shared / "data" / "aot_demo"
    frames = [_rgb(root / "images" / f) for f in gold["frames"]]
    mask = np.array(Image.open(root / "masks" / gold["frames"][0].replace(".jpg", ".png")))
    ids = np.unique(mask[mask > 0])
    labels = ((np.searchsorted(ids, mask) + 1) * (mask > 0)).astype(np.uint8)  # renumber 1..N, increasing
    engine = VOSEngine(_model("r50_deaotl", seeded_state), EngineConfig(max_long_edge=480))
    engine.add_reference(frames[0], labels)
    assert len(engine.group_sizes) == int(gold["groups"]) == 5
    assert engine.group_sizes == [10, 10, 10, 10, 4]
    for t in range(1, len(frames)):
        out = engine.predict(frames[t])
        logits = torch.cat(out.logits).numpy()
        assert np.abs(logits - gold["logits4x"][t - 1]).max() <= LOGIT_TOL
        upsampled = engine._upsample(torch.cat(out.logits))  # the 5 groups ran as one batch
        merged = merged_group_logits([upsampled[g:g + 1] for g in range(5)], 10)
        crop = merged[0, :, 524:556, 944:976].numpy()
        assert np.abs(crop - gold["merged_logits_crop"][t - 1]).max() <= 1e-4
        assert (out.labels.numpy() != gold["label"][t - 1]).sum() <= LABEL_PIXELS
        assert out.probs.shape[0] == 45
        engine.commit(out.labels)
