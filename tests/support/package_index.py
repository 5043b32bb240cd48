"""A package index on 127.0.0.1 for the tests of following IDC releases: idc-index-data's
project page in the Simple repository API, as JSON (PEP 691) when the client asks for it
and JSON is on, else as HTML (PEP 503), and the wheels the test publishes. A test can make
it misbehave: name a wrong hash, announce another size, answer with an error status or a
page of its own, or send a wheel slowly. Over TLS with a certificate of the test's CA.

``publish_release`` offers a FakeRelease's wheel (tests/support/wheels.py)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import ssl
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.support.wheels import FakeRelease, wheel_bytes, wheel_name

PAGE = "/simple/idc-index-data/"
JSON_TYPE = "application/vnd.pypi.simple.v1+json"


@dataclass
class Published:
    filename: str
    data: bytes
    sha256: str
    size: int | None = None  # announced in JSON (PEP 700); None leaves it out


@dataclass
class Behaviour:
    json: bool = True  # answer JSON to a client that asks for it
    page_status: int = 200
    page: tuple[bytes, str] | None = None  # (body, content type) instead of the real page
    file_status: int = 200
    file_body: bytes | None = None  # sent instead of the wheel (the page still names its hash)
    drip_seconds: float = 0.0  # between 1 KiB pieces of a wheel
    requests: list[tuple[str, dict[str, str]]] = field(default_factory=list)


class PackageIndex:
    """Use as a context manager; ``url`` is the index URL (…/simple/)."""

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self.files: dict[str, Published] = {}
        self.behaviour = Behaviour()
        index = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                index.behaviour.requests.append((self.path, dict(self.headers.items())))
                if self.path == PAGE:
                    self._page()
                elif self.path.startswith("/files/") and self.path[7:] in index.files:
                    self._file(index.files[self.path[7:]])
                else:
                    self._send(404, b"not found", "text/plain")

            def _page(self) -> None:
                b = index.behaviour
                if b.page is not None:
                    self._send(b.page_status, *b.page)
                elif b.json and JSON_TYPE in self.headers.get("Accept", ""):
                    self._send(b.page_status, index.json_page(), JSON_TYPE)
                else:
                    self._send(b.page_status, index.html_page(), "text/html; charset=utf-8")

            def _file(self, published: Published) -> None:
                b = index.behaviour
                body = b.file_body if b.file_body is not None else published.data
                if b.file_status != 200 or not b.drip_seconds:
                    self._send(b.file_status, body, "application/octet-stream")
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                try:
                    for start in range(0, len(body), 1024):
                        self.wfile.write(body[start : start + 1024])
                        self.wfile.flush()
                        time.sleep(b.drip_seconds)
                except OSError:
                    pass  # the client gave up: what the test wants

            def _send(self, status: int, body: bytes, content_type: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                with contextlib.suppress(OSError):
                    self.wfile.write(body)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._scheme = "https" if tls is not None else "http"
        if tls is not None:
            self._server.socket = tls.wrap_socket(self._server.socket, server_side=True)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"{self._scheme}://127.0.0.1:{self._server.server_address[1]}/simple/"

    def publish(self, filename: str, data: bytes, *, sha256: str | None = None,
                size: int | None = None) -> Published:  # fmt: skip
        """Offer a file; ``sha256`` names another hash than the file's (a lying index)."""
        published = Published(filename, data, sha256 or hashlib.sha256(data).hexdigest(), size)
        self.files[filename] = published
        return published

    def json_page(self) -> bytes:
        files = []
        for published in self.files.values():
            entry: dict[str, Any] = {
                "filename": published.filename, "url": f"../../files/{published.filename}",
                "hashes": {"sha256": published.sha256}, "yanked": False,
            }  # fmt: skip
            if published.size is not None:
                entry["size"] = published.size
            files.append(entry)
        page = {"meta": {"api-version": "1.1"}, "name": "idc-index-data", "files": files}
        return json.dumps(page).encode()

    def html_page(self) -> bytes:
        links = "".join(
            f'<a href="/files/{p.filename}#sha256={p.sha256}">{p.filename}</a><br/>\n'
            for p in self.files.values()
        )
        return (
            '<!DOCTYPE html><html><head><meta name="pypi:repository-version" content="1.0">'
            f"<title>Links for idc-index-data</title></head><body>{links}</body></html>"
        ).encode()

    def __enter__(self) -> PackageIndex:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(10)


def publish_release(index: PackageIndex, release: FakeRelease, **kwargs: Any) -> Published:
    data = wheel_bytes(release)
    return index.publish(wheel_name(release.version), data, **kwargs)
