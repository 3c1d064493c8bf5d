"""A local HTTP server on 127.0.0.1 for the download tests: plain files with Range support, transfers cut
short on purpose, and fake Google Drive confirmation pages.  It runs in a daemon thread and shuts itself
down after a bounded time even if a test forgets to."""

from __future__ import annotations

import hashlib
import html
import http.server
import threading
import urllib.parse
from dataclasses import dataclass, field

DRIVE_TOKEN = "T0k3n_x-1"
DRIVE_UUID = "c0ffee00-1234"


@dataclass
class Request:
    path: str
    query: dict[str, str]
    range: str | None
    cookie: str | None


@dataclass
class ServerState:
    files: dict[str, bytes] = field(default_factory=dict)
    # name -> bytes sent before the link drops (once; a list: one number per request, in turn)
    cut_after: dict[str, int | list[int]] = field(default_factory=dict)
    ignore_range: bool = False
    range_back: int = 0  # answer a Range request from this many bytes before (< 0: after) the asked start (206)
    no_length: bool = False  # send files without Content-Length, ending the body by closing the connection
    pages: dict[str, str] = field(default_factory=dict)  # name -> HTML served as text/html at /pages/NAME
    log: list[Request] = field(default_factory=list)


def _form_page(file_id: str) -> str:
    return f"""<!DOCTYPE html><html><head><title>Google Drive - Virus scan warning</title></head><body>
<p>Google Drive can't scan this file for viruses.</p>
<form id="download-form" action="/usercontent/download" method="get">
<input type="submit" id="uc-download-link" value="Download anyway"/>
<input type="hidden" name="id" value="{file_id}"><input type="hidden" name="export" value="download">
<input type="hidden" name="confirm" value="t"><input type="hidden" name="uuid" value="{DRIVE_UUID}">
</form></body></html>"""


def _link_page(file_id: str) -> str:
    href = html.escape(f"/drive/uc?export=download&confirm={DRIVE_TOKEN}&id={file_id}")
    link = f'<a id="uc-download-link" href="{href}">Download anyway</a>'
    return f"<html><body>Too large to scan. {link}</body></html>"


_QUOTA_PAGE = """<html><head><title>Google Drive - Quota exceeded</title></head><body>
Sorry, you can't view or download this file at this time. Too many users have viewed or downloaded this
file recently. Please try accessing the file again later.</body></html>"""


def make_handler(state: ServerState) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        timeout = 10

        def log_message(self, format: str, *args) -> None:  # noqa: A002 - quiet test output
            pass

        def _send_page(self, text: str, headers: dict[str, str] | None = None) -> None:
            body = text.encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(body)

        def _send_file(self, name: str) -> None:
            data = state.files.get(name)
            if data is None:
                self.send_error(404)
                return
            start = 0
            rng = self.headers.get("Range")
            if rng and not state.ignore_range:
                start = int(rng.removeprefix("bytes=").split("-")[0])
                start -= min(start, state.range_back) if start < len(data) else 0
                if start >= len(data):
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(data)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            else:
                self.send_response(200)
            body = data[start:]
            self.send_header("Content-Type", "application/octet-stream")
            if state.no_length:
                self.send_header("Connection", "close")
                self.close_connection = True
            else:
                self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            cut = state.cut_after.pop(name, None)
            if isinstance(cut, list):
                if len(cut) > 1:
                    state.cut_after[name] = cut[1:]
                cut = cut[0]
            if cut is not None:  # promise the whole body, send part of it, drop the connection
                self.wfile.write(body[:cut])
                self.wfile.flush()
                self.close_connection = True
                return
            self.wfile.write(body)

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            parts = urllib.parse.urlsplit(self.path)
            query = dict(urllib.parse.parse_qsl(parts.query))
            headers = self.headers
            state.log.append(Request(parts.path, query, headers.get("Range"), headers.get("Cookie")))
            if parts.path.startswith("/files/"):
                self._send_file(parts.path.removeprefix("/files/"))
            elif parts.path == "/drive/uc":  # the link style and the cookie style of old Drive
                file_id = query.get("id", "")
                if query.get("confirm") == DRIVE_TOKEN:
                    self._send_file(file_id)
                elif file_id.startswith("cookie"):
                    cookie = f"download_warning_13058876669334088843_{file_id}={DRIVE_TOKEN}; Path=/"
                    self._send_page("<html><body>Virus scan warning</body></html>", {"Set-Cookie": cookie})
                else:
                    self._send_page(_link_page(file_id))
            elif parts.path == "/drive/form":  # the drive.usercontent.google.com form of current Drive
                self._send_page(_form_page(query.get("id", "")))
            elif parts.path == "/usercontent/download":
                if query.get("confirm") == "t" and query.get("uuid") == DRIVE_UUID:
                    self._send_file(query.get("id", ""))
                else:
                    self._send_page(_form_page(query.get("id", "")))
            elif parts.path.startswith("/redirect/"):  # as drive.google.com/uc -> drive.usercontent...
                self.send_response(303)
                self.send_header("Location", "/files/" + parts.path.removeprefix("/redirect/"))
                self.send_header("Content-Length", "0")
                self.end_headers()
            elif parts.path == "/drive/quota":
                self._send_page(_QUOTA_PAGE)
            elif parts.path == "/drive/loop":  # a confirmation page that only ever leads to another one
                step = int(query.get("step", "0")) + 1
                self._send_page(f'<a href="/drive/loop?step={step}&amp;confirm={DRIVE_TOKEN}">Download anyway</a>')
            elif parts.path.startswith("/pages/") and parts.path.removeprefix("/pages/") in state.pages:
                self._send_page(state.pages[parts.path.removeprefix("/pages/")])
            else:
                self.send_error(404)

    return Handler


class LocalServer:
    """``with LocalServer() as srv: srv.url('/files/a')``; stops itself after ``lifetime`` seconds."""

    def __init__(self, lifetime: float = 120.0) -> None:
        self.state = ServerState()
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), make_handler(self.state))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self._watchdog = threading.Timer(lifetime, self.stop)
        self._watchdog.daemon = True
        self._stopped = False

    def url(self, path: str) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}{path}"

    def start(self) -> LocalServer:
        self._thread.start()
        self._watchdog.start()
        return self

    def stop(self) -> None:
        if not self._stopped:
            self._stopped = True
            self._watchdog.cancel()
            self._server.shutdown()
            self._server.server_close()

    def __enter__(self) -> LocalServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def write_registry(path, entries: dict[str, dict]) -> None:
    """Write a registry TOML with ``entries`` (name -> fields); fills the required fields not given."""
    lines = ["schema = 1"]
    for name, fields in entries.items():
        full = {"kind": "deaot", "variant": "deaott", "file_name": f"{name}.pth", "licence": "test", **fields}
        lines.append(f"\n[checkpoints.{name}]")
        for key, value in full.items():
            if isinstance(value, str):
                lines.append(f'{key} = "{value}"')
            elif isinstance(value, list | tuple):
                lines.append(f"{key} = [" + ", ".join(f'"{v}"' for v in value) + "]")
            else:
                lines.append(f"{key} = {value}")
    path.write_text("\n".join(lines) + "\n")


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
