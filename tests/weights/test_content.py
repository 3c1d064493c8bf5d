"""Files without a pinned sha256 enter the cache only when they load safely as the model they claim to be."""

from __future__ import annotations

import os
import stat
import zipfile
from pathlib import Path

import pytest
import torch

from tests.cli.conftest import official_checkpoint
from tests.weights.server import sha, write_registry
from trek_tracker.errors import CheckpointError
from trek_tracker.weights import import_file, registry_entry, verify
from trek_tracker.weights.cache import write_record
from trek_tracker.weights.content import _CHECKS, _reason, check_content
from trek_tracker.weights.registry import KINDS

TINY = "test_deaot_tiny"


@pytest.fixture
def reg(registry_file: Path) -> Path:
    write_registry(registry_file, {
        "tiny": {"kind": "deaot", "variant": TINY, "file_name": "Tiny.pth", "urls": ["http://127.0.0.1:9/t"]},
        "sam": {"kind": "sam", "variant": "sam_vit_b", "file_name": "sam.pth", "urls": ["http://127.0.0.1:9/s"]},
        "secm": {"kind": "alpha_refine", "variant": "ar_secm", "file_name": "SEcm.pth.tar",
                 "urls": ["http://127.0.0.1:9/a"]},
        "nomodel": {"kind": "deaot", "variant": "deaot_xxl", "file_name": "X.pth", "urls": ["http://127.0.0.1:9/x"]},
    })
    return registry_file


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return official_checkpoint(tmp_path_factory.mktemp("tiny") / "tiny.pth")


def _cache(home: Path) -> list[str]:
    return sorted(p.name for p in (home / "weights").iterdir()) if (home / "weights").exists() else []


def test_a_real_checkpoint_is_imported_with_normal_permissions(home, reg, tiny) -> None:
    path = import_file(tiny, "tiny")
    assert path == home / "weights" / "Tiny.pth" and path.read_bytes() == tiny.read_bytes()
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask  # not mkstemp's 0600
    assert _cache(home) == ["Tiny.pth", "Tiny.pth.sha256"]
    result = verify(registry_entry("tiny"))
    assert result.ok and "tensors match test_deaot_tiny" in result.message


def test_any_zip_is_not_a_checkpoint(home, reg, tmp_path) -> None:
    junk = tmp_path / "Tiny.pth"
    with zipfile.ZipFile(junk, "w") as z:  # starts with PK like a torch file
        z.writestr("readme.txt", "hello")
    assert junk.read_bytes()[:2] == b"PK"
    with pytest.raises(CheckpointError, match=rf"{junk} is not a usable {TINY} checkpoint: .*get tiny again"):
        import_file(junk, "tiny")
    assert _cache(home) == []


def test_a_checkpoint_of_another_model_is_refused_naming_keys(home, reg, tmp_path) -> None:
    partial = official_checkpoint(tmp_path / "other.pth", drop="decoder.")
    with pytest.raises(CheckpointError, match=rf"other.pth is not a {TINY} checkpoint: \d+ missing keys \(first: "
                                              r"decoder\."):
        import_file(partial, "tiny")
    shaped = {k: torch.zeros(3, 3) for k in torch.load(partial, weights_only=True)["state_dict"]}
    torch.save({"state_dict": shaped}, tmp_path / "shapes.pth")
    with pytest.raises(CheckpointError, match=r"shape mismatches \(first: "):
        import_file(tmp_path / "shapes.pth", "tiny")
    assert _cache(home) == []


class _Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_file_carrying_code_is_refused_without_running_it(home, reg, tmp_path) -> None:
    marker = tmp_path / "ran"
    for name in ("tiny", "sam", "secm"):
        path = tmp_path / f"{name}.pth"
        torch.save({"state_dict": {"w": torch.zeros(1)}, "extra": _Exploit(marker)}, path)
        with pytest.raises(CheckpointError, match="not a usable"):
            import_file(path, name)
    assert not marker.exists() and _cache(home) == []


def test_sam_and_alpha_refine_keys(home, reg, tmp_path) -> None:
    from trek_tracker.init.alpha_refine.secm import SEcm
    from trek_tracker.init.alpha_refine.seg384 import ARSegMask

    torch.save({"image_encoder.pos_embed": torch.zeros(1, 64, 64, 768)}, tmp_path / "sam.pth")
    with pytest.raises(CheckpointError, match=r"sam.pth is not a sam_vit_b checkpoint: \d+ missing keys"):
        import_file(tmp_path / "sam.pth", "sam")
    torch.save({"net": SEcm().state_dict()}, tmp_path / "secm.pth.tar")
    assert import_file(tmp_path / "secm.pth.tar", "secm").name == "SEcm.pth.tar"
    assert verify(registry_entry("secm")).ok
    torch.save({"net": ARSegMask(pool_size=4).state_dict()}, tmp_path / "seg.pth.tar")
    with pytest.raises(CheckpointError, match="holds an Alpha-Refine seg384 network, not secm"):
        import_file(tmp_path / "seg.pth.tar", "secm", force=True)


def test_unknown_model_variant_in_the_registry(home, reg, tiny) -> None:
    with pytest.raises(CheckpointError, match="registry entry nomodel names model 'deaot_xxl'"):
        check_content(registry_entry("nomodel"), tiny)


@pytest.mark.parametrize(("kind", "variant", "names"), [
    ("sam", "sam_vit_x", "SAM size 'vit_x', which segment_anything"),
    ("hqsam", "sam_hq_vit_x", "HQ-SAM size 'vit_x', which this"),
])
def test_unknown_sam_size_in_the_registry(registry_file, tmp_path, kind, variant, names) -> None:
    write_registry(registry_file, {"odd": {"kind": kind, "variant": variant, "file_name": "odd.pth",
                                           "urls": ["http://127.0.0.1:9/o"]}})
    torch.save({"w": torch.zeros(1)}, tmp_path / "odd.pth")
    with pytest.raises(CheckpointError, match=rf"odd.pth is not a usable {variant} checkpoint: registry entry odd "
                                              rf"names {names} .*not know.*; fix the registry entry"):
        check_content(registry_entry("odd"), tmp_path / "odd.pth")


def test_a_reader_error_becomes_a_short_reason_without_the_path(tmp_path) -> None:
    path = tmp_path / "x.pth"
    assert _reason(f"{path} does not load (truncated). Get it again.", path) == "it does not load (truncated)"
    message = f"cannot read checkpoint {path}: [enforce fail at inline_container.cc:1] . file\n not found in {path}"
    assert _reason(message, path) == "file not found in the file"
    assert _reason("x" * 200, path) == "x" * 200  # up to 200 characters are kept whole
    assert _reason("x" * 201, path) == "x" * 197 + "..."
    long = _reason("word " * 60, path)
    assert len(long) == 200 and long == ("word " * 60)[:197] + "..."


def test_verify_rechecks_a_file_an_older_version_let_in(home, reg, tmp_path) -> None:
    cached = home / "weights" / "Tiny.pth"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"PK\x03\x04" + os.urandom(1000))  # accepted by the old "starts with PK" check
    write_record(cached, sha(cached.read_bytes()))
    result = verify(registry_entry("tiny"))
    assert not result.ok and result.against == "recorded"
    assert "not a usable test_deaot_tiny checkpoint" in result.message


@pytest.fixture
def hq_reg(registry_file: Path) -> Path:
    write_registry(registry_file, {
        "hq": {"kind": "hqsam", "variant": "sam_hq_vit_b", "file_name": "sam_hq_vit_b.pth",
               "urls": ["http://127.0.0.1:9/h"]},
    })
    return registry_file


def _hqsam_shaped(path: Path, drop: str | None = None) -> Path:
    """A file with exactly the keys and shapes of HQ-SAM ViT-B, each tensor one stored zero (a few kB)."""
    from trek_tracker.init.hqsam import build_hqsam

    with torch.device("meta"):
        shapes = {k: v.shape for k, v in build_hqsam("vit_b").state_dict().items()}
    zero = torch.zeros(1)
    torch.save({k: zero.expand(s) if len(s) else zero[0] for k, s in shapes.items()
                if drop is None or not k.startswith(drop)}, path)
    return path


def test_every_registry_kind_has_a_content_check() -> None:
    # a kind without one made `weights import` / `download` of its unpinned files a KeyError traceback
    assert set(KINDS) <= set(_CHECKS)


def test_an_hqsam_checkpoint_without_a_pinned_hash_is_imported_and_verified(home, hq_reg, tmp_path) -> None:
    path = import_file(_hqsam_shaped(tmp_path / "sam_hq_vit_b.pth"))
    assert path == home / "weights" / "sam_hq_vit_b.pth"
    result = verify(registry_entry("hq"))
    assert result.ok and "tensors match sam_hq_vit_b" in result.message


def test_a_plain_sam_file_is_refused_as_hqsam_in_one_line(home, hq_reg, tmp_path) -> None:
    plain = _hqsam_shaped(tmp_path / "plain.pth", drop="mask_decoder.hf_")
    with pytest.raises(CheckpointError, match=r"plain.pth is not a sam_hq_vit_b checkpoint: \d+ missing keys "
                                              r"\(first: mask_decoder\.hf_"):
        import_file(plain, "hq")
    assert not (home / "weights" / "sam_hq_vit_b.pth").exists()



@pytest.mark.parametrize("network", ["secm", "seg384"])
def test_an_alpha_refine_file_is_checked_with_the_pool_size_it_was_trained_with(registry_file, tmp_path,
                                                                                 network) -> None:
    from trek_tracker.init.alpha_refine.secm import SEcm
    from trek_tracker.init.alpha_refine.seg384 import ARSegMask

    write_registry(registry_file, {"ar": {"kind": "alpha_refine", "variant": f"ar_{network}", "file_name": "ar.pth",
                                          "urls": ["http://127.0.0.1:9/a"]}})
    model = SEcm(pool_size=4) if network == "secm" else ARSegMask(pool_size=4)  # not their default (8, 12)
    torch.save({"net": model.state_dict()}, tmp_path / "ar.pth")
    assert check_content(registry_entry("ar"), tmp_path / "ar.pth").endswith(f"tensors match ar_{network}")
