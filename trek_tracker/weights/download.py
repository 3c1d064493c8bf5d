"""Downloading registry checkpoints: resumable HTTP with the standard library, Google Drive's
confirmation page, a progress bar, and nothing in the cache unless it passed its checks.

The bytes go to ``<file>.part``; an interrupted transfer keeps it and the next attempt asks for the rest
with a ``Range`` header.  Only a complete file whose size and sha256 match the registry is renamed to its
final name.  Google Drive answers large files with an HTML page ("can't scan for viruses") instead of the
bytes; the page's download form, its ``confirm=`` link or the ``download_warning`` cookie lead to the file.
When none does (quota exceeded, sign-in), the error gives the link to download by hand and the
``trek-track weights import`` command.
"""

from __future__ import annotations

import http.client
import http.cookiejar
import os
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from html import unescape
from html.parser import HTMLParser
from pathlib import Path

from trek_tracker import __version__
from trek_tracker.errors import CheckpointError
from trek_tracker.weights.cache import (
    cache_errors,
    cached_path,
    download_lock,
    install_verified,
    part_path,
    weights_dir,
)
from trek_tracker.weights.registry import CheckpointEntry

_USER_AGENT = f"trek-track/{__version__} (+python-urllib)"
_CHUNK = 1 << 20
_MAX_PAGE = 2 << 20  # read at most this much of an HTML page
_MAX_HOPS = 3  # confirmation pages followed before giving up
_RETRY_PAUSE = 0.5  # seconds, times the number of fruitless attempts in a row


class _SourceError(Exception):
    """This URL did not give the file (HTTP error, network, a page we cannot get past)."""


class _Interrupted(Exception):
    """The transfer stopped part-way; the ``.part`` file holds what arrived."""


@dataclass(frozen=True)
class DownloadResult:
    entry: CheckpointEntry
    path: Path
    downloaded: bool  # False when the file was already in the cache
    resumed_from: int  # bytes already on disk when the last transfer started


# --- Google Drive confirmation page -------------------------------------------------------------


class _FormParser(HTMLParser):
    """Collects the forms of a page with their named inputs (enough for Drive's download form)."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.forms: list[dict] = []
        self._current: dict | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attr = {k: (v or "") for k, v in attrs}
        if tag == "form":
            self._current = {"id": attr.get("id", ""), "action": attr.get("action", ""),
                             "method": attr.get("method", "get").lower(), "inputs": []}
            self.forms.append(self._current)
        elif tag == "input" and self._current is not None and attr.get("name"):
            if attr.get("type", "text").lower() not in ("submit", "button", "image", "reset"):
                self._current["inputs"].append((attr["name"], attr.get("value", "")))

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self._current = None


def _with_query(url: str, **params: str) -> str:
    parts = urllib.parse.urlsplit(url)
    pairs = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    query = [(k, v) for k, v in pairs if k not in params]
    query += list(params.items())
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query)))


def confirmation_url(page: str, page_url: str, cookies: dict[str, str] | None = None) -> str | None:
    """The URL that a Drive "download anyway" page leads to, or None when the page offers no way on.

    Tries, newest scheme first: the ``download-form`` (``drive.usercontent.google.com/download`` with
    hidden ``id``/``export``/``confirm``/``uuid``), a link carrying ``confirm=``, the ``download_warning``
    cookie, and a bare ``confirm=TOKEN`` anywhere in the page.
    """
    parser = _FormParser()
    try:
        parser.feed(page)
    except Exception:  # noqa: BLE001 - a malformed page just has no usable form
        parser.forms = []
    for form in parser.forms:
        if form["method"] == "get" and (form["id"] == "download-form" or "download" in form["action"]):
            action = urllib.parse.urljoin(page_url, unescape(form["action"]) or page_url)
            query = urllib.parse.urlencode(form["inputs"])
            return f"{action}?{query}" if query else action
    link = re.search(r"""href=["']([^"']*[?&](?:amp;)?confirm=[^"']*)["']""", page)
    if link:
        return urllib.parse.urljoin(page_url, unescape(link.group(1)))
    for name, value in (cookies or {}).items():
        if name.startswith("download_warning"):
            return _with_query(page_url, confirm=value)
    token = re.search(r"confirm=([0-9A-Za-z_-]+)", page)
    if token:
        return _with_query(page_url, confirm=token.group(1))
    return None


def _page_reason(page: str) -> str:
    text = page.lower()
    if "quota" in text or "too many users" in text:
        return "Google Drive's download quota for this file is exceeded for now"
    if "accounts.google.com" in text or "sign in" in text:
        return "Google Drive asks to sign in"
    return "the server sent a web page instead of the file"


# --- HTTP -----------------------------------------------------------------------------------------


def _is_html(resp: http.client.HTTPResponse) -> bool:
    return resp.headers.get_content_type() in ("text/html", "application/xhtml+xml")


class _Client:
    """One download's HTTP state: an opener with a cookie jar (Drive sets its token as a cookie)."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.jar = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.jar))

    def _request(self, url: str, start: int):
        headers = {"User-Agent": _USER_AGENT, "Accept-Encoding": "identity"}
        if start:
            headers["Range"] = f"bytes={start}-"
        try:
            return self.opener.open(urllib.request.Request(url, headers=headers), timeout=self.timeout)
        except urllib.error.HTTPError as err:
            if err.code == 416:
                return err  # the range starts at the end: the .part file may already be whole
            raise _SourceError(f"HTTP {err.code} {err.reason}") from err
        except (urllib.error.URLError, OSError, http.client.HTTPException) as err:
            reason = getattr(err, "reason", err)
            raise _SourceError(f"cannot connect ({reason})") from err

    def open_file(self, url: str, start: int):
        """A response carrying the file's bytes, following Drive confirmation pages."""
        for _ in range(_MAX_HOPS + 1):
            resp = self._request(url, start)
            if getattr(resp, "status", None) == 416 or not _is_html(resp):
                return resp
            with resp:
                page = resp.read(_MAX_PAGE).decode("utf-8", "replace")
                page_url = resp.geturl()
            cookies = {c.name: c.value or "" for c in self.jar}
            following = confirmation_url(page, page_url, cookies)
            if following is None or following == url:
                raise _SourceError(_page_reason(page))
            url = following
        raise _SourceError("too many confirmation pages")


def _content_range_start(value: str | None) -> int | None:
    match = re.match(r"bytes\s+(\d+)-\d+/(?:\d+|\*)", value or "")
    return int(match.group(1)) if match else None


def _transfer(client: _Client, url: str, part: Path, entry: CheckpointEntry, progress: bool) -> int:
    """Append the rest of ``url`` to ``part``; returns the offset it resumed from."""
    with cache_errors("read"):
        start = part.stat().st_size if part.exists() else 0
    resp = client.open_file(url, start)
    with resp:
        status = getattr(resp, "status", 200)
        if status == 416:
            return start  # nothing left to fetch; verification decides whether the file is whole
        if start and status != 206:
            start = 0  # the server ignored the range: start again
        elif start:
            given = _content_range_start(resp.headers.get("Content-Range"))
            if given is None or given > start:  # bytes we cannot place: fetch the file again from its start
                with cache_errors():
                    part.unlink(missing_ok=True)
                raise _Interrupted(f"at {start:,} bytes (the server resumed from another position)")
            if given < start:  # it resends bytes we have: they replace the end of the .part file
                with cache_errors():
                    os.truncate(part, given)
                start = given
        length = resp.headers.get("Content-Length")
        expected = start + int(length) if length and length.isdigit() else None
        total = expected or entry.size or entry.approx_size
        from tqdm import tqdm

        written = start
        # Errors of the network interrupt the transfer (resumed later); errors of the disk (full, read-only)
        # are the user's to fix: one line naming the cache folder.
        with cache_errors(), open(part, "ab" if start else "wb") as out, tqdm(
            total=total, initial=start, unit="B", unit_scale=True, unit_divisor=1024,
            desc=entry.name, disable=None if progress else True, leave=False,
        ) as bar:
            while True:
                try:
                    chunk = resp.read(_CHUNK)
                except (http.client.IncompleteRead, OSError) as err:
                    raise _Interrupted(f"after {written:,} bytes ({err.__class__.__name__})") from err
                if not chunk:
                    break
                out.write(chunk)
                written += len(chunk)
                bar.update(len(chunk))
        if expected is not None and written < expected:
            raise _Interrupted(f"after {written:,} of {expected:,} bytes")
    return start


def download(
    entry: CheckpointEntry,
    *,
    force: bool = False,
    progress: bool = True,
    retries: int = 3,
    timeout: float = 60.0,
) -> DownloadResult:
    """Fetch ``entry`` into the cache (resuming a ``.part`` file), verify it, and move it into place.

    ``retries`` is how many interruptions in a row without new bytes are resumed within this call (with a
    short pause); beyond that the ``.part`` file stays so that running the command again resumes it.
    """
    final = cached_path(entry)
    with cache_errors("read"):
        if final.is_file() and not force and (entry.size is None or final.stat().st_size == entry.size):
            return DownloadResult(entry, final, downloaded=False, resumed_from=0)
    with cache_errors():
        weights_dir().mkdir(parents=True, exist_ok=True)
    part = part_path(entry)
    manual = (
        f"download it by hand from {entry.manual_link} and run "
        f"`trek-track weights import FILE --name {entry.name}`"
    )
    with download_lock(entry):
        if force:
            with cache_errors():
                part.unlink(missing_ok=True)
        failures: list[str] = []
        for url in entry.urls:
            client = _Client(timeout)
            attempt, best = 0, -1
            while True:
                try:
                    resumed = _transfer(client, url, part, entry, progress)
                except _Interrupted as err:
                    with cache_errors("read"):
                        have = part.stat().st_size if part.exists() else 0
                    attempt, best = (1, have) if have > best else (attempt + 1, best)
                    if attempt > retries:
                        raise CheckpointError(
                            f"the download of {entry.name} was interrupted {err}; run "
                            f"`{entry.download_command}` again to resume, or {manual}"
                        ) from err
                    time.sleep(_RETRY_PAUSE * attempt)
                    continue
                except _SourceError as err:
                    failures.append(f"{_short(url)}: {err}")
                    break
                path = install_verified(entry, part, f"the download of {entry.name} from {_short(url)}")
                return DownloadResult(entry, path, downloaded=True, resumed_from=resumed)
    raise CheckpointError(f"could not download {entry.name} ({'; '.join(failures)}); {manual}")


def _short(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}{parts.path}"
