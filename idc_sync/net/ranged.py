"""Large objects: parallel ranged GETs on worker threads, written with positional writes into
one temp file. Checksums that split into pieces (CRCs, a multipart ETag with ranges aligned
to its parts; core/pieces.py) are hashed by each range's thread from its receive buffer and
combined; a plain MD5 or SHA-256 is hashed in order by a follower thread that reads back
what has arrived.

The event loop only orchestrates. Reading a socket into a reused buffer (the blocking face
of the client, net/blocking.py), the hashes and ``pwrite`` all release the GIL, so a large
object costs little more CPU than the copies themselves, where reading it through the event
loop makes one core the bottleneck. Hashing in pieces spreads even an MD5-bound multipart
object over every core and saves the read-back (~0.15 CPU-s per GB here)."""

from __future__ import annotations

import contextlib
import itertools
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

from idc_sync.core.errors import Aborted, IntegrityError, RetryableError
from idc_sync.core.hashing import Digests, StreamHasher
from idc_sync.core.pieces import PieceHasher, combine
from idc_sync.disk.storage import TempFile
from idc_sync.net.blocking import BlockingResponse, open_response
from idc_sync.net.options import NetOptions

READ_CHUNK = 1 << 20
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+)")


@dataclass(frozen=True, slots=True)
class Target:
    """Where one object's bytes come from: an absolute URL, the request headers and the way
    out (proxy, TLS, timeouts)."""

    url: str
    headers: Mapping[str, str]
    options: NetOptions


# (status, S3 error code, Location, what) -> the error to raise
StatusError = Callable[[int, str | None, str | None, str], Exception]


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
        self._first: BlockingResponse | None = None
        self._open: list[socket.socket] = []
        self._pieces: list[PieceHasher] | None = None

    # -- control ---------------------------------------------------------------------------

    def abort(self, error: BaseException) -> None:
        """Record the first error and wake every thread; a thread blocked on a socket is
        woken by shutting the socket down."""
        with self._changed:
            if self._error is None:
                self._error = error
            self._changed.notify_all()
            sockets = list(self._open)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def _check(self) -> None:
        if self._error is not None:
            raise Aborted from None

    @property
    def error(self) -> BaseException | None:
        return self._error

    def close_unused(self) -> None:
        """Close range 0's response if no worker took it (the transfer failed first)."""
        if self._first is not None:
            response, self._first = self._first, None
            self._close(response)

    # -- the first range: its headers decide what to hash ------------------------------

    def open_first(self) -> BlockingResponse:
        """Send the GET of range 0 and return its answer; its body is read by ``work``."""
        self._first = self._request(*self.ranges[0])
        return self._first

    def _request(self, start: int, end: int) -> BlockingResponse:
        self._check()
        headers = {**self.target.headers, "Range": f"bytes={start}-{end - 1}"}
        with self._changed:
            opened = self._open
        with _naming_range(start, end):
            response = open_response(
                self.target.options, "GET", self.target.url, headers, limit=end - start,
                opened=opened,
            )  # fmt: skip
        try:
            self._check()
            if response.status != 206:
                if response.status == 200:
                    raise RetryableError("GET: the server ignored the Range header")
                code = response.error_code()
                raise self._status_error(
                    response.status, code, response.header("location"), "GET range"
                )
            self._check_content_range(response.header("content-range") or "", start, end)
            return response
        except BaseException:
            self._close(response)
            raise

    def _close(self, response: BlockingResponse) -> None:
        with self._changed, contextlib.suppress(ValueError):
            self._open.remove(response.sock)
        response.close()

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

    # -- hashing in pieces -------------------------------------------------------------------

    def hash_pieces(self, hasher: StreamHasher) -> None:
        """Hash each range on its own thread as it arrives (before ``work`` starts); what
        ``hasher`` computes must split (core/pieces.splittable), its parts fit the ranges."""
        self._pieces = [PieceHasher(hasher, start) for start, _ in self.ranges]

    def digests(self, hasher: StreamHasher) -> Digests:
        """The whole object's digests, from the pieces (after every range arrived)."""
        assert self._pieces is not None
        return combine(self._pieces, hasher)

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
            response, self._first = self._first, None
        else:
            response = self._request(start, end)
        buffer = memoryview(bytearray(min(READ_CHUNK, end - start)))
        offset = start
        try:
            while offset < end:
                self._check()
                with _naming_range(start, end):
                    count = response.readinto(buffer[: min(len(buffer), end - offset)])
                if count == 0:
                    raise RetryableError(
                        f"GET range: body cut short at {offset - start} of {end - start} bytes"
                    )
                if self._pieces is not None:
                    self._pieces[index].update(buffer[:count])
                self.temp.write_at(buffer[:count], offset)
                offset += count
                self._wrote(index, count)
                waited = time.monotonic()
                self._progress(count)
                # a bandwidth cap's wait is not the server's slowness
                response.exclude(time.monotonic() - waited)
        finally:
            self._close(response)

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


@contextlib.contextmanager
def _naming_range(start: int, end: int) -> Iterator[None]:
    """Say which range a transient failure struck, keeping its class (a stall stays one)."""
    try:
        yield
    except RetryableError as error:
        raise type(error)(f"GET range {start}-{end - 1}: {error}") from error
