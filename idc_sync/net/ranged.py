"""Large objects: parallel ranged GETs on worker threads, written with positional writes into
one temp file and hashed in order by a follower thread that reads back what has arrived.

The event loop only orchestrates. Reading a socket into a reused buffer, MD5 and ``pwrite``
all release the GIL, so a large object costs little more CPU than the copies themselves,
where reading it through the event loop makes one core the bottleneck."""

from __future__ import annotations

import contextlib
import http.client
import itertools
import re
import socket
import ssl
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from idc_sync.core.errors import IntegrityError, RetryableError
from idc_sync.core.verify import StreamHasher
from idc_sync.disk.storage import TempFile

READ_CHUNK = 1 << 20
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+)")
_ERROR_CODE = re.compile(rb"<Code>([A-Za-z]+)</Code>")


class Aborted(Exception):
    """Another range of the same object failed, or the transfer was cancelled."""


@dataclass(frozen=True, slots=True)
class Target:
    """Where one object's bytes come from: an absolute URL and the request headers."""

    url: str
    headers: Mapping[str, str]
    timeout: float

    def connect(self) -> http.client.HTTPConnection:
        parts = urlsplit(self.url)
        host, port = parts.hostname or "", parts.port
        if parts.scheme == "https":
            return http.client.HTTPSConnection(
                host, port, timeout=self.timeout, context=ssl.create_default_context()
            )
        return http.client.HTTPConnection(host, port, timeout=self.timeout)

    @property
    def path(self) -> str:
        parts = urlsplit(self.url)
        return parts.path + (f"?{parts.query}" if parts.query else "")


StatusError = Callable[[int, str | None, str], Exception]


class RangedTransfer:
    """The shared state of one object fetched as ranges ``[start, end)`` of ``part`` bytes.

    Range workers (``work``) take ranges in order and write them; the follower
    (``hash_in_order``) hashes the contiguous prefix written so far. Any failure aborts the
    rest; the first error is the one raised."""

    def __init__(
        self,
        temp: TempFile,
        target: Target,
        size: int,
        part: int,
        status_error: StatusError,
        progress: Callable[[int], None],
    ) -> None:
        self.temp = temp
        self.target = target
        self.size = size
        self.ranges = [(start, min(start + part, size)) for start in range(0, size, part)]
        self._status_error = status_error
        self._progress = progress
        self._next = itertools.count()
        self._written = [0] * len(self.ranges)  # bytes written from each range's start
        self._frontier = 0  # every byte before this offset is written
        self._changed = threading.Condition()
        self._error: BaseException | None = None
        self._first: tuple[http.client.HTTPConnection, http.client.HTTPResponse] | None = None
        self._open: set[http.client.HTTPConnection] = set()

    # -- control ---------------------------------------------------------------------------

    def abort(self, error: BaseException) -> None:
        """Record the first error and wake every thread; a thread blocked on a socket is
        woken by shutting the socket down."""
        with self._changed:
            if self._error is None:
                self._error = error
            self._changed.notify_all()
            connections = list(self._open)
        for connection in connections:
            if connection.sock is not None:
                with contextlib.suppress(OSError):
                    connection.sock.shutdown(socket.SHUT_RDWR)

    def _check(self) -> None:
        if self._error is not None:
            raise Aborted from None

    @property
    def error(self) -> BaseException | None:
        return self._error

    def close_unused(self) -> None:
        """Close range 0's response if no worker took it (the transfer failed first)."""
        if self._first is not None:
            (connection, response), self._first = self._first, None
            self._close(connection, response)

    # -- the first range: its headers decide what to hash ------------------------------

    def open_first(self) -> http.client.HTTPMessage:
        """Send the GET of range 0 and return its headers; its body is read by ``work``."""
        connection, response = self._request(*self.ranges[0])
        self._first = connection, response
        return response.msg

    def _request(
        self, start: int, end: int
    ) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        connection = self.target.connect()
        response: http.client.HTTPResponse | None = None
        with self._changed:
            self._open.add(connection)
        try:
            self._check()
            headers = {**self.target.headers, "Range": f"bytes={start}-{end - 1}"}
            connection.request("GET", self.target.path, headers=headers)
            response = connection.getresponse()
            if response.status != 206:
                body = response.read(4096)
                match = _ERROR_CODE.search(body)
                code = match.group(1).decode() if match else None
                if response.status == 200:
                    raise RetryableError("GET: the server ignored the Range header")
                raise self._status_error(response.status, code, "GET range")
            self._check_content_range(response.getheader("Content-Range", ""), start, end)
            return connection, response
        except (OSError, http.client.HTTPException) as error:
            self._close(connection, response)
            raise RetryableError(f"GET range {start}-{end - 1}: {_describe(error)}") from error
        except BaseException:
            self._close(connection, response)
            raise

    def _close(
        self, connection: http.client.HTTPConnection, response: http.client.HTTPResponse | None
    ) -> None:
        """Close both: a response's file object keeps its socket open past the connection's
        close()."""
        with self._changed:
            self._open.discard(connection)
        if response is not None:
            response.close()
        connection.close()

    def _check_content_range(self, value: str, start: int, end: int) -> None:
        match = _CONTENT_RANGE.fullmatch(value.strip())
        if match is None:
            raise RetryableError(f"GET range: unusable Content-Range {value!r}")
        first, last, total = (int(group) for group in match.groups())
        if total != self.size:
            # Same key, other size: the object changed after we listed it.
            raise IntegrityError(f"server has {total} bytes, listing said {self.size}")
        if (first, last) != (start, end - 1):
            raise RetryableError(f"GET range: asked for {start}-{end - 1}, got {value!r}")

    # -- range workers ---------------------------------------------------------------------

    def work(self) -> None:
        """Fetch ranges until none are left (run on several threads at once)."""
        try:
            while (index := next(self._next)) < len(self.ranges):
                self._check()
                self._fetch_range(index)
        except Aborted:
            return
        except BaseException as error:
            self.abort(error)

    def _fetch_range(self, index: int) -> None:
        start, end = self.ranges[index]
        if index == 0 and self._first is not None:
            (connection, response), self._first = self._first, None
        else:
            connection, response = self._request(start, end)
        buffer = memoryview(bytearray(min(READ_CHUNK, end - start)))
        offset = start
        try:
            while offset < end:
                self._check()
                try:
                    count = response.readinto(buffer[: min(len(buffer), end - offset)])
                except (OSError, http.client.HTTPException) as error:
                    raise RetryableError(f"GET range: {_describe(error)}") from error
                if count == 0:
                    raise RetryableError(
                        f"GET range: body cut short at {offset - start} of {end - start} bytes"
                    )
                self.temp.write_at(buffer[:count], offset)
                offset += count
                self._wrote(index, count)
                self._progress(count)
        finally:
            self._close(connection, response)

    def _wrote(self, index: int, count: int) -> None:
        with self._changed:
            self._written[index] += count
            frontier = self._frontier
            for number in range(index_of(self.ranges, frontier), len(self.ranges)):
                start, end = self.ranges[number]
                frontier = start + self._written[number]
                if frontier < end:
                    break
            if frontier != self._frontier:
                self._frontier = frontier
                self._changed.notify_all()

    # -- the follower ----------------------------------------------------------------------

    def hash_in_order(self, hasher: StreamHasher) -> None:
        """Hash every byte in order as the contiguous written prefix grows."""
        buffer = memoryview(bytearray(min(8 * READ_CHUNK, max(self.size, 1))))
        hashed = 0
        try:
            while hashed < self.size:
                with self._changed:
                    while self._frontier <= hashed and self._error is None:
                        self._changed.wait()
                    self._check()
                    available = self._frontier
                while hashed < available:
                    want = min(len(buffer), available - hashed)
                    count = self.temp.read_into(buffer[:want], hashed)
                    if count == 0:
                        raise RetryableError(f"temp file {self.temp.path} shorter than written")
                    hasher.update(buffer[:count])
                    hashed += count
        except Aborted:
            return
        except BaseException as error:
            self.abort(error)


def index_of(ranges: list[tuple[int, int]], offset: int) -> int:
    """The range holding ``offset`` (the last one for the end of the object)."""
    if not ranges:
        return 0
    part = ranges[0][1] - ranges[0][0]
    return min(offset // part, len(ranges) - 1) if part else 0


def _describe(error: BaseException) -> str:
    if isinstance(error, socket.timeout | TimeoutError):
        return "timed out"
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
