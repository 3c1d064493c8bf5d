"""Downloads against a local server: success, checksum rejection, resume, Drive confirmation pages."""

from __future__ import annotations

import importlib
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.weights.server import DRIVE_TOKEN, DRIVE_UUID, sha, write_registry
from trek_tracker.errors import CheckpointError
from trek_tracker.weights import default_registry, download, registry_entry
from trek_tracker.weights.cache import recorded_sha256
from trek_tracker.weights.download import confirmation_url

download_module = importlib.import_module("trek_tracker.weights.download")  # the package's `download` is the function


def _cache_files(home: Path) -> list[str]:
    folder = home / "weights"
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_download_success_then_cached(home, registry_file, server, payload):
    server.state.files["a.pth"] = payload
    write_registry(registry_file, {"ckpt": {"urls": [server.url("/files/a.pth")], "size": len(payload),
                                            "sha256": sha(payload)}})
    result = download(registry_entry("ckpt"), progress=False)
    assert result.downloaded and result.resumed_from == 0
    assert result.path == home / "weights" / "ckpt.pth"
    assert result.path.read_bytes() == payload
    assert recorded_sha256(result.path) == sha(payload)
    assert _cache_files(home) == ["ckpt.pth", "ckpt.pth.sha256"]
    requests = len(server.state.log)
    again = download(registry_entry("ckpt"), progress=False)
    assert not again.downloaded and again.path == result.path and again.resumed_from == 0
    assert len(server.state.log) == requests  # nothing fetched the second time


def test_checksum_mismatch_leaves_nothing(home, registry_file, server, payload):
    server.state.files["a.pth"] = payload
    wrong = sha(payload + b"x")
    write_registry(registry_file, {"ckpt": {"urls": [server.url("/files/a.pth")], "sha256": wrong}})
    with pytest.raises(CheckpointError, match="sha256") as info:
        download(registry_entry("ckpt"), progress=False)
    assert sha(payload) in str(info.value) and "\n" not in str(info.value)
    assert _cache_files(home) == []


def test_size_mismatch_leaves_nothing(home, registry_file, server, payload):
    server.state.files["a.pth"] = payload
    write_registry(registry_file, {"ckpt": {"urls": [server.url("/files/a.pth")], "size": len(payload) + 1}})
    with pytest.raises(CheckpointError, match=f"{len(payload):,} bytes"):
        download(registry_entry("ckpt"), progress=False)
    assert _cache_files(home) == []


def test_interrupted_download_resumes_on_next_call(home, registry_file, server, payload):
    cut = 1_500_000
    server.state.files["a.pth"] = payload
    server.state.cut_after["a.pth"] = cut
    write_registry(registry_file, {"ckpt": {"urls": [server.url("/files/a.pth")], "sha256": sha(payload)}})
    with pytest.raises(CheckpointError, match="trek-track weights download ckpt` again to resume"):
        download(registry_entry("ckpt"), progress=False, retries=0)
    part = home / "weights" / "ckpt.pth.part"
    assert part.stat().st_size == cut and part.read_bytes() == payload[:cut]
    assert not (home / "weights" / "ckpt.pth").exists()

    result = download(registry_entry("ckpt"), progress=False)
    assert result.resumed_from == cut
    assert server.state.log[-1].range == f"bytes={cut}-"
    assert result.path.read_bytes() == payload
    assert not part.exists()


def test_resume_survives_a_redirect(home, registry_file, server, payload):
    server.state.files["a.pth"] = payload
    server.state.cut_after["a.pth"] = 123_456
    write_registry(registry_file, {"ckpt": {"urls": [server.url("/redirect/a.pth")], "sha256": sha(payload)}})
    result = download(registry_entry("ckpt"), progress=False, retries=1)
    assert [(r.path, r.range) for r in server.state.log] == [
        ("/redirect/a.pth", None), ("/files/a.pth", None),
        ("/redirect/a.pth", "bytes=123456-"), ("/files/a.pth", "bytes=123456-"),
    ]
    assert result.path.read_bytes() == payload


def test_interruption_is_resumed_within_one_call(home, registry_file, server, payload):
    server.state.files["a.pth"] = payload
    server.state.cut_after["a.pth"] = 777_777
    write_registry(registry_file, {"ckpt": {"urls": [server.url("/files/a.pth")], "sha256": sha(payload)}})
    result = download(registry_entry("ckpt"), progress=False, retries=2)
    assert [r.range for r in server.state.log] == [None, "bytes=777777-"]
    assert result.path.read_bytes() == payload


def test_server_ignoring_range_restarts_cleanly(home, registry_file, server, payload):
    server.state.files["a.pth"] = payload
    server.state.ignore_range = True
    write_registry(registry_file, {"ckpt": {"urls": [server.url("/files/a.pth")], "sha256": sha(payload)}})
    (home / "weights").mkdir(parents=True)
    (home / "weights" / "ckpt.pth.part").write_bytes(b"stale bytes from another file")
    result = download(registry_entry("ckpt"), progress=False)
    assert server.state.log[0].range == "bytes=29-"
    assert result.resumed_from == 0 and result.path.read_bytes() == payload


def test_a_server_resuming_from_an_earlier_byte_gives_the_right_file(home, registry_file, server, payload):
    # a 206 whose Content-Range starts before the asked offset (servers may align ranges) was written as the
    # file's first bytes: the download then failed its hash check and its .part file was thrown away
    server.state.files["a.pth"] = payload
    server.state.range_back = 4096
    write_registry(registry_file, {"ckpt": {"urls": [server.url("/files/a.pth")], "sha256": sha(payload)}})
    (home / "weights").mkdir(parents=True)
    (home / "weights" / "ckpt.pth.part").write_bytes(payload[:1_000_000])
    result = download(registry_entry("ckpt"), progress=False)
    assert server.state.log[0].range == "bytes=1000000-" and len(server.state.log) == 1
    assert result.resumed_from == 1_000_000 - 4096 and result.path.read_bytes() == payload


def test_a_server_resuming_from_a_later_byte_makes_the_download_start_again(home, registry_file, server, payload,
                                                                            monkeypatch):
    monkeypatch.setattr(download_module, "time", SimpleNamespace(sleep=lambda seconds: None))
    server.state.files["a.pth"] = payload
    server.state.range_back = -4096  # a 206 from beyond the bytes we have: a gap that cannot be filled
    write_registry(registry_file, {"ckpt": {"urls": [server.url("/files/a.pth")], "sha256": sha(payload)}})
    (home / "weights").mkdir(parents=True)
    (home / "weights" / "ckpt.pth.part").write_bytes(payload[:1_000_000])
    result = download(registry_entry("ckpt"), progress=False)
    assert [r.range for r in server.state.log] == ["bytes=1000000-", None]
    assert result.resumed_from == 0 and result.path.read_bytes() == payload


def test_complete_part_file_is_installed_after_416(home, registry_file, server, payload):
    server.state.files["a.pth"] = payload
    write_registry(registry_file, {"ckpt": {"urls": [server.url("/files/a.pth")], "sha256": sha(payload)}})
    (home / "weights").mkdir(parents=True)
    (home / "weights" / "ckpt.pth.part").write_bytes(payload)
    result = download(registry_entry("ckpt"), progress=False)
    assert result.path.read_bytes() == payload and result.resumed_from == len(payload)


@pytest.mark.parametrize("first", ["/drive/form?id=a.pth", "/drive/uc?export=download&id=a.pth",
                                   "/drive/uc?export=download&id=cookie_a.pth"])
def test_drive_confirmation_pages(home, registry_file, server, payload, first):
    name = "cookie_a.pth" if "cookie" in first else "a.pth"
    server.state.files[name] = payload
    write_registry(registry_file, {"ckpt": {"urls": [server.url(first)], "sha256": sha(payload)}})
    result = download(registry_entry("ckpt"), progress=False)
    assert result.path.read_bytes() == payload
    final = server.state.log[-1]
    if "form" in first:
        assert final.path == "/usercontent/download"
        assert final.query == {"id": "a.pth", "export": "download", "confirm": "t", "uuid": DRIVE_UUID}
    else:
        assert final.path == "/drive/uc" and final.query["confirm"] == DRIVE_TOKEN
    if "cookie" in first:
        assert DRIVE_TOKEN in (final.cookie or "")


def test_drive_quota_page_gives_manual_route(home, registry_file, server):
    manual = "https://drive.google.com/file/d/XYZ/view"
    write_registry(registry_file, {"ckpt": {"urls": [server.url("/drive/quota")], "manual_url": manual}})
    with pytest.raises(CheckpointError) as info:
        download(registry_entry("ckpt"), progress=False)
    message = str(info.value)
    assert "download quota for this file is exceeded" in message and manual in message
    assert "trek-track weights import FILE --name ckpt" in message
    assert _cache_files(home) == []


def test_html_instead_of_file_is_rejected_without_known_hash(home, registry_file, server):
    server.state.files["page.pth"] = b"<html><body>Sign in</body></html>"  # served as octet-stream
    write_registry(registry_file, {"ckpt": {"urls": [server.url("/files/page.pth")]}})
    with pytest.raises(CheckpointError, match="not a torch checkpoint"):
        download(registry_entry("ckpt"), progress=False)
    assert _cache_files(home) == []


def test_falls_back_to_the_next_url(home, registry_file, server, payload):
    server.state.files["a.pth"] = payload
    urls = [server.url("/files/missing.pth"), server.url("/files/a.pth")]
    write_registry(registry_file, {"ckpt": {"urls": urls, "sha256": sha(payload)}})
    result = download(registry_entry("ckpt"), progress=False)
    assert [r.path for r in server.state.log] == ["/files/missing.pth", "/files/a.pth"]
    assert result.path.read_bytes() == payload


def test_unreachable_source_names_the_manual_link(home, registry_file, server):
    dead = server.url("/files/x")
    server.stop()  # nothing listens on that port any more
    write_registry(registry_file, {"ckpt": {"urls": [dead], "manual_url": "https://example.org/manual"}})
    with pytest.raises(CheckpointError, match="cannot connect.*https://example.org/manual"):
        download(registry_entry("ckpt"), progress=False, timeout=5)


def test_confirmation_url_resolves_relative_form_and_escaped_link():
    form = (
        '<form id="download-form" action="download" method="get"><input type="hidden" name="id" value="F">'
        '<input type="hidden" name="confirm" value="t"><input type="submit" name="go" value="x"></form>'
    )
    assert confirmation_url(form, "https://h.example/a/page") == "https://h.example/a/download?id=F&confirm=t"
    link = '<a href="/uc?export=download&amp;confirm=AbC_1&amp;id=F">go</a>'
    expected = "https://h.example/uc?export=download&confirm=AbC_1&id=F"
    assert confirmation_url(link, "https://h.example/uc?id=F") == expected
    assert confirmation_url("<html>nothing here</html>", "https://h.example/uc?id=F") is None
    script = "<script>var u = '/uc?id=F&confirm=Zz-9_';</script>"  # a bare token, in no link
    assert confirmation_url(script, "https://h.example/uc?id=F") == "https://h.example/uc?id=F&confirm=Zz-9_"
    jar = {"download_warning_1": "NEW"}
    cookie = confirmation_url("<html></html>", "https://h.example/uc?id=F&authuser=&confirm=old", jar)
    assert cookie == "https://h.example/uc?id=F&authuser=&confirm=NEW"  # a blank parameter is kept


def test_official_registry_drive_entries_link_to_drive():
    # The official Drive entries go through the same confirmation logic; check their links are well formed.
    for entry in default_registry():
        if "/drive/folders/" in entry.urls[0]:  # a folder (VMOS): downloaded by hand, then imported
            assert entry.manual_url == entry.urls[0]
        elif "drive.google.com" in entry.urls[0]:
            file_id = entry.urls[0].rsplit("id=", 1)[1]
            assert entry.manual_url == f"https://drive.google.com/file/d/{file_id}/view"


def test_a_second_concurrent_download_is_refused(home, registry_file, server, payload):
    from trek_tracker.weights.cache import download_lock

    server.state.files["a.pth"] = payload
    write_registry(registry_file, {"ckpt": {"urls": [server.url("/files/a.pth")], "sha256": sha(payload)}})
    with download_lock(registry_entry("ckpt")):
        with pytest.raises(CheckpointError, match="another process is already downloading ckpt"):
            download(registry_entry("ckpt"), progress=False)
    assert server.state.log == []
    assert download(registry_entry("ckpt"), progress=False).path.read_bytes() == payload


def test_an_interrupt_while_a_download_is_verified_keeps_the_bytes(home, registry_file, server, payload,
                                                                     monkeypatch) -> None:
    # Ctrl-C while a complete multi-GB download was hashed deleted its .part: everything had to be fetched again
    from tests.weights.server import sha
    from trek_tracker.weights import cache, download

    server.state.files["a.pth"] = payload
    write_registry(registry_file, {"ckpt": {"urls": [server.url("/files/a.pth")], "sha256": sha(payload)}})

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(cache, "sha256_of", interrupted)
        with pytest.raises(KeyboardInterrupt):
            download(registry_entry("ckpt"), progress=False)
    part = home / "weights" / "ckpt.pth.part"
    assert part.read_bytes() == payload and not (home / "weights" / "ckpt.pth").exists()
    result = download(registry_entry("ckpt"), progress=False)
    assert result.resumed_from == len(payload) and result.path.read_bytes() == payload and not part.exists()


def test_a_second_concurrent_download_says_what_to_do(home, registry_file) -> None:
    from trek_tracker.weights import download
    from trek_tracker.weights.cache import download_lock

    write_registry(registry_file, {"ckpt": {"urls": ["http://127.0.0.1:9/a"]}})
    with download_lock(registry_entry("ckpt")):
        with pytest.raises(CheckpointError, match=r"already downloading ckpt .*; wait for it to finish, then run "
                                                  r"`trek-track weights download ckpt` again") as info:
            download(registry_entry("ckpt"), progress=False)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(("page", "reason"), [
    ("<html><body>Sorry, too many users have viewed or downloaded this file</body></html>",
     "Google Drive's download quota for this file is exceeded for now"),
    ('<html><body><a href="https://accounts.google.com/ServiceLogin">Sign in</a></body></html>',
     "Google Drive asks to sign in"),
    ("<html><body>Service unavailable</body></html>", "the server sent a web page instead of the file"),
])
def test_a_web_page_instead_of_the_file_says_why(home, registry_file, server, page, reason):
    server.state.pages["p"] = page
    write_registry(registry_file, {"ckpt": {"urls": [server.url("/pages/p")]}})
    with pytest.raises(CheckpointError, match=f"could not download ckpt \\(http://[^ ]*/pages/p: {reason}\\)"):
        download(registry_entry("ckpt"), progress=False)
    assert _cache_files(home) == []


def test_endless_confirmation_pages_are_given_up(home, registry_file, server, payload):
    server.state.files["a.pth"] = payload
    urls = [server.url("/drive/loop"), server.url("/files/a.pth")]
    write_registry(registry_file, {"ckpt": {"urls": urls, "sha256": sha(payload)}})
    result = download(registry_entry("ckpt"), progress=False)  # the next url is tried
    assert result.path.read_bytes() == payload
    assert [r.path for r in server.state.log] == ["/drive/loop"] * (download_module._MAX_HOPS + 1) + ["/files/a.pth"]
    write_registry(registry_file, {"ckpt": {"urls": urls[:1]}})
    with pytest.raises(CheckpointError, match="/drive/loop: too many confirmation pages"):
        download(registry_entry("ckpt"), progress=False, force=True)


def test_confirmation_url_takes_only_a_download_form_and_only_its_own_inputs():
    search = '<form action="/search" method="get"><input name="q" value="x"></form>'
    assert confirmation_url(search, "https://h.example/uc?id=F") is None  # a get form, but not a download one
    post = '<form id="download-form" action="/dl" method="post"><input name="id" value="F"></form>'
    assert confirmation_url(post, "https://h.example/uc?id=F") is None
    page = ('<form id="download-form" action="/dl"><input type="hidden" name="id" value="F">'
            '<input type="hidden" name="at" value></form>'  # an attribute without a value is empty
            '<input name="q" value="after the form">')  # method defaults to get
    assert confirmation_url(page, "https://h.example/uc?id=F") == "https://h.example/dl?id=F&at="


def test_a_file_sent_without_a_length_is_downloaded(home, registry_file, server, payload):
    server.state.files["a.pth"] = payload
    server.state.no_length = True  # a close-delimited body, as some servers and proxies send
    write_registry(registry_file, {"ckpt": {"urls": [server.url("/files/a.pth")], "sha256": sha(payload)}})
    result = download(registry_entry("ckpt"), progress=False)
    assert result.downloaded and result.path.read_bytes() == payload


def test_interruptions_that_bring_new_bytes_are_resumed_beyond_the_retries(home, registry_file, server, payload,
                                                                          monkeypatch):
    pauses: list[float] = []
    monkeypatch.setattr(download_module, "time", SimpleNamespace(sleep=pauses.append))
    server.state.files["a.pth"] = payload
    server.state.cut_after["a.pth"] = [500_000, 500_000, 500_000]  # each attempt gets 500 kB further
    write_registry(registry_file, {"ckpt": {"urls": [server.url("/files/a.pth")], "sha256": sha(payload)}})
    result = download(registry_entry("ckpt"), progress=False, retries=1)
    assert [r.range for r in server.state.log] == [None, "bytes=500000-", "bytes=1000000-", "bytes=1500000-"]
    assert result.resumed_from == 1_500_000 and result.path.read_bytes() == payload
    assert pauses == [download_module._RETRY_PAUSE] * 3  # progress each time: never a longer pause


def test_interruptions_without_new_bytes_give_up_after_the_retries_with_growing_pauses(
        home, registry_file, server, payload, monkeypatch):
    pauses: list[float] = []
    monkeypatch.setattr(download_module, "time", SimpleNamespace(sleep=pauses.append))
    server.state.files["a.pth"] = payload
    server.state.cut_after["a.pth"] = [1000, 0, 0, 0, 0]
    write_registry(registry_file, {"ckpt": {"urls": [server.url("/files/a.pth")], "sha256": sha(payload)}})
    with pytest.raises(CheckpointError, match="interrupted after 1,000 of"):
        download(registry_entry("ckpt"), progress=False, retries=2)
    assert [r.range for r in server.state.log] == [None, "bytes=1000-", "bytes=1000-"]
    assert pauses == [download_module._RETRY_PAUSE, 2 * download_module._RETRY_PAUSE]
    assert (home / "weights" / "ckpt.pth.part").read_bytes() == payload[:1000]
