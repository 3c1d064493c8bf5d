"""Tracker options: each flag sets the config field it names, and run.json records it under the same path."""

from __future__ import annotations

import dataclasses
import re

import click
import pytest

from tests.conftest import REPO
from trek_tracker.cli.options import SETTINGS, tracker_config_from_options, tracker_options
from trek_tracker.errors import UserError

# A value for every flag, as a user would type it (repeated flags twice: an ensemble of two models).
ARGS = {
    "--model": ["r50_deaotl", "deaott"], "--checkpoint": ["a.pth", "b.pth"], "--random-weights": [],
    "--device": ["cpu"], "--precision": ["bf16"], "--compile": [], "--max-long-edge": ["480"], "--init": ["grabcut"],
    "--sam-checkpoint": ["sam_vit_b"], "--hqsam-checkpoint": ["sam_hq_vit_b"], "--refine-checkpoint": ["hq.pth"],
    "--refine-min-iou": ["0.2"],
    "--ar-checkpoint": ["ar_seg384"], "--memory-gap": ["7"], "--memory-skip": ["2"], "--memory-cap": ["none"],
    "--memory-eviction": ["least-similar"],
    "--tta-scales": ["1.2,1.3"], "--tta-flip": [], "--ensemble-mode": ["vote"], "--ensemble-weights": ["1,3"],
}
EXPECTED = {
    "model": "r50_deaotl", "checkpoint": "a.pth", "random_weights": True, "device": "cpu", "precision": "bf16",
    "compile": True,
    "max_long_edge": 480,
    "init.method": "grabcut", "init.sam_checkpoint": "sam_vit_b", "init.hqsam_checkpoint": "sam_hq_vit_b",
    "refine.checkpoint": "hq.pth", "refine.min_iou": 0.2, "init.ar_checkpoint": "ar_seg384",
    "memory.gap": 7, "memory.skip": 2, "memory.cap": "none", "memory.eviction": "least-similar",
    "tta.scales": (1.2, 1.3), "tta.flip": True,
    "ensemble.mode": "vote", "ensemble.weights": (1.0, 3.0),
}


def _parse(argv: list[str]):
    captured = {}

    @click.command()
    @tracker_options
    def cmd(**kw):
        captured.update(kw)

    cmd.main(argv, standalone_mode=False)
    return tracker_config_from_options(**captured)


def _get(obj, path: str):
    for part in path.split("."):
        obj = obj[part] if isinstance(obj, dict) else getattr(obj, part)
    return obj


def test_every_flag_sets_the_field_it_names_and_the_manifest_uses_that_name():
    assert {s.flag for s in SETTINGS} == set(ARGS) and {s.path for s in SETTINGS} == set(EXPECTED)
    argv = [token for flag, values in ARGS.items() for token in ([flag] if not values else
                                                                 [t for v in values for t in (flag, v)])]
    config = _parse(argv)
    recorded = dataclasses.asdict(config)  # what run.json writes under tracker.settings
    for path, value in EXPECTED.items():
        assert _get(config, path) == value, path
        assert _get(recorded, path) == value, path
    assert [(m.model, m.checkpoint) for m in config.ensemble.members] == [("deaott", "b.pth")]


def test_defaults_leave_the_model_its_own_memory_schedule():
    config = _parse([])
    assert (config.memory.gap, config.memory.skip, config.memory.cap, config.memory.eviction) == (None,) * 4
    assert config.init.method == "auto" and config.tta.scales == (1.0,) and config.ensemble.members == ()


@pytest.mark.parametrize("argv,message", [
    (["--memory-cap", "0"], "at least 1 frame"),
    (["--memory-cap", "forever"], "neither a number of frames nor 'none'"),
    (["--tta-scales", "1,x"], "numbers separated by commas"),
])
def test_bad_values_are_usage_errors(argv, message):
    with pytest.raises(click.BadParameter, match=message):
        _parse(argv)


def test_weights_must_match_the_models():
    with pytest.raises(UserError, match="one weight per member"):
        _parse(["--model", "a", "--model", "b", "--ensemble-weights", "1,2,3"])


def test_the_docs_table_lists_every_setting():
    table = (REPO / "docs" / "config.md").read_text()
    for s in SETTINGS:
        flag, path = re.escape(s.flag), re.escape(s.path)
        assert re.search(rf"\| `{flag}` \| `{path}` \| `tracker\.settings\.{path}`", table), s.flag


def test_no_flag_gives_the_config_defaults():
    from trek_tracker.pipeline import TrackerConfig

    assert _parse([]) == TrackerConfig()


def test_every_choice_of_a_flag_reaches_its_field():
    choices = [s for s in SETTINGS if isinstance(s.kwargs.get("type"), click.Choice)]
    assert {s.flag for s in choices} >= {"--precision", "--init", "--memory-eviction", "--ensemble-mode"}
    for s in choices:
        for value in s.kwargs["type"].choices:
            assert _get(_parse([s.flag, value]), s.path) == value, (s.flag, value)


@pytest.mark.parametrize("given,cap", [("5", 5), ("1", 1), ("NONE", "none"), (" None ", "none")])
def test_memory_cap_takes_a_number_of_frames_or_none(given, cap):
    assert _parse(["--memory-cap", given]).memory.cap == cap


def test_option_types_take_values_already_converted():
    cap = next(s for s in SETTINGS if s.flag == "--memory-cap").kwargs["type"]
    scales = next(s for s in SETTINGS if s.flag == "--tta-scales").kwargs["type"]
    assert cap.convert(4, None, None) == 4 and cap.convert(None, None, None) is None
    assert scales.convert((1.0, 2.0), None, None) == (1.0, 2.0)


@pytest.mark.parametrize("argv", [["--max-long-edge", "31"], ["--refine-min-iou", "-0.1"],
                                  ["--refine-min-iou", "1.1"], ["--memory-gap", "0"], ["--memory-skip", "0"],
                                  ["--init", "boxes"], ["--ensemble-mode", "median"]])
def test_out_of_range_values_are_usage_errors(argv):
    with pytest.raises(click.BadParameter):
        _parse(argv)


def test_checkpoints_must_pair_with_the_models():
    with pytest.raises(UserError, match="got 2 --model and 1 --checkpoint"):
        _parse(["--model", "a", "--model", "b", "--checkpoint", "x.pth"])
    with pytest.raises(UserError, match="got 1 --model and 2 --checkpoint"):
        _parse(["--model", "a", "--checkpoint", "x.pth", "--checkpoint", "y.pth"])
    config = _parse(["--checkpoint", "x.pth", "--checkpoint", "y.pth"])
    assert (config.model, config.checkpoint) == (None, "x.pth")
    assert [(m.model, m.checkpoint) for m in config.ensemble.members] == [(None, "y.pth")]


def test_help_shows_the_default_the_config_takes():
    from trek_tracker.pipeline import TrackerConfig

    cmd = tracker_options(click.command()(lambda **kw: None))
    ctx = click.Context(cmd)
    params = {p.name: p for p in cmd.params}
    shown = [s for s in SETTINGS if s.kwargs.get("show_default")]
    assert {s.flag for s in shown} >= {"--device", "--precision", "--max-long-edge", "--init", "--ensemble-mode"}
    for s in shown:
        default = re.escape(str(_get(TrackerConfig(), s.path)))
        assert re.search(rf"\[default: {default}[;\]]", params[s.dest].get_help_record(ctx)[1]), s.flag


def test_the_choices_offered_are_those_the_config_knows():
    from trek_tracker.inference.memory import EVICTIONS
    from trek_tracker.init.api import METHODS

    choices = {s.flag: s.kwargs["type"].choices for s in SETTINGS if isinstance(s.kwargs.get("type"), click.Choice)}
    assert set(choices["--init"]) == set(METHODS) and set(choices["--memory-eviction"]) == set(EVICTIONS)


@pytest.mark.parametrize("argv,path,value", [(["--max-long-edge", "32"], "max_long_edge", 32),
                                             (["--memory-gap", "1"], "memory.gap", 1),
                                             (["--memory-skip", "1"], "memory.skip", 1),
                                             (["--refine-min-iou", "0"], "refine.min_iou", 0.0),
                                             (["--refine-min-iou", "1"], "refine.min_iou", 1.0)])
def test_the_least_and_greatest_values_allowed_are_taken(argv, path, value):
    assert _get(_parse(argv), path) == value


def test_a_single_model_and_checkpoint_may_come_as_strings():
    config = tracker_config_from_options(model="deaott", checkpoint="x.pth")
    assert (config.model, config.checkpoint, config.ensemble.members) == ("deaott", "x.pth", ())
