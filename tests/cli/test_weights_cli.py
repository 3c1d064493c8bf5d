"""``trek-track weights`` end to end (against a local HTTP server; no internet)."""

from __future__ import annotations

import os

import pytest
from click.testing import CliRunner

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
