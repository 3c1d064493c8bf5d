"""``trek-track weights`` end to end (against a local HTTP server; no internet)."""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

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
    assert done.stdout == f"imported {src} as {home / 'weights' / 'Good.pth'}\n"
    assert (home / "weights" / "Good.pth").read_bytes() == payload
    assert len(server.state.log) == requests
    _one_line_error(run("import", str(src), "--name", "bad"), "sha256")
    _one_line_error(run("import", str(tmp_path)), "Invalid value for 'FILE'", "is a directory")


def test_list_and_download_show_a_partial_download_and_resume_it(env):
    home, payload, _ = env
    (home / "weights").mkdir(parents=True)
    (home / "weights" / "Good.pth.part").write_bytes(payload[:50_000])
    (home / "weights" / "Bad.pth.part").write_bytes(payload[:1500])
    listed = {line.split()[0]: line for line in run("list").stdout.splitlines()[1:3]}
    assert " partial 50 KB/200 KB " in listed["good"]  # SI units, of the registry's whole size
    assert " partial 2 KB " in listed["bad"]  # no size in the registry: no total
    done = run("download", "good", "--no-progress")
    assert done.exit_code == 0, done.output
    assert done.stdout == f"good: downloaded to {home / 'weights' / 'Good.pth'} (resumed at 50 KB)\n"
    assert (home / "weights" / "Good.pth").read_bytes() == payload
    estimated = {"file_name": "Bad.pth", "approx_size": 375_000_000, "urls": ["http://127.0.0.1:9/"]}
    write_registry(Path(os.environ["TREK_TRACK_REGISTRY"]), {"about": estimated})
    (about,) = run("list").stdout.splitlines()[1:2]
    assert " ~375 MB " in about and " partial 2 KB/375 MB " in about  # a size the registry only estimates


@pytest.mark.parametrize(("n", "approx", "text"), [
    (None, False, "?"), (999, False, "999 B"), (1000, False, "1 KB"), (12_345, False, "12 KB"),
    (2_500_000, False, "2.5 MB"), (9_500_000, False, "9.5 MB"), (10_000_000, False, "10 MB"),
    (25_000_000, False, "25 MB"), (375_000_000, True, "~375 MB"),
    (2_640_000_000, False, "2.6 GB"), (12_000_000_000_000, False, "12000 GB"),
])
def test_sizes_are_si_units_with_one_decimal_only_below_ten_of_a_large_unit(n, approx, text):
    from trek_tracker.cli.weights import _size

    assert _size(n, approx=approx) == text


def test_verify_with_nothing_downloaded_says_so_and_succeeds(env):
    result = run("verify")
    assert (result.exit_code, result.stdout) == (0, "no checkpoint is downloaded yet; see `trek-track weights list`\n")


@pytest.mark.parametrize("option", [("--timeout", "0.5"), ("--timeout", "3601"), ("--retries", "-1"),
                                    ("--retries", "101")])
def test_download_refuses_a_timeout_or_retries_out_of_range_before_any_transfer(env, option):
    home, _, server = env
    _one_line_error(run("download", "good", "--no-progress", *option), f"Invalid value for '{option[0]}'")
    assert server.state.log == [] and not (home / "weights").exists()


def test_download_hands_its_options_to_every_transfer(env, monkeypatch):
    import types

    import trek_tracker.weights

    calls = []

    def download(entry, **options):
        calls.append((entry.name, options))
        return types.SimpleNamespace(downloaded=False, path=f"/cache/{entry.file_name}", resumed_from=None)

    monkeypatch.setattr(trek_tracker.weights, "download", download)
    result = run("download", "good", "bad", "--force", "--no-progress", "--retries", "0", "--timeout", "7.5")
    assert result.exit_code == 0, result.output
    asked = {"force": True, "progress": False, "retries": 0, "timeout": 7.5}
    assert calls == [("good", asked), ("bad", asked)]
    assert result.stdout == "good: already present at /cache/Good.pth\nbad: already present at /cache/Bad.pth\n"
    calls.clear()
    assert run("download", "good").exit_code == 0
    assert calls == [("good", {"force": False, "progress": True, "retries": 3, "timeout": 60.0})]  # the defaults shown


def test_list_offers_every_kind_of_the_registry():
    from trek_tracker.cli.weights import list_cmd
    from trek_tracker.weights import default_registry

    kind = next(p for p in list_cmd.params if p.name == "kind")
    assert sorted(kind.type.choices) == sorted({entry.kind for entry in default_registry()})


def test_a_file_system_failure_the_library_lets_through_names_the_cache_and_its_setting(env, monkeypatch):
    import trek_tracker.weights

    home, _, _ = env

    def verify(entry):
        raise PermissionError(errno.EACCES, "Permission denied", str(home / "weights" / entry.file_name))

    monkeypatch.setattr(trek_tracker.weights, "verify", verify)
    _one_line_error(run("verify", "good"), f"cannot use {home / 'weights'}: permission denied", "TREK_TRACK_HOME")


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


def test_list_is_a_table_with_one_header_per_column_and_the_cache_last(tmp_path, monkeypatch):
    from trek_tracker.cli.weights import _size

    home, registry = tmp_path / "home", tmp_path / "registry.toml"
    monkeypatch.setenv("TREK_TRACK_HOME", str(home))
    monkeypatch.setenv("TREK_TRACK_REGISTRY", str(registry))
    write_registry(registry, {
        "a_rather_long_name": {"variant": "deaotl", "stage": "PRE_YTB_DAV", "size": 2_500_000,
                               "training_data": "YouTube-VOS + DAVIS", "licence": "BSD-3-Clause (from upstream)",
                               "file_name": "Long.pth", "urls": ["http://127.0.0.1:9/"]},
        "s": {"kind": "sam", "variant": "sam_vit_b", "approx_size": 375_000_000, "licence": "Apache-2.0",
              "file_name": "S.pth", "urls": ["http://127.0.0.1:9/"]},
    })
    (home / "weights").mkdir(parents=True)
    (home / "weights" / "S.pth").write_bytes(b"x")
    listed = run("list")
    assert listed.exit_code == 0, listed.output
    header, *rows, cache = listed.stdout.splitlines()
    names = ["NAME", "VARIANT", "STAGE", "SIZE", "TRAINED ON", "LICENCE", "STATUS", "FILE"]
    starts = [header.index(name) for name in names]
    assert starts == sorted(starts) and header.rstrip() == header
    assert [header[a:b].strip() for a, b in zip(starts, [*starts[1:], None], strict=True)] == names

    def cells(row):  # each value sits under its header, two spaces after the widest cell of the column before
        return [row[a:b].strip() for a, b in zip(starts, [*starts[1:], None], strict=True)]

    assert [cells(row) for row in rows] == [
        ["a_rather_long_name", "deaotl", "PRE_YTB_DAV", _size(2_500_000), "YouTube-VOS + DAVIS", "BSD-3-Clause",
         "missing", "Long.pth"],
        ["s", "sam_vit_b", "-", _size(375_000_000, approx=True), "?", "Apache-2.0", "present", "S.pth"],
    ]
    assert starts[1] == len("a_rather_long_name") + 2 and all(row[starts[i] - 2:starts[i]] == "  " for row in rows
                                                               for i in range(1, len(starts)))
    assert cache == f"cache: {home / 'weights'}"
    none = run("list", "--kind", "hqsam")  # no entry of that kind: the headers alone, each as wide as its name
    assert none.exit_code == 0 and none.stdout.splitlines() == ["  ".join(names), cache], none.output
