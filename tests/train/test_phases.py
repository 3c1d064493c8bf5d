"""Both phases from config files: the shipped phase configs carry the recipe, a static-image phase runs on
image/mask folders, and the video phase starts from its EMA weights."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from tests.train.conftest import REPO
from trek_tracker.errors import InputError
from trek_tracker.modeling.checkpoints import read_checkpoint
from trek_tracker.train.config import load_config
from trek_tracker.train.data import ClipDataset
from trek_tracker.train.loop import train

CONFIGS = REPO / "configs" / "train"


def test_shipped_phase_configs_follow_the_recipe():
    p1 = load_config(CONFIGS / "phase1_static.toml")
    assert {d.kind for d in p1.data} == {"coco", "ecssd", "msra10k", "pascals", "voc"}
    assert (p1.optim.lr, p1.optim.min_lr, p1.optim.weight_decay) == (4e-4, 2e-5, 0.03)
    assert (p1.train.steps, p1.train.batch_size, p1.train.seq_training_start_ratio) == (100_000, 16, 1.0)
    assert p1.train.merge_p == 1.0 and p1.train.aux_loss_ratio == 0.1
    p2 = load_config(CONFIGS / "phase2_r50_deaotl_ytb_dav.toml")
    assert {d.kind for d in p2.data} == {"youtubevos", "davis"}
    assert (p2.optim.lr, p2.optim.min_lr, p2.optim.weight_decay) == (2e-4, 1e-5, 0.07)
    assert p2.model.init == "runs/phase1_r50/ema_final.pth"
    assert p2.train.seq_training_start_ratio == 0.5
    davis = [d for d in p2.data if "DAVIS" in d.root]
    assert davis and davis[0].repeat == 5 and davis[0].max_gap == 12
    assert p2.augment.crop == (465, 465)


def test_overrides_and_yaml(tmp_path):
    cfg = load_config(CONFIGS / "tiny_cpu_video.toml", ["train.steps=7", "optim.betas=[0.8, 0.9]",
                                                         'data.0.sequences=["dog"]'])
    assert cfg.train.steps == 7 and cfg.optim.betas == (0.8, 0.9) and cfg.data[0].sequences == ["dog"]
    yaml_cfg = tmp_path / "c.yaml"
    yaml_cfg.write_text("model: {name: test_deaot_tiny}\ndata:\n  - {root: /x, kind: static}\ntrain: {steps: 3}\n")
    cfg = load_config(yaml_cfg)
    assert cfg.data[0].kind == "static" and cfg.train.steps == 3
    with pytest.raises(InputError, match="no \\[\\[data\\]\\]"):
        load_config(yaml_cfg, ["data=[]"])
    with pytest.raises(InputError, match="unknown config section"):
        load_config(yaml_cfg, ["trian.steps=3"])


@pytest.fixture()
def static_folder(davis, tmp_path):
    """A static-image set from a few DAVIS frames and masks (images/ + masks/)."""
    root = tmp_path / "static"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for seq in ("blackswan", "dog", "kite-surf"):
        shutil.copy(davis / "JPEGImages" / "480p" / seq / "00010.jpg", root / "images" / f"{seq}.jpg")
        shutil.copy(davis / "Annotations" / "480p" / seq / "00010.png", root / "masks" / f"{seq}.png")
    return root


def test_static_clips_merge_several_objects(static_folder):
    cfg = load_config(CONFIGS / "tiny_cpu_static.toml", [f'data.0.root="{static_folder}"'])
    ds = ClipDataset(cfg.data, length=3, augment=cfg.augment, merge_p=1.0, seed=0)
    counts = [int(ds[g]["num_objects"]) for g in range(6)]
    assert max(counts) == 2  # single-object images, merged in pairs
    s = ds[int(np.argmax(counts))]
    assert set(torch.unique(s["labels"][0]).tolist()) == {0, 1, 2}


def test_phase1_static_then_phase2_video_from_its_ema(static_folder, davis, tmp_path):
    p1 = load_config(CONFIGS / "tiny_cpu_static.toml",
                     [f'data.0.root="{static_folder}"', f'out="{tmp_path / "p1"}"', "train.steps=3"])
    records = train(p1, resume=False, progress=False)
    assert [r["gt_memory"] for r in records if r["kind"] == "train"] == [1]  # log_every 5: the last step
    ema = tmp_path / "p1" / "ema_final.pth"
    p2 = load_config(CONFIGS / "tiny_cpu_video.toml",
                     [f'data.0.root="{davis}"', "val.root=''", f'out="{tmp_path / "p2"}"', f'model.init="{ema}"',
                      "train.steps=1", "train.batch_size=2"])
    from trek_tracker.train.loop import Trainer

    trainer = Trainer(p2, resume=False, progress=False)
    start = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    phase1 = read_checkpoint(ema)
    from trek_tracker.modeling.deaot import DeAOT

    assert all(torch.equal(v, phase1[DeAOT.official_key(k)]) for k, v in start.items())
    trainer.run()
    assert (tmp_path / "p2" / "ema_final.pth").is_file()


def test_msdeaot_starts_from_a_deaot_checkpoint_and_trains(davis, tmp_path):
    """docs/msdeaot.md#initialisation: an MSDeAOT may start from DeAOT weights; the partial init is recorded in the
    run log and the new stride-8 modules train."""
    import json

    from trek_tracker.modeling.checkpoints import save_checkpoint
    from trek_tracker.modeling.registry import build_model
    from trek_tracker.train.loop import Trainer

    torch.manual_seed(3)
    deaot = build_model("test_deaot_tiny")
    save_checkpoint(tmp_path / "deaot.pth", deaot)
    cfg = load_config(CONFIGS / "tiny_cpu_video.toml",
                      [f'data.0.root="{davis}"', "val.root=''", f'out="{tmp_path / "ms"}"', "train.steps=2",
                       "train.batch_size=2", 'model.name="test_msdeaot_tiny"',
                       f'model.init="{tmp_path / "deaot.pth"}"'])
    trainer = Trainer(cfg, resume=False, progress=False)
    loaded = trainer.model.state_dict()
    assert torch.equal(loaded["gpm.layers.0.linear_QV.weight"], deaot.state_dict()["gpm.layers.0.linear_QV.weight"])
    before = {k: v.clone() for k, v in loaded.items() if k.startswith("stages.")}
    assert before
    trainer.run()
    records = [json.loads(line) for line in (tmp_path / "ms" / "log.jsonl").read_text().splitlines()]
    init = [r for r in records if r["kind"] == "init"]
    assert init and init[0]["partial"] and init[0]["new"] and init[0]["unused"]
    after = trainer.model.state_dict()
    assert any(not torch.equal(v, after[k]) for k, v in before.items())
