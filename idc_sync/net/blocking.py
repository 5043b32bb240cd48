"""The blocking face of the HTTP client, for the range threads of large objects (ranged.py):
one request per connection, the body read with ``recv_into`` into the caller's buffer.
Proxy, TLS, parser, bounds, redirects, error mapping and the low-speed rule are those of
the event-loop face (net/http.py): both use net/options, net/tls, net/wire and
net/failures. Reading a socket into a reused buffer releases the GIL, so several ranges
read in parallel with little more CPU than the copies themselves."""

from __future__ import annotations

import contextlib
import socket
import ssl
import time

from idc_sync.core.errors import IdcSyncError, ProtocolError, ProxyError, RetryableError
from idc_sync.net.failures import Stage, mapped, translate
from idc_sync.net.options import NetOptions, Proxy
from idc_sync.net.tls import client_context
from idc_sync.net.wire import (
    Origin,
    ResponseParser,
    build_connect,
    build_request,
    error_code,
    redirect_target,
    refused_by_proxy,
    split_url,
)

SCRATCH_BYTES = 64 << 10


class BlockingResponse:
    """One answer whose body is read with ``readinto``; close() ends the connection."""

    def __init__(
        self, sock: socket.socket, parser: ResponseParser, origin: Origin, options: NetOptions
    ) -> None:
        self.sock = sock
        self.status = parser.status
        self.headers = tuple(parser.headers)
        self.length = parser.length
        self._parser = parser
        self._origin = origin
        self._rule = options.low_speed
        self._leftover = memoryview(bytes(parser.body))  # body bytes that came with the head
        parser.body = bytearray()
        self._received = len(self._leftover)
        self._window_start = time.monotonic()
        self._moved = 0
        self._ended = parser.complete
        self._error_body: bytes | None = None

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None

    def header_all(self, name: str) -> list[str]:
        return [value for key, value in self.headers if key == name]

    def readinto(self, buffer: memoryview) -> int:
        """Body bytes into ``buffer``; 0 once the body is complete. A connection that ends
        early raises ProtocolError; a body slower than the low-speed rule StalledError."""
        if self._leftover:
            count = min(len(buffer), len(self._leftover))
            buffer[:count] = self._leftover[:count]
            self._leftover = self._leftover[count:]
            return count
        if self._ended:
            return 0
        parser = self._parser
        if parser.length is not None:
            want = min(len(buffer), parser.length - self._received)
            if want <= 0:
                self._ended = True
                return 0
            # fill the buffer before returning, as a buffered reader would: one pwrite and
            # one progress report per buffer, not per TCP read
            got = 0
            while got < want:
                count = self._recv(buffer[got:want])
                if count == 0:
                    if got:
                        break
                    raise ProtocolError(
                        f"connection closed after {self._received} of {parser.length} body bytes"
                    )
                got += count
                self._received += count
            return got
        if parser.close_delimited:
            count = self._recv(buffer)
            self._ended = count == 0
            return count
        # chunked: through the parser, one read at a time
        scratch = bytearray(min(len(buffer), SCRATCH_BYTES))
        while not parser.body and not parser.complete:
            count = self._recv(memoryview(scratch))
            if count == 0:
                parser.finish()
            parser.feed(memoryview(scratch)[:count])
        self._leftover = memoryview(bytes(parser.body))
        parser.body = bytearray()
        self._ended = parser.complete
        return self.readinto(buffer) if self._leftover else 0

    def read_error_body(self, limit: int = 4096) -> bytes:
        """Up to ``limit`` bytes of an error answer's body (for its S3 error code)."""
        chunks = bytearray()
        buffer = memoryview(bytearray(limit))
        with contextlib.suppress(IdcSyncError):
            while len(chunks) < limit:
                count = self.readinto(buffer[: limit - len(chunks)])
                if count == 0:
                    break
                chunks += buffer[:count]
        return bytes(chunks)

    def error_code(self) -> str | None:
        """The S3 error code of an error answer (its body is read once, then kept)."""
        if self._error_body is None:
            self._error_body = self.read_error_body()
        return error_code(self._error_body)

    def exclude(self, seconds: float) -> None:
        """Leave ``seconds`` the caller spent elsewhere (a bandwidth cap's wait) out of the
        low-speed window."""
        self._window_start += seconds

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()

    def _recv(self, view: memoryview) -> int:
        rule = self._rule
        while True:
            with mapped("exchange", self._origin.host, self._origin.port):
                try:
                    count: int | None = self.sock.recv_into(view)
                except TimeoutError:
                    count = None  # no byte for a whole window: judged below
            now = time.monotonic()
            if count:
                self._moved += count
            if count is None or now - self._window_start >= rule.seconds:
                stalled = rule.stalled(self._moved, self._origin.host)
                if stalled is not None:
                    raise stalled
                self._window_start, self._moved = now, 0
            if count is not None:
                return count


def open_response(
    options: NetOptions,
    method: str,
    url: str,
    headers: dict[str, str],
    *,
    limit: int,
    opened: list[socket.socket] | None = None,
) -> BlockingResponse:
    """Send one request and read the answer's head; 307s with a Location are followed.
    ``opened`` gets each socket as soon as it exists, so another thread can shut it down."""
    hops = 0
    while True:
        origin, target = split_url(url)
        proxy = options.proxy_for(origin.scheme, origin.host)
        sock = _connect(options, origin, proxy)
        if opened is not None:
            opened.append(sock)
        try:
            absolute = proxy is not None and origin.scheme == "http"
            request = build_request(
                method,
                origin,
                target,
                headers,
                user_agent=options.user_agent,
                absolute=absolute,
                proxy_authorization=proxy.authorization if absolute and proxy else None,
            )
            parser = ResponseParser(
                limit=limit,
                head_only=method == "HEAD",
                max_header_bytes=options.max_header_bytes,
                stream=True,
            )
            with mapped("exchange", origin.host, origin.port, proxy):
                sock.sendall(request)
            _read_head(sock, parser, origin, options)
            response = BlockingResponse(sock, parser, origin, options)
            location = response.header("location")
            next_url = redirect_target(response.status, location, url, hops)
            if absolute and proxy and refused_by_proxy(response.status, response.error_code):
                raise ProxyError(f"proxy {proxy.url} refuses the request: HTTP {response.status}")
        except BaseException:
            with contextlib.suppress(OSError):
                sock.close()
            raise
        if next_url is None:
            return response
        response.close()
        url, hops = next_url, hops + 1


def _read_head(
    sock: socket.socket, parser: ResponseParser, origin: Origin, options: NetOptions
) -> None:
    """Feed the parser until the status line and headers are in, under the low-speed rule
    (a silent server fails after one window)."""
    scratch = memoryview(bytearray(SCRATCH_BYTES))
    while not parser.head_done:
        with mapped("exchange", origin.host, origin.port):
            try:
                count = sock.recv_into(scratch)
            except TimeoutError:
                stalled = options.low_speed.stalled(0, origin.host)
                assert stalled is not None
                raise stalled from None
        if count == 0:
            parser.finish()
        parser.feed(scratch[:count])


def _connect(options: NetOptions, origin: Origin, proxy: Proxy | None) -> socket.socket:
    """A socket to ``origin``, through ``proxy`` if any, TLS done, reads bounded by the
    low-speed window."""
    stage: Stage = "proxy" if proxy is not None else "connect"
    address = (proxy.host, proxy.port) if proxy is not None else (origin.host, origin.port)
    try:
        sock = socket.create_connection(address, timeout=options.connect_timeout)
    except OSError as error:
        if isinstance(error, TimeoutError) and stage == "connect":
            raise RetryableError(
                f"connecting to {origin.host}:{origin.port} took over {options.connect_timeout:g} s"
            ) from error
        raise translate(error, stage, origin.host, origin.port, proxy) from error
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if proxy is not None and origin.scheme == "https":
            _tunnel(sock, origin, proxy, options)
        if origin.scheme == "https":
            stage = "tls"
            context = client_context(options.ca_bundle)
            try:
                sock = context.wrap_socket(sock, server_hostname=origin.host)
            except OSError as error:
                raise translate(error, "tls", origin.host, origin.port, proxy) from error
        sock.settimeout(options.low_speed.seconds)
        return sock
    except BaseException:
        with contextlib.suppress(OSError):
            sock.close()
        raise


def _tunnel(sock: socket.socket, origin: Origin, proxy: Proxy, options: NetOptions) -> None:
    request = build_connect(
        origin, user_agent=options.user_agent, proxy_authorization=proxy.authorization
    )
    parser = ResponseParser(limit=0, head_only=True, max_header_bytes=options.max_header_bytes)
    try:
        sock.sendall(request)
        _read_head(sock, parser, origin, options)
    except (OSError, IdcSyncError) as error:
        if isinstance(error, ssl.SSLError | ProxyError):
            raise
        raise ProxyError(f"proxy {proxy.url}: CONNECT {origin.netloc}: {error}") from None
    if parser.status != 200:
        raise ProxyError(
            f"proxy {proxy.url} refuses CONNECT to {origin.host}:{origin.port}: "
            f"HTTP {parser.status}"
        )
