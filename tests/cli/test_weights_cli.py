"""``trek-track weights`` end to end (against a local HTTP server; no internet)."""

from __future__ import annotations

import errno
import os
import shutil

import pytest
from click.testing import CliRunner

from tests.damaged import assert_one_line_error, failing_fs, run_cli
from tests.weights.server import LocalServer, sha, write_registry
from trek_tracker.cli import main


@pytest.fixture
def env(tmp_path, monkeypatch):
    home, registry = tmp_path / "home", tmp_path / "registry.toml"
    monkeypatch.setenv("TREK_TRACK_HOME", str(home))
    monkeypatch.setenv("TREK_TRACK_REGISTRY", str(registry))
    payload = b"PK\x03\x04" + os.urandom(200_000)
    with LocalServer(lifetime=60) as server:
        server.state.files["a.pth"] = payload
        write_registry(registry, {
            "good": {"file_name": "Good.pth", "size": len(payload), "sha256": sha(payload),
                     "urls": [server.url("/files/a.pth")]},
            "bad": {"kind": "sam", "variant": "sam_vit_b", "file_name": "Bad.pth", "sha256": sha(b"other"),
                    "urls": [server.url("/files/a.pth")]},
        })
        yield home, payload, server


def run(*args):
    return CliRunner().invoke(main, ["weights", *args])


def _one_line_error(result, *fragments):
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("trek-track: error: ") and result.stderr.count("\n") == 1
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in result.stderr


def test_download_path_list_verify(env):
    home, payload, _ = env
    listed = run("list")
    assert listed.exit_code == 0
    assert [line.split()[-2] for line in listed.stdout.splitlines()[1:3]] == ["missing", "missing"]

    done = run("download", "good", "--no-progress")
    assert done.exit_code == 0, done.output
    cached = home / "weights" / "Good.pth"
    assert f"good: downloaded to {cached}" in done.stdout and cached.read_bytes() == payload
    assert run("download", "good").stdout.startswith("good: already present")

    path = run("path", "good")
    assert (path.exit_code, path.stdout.strip()) == (0, str(cached))
    assert "good  deaott" in run("list").stdout and " present " in run("list", "--kind", "deaot").stdout
    assert "bad" not in run("list", "--kind", "deaot").stdout

    verified = run("verify")
    assert verified.exit_code == 0 and "good: OK" in verified.stdout
    cached.write_bytes(payload[:-1] + b"!")
    _one_line_error(run("verify", "good"), "failed verification: good", "download --force good")


def test_checksum_mismatch_fails_with_nothing_cached(env):
    home, _, _ = env
    _one_line_error(run("download", "bad", "--no-progress"), "sha256")
    assert not (home / "weights" / "Bad.pth").exists() and not (home / "weights" / "Bad.pth.part").exists()


def test_missing_and_unknown_names(env):
    _one_line_error(run("path", "good"), "`trek-track weights download good`")
    _one_line_error(run("download", "goood"), "did you mean good")


def test_import_a_hand_copied_file(env, tmp_path):
    home, payload, server = env
    src = tmp_path / "Good.pth"
    src.write_bytes(payload)
    requests = len(server.state.log)
    done = run("import", str(src))
    assert done.exit_code == 0, done.output
    assert (home / "weights" / "Good.pth").read_bytes() == payload
    assert len(server.state.log) == requests
    _one_line_error(run("import", str(src), "--name", "bad"), "sha256")


# ------------------------------------------------------------- file-system trouble, in a subprocess


@pytest.fixture
def tiny_env(tmp_path, tiny_checkpoint):
    """A registry with an unpinned tiny DeAOT entry, a home folder and the file to import."""
    registry = tmp_path / "registry.toml"
    write_registry(registry, {"tiny": {"kind": "deaot", "variant": "test_deaot_tiny", "file_name": "Tiny.pth",
                                       "urls": ["http://127.0.0.1:9/t"]}})
    home = tmp_path / "home"
    return {"TREK_TRACK_HOME": str(home), "TREK_TRACK_REGISTRY": str(registry)}, home, tiny_checkpoint


def test_home_under_a_file_is_one_line(tiny_env, tmp_path):
    env, _, ckpt = tiny_env
    (tmp_path / "afile").write_text("x")
    env["TREK_TRACK_HOME"] = str(tmp_path / "afile" / "home")
    proc = run_cli("weights", "import", ckpt, "--name", "tiny", env=env)
    assert_one_line_error(proc, f"cannot write {tmp_path / 'afile' / 'home' / 'weights'}: {tmp_path / 'afile'} is "
                                "a file, not a folder", "set TREK_TRACK_HOME to another folder")


@pytest.mark.parametrize(("code", "reason"), [(errno.EROFS, "read-only file system"),
                                              (errno.EACCES, "permission denied"),
                                              (errno.ENOSPC, "no space left on the device")])
def test_unwritable_home_is_one_line(tiny_env, tmp_path, code, reason):
    env, home, ckpt = tiny_env
    proc = run_cli("weights", "import", ckpt, "--name", "tiny", env={**env, **failing_fs(tmp_path, home, code)})
    assert_one_line_error(proc, f"cannot write {home / 'weights'}: {reason}", "TREK_TRACK_HOME")
    assert not (home / "weights").exists()


def test_full_disk_during_a_download_is_one_line(env, tmp_path):
    home, _, _ = env
    if not os.path.exists("/dev/full"):
        pytest.skip("needs /dev/full")
    (home / "weights").mkdir(parents=True)
    (home / "weights" / "Good.pth.part").symlink_to("/dev/full")  # every write fails with ENOSPC
    proc = run_cli("weights", "download", "good", "--no-progress",
                   env={"TREK_TRACK_HOME": os.environ["TREK_TRACK_HOME"],
                        "TREK_TRACK_REGISTRY": os.environ["TREK_TRACK_REGISTRY"]})
    assert_one_line_error(proc, f"cannot write {home / 'weights'}: no space left on the device; free some space")
    assert "interrupted" not in proc.stderr  # not taken for a network interruption
    assert not (home / "weights" / "Good.pth").exists()


def test_verify_on_a_read_only_cache_still_verifies(tiny_env, tmp_path, monkeypatch):
    env, home, ckpt = tiny_env
    (home / "weights").mkdir(parents=True)
    shutil.copyfile(ckpt, home / "weights" / "Tiny.pth")  # copied by hand: no recorded hash
    proc = run_cli("weights", "verify", "tiny", env={**env, **failing_fs(tmp_path, home, errno.EROFS)})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("tiny: OK (no known sha256; could not record it (cannot write")
    assert "tensors match test_deaot_tiny" in proc.stdout and proc.stderr == ""


def test_verify_fails_an_old_import_that_is_not_a_checkpoint(tiny_env, tmp_path):
    env, home, _ = tiny_env
    (home / "weights").mkdir(parents=True)
    junk = home / "weights" / "Tiny.pth"
    junk.write_bytes(b"PK\x03\x04" + os.urandom(5000))  # what `import` used to accept for unpinned entries
    proc = run_cli("weights", "verify", env=env)
    assert "tiny: FAILED" in proc.stdout and "not a usable test_deaot_tiny checkpoint" in proc.stdout
    assert_one_line_error(proc, "1 checkpoint(s) failed verification: tiny")
