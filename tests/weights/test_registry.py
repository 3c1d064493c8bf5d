"""The official registry's content and the lookup rules."""

from __future__ import annotations

import pytest

from tests.weights.server import write_registry
from trek_tracker.errors import CheckpointError
from trek_tracker.weights import Registry, default_registry, registry_entry, registry_path

DEAOT = ["deaott", "deaots", "deaotb", "deaotl", "r50_deaotl", "swinb_deaotl"]


@pytest.fixture
def official(monkeypatch: pytest.MonkeyPatch) -> Registry:
    monkeypatch.delenv("TREK_TRACK_REGISTRY", raising=False)
    return default_registry()


def test_official_registry_has_every_published_checkpoint(official):
    expected = {"sam_vit_b", "sam_vit_l", "sam_vit_h", "ar_seg384", "ar_secm"}
    expected |= set(DEAOT) | {f"{n}_pre" for n in DEAOT}
    expected |= {"swinb_deaotl_dmaot", "vmos", "sam_hq_vit_b", "sam_hq_vit_l", "sam_hq_vit_h"}
    assert set(official.names()) == expected
    assert registry_path().name == "registry.toml" and registry_path().parent.name == "weights"


def test_deaot_names_follow_the_stage_convention(official):
    for variant in DEAOT:
        main, pre = official.get(variant), official.get(f"{variant}_pre")
        assert (main.variant, main.stage, pre.variant, pre.stage) == (variant, "PRE_YTB_DAV", variant, "PRE")
        assert main.file_name.endswith("_PRE_YTB_DAV.pth") and pre.file_name.endswith("_PRE.pth")
        assert main.file_name.removesuffix("_PRE_YTB_DAV.pth") == pre.file_name.removesuffix("_PRE.pth")
        assert main.urls != pre.urls


def test_pinned_sizes_and_hashes_from_the_specs(official):
    r50 = official.get("r50_deaotl")
    assert (r50.file_name, r50.size) == ("R50_DeAOTL_PRE_YTB_DAV.pth", 236_513_959)
    assert r50.sha256 == "7e8a8d83310739bac02817f6bf48b6bbe2bbd7d5325722f1084088eb3aee1e06"
    assert official.get("sam_vit_b").size == 375_042_383
    for name in ("sam_vit_b", "sam_vit_l", "sam_vit_h"):
        entry = official.get(name)
        assert entry.size and entry.sha256 and entry.licence == "Apache-2.0"
        assert entry.urls[0] == f"https://dl.fbaipublicfiles.com/segment_anything/{entry.file_name}"
    assert {official.get(n).licence for n in ("ar_seg384", "ar_secm")} == {"GPL-3.0"}


def test_every_entry_is_complete(official):
    for entry in official:
        assert entry.urls and entry.licence and entry.manual_link.startswith("https://")
        assert entry.size is not None or entry.approx_size is not None or entry.kind == "alpha_refine"


def test_lookup_by_file_name_and_case(official):
    assert registry_entry("R50_DeAOTL_PRE_YTB_DAV.pth").name == "r50_deaotl"
    assert registry_entry("SAM_VIT_H").name == "sam_vit_h"


def test_unknown_name_lists_close_names(official):
    with pytest.raises(CheckpointError, match="did you mean .*r50_deaotl"):
        registry_entry("r50-deaotl")


def test_kind_filter(official):
    assert registry_entry("deaotl", kind="deaot").variant == "deaotl"
    assert registry_entry("r50_deaotl_pre", kind="r50_deaotl").stage == "PRE"
    with pytest.raises(CheckpointError, match="is a sam checkpoint .* not deaot; choose one of: deaott"):
        registry_entry("sam_vit_b", kind="deaot")


def test_malformed_registries_are_reported(tmp_path, registry_file):
    write_registry(registry_file, {"x": {"sha256": "abc", "urls": ["http://a"]}})
    with pytest.raises(CheckpointError, match="malformed sha256"):
        default_registry()
    write_registry(registry_file, {"x": {"kind": "yolo", "urls": ["http://a"]}})
    with pytest.raises(CheckpointError, match="kind 'yolo'"):
        default_registry()
    write_registry(registry_file, {"x": {"urls": ["http://a"], "file_name": "s.pth"},
                                   "y": {"urls": ["http://b"], "file_name": "S.pth"}})
    with pytest.raises(CheckpointError, match="used by two entries"):
        default_registry()
    registry_file.write_text("[checkpoints.x\n")
    with pytest.raises(CheckpointError, match="not valid TOML"):
        default_registry()


def test_every_model_entry_feeds_a_registered_model_and_states_its_data(official):
    from trek_tracker.modeling.registry import model_config

    for entry in official:
        assert entry.training_data and entry.licence_name, entry.name
        if entry.kind == "deaot":
            assert model_config(entry.variant).name == entry.variant
    assert (official.get("swinb_deaotl_dmaot").variant, official.get("vmos").variant) == ("swinb_deaotl", "vmos")
    assert "LaSOT" in official.get("swinb_deaotl_dmaot").training_data
    assert registry_entry("vmos", kind="deaot").file_name == "save_step_42000.pth"
    assert [official.get(f"sam_hq_vit_{s}").kind for s in "blh"] == ["hqsam"] * 3


@pytest.mark.parametrize(("body", "message"), [
    ("checkpoints = 3", r"has checkpoints = 3; it must be a table of \[checkpoints\.NAME\] entries"),
    ('checkpoints.x = "y"', r"entry 'x' must be a table \(\[checkpoints\.x\]\), not str"),
    ('[checkpoints.x]\nsha256 = 5', r"entry 'x' has sha256 = 5, not a string; write it in quotes"),
    ("[checkpoints.x]\nfile_name = 5", r"entry 'x' has file_name = 5, not a string"),
    ('[checkpoints.x]\nfile_name = "../../elsewhere/a.pth"', r"entry 'x' has file_name '\.\./\.\./elsewhere/a\.pth'; "
                                                             r"give a plain file name"),
    ("[checkpoints.x]\nsize = true", r"entry 'x' has a bad size True"),
    ('[checkpoints.x]\nfile_name = ""', r"entry 'x' has file_name ''; give a plain file name"),
    ('[checkpoints.x]\nurls = "http://127.0.0.1:9/a"', r"entry 'x' needs a non-empty list of urls"),
    ("[checkpoints.x]\nurls = []", r"entry 'x' needs a non-empty list of urls"),
])
def test_a_malformed_user_registry_is_one_line_naming_the_field(registry_file, body, message) -> None:
    # $TREK_TRACK_REGISTRY may point at the user's own registry: wrong types were AttributeError/TypeError
    # tracebacks, and a file_name with a path escaped the cache folder
    defaults = {"kind": '"sam"', "variant": '"sam_vit_b"', "file_name": '"a.pth"', "urls": '["http://127.0.0.1:9/a"]',
                "licence": '"test"'}
    if body.startswith("[checkpoints.x]"):
        given = {line.split(" = ")[0] for line in body.splitlines()[1:]}
        body += "".join(f"\n{k} = {v}" for k, v in defaults.items() if k not in given)
    registry_file.write_text(body + "\n")
    with pytest.raises(CheckpointError, match=message) as info:
        default_registry()
    assert "\n" not in str(info.value)
