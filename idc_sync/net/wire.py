"""HTTP/1.1 on the wire, without I/O: the request builder, the response parser (httptools,
the llhttp parser uvicorn uses) with our bounds, the redirect rule and the low-speed rule.
Both faces of the client (net/http.py on the event loop, net/blocking.py on the range
threads) feed bytes in here and act on what comes out, so they cannot disagree on HTTP.

What an S3 GET needs and nothing else: no cookies, no decompression (we ask for
``Accept-Encoding: identity`` and refuse any other ``Content-Encoding`` by name, since the
checksums are of the bytes as stored), no credentials, redirects only as S3 means them."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

import httptools

from idc_sync.core.errors import (
    BodyTooLarge,
    IdcSyncError,
    PermanentError,
    ProtocolError,
    StalledError,
)

# A response's status line and headers together; S3 sends well under 2 KiB.
MAX_HEADER_BYTES = 64 << 10
# An error answer (4xx/5xx) may carry this much XML whatever the object's size.
ERROR_BODY_BYTES = 1 << 20
# S3 answers 307 Temporary Redirect while a new bucket's DNS settles; a chain longer than
# this is a loop.
MAX_REDIRECTS = 3

_ERROR_CODE = re.compile(rb"<Code>([A-Za-z]+)</Code>")


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a request goes: scheme, host and port, and the Host header's value."""

    scheme: str
    host: str
    port: int
    netloc: str

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.netloc}"


def split_url(url: str) -> tuple[Origin, str]:
    """(origin, request target) of an absolute http(s) URL."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an http(s) URL: {url!r}")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return Origin(parts.scheme, parts.hostname, port, parts.netloc), target


def build_request(
    method: str,
    origin: Origin,
    target: str,
    headers: dict[str, str],
    *,
    user_agent: str,
    absolute: bool = False,
    proxy_authorization: str | None = None,
) -> bytes:
    """The request's bytes. ``absolute``: through a plain-HTTP proxy, the target is the
    whole URL (absolute-form, RFC 9112 3.2.2)."""
    line_target = origin.url + target if absolute else target
    lines = [
        f"{method} {line_target} HTTP/1.1",
        f"Host: {origin.netloc}",
        f"User-Agent: {user_agent}",
        "Accept-Encoding: identity",
    ]
    if proxy_authorization is not None:
        lines.append(f"Proxy-Authorization: {proxy_authorization}")
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def build_connect(origin: Origin, *, user_agent: str, proxy_authorization: str | None) -> bytes:
    """The CONNECT request that opens a tunnel to ``origin`` through a proxy."""
    authority = f"{origin.host}:{origin.port}"
    if ":" in origin.host:
        authority = f"[{origin.host}]:{origin.port}"
    lines = [f"CONNECT {authority} HTTP/1.1", f"Host: {authority}", f"User-Agent: {user_agent}"]
    if proxy_authorization is not None:
        lines.append(f"Proxy-Authorization: {proxy_authorization}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


class ResponseParser:
    """One response, fed bytes as they arrive. After ``feed``, ``head_done`` says whether the
    status line and headers are in, ``complete`` whether the whole message is.

    ``head_only``: the answer to a HEAD or a CONNECT, which has no body whatever its headers
    say. ``limit``: the most body bytes a success may carry (errors may carry
    ERROR_BODY_BYTES). A body of announced length lands in ``body`` (allocated by ``allocate``
    once the length is known, so that the caller may read the rest straight into it); any
    other body grows in ``body`` up to the limit. ``stream``: never allocate the announced
    length; body bytes that come with the headers (and every byte of a chunked body) grow in
    ``body`` for the caller to drain. Raises ProtocolError, BodyTooLarge or PermanentError
    (an encoded body)."""

    def __init__(
        self,
        *,
        limit: int,
        head_only: bool = False,
        max_header_bytes: int = MAX_HEADER_BYTES,
        allocate: Callable[[int], bytearray] | None = None,
        stream: bool = False,
    ) -> None:
        self._parser = httptools.HttpResponseParser(self)
        self._limit = limit
        self._head_only = head_only
        self._max_header = max_header_bytes
        self._head_fed = 0
        self._allocate = allocate
        self._stream = stream
        self.status = 0
        self.headers: list[tuple[str, str]] = []
        self.head_done = False
        self.complete = False
        self.keep_alive = False
        self.length: int | None = None  # Content-Length, when the body has one
        self.close_delimited = False  # the body ends when the connection does
        self.body: bytearray = bytearray()
        self.received = 0

    # -- input -----------------------------------------------------------------------------

    def feed(self, data: memoryview | bytes) -> None:
        """Parse ``data``; bytes past the end of a head-only answer are ignored."""
        if not self.head_done:
            allowance = self._max_header - self._head_fed
            if len(data) > allowance:
                # feed only what the header block may still take: if that does not finish
                # it, the block is too large, however much more the server would send
                self._feed(data[:allowance])
                if not self.head_done:
                    raise ProtocolError(
                        f"response header block larger than {self._max_header // 1024} KiB"
                    )
                if self.complete:
                    return
                data = data[allowance:]
            else:
                self._head_fed += len(data)
        if self.complete:
            return
        self._feed(data)

    def _feed(self, data: memoryview | bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as error:
            # an exception a callback raised arrives as the context of the parser's error
            cause = error.__context__
            if isinstance(cause, IdcSyncError):
                raise cause from None
            if isinstance(cause, _HeadDone):
                return
            raise ProtocolError(f"malformed HTTP response: {error}") from None

    def received_directly(self, count: int) -> None:
        """The caller read ``count`` body bytes straight into ``body``."""
        self.received += count
        if self.received == self.length:
            self.complete = True

    def finish(self) -> None:
        """The connection ended: a close-delimited body is complete now; anything else
        unfinished is a truncated answer."""
        if self.complete:
            return
        if self.head_done and self.close_delimited:
            self.complete = True
            self.keep_alive = False
            return
        if not self.head_done:
            raise ProtocolError("connection closed before the response headers ended")
        raise ProtocolError(
            f"connection closed after {self.received} of "
            f"{self.length if self.length is not None else 'unknown'} body bytes"
        )

    @property
    def direct_bytes_wanted(self) -> int:
        """How many body bytes the caller may read straight into ``body`` (announced length
        only; everything else goes through ``feed``)."""
        if not self.head_done or self.complete or self.length is None:
            return 0
        return self.length - self.received

    # -- what came --------------------------------------------------------------------------

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None

    # -- httptools callbacks ----------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.decode("latin-1").lower(), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        parser = self._parser
        self.status = status = parser.get_status_code()
        self.keep_alive = parser.should_keep_alive()
        self.head_done = True
        chunked = False
        encoding = ""
        for name, value in self.headers:
            if name == "transfer-encoding":
                chunked = True
            elif name == "content-length" and value.isdigit():
                self.length = int(value)
            elif name == "content-encoding":
                encoding = value.strip()
        if self._head_only or status < 200 or status in (204, 304):
            self.length = 0
            self.complete = True
            raise _HeadDone  # stop the parser: no body follows, whatever the headers say
        if chunked:
            self.length = None
        success = 200 <= status < 300
        if success and encoding.lower() not in ("", "identity"):
            raise PermanentError(
                f"the server sent the body with Content-Encoding: {encoding}; idc-sync asks "
                "for identity and verifies the bytes as stored, so it refuses encoded bodies"
            )
        limit = self._limit if success else max(self._limit, ERROR_BODY_BYTES)
        self._limit = limit
        if self.length is not None:
            if self.length > limit:
                raise BodyTooLarge(limit, self.length)
            if not self._stream:
                allocate = self._allocate or bytearray
                self.body = allocate(self.length)
            if self.length == 0:
                self.complete = True
        elif not chunked:
            self.close_delimited = True

    def on_body(self, body: bytes) -> None:
        end = self.received + len(body)
        if self.length is None and end > self._limit:
            raise BodyTooLarge(self._limit, None)
        if self._stream or self.length is None:
            self.body += body
        else:
            self.body[self.received : end] = body
        self.received = end

    def on_message_complete(self) -> None:
        self.complete = True


class _HeadDone(Exception):
    """Raised from on_headers_complete to stop parsing a message that has no body."""


def error_code(body: bytes | bytearray | memoryview) -> str | None:
    """The S3 error code an XML error body names (``SlowDown``, ``NoSuchKey``), if any."""
    match = _ERROR_CODE.search(bytes(body[:4096]))
    return match.group(1).decode() if match else None


def refused_by_proxy(status: int, code: Callable[[], str | None]) -> bool:
    """Through a plain-HTTP proxy, is this answer the proxy's own refusal? A 407 is; so is a
    403 whose body names no S3 error code (S3 and GCS always say why, in XML)."""
    return status == 407 or (status == 403 and code() is None)


def redirect_target(status: int, location: str | None, url: str, hops: int) -> str | None:
    """Where to send the request again, or None to take the answer as it is.

    S3 uses 307 Temporary Redirect (with a Location) while a bucket's DNS settles: that is
    followed, at most MAX_REDIRECTS times, never from https to http. Any other redirect
    is an answer the caller reports with its Location."""
    if status != 307 or not location:
        return None
    target = urljoin(url, location.strip())
    scheme = urlsplit(target).scheme
    if scheme not in ("http", "https"):
        raise PermanentError(f"HTTP 307 redirect to an unusable Location {location!r}")
    if url.startswith("https://") and scheme == "http":
        raise PermanentError(f"refusing a redirect from https to http ({target})")
    if hops >= MAX_REDIRECTS:
        raise ProtocolError(f"more than {MAX_REDIRECTS} redirects, the last to {target}")
    return target


def describe_status(status: int, code: str | None, location: str | None) -> str:
    """``HTTP 503 SlowDown``; a redirect names its Location (or its lack of one)."""
    text = f"HTTP {status}{' ' + code if code else ''}"
    if 300 <= status < 400:
        text += f" to {location}" if location else " without a Location"
    return text


@dataclass(frozen=True, slots=True)
class LowSpeed:
    """The low-speed rule, in the manner of curl's --speed-limit/--speed-time: an attempt
    that moves fewer than ``bytes_per_second * seconds`` bytes (at least one) in any
    ``seconds``-long window, from sending the request to the last body byte, is stalled.
    ``bytes_per_second = 0`` keeps only "no byte at all for ``seconds``"."""

    bytes_per_second: int = 1024
    seconds: float = 30.0

    @property
    def minimum(self) -> int:
        return max(1, math.ceil(self.bytes_per_second * self.seconds))

    def stalled(self, moved: int, host: str) -> StalledError | None:
        """The error for a window in which ``moved`` bytes arrived, or None if enough did."""
        if moved >= self.minimum:
            return None
        return StalledError(
            f"stalled: {moved} bytes from {host} in {self.seconds:g} s, under the low-speed "
            f"limit of {self.bytes_per_second} bytes/s for {self.seconds:g} s"
        )
