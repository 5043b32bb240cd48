"""The native transfer engine: anonymous ListObjectsV2, HEADs and object GETs as plain
unsigned HTTP through the one client of bucket traffic (net/http.py on the event loop; large
objects as parallel ranged GETs on worker threads, net/ranged.py over net/blocking.py).
``fetch`` ends in ``engines.settle``."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AsyncExitStack
from functools import partial
from typing import Any, TypeVar
from urllib.parse import urlencode

from idc_sync.core.errors import (
    BodyTooLarge,
    IntegrityError,
    ListingTooLong,
    ObjectChangedError,
    PermanentError,
    RetryableError,
)
from idc_sync.core.listing import ListingBounds, parse_list_page
from idc_sync.core.model import ListedObject
from idc_sync.core.pieces import aligned_range, splittable
from idc_sync.core.retry import FailureClass, classify_status
from idc_sync.core.routing import bucket_url, object_url
from idc_sync.core.verify import (
    Published,
    Verdict,
    guess_part_size,
    hashers_needed,
    published_checksums,
)
from idc_sync.disk.lanes import Lane, answer, report
from idc_sync.disk.storage import TempFile
from idc_sync.engines.base import FetchJob, ProgressCallback, Throttle
from idc_sync.engines.settle import settle
from idc_sync.net.buffers import BodyBudget
from idc_sync.net.http import HttpClient, Response
from idc_sync.net.options import NetOptions
from idc_sync.net.pacing import AdaptiveLimit
from idc_sync.net.ranged import RangedTransfer, Target
from idc_sync.net.tls import client_context
from idc_sync.net.wire import describe_status

# Bodies up to this size are read whole on the event loop and stored with one thread hop;
# larger ones are fetched as parallel ranged GETs on worker threads (ranged.py).
SMALL_OBJECT = 8 << 20
# Bytes of those bodies one engine holds at once (net/buffers.py, BodyBudget), from the
# setting body_memory_bytes shared between the event loops. 667 files of 5-8 MB at 20 ms,
# one loop, one sitting: 32 MiB 11.3 s, 128 MiB 8.3-9.5 s (250 MB RSS), 256 MiB 8.9-11.6 s
# (440-490 MB), 512 MiB 10.2-11.6 s (0.7-1.2 GB), unbounded 16.5-22.5 s (2.0-3.3 GB); two
# loops of 64 MiB 8.3-8.7 s (165 MB).
BODY_BUDGET = 128 << 20
# A ListObjectsV2 page of 1,000 keys is ~300 kB (~1.2 MB with keys of S3's longest); a
# larger one is not a listing.
LIST_PAGE = 4 << 20
# Each range is a GET on a connection of its own. 4 x 860 MB from GCS-flavoured nginx,
# median of 3 in one sitting: 16 MiB 4.91 s, 32 MiB 4.26 s, 64 MiB 3.95 s, 128 MiB 3.84 s
# (MD5 ETags: 32 MiB 10.0, 64 MiB 9.7 s); 64 still splits a 100 MB object in two.
RANGE_BYTES = 64 << 20
RANGE_STREAMS = 4  # ranges of one object in flight at once
RANGE_THREADS = 16  # range workers shared by every large object
# Creating, hashing and writing a file is CPU work: more threads than cores only fight over
# the GIL (ct workload: 3 threads 6.6-7.5 s, 32 threads 8.3-9.3 s). fsync and rename wait
# on the disk, milliseconds each on a real one, so they get threads of their own.
FILL_THREADS = (os.cpu_count() or 1) + 1
COMMIT_THREADS = 32

T = TypeVar("T")


def _status_error(status: int, code: str | None, location: str | None, what: str) -> Exception:
    """An error for a non-success answer; ``what`` names the request kind, not the key
    (the queue row and the log line already name the object). A redirect not followed
    names its Location."""
    detail = f"{what}: {describe_status(status, code, location)}"
    failure = classify_status(status, code)
    if failure is FailureClass.PERMANENT:
        return PermanentError(detail)
    if status == 412:  # If-Match failed: the caller lists the series again
        return ObjectChangedError(detail)
    return RetryableError(detail)


class NativeEngine:
    """asyncio engine; use as ``async with NativeEngine(...) as engine``."""

    def __init__(
        self,
        endpoint: str,
        *,
        concurrency: int,
        pin_etag: bool = True,
        ask_checksums: bool = False,
        throttle: Throttle | None = None,
        network: NetOptions | None = None,
        small_object: int = SMALL_OBJECT,
        body_budget: int = BODY_BUDGET,
        range_bytes: int = RANGE_BYTES,
        range_streams: int = RANGE_STREAMS,
    ) -> None:
        self._endpoint = endpoint
        self._concurrency = concurrency
        # GCS's XML API matches If-Match against generations, not ETags; pin only on S3.
        self._pin_etag = pin_etag
        # S3 sends its stored checksums (x-amz-checksum-crc64nvme, ...) only when asked; GCS
        # sends x-goog-hash unasked. Asking costs one header per request.
        self._ask_checksums = ask_checksums
        self._throttle = throttle
        self._small_object = small_object
        self._bodies = BodyBudget(body_budget)
        self._range_bytes = range_bytes
        self._range_streams = range_streams
        self._ranges: ThreadPoolExecutor | None = None
        self._followers: ThreadPoolExecutor | None = None
        self._storage: Lane | None = None
        self._commits: Lane | None = None
        self._pace = AdaptiveLimit(concurrency + 8, floor=min(4, concurrency))
        self._network = network or NetOptions()
        self._stack = AsyncExitStack()
        self._getter: HttpClient | None = None

    async def __aenter__(self) -> NativeEngine:
        self._ranges = ThreadPoolExecutor(RANGE_THREADS, thread_name_prefix="idc-sync-range")
        # one follower per large object in flight, never waiting behind range workers
        self._followers = ThreadPoolExecutor(self._concurrency, thread_name_prefix="idc-sync-hash")
        self._storage = Lane(min(self._concurrency, FILL_THREADS), "idc-sync-fill")
        self._commits = Lane(min(self._concurrency, COMMIT_THREADS), "idc-sync-commit")
        self._stack.callback(self._commits.close)
        self._stack.callback(self._storage.close)
        self._stack.callback(self._followers.shutdown, wait=False, cancel_futures=True)
        self._stack.callback(self._ranges.shutdown, wait=False, cancel_futures=True)
        # a proxy or a CA bundle that can never work is a configuration error now, not a
        # failure of every request
        self._network.check(self._endpoint)
        if self._network.ca_bundle is not None:
            client_context(self._network.ca_bundle)
        self._getter = await self._stack.enter_async_context(HttpClient(self._network))
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._stack.aclose()

    async def list_series(
        self, bucket: str, crdc_series_uuid: str, instance_count: int | None
    ) -> list[ListedObject]:
        """Every object under ``<crdc_series_uuid>/``, across all pages (ListObjectsV2 as
        plain unsigned HTTP: a tenth of botocore's CPU per page, see README). A listing
        that goes past what ``instance_count`` allows (core.listing.ListingBounds) raises
        ListingTooLong naming the series."""
        assert self._getter is not None
        prefix = f"{crdc_series_uuid}/"
        url = bucket_url(self._endpoint, bucket)
        bounds = ListingBounds.for_series(instance_count)
        found: list[ListedObject] = []
        token: str | None = None
        pages = 0
        while True:
            params = {"list-type": "2", "prefix": prefix, "encoding-type": "url"}
            if token is not None:
                params["continuation-token"] = token
            async with self._pace:
                try:
                    response = await self._getter.get(f"{url}?{urlencode(params)}", {}, LIST_PAGE)
                except BodyTooLarge:
                    raise RetryableError(
                        f"LIST {bucket}/{prefix}: page over {LIST_PAGE} bytes"
                    ) from None
                body = response.body
                if response.status != 200:
                    raise self._refused_answer(response, f"LIST {bucket}/{prefix}")
                self._pace.succeeded()
            page = parse_list_page(body)
            pages += 1
            found.extend(page.objects)
            if page.next_token is None:
                return found
            if page.next_token == token:
                raise RetryableError(f"LIST {bucket}/{prefix}: the server repeats a page")
            if len(found) > bounds.max_keys or pages >= bounds.max_pages:
                count = "unknown" if instance_count is None else f"{instance_count:,}"
                # short: the retry summary keeps 80 characters of a reason, and the series'
                # own log line and queue row name the series
                raise ListingTooLong(
                    f"listing goes on past {len(found):,} keys in {pages:,} pages; the index "
                    f"counts {count} instances"
                )
            token = page.next_token

    async def part_size(self, bucket: str, key: str) -> int:
        """Size of part 1 of a multipart object, which fixes the part size for its ETag."""
        assert self._getter is not None
        url = object_url(self._endpoint, bucket, key) + "?partNumber=1"
        async with self._pace:
            response = await self._getter.head(url, {})
            if response.status not in (200, 206):
                raise self._refused(
                    response.status, None, response.header("location"), "HEAD part 1"
                )
            length = response.header("content-length")
            if length is None or not length.isdigit():
                raise RetryableError("HEAD part 1: no Content-Length")
            self._pace.succeeded()
            return int(length)

    def _object_headers(self, job: FetchJob) -> dict[str, str]:
        headers = {"If-Match": f'"{job.expected.etag}"'} if self._pin_etag else {}
        if self._ask_checksums and job.checksum == "fastest" and not job.expected.foreign:
            headers["x-amz-checksum-mode"] = "ENABLED"
        return headers

    async def fetch(self, job: FetchJob, on_bytes: ProgressCallback) -> Verdict:
        headers = self._object_headers(job)
        url = object_url(self._endpoint, job.bucket, job.key)
        if job.expected.size > self._small_object:
            return await self._fetch_ranged(job, url, headers, on_bytes)
        assert self._getter is not None
        taken = await self._bodies.take(job.expected.size)
        try:
            return await self._fetch_whole(job, url, headers, on_bytes)
        finally:
            self._bodies.give(taken)

    async def _fetch_whole(
        self, job: FetchJob, url: str, headers: dict[str, str], on_bytes: ProgressCallback
    ) -> Verdict:
        """A small object read whole on the event loop, then stored with one thread hop."""
        assert self._getter is not None
        async with self._pace:
            try:
                response = await self._getter.get(url, headers, job.expected.size, borrow=True)
            except BodyTooLarge as error:
                # Same key, other size: the object changed after we listed it.
                sent = "more" if error.announced is None else str(error.announced)
                raise IntegrityError(
                    f"server sends {sent} bytes, listing said {job.expected.size}"
                ) from None
            if response.status != 200:
                raise self._refused_answer(response, "GET")
            body = response.body
            if len(body) != job.expected.size:
                raise IntegrityError(
                    f"server sends {len(body)} bytes, listing said {job.expected.size}"
                )
            published = published_checksums(response.headers)
            # Most IDC files are small: the body is read whole, and one thread hop creates,
            # hashes, writes, verifies and renames.
            hasher = hashers_needed(job.expected, published, job.part_size, job.checksum)
            self._pace.succeeded()
        on_bytes(len(body))
        if self._throttle is not None:
            await self._throttle.take(len(body))
        return await self._fill_and_settle(job, hasher, body, published)

    @property
    def pace(self) -> AdaptiveLimit:
        """The adaptive limit on requests in flight (metrics and tests read it)."""
        return self._pace

    def _refused_answer(self, response: Response, what: str) -> Exception:
        """The error for a non-200 answer, with the S3 error code its XML body names."""
        return self._refused(
            response.status, response.error_code, response.header("location"), what
        )

    def _refused(self, status: int, code: str | None, location: str | None, what: str) -> Exception:
        """The error for a non-success answer; SlowDown, 503 and 429 also halve the number
        of requests in flight."""
        if status in (429, 503) or code == "SlowDown":
            self._pace.throttled()
        return _status_error(status, code, location, what)

    async def _store(self, function: Callable[..., T], *args: Any) -> T:
        """Run blocking file work on the engine's storage threads."""
        assert self._storage is not None
        return await self._storage.run(function, *args)

    async def _commit(self, function: Callable[..., T], *args: Any) -> T:
        """Run work that waits on the disk (fsync, rename) on the commit threads."""
        assert self._commits is not None
        return await self._commits.run(function, *args)

    def _fill_and_settle(
        self,
        job: FetchJob,
        hasher: Any,
        body: bytes | bytearray | memoryview,
        published: Published | None,
    ) -> asyncio.Future[Verdict]:
        """A whole body into place: a storage thread creates, hashes and writes the temp
        file, then hands it straight to a commit thread to verify, fsync and rename; the
        event loop is woken once, with the verdict."""
        storage, commits, getter = self._storage, self._commits, self._getter
        assert storage is not None
        assert commits is not None
        assert getter is not None
        loop = asyncio.get_running_loop()
        done: asyncio.Future[Verdict] = loop.create_future()

        def fill() -> None:
            try:
                temp = _fill(job, hasher, body)
                digests = hasher.digests()
            except BaseException as error:
                report(loop, done, None, error)
                return
            getter.give_back(body)  # written and hashed: the next response may have it
            commits.submit(partial(answer, loop, done, settle, temp, job, digests, published))

        storage.submit(fill)
        return done

    async def _fetch_ranged(
        self, job: FetchJob, url: str, headers: dict[str, str], on_bytes: ProgressCallback
    ) -> Verdict:
        """A large object as parallel ranged GETs on worker threads (see ranged.py)."""
        assert self._ranges is not None
        loop = asyncio.get_running_loop()
        throttle = self._throttle

        def progress(count: int) -> None:  # called on range worker threads
            loop.call_soon_threadsafe(on_bytes, count)
            if throttle is not None:
                asyncio.run_coroutine_threadsafe(throttle.take(count), loop).result()

        target = Target(url, headers, self._network)
        # a multipart ETag is checked part by part on the range threads: whole parts a range
        parts = job.expected.multipart_parts
        part_size = job.part_size
        if parts is not None and part_size is None:
            part_size = guess_part_size(job.expected.size, parts)
        range_bytes = aligned_range(self._range_bytes, part_size if parts is not None else None)
        # S3 sends no checksum with a range: when the listing says the object has one, a
        # HEAD asks for it (GCS sends x-goog-hash with every range)
        published = None
        if "x-amz-checksum-mode" in headers and job.listed_checksum is not None:
            published = await self._published_by_head(url, headers)
        temp = await self._store(TempFile, job.final)
        transfer = RangedTransfer(
            temp, target, job.expected.size, range_bytes, _status_error, progress
        )
        threads: list[asyncio.Future[None]] = []
        try:
            first = await loop.run_in_executor(self._ranges, transfer.open_first)
            published = published or published_checksums(first.headers)
            hasher = hashers_needed(job.expected, published, job.part_size, job.checksum)
            in_pieces = splittable(hasher) and range_bytes % (hasher.part_size or 1) == 0
            if in_pieces:
                transfer.hash_pieces(hasher)
            else:
                threads.append(
                    loop.run_in_executor(self._followers, transfer.hash_in_order, hasher)
                )
            streams = min(self._range_streams, len(transfer.ranges))
            threads += [loop.run_in_executor(self._ranges, transfer.work) for _ in range(streams)]
            await asyncio.gather(*threads)
            if transfer.error is not None:
                raise transfer.error
        except BaseException as error:
            transfer.abort(error)
            # the threads still hold the file: let them stop before discarding it
            await asyncio.gather(*threads, return_exceptions=True)
            transfer.close_unused()
            await self._store(temp.discard)
            raise
        digests = transfer.digests(hasher) if in_pieces else hasher.digests()
        return await self._commit(settle, temp, job, digests, published)

    async def _published_by_head(self, url: str, headers: dict[str, str]) -> Published | None:
        """The full-object checksums S3 states for ``url`` in answer to a HEAD."""
        assert self._getter is not None
        async with self._pace:
            response = await self._getter.head(url, headers)
            if response.status != 200:
                raise self._refused(response.status, None, response.header("location"), "HEAD")
            self._pace.succeeded()
        return published_checksums(response.headers)


def _fill(job: FetchJob, hasher: Any, body: bytes | bytearray | memoryview) -> TempFile:
    """A temp file holding ``body``, hashed on the way. Blocking."""
    temp = TempFile(job.final)
    try:
        hasher.update(body)
        temp.write_at(body, 0)
    except BaseException:
        temp.discard()
        raise
    return temp
