"""``resolve_checkpoint``: paths as is, names to the cache, helpful errors otherwise."""

from __future__ import annotations

import pytest

from tests.weights.server import write_registry
from trek_tracker.errors import CheckpointError
from trek_tracker.weights import resolve_checkpoint


@pytest.fixture
def reg(registry_file):
    write_registry(registry_file, {
        "deaotl": {"variant": "deaotl", "file_name": "DeAOTL_PRE_YTB_DAV.pth", "urls": ["http://127.0.0.1:9/x"],
                   "manual_url": "https://drive.example/deaotl"},
        "sam_vit_b": {"kind": "sam", "variant": "sam_vit_b", "file_name": "sam_b.pth", "size": 5,
                      "urls": ["http://127.0.0.1:9/y"]},
    })
    return registry_file


def test_existing_path_is_returned_as_is(tmp_path, home, reg):
    file = tmp_path / "deaotl"  # even when it is also a registry name, an existing file wins
    file.write_bytes(b"PK\x03\x04")
    assert resolve_checkpoint(str(file)) == file
    assert resolve_checkpoint(file) == file


def test_name_resolves_to_the_cached_file(home, reg):
    cached = home / "weights" / "DeAOTL_PRE_YTB_DAV.pth"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"PK\x03\x04")
    assert resolve_checkpoint("deaotl") == cached
    assert resolve_checkpoint("DeAOTL_PRE_YTB_DAV.pth", kind="deaot") == cached


def test_missing_known_name_names_the_download_command(home, reg):
    with pytest.raises(CheckpointError) as info:
        resolve_checkpoint("deaotl", kind="deaot")
    message = str(info.value)
    assert "`trek-track weights download deaotl`" in message
    assert "https://drive.example/deaotl" in message and "\n" not in message


def test_partial_download_is_mentioned(home, reg):
    (home / "weights").mkdir(parents=True)
    (home / "weights" / "DeAOTL_PRE_YTB_DAV.pth.part").write_bytes(b"PK")
    with pytest.raises(CheckpointError, match="partial download exists.*download deaotl"):
        resolve_checkpoint("deaotl")


def test_cached_file_of_the_wrong_size_is_refused(home, reg):
    (home / "weights").mkdir(parents=True)
    (home / "weights" / "sam_b.pth").write_bytes(b"123")
    with pytest.raises(CheckpointError, match="wrong size"):
        resolve_checkpoint("sam_vit_b")


def test_unknown_name_lists_close_names(home, reg):
    with pytest.raises(CheckpointError, match="did you mean deaotl"):
        resolve_checkpoint("deaot_l")


def test_missing_path_is_reported_as_a_file(home, reg, tmp_path):
    with pytest.raises(CheckpointError, match="checkpoint file not found: .*nothere.pth"):
        resolve_checkpoint(str(tmp_path / "nothere.pth"))


def test_wrong_family_is_refused(home, reg):
    with pytest.raises(CheckpointError, match="not sam"):
        resolve_checkpoint("deaotl", kind="sam")
