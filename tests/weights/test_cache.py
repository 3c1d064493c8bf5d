"""Importing hand-copied files, verification and cache status."""

from __future__ import annotations

import pytest
import torch

from tests.cli.conftest import official_checkpoint
from tests.weights.server import sha, write_registry
from trek_tracker.errors import CheckpointError
from trek_tracker.weights import import_file, registry_entry, status, verify
from trek_tracker.weights.cache import recorded_sha256


@pytest.fixture
def reg(registry_file, payload):
    write_registry(registry_file, {
        "known": {"file_name": "Known.pth", "size": len(payload), "sha256": sha(payload),
                  "urls": ["http://127.0.0.1:9/k"]},
        "unhashed": {"file_name": "Unhashed.pth.tar", "variant": "test_deaot_tiny", "urls": ["http://127.0.0.1:9/u"]},
    })
    return registry_file


def _leftovers(home):
    return sorted(p.name for p in (home / "weights").iterdir()) if (home / "weights").exists() else []


def test_import_by_file_name(home, reg, payload, tmp_path):
    src = tmp_path / "Known.pth"
    src.write_bytes(payload)
    path = import_file(src)
    assert path == home / "weights" / "Known.pth" and path.read_bytes() == payload
    assert src.exists()  # copied, not moved
    assert status(registry_entry("known")).state == "present"


def test_import_recognises_a_renamed_file_by_hash(home, reg, payload, tmp_path):
    src = tmp_path / "download (1).bin"
    src.write_bytes(payload)
    assert import_file(src).name == "Known.pth"


def test_import_rejects_wrong_content_and_leaves_nothing(home, reg, payload, tmp_path):
    src = tmp_path / "Known.pth"
    src.write_bytes(payload[:-1] + b"\0")
    with pytest.raises(CheckpointError, match="bytes but known has|sha256"):
        import_file(src)
    assert _leftovers(home) == []


def test_import_needs_a_name_for_an_unknown_file(home, reg, tmp_path):
    src = official_checkpoint(tmp_path / "mystery.pth")
    with pytest.raises(CheckpointError, match="--name NAME"):
        import_file(src)
    path = import_file(src, "unhashed")
    assert path.name == "Unhashed.pth.tar"
    with pytest.raises(CheckpointError, match="already in the cache.*--force"):
        import_file(src, "unhashed")
    other = official_checkpoint(tmp_path / "other.pth")
    torch.save({**torch.load(other, weights_only=True), "epoch": 3}, other)  # same keys, other bytes
    assert import_file(other, "unhashed", force=True).read_bytes() == other.read_bytes()


def test_verify_detects_corruption(home, reg, payload, tmp_path):
    src = tmp_path / "Known.pth"
    src.write_bytes(payload)
    path = import_file(src)
    good = verify(registry_entry("known"))
    assert good.ok and good.against == "registry"
    data = bytearray(payload)
    data[1000] ^= 0xFF
    path.write_bytes(bytes(data))
    bad = verify(registry_entry("known"))
    assert not bad.ok and bad.sha256 == sha(bytes(data))


def test_verify_uses_the_hash_recorded_on_import_when_the_registry_has_none(home, reg, tmp_path):
    src = official_checkpoint(tmp_path / "x.pth.tar")
    path = import_file(src, "unhashed")
    assert verify(registry_entry("unhashed")).against == "recorded"
    assert verify(registry_entry("unhashed")).ok
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped bit inside a tensor still loads: only the hash tells
    path.write_bytes(bytes(data))
    result = verify(registry_entry("unhashed"))
    assert not result.ok and "recorded" in result.message


def test_verify_of_a_missing_file_names_the_download(home, reg):
    with pytest.raises(CheckpointError, match="trek-track weights download known"):
        verify(registry_entry("known"))


def test_status_reports_partial_downloads(home, reg):
    entry = registry_entry("known")
    assert status(entry).state == "missing"
    (home / "weights").mkdir(parents=True)
    (home / "weights" / "Known.pth.part").write_bytes(b"12345")
    st = status(entry)
    assert (st.state, st.size) == ("partial", 5)


def test_verify_records_the_hash_of_a_hand_copied_unpinned_file(home, reg, tmp_path):
    cached = home / "weights" / "Unhashed.pth.tar"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(official_checkpoint(tmp_path / "x.pth.tar").read_bytes())  # copied by hand: no record
    first = verify(registry_entry("unhashed"))
    assert (first.ok, first.against) == (True, "none")
    assert first.message.startswith("no known sha256; recorded it now; ")
    assert recorded_sha256(cached) == sha(cached.read_bytes())
    second = verify(registry_entry("unhashed"))
    assert (second.ok, second.against) == (True, "recorded")
    assert second.message.startswith("sha256 matches the one recorded on arrival; ")


def test_verify_names_a_cached_web_page_as_such(home, reg):
    cached = home / "weights" / "Unhashed.pth.tar"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"<html><body>Quota exceeded</body></html>")
    result = verify(registry_entry("unhashed"))
    assert not result.ok and result.message == "not a torch checkpoint (an HTML page?)"
    assert recorded_sha256(cached) is None  # a bad file gets no record


def test_import_of_a_folder_or_a_missing_file_says_which(home, reg, tmp_path):
    with pytest.raises(CheckpointError, match=f"cannot import {tmp_path}: it is a folder"):
        import_file(tmp_path, "known")
    with pytest.raises(CheckpointError, match=f"cannot import {tmp_path / 'nothere.pth'}: no such file"):
        import_file(tmp_path / "nothere.pth", "known")
    assert _leftovers(home) == []


def test_verify_fails_a_cached_file_of_the_wrong_size(home, reg, payload, tmp_path):
    src = tmp_path / "Known.pth"
    src.write_bytes(payload)
    import_file(src).write_bytes(payload[:-10])  # truncated after it entered the cache
    result = verify(registry_entry("known"))
    assert not result.ok and result.message == f"size {len(payload) - 10:,} != {len(payload):,}"
    assert status(registry_entry("known")).state == "wrong size"


def test_the_default_home_is_under_the_user_cache_folder(monkeypatch, tmp_path):
    from trek_tracker.weights import trek_home, weights_dir

    monkeypatch.delenv("TREK_TRACK_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert trek_home() == tmp_path / ".cache" / "trek-track"
    assert weights_dir() == tmp_path / ".cache" / "trek-track" / "weights"
    monkeypatch.setenv("TREK_TRACK_HOME", "~/elsewhere")
    assert trek_home() == tmp_path / "elsewhere"
