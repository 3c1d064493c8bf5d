"""The model registry: variant names and aliases, what registering twice does, and rebuilding a model from the
config stored in one of our checkpoints, old files included."""

from __future__ import annotations

import sys
from dataclasses import replace

import pytest

import trek_tracker.modeling
from trek_tracker.errors import CheckpointError, UserError
from trek_tracker.modeling import registry
from trek_tracker.modeling.base import ModelConfig
from trek_tracker.modeling.deaot import DeAOT
from trek_tracker.modeling.msdeaot import MSDeAOT
from trek_tracker.modeling.registry import (
    build_model,
    build_model_from_config,
    canonical_name,
    family,
    family_of,
    model_config,
    model_names,
    register_family,
    register_variant,
)
from trek_tracker.modeling.vmos import VMOS

# docs/deaot.md#variants, docs/msdeaot.md and docs/vmos.md: the variants a user may name.
DOCUMENTED = {"deaott", "deaots", "deaotb", "deaotl", "r50_deaotl", "swinb_deaotl", "r50_msdeaot", "swinb_msdeaot",
              "r50_msdeaot_2stage", "vmos"}
TINY = {"test_deaot_tiny", "test_msdeaot_tiny", "test_vmos_tiny"}


@pytest.fixture
def scratch_registry(monkeypatch):
    """The registry's tables as copies, so that a test may register variants and families of its own."""
    model_names()  # every family registered before the tables are copied
    for table in ("_VARIANTS", "_ALIASES", "_FAMILIES"):
        monkeypatch.setattr(registry, table, dict(getattr(registry, table)))


def test_names_list_the_documented_variants_with_the_tiny_test_models_last():
    names, real = model_names(), model_names(tests=False)
    assert set(real) == DOCUMENTED  # aliases are not names of their own
    assert names[:len(real)] == real and set(names[len(real):]) == TINY


def test_an_unknown_model_is_refused_naming_every_choice():
    with pytest.raises(UserError, match=r"unknown model 'deaot_xl'") as err:
        model_config("deaot_xl")
    assert str(err.value).endswith(", ".join(model_names()))


def test_an_alias_names_the_same_variant_and_other_names_pass_through():
    assert model_config("internt_msdeaotl_v2") is model_config("vmos")
    assert type(build_model("test_vmos_tiny")) is VMOS
    assert canonical_name("deaotl") == "deaotl" and canonical_name("deaot_xl") == "deaot_xl"


def test_overrides_give_a_copy_and_leave_the_variant_as_registered():
    changed = model_config("deaotl", long_term_gap=7)
    assert (changed.name, changed.long_term_gap, changed.num_layers) == ("deaotl", 7, 3)
    assert model_config("deaotl").long_term_gap == 5
    model = build_model("test_deaot_tiny", num_layers=1)
    assert model.config.num_layers == 1 and model.config == replace(model_config("test_deaot_tiny"), num_layers=1)
    assert build_model(model.config).config is model.config


def test_a_name_or_alias_is_registered_once(scratch_registry):
    tiny = model_config("test_deaot_tiny")
    with pytest.raises(ValueError, match="'deaotl' is registered twice"):
        register_variant(replace(tiny, name="deaotl"))
    with pytest.raises(ValueError, match="'internt_msdeaotl_v2' is registered twice"):
        register_variant(replace(tiny, name="test_fresh"), aliases=("internt_msdeaotl_v2",))
    with pytest.raises(ValueError, match="'vmos' is registered twice"):
        register_variant(replace(tiny, name="test_fresh"), aliases=("vmos",))
    assert "test_fresh" not in model_names()  # a refused registration leaves nothing behind
    fresh = replace(tiny, name="test_fresh")
    assert register_variant(fresh, aliases=("fresh",)) is fresh
    assert model_config("fresh") is fresh and model_names()[-1] == "test_fresh"
    assert "fresh" not in model_names()


def test_a_family_must_be_named_like_its_config(scratch_registry):
    class Unnamed(DeAOT):
        family = ""
        config_class = ModelConfig  # whose family is "" too

    class Mislabelled(DeAOT):
        family = "msdeaot"  # its config_class is still DeAOTConfig

    for cls in (Unnamed, Mislabelled):
        with pytest.raises(TypeError, match="must name the same family"):
            register_family(cls)
    assert family("msdeaot") is MSDeAOT and family("deaot") is DeAOT


def test_configs_stored_before_families_were_named_still_build():
    # docs/deaot.md#our-checkpoint-format: MSDeAOT configs carried arch = "msdeaot", DeAOT configs nothing.
    ms = model_config("test_msdeaot_tiny")
    stored = {k: v for k, v in ms.to_dict().items() if k != "family"}
    rebuilt = build_model_from_config({**stored, "arch": "msdeaot"})
    assert type(rebuilt) is MSDeAOT and rebuilt.config == ms
    both = build_model_from_config({**ms.to_dict(), "arch": "msdeaot"})  # a file of the changeover
    assert type(both) is MSDeAOT and both.config == ms
    deaot = model_config("test_deaot_tiny")
    rebuilt = build_model_from_config({k: v for k, v in deaot.to_dict().items() if k != "family"})
    assert type(rebuilt) is DeAOT and rebuilt.config == deaot


def test_a_config_of_an_unknown_family_is_refused_naming_the_known_ones():
    stored = model_config("test_deaot_tiny").to_dict()
    with pytest.raises(CheckpointError, match=r"model family 'aot', which this version does not know") as err:
        build_model_from_config({**stored, "family": "aot"})
    assert set(str(err.value).split("(known: ")[1].rstrip(")").split(", ")) == {"deaot", "msdeaot", "vmos"}
    with pytest.raises(CheckpointError, match="model family None"):
        build_model_from_config({**{k: v for k, v in stored.items() if k != "family"}, "arch": "aot"})


def test_every_lookup_registers_the_families_itself(monkeypatch):
    # As in a fresh interpreter that imported only the registry: no family module has run yet.
    stored, stored_config = model_config("test_msdeaot_tiny").to_dict(), model_config("test_deaot_tiny")
    lookups = {"model_names": lambda: "deaotl" in model_names(),
               "canonical_name": lambda: canonical_name("internt_msdeaotl_v2") == "vmos",
               "model_config": lambda: model_config("deaotl").num_layers == 3,
               "family": lambda: family("msdeaot").__name__ == "MSDeAOT",
               "family_of": lambda: family_of(stored_config).__name__ == "DeAOT",
               "build_model_from_config": lambda: type(build_model_from_config(stored)).__name__ == "MSDeAOT"}
    for name, lookup in lookups.items():
        for module in ("deaot", "msdeaot", "vmos"):
            monkeypatch.setattr(trek_tracker.modeling, module, getattr(trek_tracker.modeling, module))
            monkeypatch.delitem(sys.modules, f"trek_tracker.modeling.{module}")
            delattr(trek_tracker.modeling, module)
        for table in ("_VARIANTS", "_ALIASES", "_FAMILIES"):
            monkeypatch.setattr(registry, table, {})
        assert lookup(), name
