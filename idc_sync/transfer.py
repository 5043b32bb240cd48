"""The native transfer engine: anonymous ListObjectsV2 through aiobotocore, object GETs as
plain unsigned HTTP through aiohttp, bytes streamed into a temp file while hashing.

An engine has a small surface (``list_series``, ``part_size``, ``fetch``) so another one
(s5cmd) can stand behind the same interface. ``fetch`` ends with ``settle``: the verdict
on the bytes, and the rename into place only when they verify."""

from __future__ import annotations

import asyncio
import errno
import re
from collections.abc import Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import aiohttp
from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore import UNSIGNED
from botocore.exceptions import BotoCoreError, ClientError

from idc_sync import __version__
from idc_sync.errors import IntegrityError, LocalStorageError, PermanentError, RetryableError
from idc_sync.model import ListedObject
from idc_sync.retry import FailureClass, classify_status
from idc_sync.routing import addressing_style, object_url
from idc_sync.storage import TempFile
from idc_sync.verify import (
    Digests,
    Expected,
    GoogHash,
    Verdict,
    hashers_needed,
    parse_goog_hash,
    verdict,
)

USER_AGENT = f"idc-sync/{__version__}"
# Bodies up to this size are read whole and written with one thread hop; larger ones are
# streamed in slices of the same size, hashed and written off the event loop.
SLICE_BYTES = 8 << 20

_ERROR_CODE = re.compile(rb"<Code>([A-Za-z]+)</Code>")


@dataclass(frozen=True, slots=True)
class FetchJob:
    bucket: str
    key: str
    expected: Expected
    final: Path
    part_size: int | None = None  # for multipart ETags


ProgressCallback = Callable[[int], None]


class Throttle(Protocol):
    """Paces received bytes (a bandwidth cap); ``take`` returns once ``nbytes`` may pass."""

    async def take(self, nbytes: int) -> None: ...


class Engine(Protocol):
    async def list_series(self, bucket: str, crdc_series_uuid: str) -> list[ListedObject]: ...

    async def part_size(self, bucket: str, key: str) -> int: ...

    async def fetch(self, job: FetchJob, on_bytes: ProgressCallback) -> Verdict:
        """Fetch one object, verify it and rename it into place (see ``settle``). Raises
        IntegrityError (nothing placed), RetryableError, PermanentError or
        LocalStorageError."""
        ...


def _status_error(status: int, code: str | None, what: str) -> Exception:
    """An error for a non-success answer; ``what`` names the request kind, not the key
    (the queue row and the log line already name the object)."""
    detail = f"{what}: HTTP {status}{' ' + code if code else ''}"
    failure = classify_status(status, code)
    if failure is FailureClass.PERMANENT:
        return PermanentError(detail)
    return RetryableError(detail)


class NativeEngine:
    """asyncio engine; use as ``async with NativeEngine(...) as engine``."""

    def __init__(
        self,
        endpoint: str,
        *,
        concurrency: int,
        pin_etag: bool = True,
        throttle: Throttle | None = None,
        connect_timeout: float = 30.0,
        read_timeout: float = 120.0,
    ) -> None:
        self._endpoint = endpoint
        self._concurrency = concurrency
        # GCS's XML API matches If-Match against generations, not ETags; pin only on S3.
        self._pin_etag = pin_etag
        self._throttle = throttle
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._stack = AsyncExitStack()
        self._http: aiohttp.ClientSession | None = None
        self._s3: Any = None

    async def __aenter__(self) -> NativeEngine:
        connector = aiohttp.TCPConnector(
            limit=self._concurrency + 8, limit_per_host=0, ttl_dns_cache=300
        )
        self._http = await self._stack.enter_async_context(
            aiohttp.ClientSession(
                connector=connector,
                timeout=aiohttp.ClientTimeout(
                    total=None, connect=self._connect_timeout, sock_read=self._read_timeout
                ),
                headers={"User-Agent": USER_AGENT},
                auto_decompress=False,
                # Public buckets: never send credentials, never read them from the environment.
                trust_env=False,
            )
        )
        config = AioConfig(
            signature_version=UNSIGNED,
            s3={"addressing_style": addressing_style(self._endpoint)},
            # our retry policy decides; botocore's own retries would hide failures from it
            retries={"total_max_attempts": 1, "mode": "standard"},
            connect_timeout=self._connect_timeout,
            read_timeout=self._read_timeout,
            max_pool_connections=16,
            user_agent_extra=USER_AGENT,
        )
        self._s3 = await self._stack.enter_async_context(
            get_session().create_client(
                "s3", region_name="us-east-1", endpoint_url=self._endpoint, config=config
            )
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._stack.aclose()

    async def list_series(self, bucket: str, crdc_series_uuid: str) -> list[ListedObject]:
        """Every object under ``<crdc_series_uuid>/``, across all pages."""
        found: list[ListedObject] = []
        paginator = self._s3.get_paginator("list_objects_v2")
        try:
            async for page in paginator.paginate(Bucket=bucket, Prefix=f"{crdc_series_uuid}/"):
                for item in page.get("Contents", ()):
                    found.append(
                        ListedObject(
                            key=str(item["Key"]),
                            size=int(item["Size"]),
                            etag=str(item.get("ETag", "")).strip('"'),
                        )
                    )
        except ClientError as error:
            status = int(error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))
            code = error.response.get("Error", {}).get("Code")
            raise _status_error(status, code, f"LIST {bucket}/{crdc_series_uuid}/") from None
        except BotoCoreError as error:
            raise RetryableError(f"LIST {bucket}/{crdc_series_uuid}/: {error}") from None
        return found

    async def part_size(self, bucket: str, key: str) -> int:
        """Size of part 1 of a multipart object, which fixes the part size for its ETag."""
        assert self._http is not None
        url = object_url(self._endpoint, bucket, key) + "?partNumber=1"
        async with self._http.head(url, allow_redirects=False) as response:
            if response.status not in (200, 206):
                raise _status_error(response.status, None, "HEAD part 1")
            if response.content_length is None:
                raise RetryableError("HEAD part 1: no Content-Length")
            return response.content_length

    async def fetch(self, job: FetchJob, on_bytes: ProgressCallback) -> Verdict:
        assert self._http is not None
        headers = {"If-Match": f'"{job.expected.etag}"'} if self._pin_etag else {}
        url = object_url(self._endpoint, job.bucket, job.key)
        async with self._http.get(url, headers=headers, allow_redirects=False) as response:
            if response.status != 200:
                body = await response.content.read(4096)
                match = _ERROR_CODE.search(body)
                code = match.group(1).decode() if match else None
                raise _status_error(response.status, code, "GET")
            goog = parse_goog_hash(response.headers.getall("x-goog-hash", []))
            if response.content_length not in (None, job.expected.size):
                # Same key, other size: the object changed after we listed it.
                raise IntegrityError(
                    f"server sends {response.content_length} bytes, "
                    f"listing said {job.expected.size}"
                )
            hasher = hashers_needed(job.expected, goog, job.part_size)
            if job.expected.size <= SLICE_BYTES:
                # Most IDC files are small: one thread hop creates, hashes, writes, verifies
                # and renames.
                body = await response.read()
                on_bytes(len(body))
                if self._throttle is not None:
                    await self._throttle.take(len(body))
                return await asyncio.to_thread(_store_body, job, hasher, goog, body)
            temp = await asyncio.to_thread(TempFile, job.final)
            writing: asyncio.Future[None] | None = None
            try:
                offset = 0
                while block := await _read_slice(response.content, SLICE_BYTES):
                    on_bytes(len(block))
                    if self._throttle is not None:
                        await self._throttle.take(len(block))
                    # Receive the next slice while a thread hashes and writes this one.
                    if writing is not None:
                        await writing
                    writing = asyncio.ensure_future(
                        asyncio.to_thread(_hash_and_write, temp, hasher, block, offset)
                    )
                    offset += len(block)
                if writing is not None:
                    await writing
            except BaseException:
                if writing is not None and not writing.done():
                    # the thread still holds the file: let it finish before discarding
                    await asyncio.gather(writing, return_exceptions=True)
                await asyncio.to_thread(temp.discard)
                raise
        return await asyncio.to_thread(settle, temp, job, hasher.digests(), goog)


def settle(temp: TempFile, job: FetchJob, digests: Digests, goog: GoogHash | None) -> Verdict:
    """Judge the bytes in ``temp``; rename them into place only when they verify. Blocking.

    A mismatch discards the temp file and raises IntegrityError. An EIO at fsync discards
    it too and raises RetryableError: one bad write is not a full disk, so the object is
    fetched again instead of stopping the run."""
    result = verdict(job.expected, digests, goog)
    if not result.ok:
        temp.discard()
        raise IntegrityError(result.reason or "checksum mismatch")
    try:
        temp.commit()
    except LocalStorageError as error:
        if getattr(error.__cause__, "errno", None) != errno.EIO:
            raise
        raise RetryableError(f"{error}; fetching the file again") from error
    return result


async def _read_slice(stream: aiohttp.StreamReader, size: int) -> bytes:
    """Up to ``size`` bytes; fewer only at the end of the body."""
    parts: list[bytes] = []
    wanted = size
    while wanted > 0:
        part = await stream.read(wanted)
        if not part:
            break
        parts.append(part)
        wanted -= len(part)
    return b"".join(parts)


def _store_body(job: FetchJob, hasher: Any, goog: GoogHash | None, body: bytes) -> Verdict:
    temp = TempFile(job.final)
    try:
        _hash_and_write(temp, hasher, body, 0)
    except BaseException:
        temp.discard()
        raise
    return settle(temp, job, hasher.digests(), goog)


def _hash_and_write(temp: TempFile, hasher: Any, block: bytes, offset: int) -> None:
    hasher.update(block)
    temp.write_at(block, offset)
