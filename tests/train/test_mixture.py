"""The weighted mixture: each source at its configured rate, every item once per epoch of its source, the
same stream whatever the order of the requests (resume, workers), and the ready configs load and train."""

from __future__ import annotations

import numpy as np
import pytest

from tests.train import replicas
from tests.train.conftest import REPO
from trek_tracker.errors import InputError
from trek_tracker.train.augment import AugmentConfig
from trek_tracker.train.config import load_config
from trek_tracker.train.data import ClipDataset, source_weights
from trek_tracker.train.datasets.source import DataSource
from trek_tracker.train.mixture import Mixture

CONFIGS = REPO / "configs" / "train"


@pytest.mark.parametrize("weights", [[0.7, 0.2, 0.1], [5.0, 1.0, 0.002]])
def test_sources_are_drawn_at_their_weights(weights):
    sizes = [7, 3, 50]
    mix = Mixture(sizes, weights, seed=4)
    n = 30_000
    drawn = np.array([mix(g)[0] for g in range(n)])
    p = np.asarray(weights) / sum(weights)
    counts = np.bincount(drawn, minlength=3)
    # Stratified by block, so well inside the binomial 4-sigma band.
    assert np.all(np.abs(counts - n * p) <= 4 * np.sqrt(n * p * (1 - p)) + 2), (counts, n * p)
    # Every item of a source once per epoch of that source.
    for s, size in enumerate(sizes):
        visits = [mix(g)[1] for g in range(n) if drawn[g] == s]
        full = len(visits) // size * size
        for e in range(0, full, size):
            assert sorted(visits[e:e + size]) == list(range(size))


@pytest.mark.parametrize("weights", [[1.0, 2.0, 4.0], [0.3, 5.0, 0.01]])
def test_each_block_gives_a_source_its_floor_or_one_more_slot_at_the_exact_rate(weights):
    """The stratified scheme of the module doc: source s gets floor(p_s x BLOCK) or one more slot in every block,
    and one more with probability frac(p_s x BLOCK), so its mean count per block is p_s x BLOCK. The first
    source here is not the largest, whose slots absorb rounding."""
    mix = Mixture([5, 5, 5], weights, seed=1, block=1024)
    share = np.asarray(weights) / sum(weights) * 1024
    counts = np.array([mix.block_counts(b) for b in range(2000)])
    assert (counts.sum(1) == 1024).all()
    assert ((counts == np.floor(share)) | (counts == np.floor(share) + 1)).all()
    assert np.abs(counts.mean(0) - share).max() < 0.05, (counts.mean(0), share)


def test_mixture_rejects_bad_sources():
    bad = (([3, 4], [1.0]), ([], []), ([3, 4], [1.0, 0.0]), ([3, 4], [1.0, -1.0]), ([3, 0], [1.0, 1.0]))
    for sizes, weights in bad:
        with pytest.raises(ValueError):
            Mixture(sizes, weights, seed=0)
    assert Mixture([1, 1], [1.0, 1.0], seed=0)(0)[1] == 0  # one item per source is enough


def test_mixture_is_a_pure_function_of_the_sample_number():
    a, b = Mixture([4, 9], [1.0, 3.0], seed=2), Mixture([4, 9], [1.0, 3.0], seed=2)
    forward = [a(g) for g in range(3000)]
    backward = [b(g) for g in reversed(range(3000))][::-1]
    assert forward == backward
    assert forward != [Mixture([4, 9], [1.0, 3.0], seed=3)(g) for g in range(3000)]


def test_default_weights_are_items_times_repeat(tmp_path):
    a, b = DataSource("a", kind="static"), DataSource("b", kind="static", repeat=5)
    assert source_weights([a, b], [10, 4]) == [10.0, 20.0]
    with pytest.raises(InputError, match="every"):
        source_weights([DataSource("a", weight=2.0), b], [10, 4])


def test_clip_dataset_mixes_datasets_of_different_layouts(davis, tmp_path):
    replicas.davis2017(davis, tmp_path / "davis")
    replicas.saliency(davis, tmp_path / "ecssd", "ecssd")
    sources = [DataSource(str(tmp_path / "davis"), kind="davis", weight=3.0),
               DataSource(str(tmp_path / "ecssd"), kind="ecssd", weight=1.0)]
    ds = ClipDataset(sources, length=3, augment=AugmentConfig(crop=(49, 49), short_edge=60, min_object_pixels=5),
                     merge_p=0.0, seed=0)
    drawn = [ds.locate(g)[0] for g in range(4000)]
    assert abs(np.mean(np.asarray(drawn) == 0) - 0.75) < 0.02
    metas = [ds.sample(g)[3] for g in range(6)]
    assert {m["source"] for m in metas} <= {0, 1}
    assert all(m["item"] in ("blackswan", "dog", "0001", "0002") for m in metas)


READY = ["phase1_static.toml", "phase2_r50_deaotl_ytb_dav.toml", "phase2_r50_deaotl_trek150.toml",
         "phase2_swinb_deaotl_trek150.toml", "phase2_r50_msdeaot_visor.toml"]


@pytest.mark.parametrize("name", READY)
def test_ready_configs_carry_the_reports_recipe(name):
    cfg = load_config(CONFIGS / name)
    assert cfg.train.batch_size == 16
    if name.startswith("phase1"):
        assert {d.kind for d in cfg.data} == {"coco", "ecssd", "msra10k", "pascals", "voc"}
        assert (cfg.optim.lr, cfg.train.steps, cfg.train.seq_training_start_ratio) == (4e-4, 100_000, 1.0)
        return
    assert (cfg.optim.lr, cfg.optim.min_lr, cfg.optim.power) == (2e-4, 1e-5, 0.9)
    assert cfg.train.steps == (200_000 if "trek150" in name else 100_000)
    assert cfg.augment.crop == ((464, 464) if "swinb" in cfg.model.name else (465, 465))
    kinds = [d.kind for d in cfg.data]
    expected = {"phase2_r50_deaotl_ytb_dav.toml": ["youtubevos", "davis"],
                "phase2_r50_deaotl_trek150.toml": ["visor", "youtubevos", "davis", "mose", "egotracks"],
                "phase2_swinb_deaotl_trek150.toml": ["visor", "mose"],
                "phase2_r50_msdeaot_visor.toml": ["visor"]}[name]
    assert kinds == expected


def test_ready_configs_run_a_few_steps_on_replicas(davis, tmp_path):
    """The TREK-150 mixture (VISOR, YouTube-VOS, DAVIS, MOSE, EgoTracks with masks) and the phase-1 static
    mixture, pointed at replicas and shrunk to the tiny model, train two steps each."""
    from trek_tracker.train.loop import train
    from trek_tracker.train.masks_from_boxes import MaskJob, make_masks

    r = tmp_path / "data"
    replicas.visor(davis, r / "VISOR")
    replicas.youtubevos(davis, r / "YouTube-VOS" / "2019")
    replicas.davis2017(davis, r / "DAVIS")
    replicas.mose(davis, r / "MOSE")
    replicas.egotracks(davis, r / "EgoTracks")
    make_masks(MaskJob("egotracks", str(r / "EgoTracks"), str(r / "EgoTracks-masks"), method="box"),
               _BoxOnly(), progress=False, log=lambda m: None)
    for name in ("COCO", "ECSSD", "MSRA10K", "PASCAL-S", "VOC"):
        (r / name).mkdir()
    replicas.coco(davis, r / "COCO")
    replicas.saliency(davis, r / "ECSSD", "ecssd")
    replicas.saliency(davis, r / "MSRA10K", "msra10k")
    replicas.saliency(davis, r / "PASCAL-S", "pascals")
    replicas.voc(davis, r / "VOC", sbd=r / "SBD" / "benchmark_RELEASE")
    tiny = ["model.name=test_deaot_tiny", "model.init=''", "augment.crop=[49,49]", "augment.short_edge=60",
            "augment.min_object_pixels=5", "train.batch_size=2", "train.steps=2", "train.clip_length=3",
            "train.workers=0", "train.device='cpu'", "val.root=''", "train.checkpoint_every=2",
            "train.log_every=1"]
    for name, n in (("phase2_r50_deaotl_trek150.toml", 5), ("phase1_static.toml", 5)):
        cfg = load_config(CONFIGS / name, tiny + [f'out="{tmp_path / name}"']
                          + [f'data.{i}.root="{r / d.root.split("/", 1)[1]}"'
                             for i, d in enumerate(load_config(CONFIGS / name).data)]
                          + (['data.4.mask_root="' + str(r / "EgoTracks-masks") + '"'] if "trek150" in name
                             else ['data.4.options={sbd="' + str(r / "SBD" / "benchmark_RELEASE") + '"}']))
        assert len(cfg.data) == n
        records = train(cfg, resume=False, progress=False)
        losses = [x["loss"] for x in records if x["kind"] == "train"]
        assert len(losses) == 2 and all(np.isfinite(losses))


class _BoxOnly:
    """The filled box as the mask (what ``--method box`` does), without loading a network."""

    config = None

    def __call__(self, image, box):
        from trek_tracker.init.api import BoxToMask, InitConfig

        return BoxToMask(InitConfig(method="box"))(image, box)
