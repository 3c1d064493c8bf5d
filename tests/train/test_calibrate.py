"""Frozen-BN calibration of an untrained encoder: why the learning check depended on the seed, and the fix."""

from __future__ import annotations

import pytest
import torch

from tests.train.conftest import TINY_VIDEO
from trek_tracker.modeling.encoders.frozen_bn import FrozenBatchNorm2d
from trek_tracker.modeling.layout import map_to_tokens
from trek_tracker.modeling.registry import build_model
from trek_tracker.train.calibrate import calibrate_frozen_bn
from trek_tracker.train.config import load_config
from trek_tracker.train.data import ClipDataset


def _token_similarity(model, images) -> float:
    """Mean cosine similarity between the stride-16 tokens of a frame after the first GPM LayerNorm."""
    with torch.no_grad():
        h = model.gpm.layers[0].norm1(map_to_tokens(model.encode(images)[-1]))
        h = torch.nn.functional.normalize(h, dim=-1)
        cos = torch.einsum("lbc,mbc->blm", h, h)
        n = cos.shape[-1]
        return float(((cos.sum((-1, -2)) - n) / (n * (n - 1))).mean())


@pytest.fixture(scope="module")
def clips(davis):
    cfg = load_config(TINY_VIDEO, [f'data.0.root="{davis}"'])
    ds = ClipDataset(cfg.data, length=3, augment=cfg.augment, merge_p=0.0, seed=0)
    return torch.cat([ds[g]["images"] for g in range(8)]), torch.stack([ds[g]["images"][0] for g in range(8, 12)])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_untrained_encoder_tokens_are_identical_until_calibrated(clips, seed):
    calib, frames = clips
    torch.manual_seed(seed)
    model = build_model("test_deaot_tiny").eval()
    # Identity statistics: activations vanish through the encoder and every token is the same vector, so
    # attention is uniform and no ID embedding can say where the object is.
    assert _token_similarity(model, frames) > 0.999
    layers = calibrate_frozen_bn(model, calib)
    assert layers == sum(isinstance(m, FrozenBatchNorm2d) for m in model.encoder.modules()) > 0
    assert _token_similarity(model, frames) < 0.8

    seen = []
    hooks = [m.register_forward_hook(lambda mod, a, out: seen.append(out.clone())) for m in model.encoder.modules()
             if isinstance(m, FrozenBatchNorm2d)]
    with torch.no_grad():
        model.encode(calib)
    for h in hooks:
        h.remove()
    for out in seen:  # on the calibration clips every channel comes out normalised (affine is 1, 0);
        # cloned in the hook, before an in-place ReLU changes it
        assert out.mean(dim=(0, 2, 3)).abs().max() < 1e-3
        assert (out.var(dim=(0, 2, 3), unbiased=False) - 1).abs().max() < 1e-2


def test_trainer_calibrates_only_an_untrained_start(tiny_config, tmp_path):
    from trek_tracker.modeling.checkpoints import save_checkpoint
    from trek_tracker.train.loop import Trainer

    fresh = Trainer(tiny_config("fresh", "val.root=''"), resume=False, progress=False)
    assert fresh.init_report["calibrated_frozen_bn"] == {"layers": 52, "clips": 8}
    torch.manual_seed(0)
    start = tmp_path / "start.pth"
    save_checkpoint(start, build_model("test_deaot_tiny"))
    loaded = Trainer(tiny_config("loaded", "val.root=''", f'model.init="{start}"'), resume=False, progress=False)
    assert "calibrated_frozen_bn" not in loaded.init_report
    bn = [m for m in loaded.model.encoder.modules() if isinstance(m, FrozenBatchNorm2d)][0]
    assert torch.equal(bn.running_mean, torch.zeros_like(bn.running_mean))
    off = Trainer(tiny_config("off", "val.root=''", "model.calibrate_bn=false"), resume=False, progress=False)
    assert off.init_report is None
