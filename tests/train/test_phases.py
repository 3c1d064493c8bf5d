"""Both phases from config files: the shipped phase configs carry the recipe, a static-image phase runs on
image/mask folders, and the video phase starts from its EMA weights."""

from __future__ import annotations

import copy
import shutil

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from tests.train.conftest import REPO
from trek_tracker.cli import main
from trek_tracker.errors import InputError
from trek_tracker.modeling.checkpoints import read_checkpoint
from trek_tracker.train.config import TrainConfig, config_from_dict, load_config, read_config_file
from trek_tracker.train.data import ClipDataset, DataSource
from trek_tracker.train.loop import train
from trek_tracker.train.schedule import OptimConfig

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


@pytest.mark.parametrize("name", sorted(p.name for p in CONFIGS.glob("*.toml")))
def test_every_ready_config_loads_with_checked_values(name):
    cfg = load_config(CONFIGS / name)
    assert isinstance(cfg.augment.crop, tuple) and len(cfg.augment.crop) == 2
    assert isinstance(cfg.optim.lr, float) and cfg.train.steps >= 1


@pytest.mark.parametrize(("overrides", "message"), [
    (["train.steps=abc"], "train.steps must be an integer, got 'abc'"),
    (["train.steps=true"], "train.steps must be an integer, got True"),  # a bool is not an int
    (["train.steps=1e3"], "train.steps must be an integer, got 1000.0"),
    (["train.amp=maybe"], "train.amp must be true or false, got 'maybe'"),
    (['train.amp="true"'], "train.amp must be true or false, got 'true' (write true or false without quotes)"),
    (["optim.lr=-1"], "optim.lr must be at least 0, got -1"),
    (['optim.lr="2e-4"'], "optim.lr must be a number, got '2e-4' (write the number without quotes"),
    (["optim.betas=[0.9, 1]"], "optim.betas must be two values [beta1, beta2] in [0, 1), got [0.9, 1]"),
    (["optim.betas=[0.9]"], "optim.betas must be a list of 2 numbers, got [0.9]"),
    (["augment.crop=[0, 97]"], "augment.crop must be two positive sizes [height, width], got [0, 97]"),
    (["augment.scale_range=[1.3, 0.7]"], "augment.scale_range must be [low, high] with 0 < low <= high"),
    (["augment.resized_crop_scale=[0.8, 1.2]"], "augment.resized_crop_scale must be [low, high] with 0 < low"),
    (["train.merge_p=1.5"], "train.merge_p must be a probability between 0 and 1, got 1.5"),
    (["train.long_term_gap=x"], "train.long_term_gap must be an integer or null, got 'x'"),
    (["train.ema_decay=1"], "train.ema_decay must be in [0, 1), got 1"),
    (["val.max_frames=0"], "val.max_frames must be at least 1, got 0"),
    (["val.sequences=[1]"], "val.sequences must be a list of strings or null, got [1]"),
    (["model.calibrate_bn=1"], "model.calibrate_bn must be true, false or a string, got 1"),
    (["model.overrides=3"], "model.overrides must be a table, got 3"),
    (["data.0.max_gap=two"], "data.0.max_gap must be an integer, got 'two'"),
    (["data.0.sequences=dog"], "data.0.sequences must be a list of strings or null, got 'dog'"),
    # what was checked before keeps its message
    (["train.steps=-5"], "train.steps, train.batch_size and train.accumulate must be at least 1"),
    (["model.calibrate_bn=maybe"], "model.calibrate_bn must be true, false or \"auto\", got 'maybe'"),
])
def test_wrong_types_and_ranges_name_the_key(overrides, message):
    with pytest.raises(InputError) as err:
        load_config(CONFIGS / "tiny_cpu_video.toml", overrides)
    assert message in str(err.value)


def test_config_values_are_checked_against_the_field_types():
    raw = read_config_file(CONFIGS / "tiny_cpu_video.toml")
    for section, key, value, message in [
            ("optim", "lr", "fast", "optim.lr must be a number, got 'fast'"),
            ("augment", "crop", [97], "augment.crop must be a list of 2 integers, got [97]"),
            ("train", "batch_size", 2.0, "train.batch_size must be an integer, got 2.0")]:
        bad = copy.deepcopy(raw)
        bad[section][key] = value
        with pytest.raises(InputError) as err:
            config_from_dict(bad)
        assert str(err.value) == message
    # An int where a float is expected is fine (and becomes a float), TOML lists become tuples, null is
    # the default of an optional field (YAML), and a config built in Python is checked by check().
    good = copy.deepcopy(raw)
    good["optim"].update(lr=1, betas=[0.8, 0.9])
    good["train"].update(long_term_gap=None, ema_decay=0)
    cfg = config_from_dict(good)
    assert cfg.optim.lr == 1.0 and isinstance(cfg.optim.lr, float) and cfg.optim.betas == (0.8, 0.9)
    assert cfg.train.long_term_gap is None and cfg.train.ema_decay == 0.0
    built = TrainConfig(data=[DataSource("/x")], optim=OptimConfig(lr="fast"))
    with pytest.raises(InputError, match="optim.lr must be a number, got 'fast'"):
        built.check()


@pytest.mark.parametrize(("args", "message"), [
    (["--set", "train.steps=abc"], "train.steps must be an integer, got 'abc'"),
    (["--set", "train.amp=maybe"], "train.amp must be true or false, got 'maybe'"),
    (["--set", "optim.lr=-1"], "optim.lr must be at least 0, got -1"),
])
def test_train_cli_reports_a_bad_value_in_one_line(tmp_path, args, message):
    res = CliRunner().invoke(main, ["train", str(CONFIGS / "tiny_cpu_video.toml"), "--out", str(tmp_path / "o"),
                                    *args])
    assert res.exit_code == 2, res.output
    assert res.output.strip().splitlines() == [f"trek-track: error: {message}"]
    assert not (tmp_path / "o").exists()  # nothing trained, no config.json recorded


def test_train_cli_reports_a_bad_file_value_in_one_line(tmp_path):
    text = (CONFIGS / "tiny_cpu_video.toml").read_text()
    for old, new, message in [
            ("lr = 2e-3", 'lr = "fast"', "optim.lr must be a number, got 'fast'"),
            ("crop = [97, 97]", "crop = [97]", "augment.crop must be a list of 2 integers, got [97]")]:
        assert old in text
        bad = tmp_path / "bad.toml"
        bad.write_text(text.replace(old, new, 1))
        res = CliRunner().invoke(main, ["train", str(bad), "--out", str(tmp_path / "o")])
        assert res.exit_code == 2 and "Traceback" not in res.output
        assert res.output.strip() == f"trek-track: error: {message}"


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
