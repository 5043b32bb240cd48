"""Lean HTTP/1.1 GETs of whole object bodies: keep-alive connections over asyncio protocols,
responses parsed by httptools (the llhttp parser uvicorn uses).

Why not aiohttp for these: most IDC files are small, and per GET aiohttp's client spends
~0.19 ms of CPU on this machine against ~0.07 ms here (2,816 GETs of 87 KB from nginx on
loopback). The event loop is the serial resource of a run, so that difference is files
per second. Listings and HEADs, a few per series, stay on aiohttp.

Only what an S3 object GET needs: no redirects (a 3xx is an answer like any other), no
cookies, no proxies, no decompression, no credentials. Every transport failure is a
RetryableError; a body larger than the caller allows is a BodyTooLarge."""

from __future__ import annotations

import asyncio
import ssl
import threading
import time
from dataclasses import dataclass
from typing import cast
from urllib.parse import urlsplit

import httptools

from idc_sync.core.errors import RetryableError

# Idle keep-alive connections kept per host beyond this many are closed.
MAX_IDLE = 256
# What the socket reads into until a response's headers are in.
SCRATCH_BYTES = 64 << 10
# An error answer (4xx/5xx) may carry this much XML whatever the object's size.
ERROR_BODY_BYTES = 1 << 20
# Lent body buffers come in multiples of this, and idle ones are kept up to this total.
BUFFER_STEP = 64 << 10
POOL_BYTES = 64 << 20


class BodyTooLarge(Exception):
    """The server sends more bytes than the caller allows (``announced``: Content-Length,
    or None when the body simply kept coming)."""

    def __init__(self, limit: int, announced: int | None) -> None:
        super().__init__(f"body larger than {limit} bytes")
        self.limit = limit
        self.announced = announced


class BufferPool:
    """Receive buffers handed back after use, so that a body of half a megabyte is not a
    fresh allocation each time: a new bytearray is zero-filled and, above glibc's mmap
    threshold, page-faulted in, which cost a tenth of the event loop's time on CT-sized
    files (README, Performance). Thread-safe: buffers come back from storage threads."""

    def __init__(self, max_bytes: int = POOL_BYTES) -> None:
        self._free: dict[int, list[bytearray]] = {}
        self._held = 0
        self._max = max_bytes
        self._lock = threading.Lock()

    @property
    def idle_bytes(self) -> int:
        return self._held

    def take(self, size: int) -> bytearray:
        """A buffer of at least ``size`` bytes (its contents are whatever was there)."""
        capacity = -(-max(size, 1) // BUFFER_STEP) * BUFFER_STEP
        with self._lock:
            free = self._free.get(capacity)
            if free:
                self._held -= capacity
                return free.pop()
        return bytearray(capacity)

    def give(self, buffer: bytearray) -> None:
        """Keep ``buffer`` for a later take(); nothing may use it any more."""
        capacity = len(buffer)
        if capacity % BUFFER_STEP:
            return  # not one of ours
        with self._lock:
            if self._held + capacity <= self._max:
                self._free.setdefault(capacity, []).append(buffer)
                self._held += capacity


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    headers: tuple[tuple[str, str], ...]  # names in lower case, in the order received
    # A memoryview over a lent buffer when the GET asked to borrow one (see HttpGetter.get)
    body: bytes | bytearray | memoryview

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None

    def header_all(self, name: str) -> list[str]:
        return [value for key, value in self.headers if key == name]


class _Connection(asyncio.BufferedProtocol):
    """One keep-alive connection, one request at a time. The status line and headers go
    through httptools; a body of announced length is then received straight into its
    own buffer (no parser, no copies), any other body through the parser."""

    def __init__(self, host: str, pool: BufferPool) -> None:
        self.host = host
        self._pool = pool
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.answered = False  # any byte of the current response arrived
        self.last_activity = 0.0
        self._scratch = memoryview(bytearray(SCRATCH_BYTES))
        self._parser = httptools.HttpResponseParser(self)
        self._waiter: asyncio.Future[Response] | None = None
        self._headers: list[tuple[str, str]] = []
        self._status = 0
        self._limit = 0
        self._keep_alive = False
        self._body = bytearray()
        self._received = 0
        self._length: int | None = None  # Content-Length of the current response
        self._direct = False  # the socket reads into _body now
        self._borrow = False  # the current response's body goes into a lent buffer

    # -- asyncio.BufferedProtocol -----------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but behave as one
        self.transport = cast(asyncio.Transport, transport)

    def get_buffer(self, sizehint: int) -> memoryview:
        if self._direct:
            return memoryview(self._body)[self._received : self._length]
        return self._scratch

    def buffer_updated(self, nbytes: int) -> None:
        self.answered = True
        self.last_activity = time.monotonic()
        if self._direct:
            self._received += nbytes
            if self._received == self._length:
                self._direct = False
                self._complete()
            return
        try:
            self._parser.feed_data(self._scratch[:nbytes])
        except httptools.HttpParserError as error:
            # an exception a callback raised arrives as the context of the parser's error
            cause = error.__context__
            if isinstance(cause, BodyTooLarge):
                self._fail(cause)
            else:
                self._fail(RetryableError(f"malformed HTTP response from {self.host}: {error}"))
            return
        if self._waiter is not None and self._length is not None and self._received < self._length:
            self._direct = True  # the headers are in: the rest of the body goes straight in

    def eof_received(self) -> bool | None:
        return False  # close our side as well

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        reason = f": {exc}" if exc is not None else ""
        self._fail(RetryableError(f"connection closed before the response ended{reason}"))

    # -- httptools callbacks ----------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name.decode("latin-1").lower(), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        self._status = self._parser.get_status_code()
        self._keep_alive = self._parser.should_keep_alive()
        limit = self._limit if 200 <= self._status < 300 else max(self._limit, ERROR_BODY_BYTES)
        chunked = False
        for name, value in self._headers:
            if name == "transfer-encoding":
                chunked = True
            elif name == "content-length" and value.isdigit():
                self._length = int(value)
        if chunked:
            self._length = None
        if self._length is not None:
            if self._length > limit:
                raise BodyTooLarge(limit, self._length)
            self._body = self._pool.take(self._length) if self._borrow else bytearray(self._length)
        self._limit = limit

    def on_body(self, body: bytes) -> None:
        end = self._received + len(body)
        if self._length is None:
            if end > self._limit:
                raise BodyTooLarge(self._limit, None)
            self._body += body
        else:
            self._body[self._received : end] = body
        self._received = end

    def on_message_complete(self) -> None:
        self._complete()

    # -- requests ---------------------------------------------------------------------

    @property
    def reusable(self) -> bool:
        return not self.closed and self._keep_alive

    def send(self, request: bytes, limit: int, borrow: bool) -> asyncio.Future[Response]:
        assert self.transport is not None
        self._waiter = asyncio.get_running_loop().create_future()
        # a fresh parser per response: a body read directly leaves the old one mid-message
        self._parser = httptools.HttpResponseParser(self)
        self._headers, self._status, self._limit = [], 0, limit
        self._body, self._received, self._length, self._direct = bytearray(), 0, None, False
        self._borrow = borrow
        self.answered = self._keep_alive = False
        self.last_activity = time.monotonic()
        self.transport.write(request)
        return self._waiter

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    def _complete(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            body: bytearray | memoryview = self._body
            if self._borrow and self._length is not None:
                body = memoryview(body)[: self._length]  # lent buffers are rounded up
            waiter.set_result(Response(self._status, tuple(self._headers), body))
        self._body = bytearray()  # the caller owns that buffer now

    def _fail(self, error: BaseException) -> None:
        waiter, self._waiter = self._waiter, None
        self._direct = False
        if waiter is not None and not waiter.done():
            waiter.set_exception(error)
        if not self.closed:
            self.close()


class HttpGetter:
    """GETs over a pool of keep-alive connections, as ``async with HttpGetter(...) as http``.
    The caller bounds how many requests are in flight (the engine's adaptive limit)."""

    def __init__(self, *, user_agent: str, connect_timeout: float, read_timeout: float) -> None:
        self._user_agent = user_agent
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._idle: dict[tuple[str, str], list[_Connection]] = {}
        self._ssl: ssl.SSLContext | None = None
        self._origins: dict[str, tuple[str, str, str, int]] = {}
        self._pool = BufferPool()

    async def __aenter__(self) -> HttpGetter:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for connections in self._idle.values():
            for connection in connections:
                connection.close()
        self._idle.clear()

    async def get(
        self, url: str, headers: dict[str, str], limit: int, *, borrow: bool = False
    ) -> Response:
        """GET ``url`` (already percent-encoded) and read the whole body, at most ``limit``
        bytes. A kept-alive connection the server closed meanwhile is replaced once.

        ``borrow``: a body of announced length arrives in a buffer lent from a pool, as a
        memoryview; pass it to give_back() once it is written, or just drop it."""
        scheme, netloc, host, port, target = self._split(url)
        lines = [f"GET {target} HTTP/1.1", f"Host: {netloc}", f"User-Agent: {self._user_agent}"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        request = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        idle = self._idle.setdefault((scheme, netloc), [])
        while idle:
            connection = idle.pop()
            if connection.closed:
                continue
            try:
                return await self._exchange(connection, request, limit, borrow, idle)
            except RetryableError:
                if connection.answered:
                    raise
                # a stale keep-alive connection: the request never reached a live server
        connection = await self._connect(scheme, host, port)
        return await self._exchange(connection, request, limit, borrow, idle)

    async def _exchange(
        self,
        connection: _Connection,
        request: bytes,
        limit: int,
        borrow: bool,
        idle: list[_Connection],
    ) -> Response:
        waiter = connection.send(request, limit, borrow)
        loop = asyncio.get_running_loop()
        timer = loop.call_at(loop.time() + self._read_timeout, self._check_idle, connection, waiter)
        try:
            response = await waiter
        except asyncio.CancelledError:
            connection.close()  # the rest of this response would poison the next request
            raise
        finally:
            timer.cancel()
        if connection.reusable and len(idle) < MAX_IDLE:
            idle.append(connection)
        else:
            connection.close()
        return response

    def give_back(self, body: bytes | bytearray | memoryview) -> None:
        """Return a borrowed body's buffer to the pool (from any thread). Whatever still
        refers to ``body`` must never read it again: the next response overwrites it."""
        if isinstance(body, memoryview) and isinstance(body.obj, bytearray):
            self._pool.give(body.obj)

    def _check_idle(self, connection: _Connection, waiter: asyncio.Future[Response]) -> None:
        """The read timeout: no byte for read_timeout seconds fails the request."""
        if waiter.done():
            return
        loop = asyncio.get_running_loop()
        quiet = time.monotonic() - connection.last_activity
        if quiet >= self._read_timeout:
            waiter.set_exception(
                RetryableError(f"no data from {connection.host} for {self._read_timeout:g} s")
            )
            connection.close()
        else:
            loop.call_at(
                loop.time() + self._read_timeout - quiet, self._check_idle, connection, waiter
            )

    async def _connect(self, scheme: str, host: str, port: int) -> _Connection:
        loop = asyncio.get_running_loop()
        context = None
        if scheme == "https":
            if self._ssl is None:
                self._ssl = ssl.create_default_context()
            context = self._ssl
        try:
            pool = self._pool
            _, connection = await asyncio.wait_for(
                loop.create_connection(lambda: _Connection(host, pool), host, port, ssl=context),
                self._connect_timeout,
            )
        except TimeoutError as error:
            raise RetryableError(
                f"connecting to {host}:{port} took over {self._connect_timeout:g} s"
            ) from error
        except OSError as error:
            raise RetryableError(f"cannot connect to {host}:{port}: {error}") from error
        return connection

    def _split(self, url: str) -> tuple[str, str, str, int, str]:
        """(scheme, netloc, host, port, request target); origins are parsed once."""
        scheme, _, rest = url.partition("://")
        netloc, slash, path = rest.partition("/")
        target = slash + path if slash else "/"
        origin = self._origins.get(url[: len(scheme) + 3 + len(netloc)])
        if origin is None:
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError(f"not an http(s) URL: {url!r}")
            port = parts.port or (443 if parts.scheme == "https" else 80)
            origin = (parts.scheme, parts.netloc, parts.hostname, port)
            self._origins[url[: len(scheme) + 3 + len(netloc)]] = origin
        return (*origin, target)
