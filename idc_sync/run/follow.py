"""Following IDC releases from a package index: ask ``index_url`` for idc-index-data's
project page, say which release is the newest there, and with ``follow_releases`` fetch its
wheel into the state directory (at most ``max_release_wheel_bytes``, SHA-256 checked
against the index's hash) and unpack it into ``<state_dir>/catalogs/<version>/``, where
the next plan finds it (catalog/sources.py). Shared by ``serve`` (service/release_watch.py)
and ``sync --follow-releases``; must run under the state's lock.

Every failure is a ReleaseCheckError naming its step, and costs nothing: a failed download
or unpack leaves no file behind, and the mirror goes on with the release it has.

The requests take aiohttp with the proxy and the CAs of bucket traffic (net/options.py,
net/tls.py): one small page and now and then one large file, streamed to disk, where
net/http.py is made for many small bodies held in memory."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import ssl
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from idc_sync.catalog import package_index, sources, wheel
from idc_sync.catalog.package_index import ReleaseFile
from idc_sync.catalog.sources import CatalogSource
from idc_sync.config import Settings
from idc_sync.core.errors import ConfigurationError, ReleaseCheckError
from idc_sync.net.options import USER_AGENT
from idc_sync.net.tls import client_context

log = logging.getLogger(__name__)

# The project page is small; an index that takes this long to send it is not answering.
PAGE_SECONDS = 120.0
_CHUNK = 1 << 20


@dataclass(frozen=True, slots=True)
class ReleaseCheck:
    """What one check found: the catalog plans use now, the newest wheel the index offers
    (None: none usable), and the catalog this check unpacked (only when following)."""

    current: CatalogSource
    offered: ReleaseFile | None
    followed: CatalogSource | None = None

    @property
    def newer(self) -> bool:
        return self.offered is not None and self.offered.key > self.current.key

    @property
    def latest_release(self) -> int | None:
        """The newest IDC release known to exist: the index's, or the mirror's own."""
        releases = [package_index.release_of(self.current.version or "")]
        if self.offered is not None:
            releases.append(self.offered.release)
        known = [release for release in releases if release is not None]
        return max(known) if known else None


async def look(settings: Settings) -> ReleaseCheck:
    """Which catalog plans use now and the newest wheel the index offers; ReleaseCheckError
    (``index``) when the index cannot be asked or its answer read."""
    try:
        current = await asyncio.to_thread(sources.newest, settings.state_path)
    except ConfigurationError as error:
        raise ReleaseCheckError("wheel", f"no catalog to compare with: {error}") from None
    async with _session(settings) as http:
        return ReleaseCheck(current, await _newest_offered(http, settings))


async def fetch(settings: Settings, offered: ReleaseFile) -> CatalogSource:
    """Download ``offered`` and unpack it into a catalog directory (then older catalogs but
    the previous one go); ReleaseCheckError at any step, with nothing left behind."""
    catalogs = settings.state_path / sources.CATALOGS_DIR
    part = catalogs / f".download-{offered.filename}"
    try:
        async with _session(settings) as http:
            await _download(http, settings, offered, part)
        followed = await asyncio.to_thread(
            wheel.unpack, part, offered.version, catalogs,
            max_bytes=settings.max_release_wheel_bytes,
            provenance={"filename": offered.filename, "url": offered.url,
                        "sha256": offered.sha256},
        )  # fmt: skip
    except OSError as error:
        raise ReleaseCheckError("download", f"cannot write into {catalogs}: {error}") from None
    finally:
        await asyncio.to_thread(part.unlink, missing_ok=True)
    await asyncio.to_thread(wheel.prune, catalogs)
    return followed


async def check_releases(settings: Settings, *, follow: bool | None = None) -> ReleaseCheck:
    """``look``, and with ``follow`` (default: the ``follow_releases`` setting) ``fetch`` a
    newer release. ReleaseCheckError when any step fails."""
    follow = settings.follow_releases if follow is None else follow
    check = await look(settings)
    if not follow or check.offered is None or not check.newer:
        return check
    return ReleaseCheck(check.current, check.offered, await fetch(settings, check.offered))


@asynccontextmanager
async def _session(settings: Settings) -> AsyncIterator[aiohttp.ClientSession]:
    try:
        context = client_context(settings.ca_bundle)
    except ConfigurationError as error:
        raise ReleaseCheckError("index", str(error)) from None
    connector = aiohttp.TCPConnector(ssl=context, limit=4)
    timeout = aiohttp.ClientTimeout(
        sock_connect=settings.connect_timeout, sock_read=settings.low_speed_seconds
    )
    # trust_env=False: the proxy is ours to choose (net/options.py), as for the buckets
    async with aiohttp.ClientSession(
        connector=connector, timeout=timeout, headers={"User-Agent": USER_AGENT}, trust_env=False
    ) as http:
        yield http


def _proxy(settings: Settings, url: str) -> dict[str, Any]:
    parts = urlsplit(url)
    try:
        proxy = settings.network.proxy_for(parts.scheme, parts.hostname or "")
    except ConfigurationError as error:
        raise ReleaseCheckError("index", str(error)) from None
    if proxy is None:
        return {}
    headers = {"Proxy-Authorization": proxy.authorization} if proxy.authorization else None
    return {"proxy": proxy.url, "proxy_headers": headers}


def _unreachable(url: str, error: BaseException) -> str:
    if isinstance(error, TimeoutError):
        return f"{url}: no answer in time"
    if isinstance(error, ssl.SSLError | aiohttp.ClientSSLError):
        return f"{url}: TLS failed (see ca_bundle): {error}"
    return f"cannot reach {url}: {error.__class__.__name__}: {error}"


async def _newest_offered(http: aiohttp.ClientSession, settings: Settings) -> ReleaseFile | None:
    url = package_index.project_url(settings.index_url)
    limit = package_index.MAX_PAGE_BYTES
    try:
        async with asyncio.timeout(PAGE_SECONDS), http.get(
            url, headers={"Accept": package_index.ACCEPT, "Accept-Encoding": "identity"},
            auto_decompress=False, **_proxy(settings, url),
        ) as response:  # fmt: skip
            if response.status != 200:
                raise ReleaseCheckError("index", f"{url}: HTTP {response.status}")
            if response.headers.get("Content-Encoding", "identity").lower() != "identity":
                # asked for none: a compressed page could unpack to any size
                raise ReleaseCheckError("index", f"{url}: an encoded page was not asked for")
            body = bytearray()
            async for chunk in response.content.iter_chunked(64 << 10):
                body += chunk
                if len(body) > limit:
                    raise ReleaseCheckError("index", f"{url}: a page over {limit:,} bytes")
            content_type = response.headers.get("Content-Type", "")
            page_url = str(response.url)
    except (aiohttp.ClientError, TimeoutError, OSError) as error:
        raise ReleaseCheckError("index", _unreachable(url, error)) from None
    return package_index.newest(package_index.parse_page(bytes(body), content_type, page_url))


async def _download(
    http: aiohttp.ClientSession, settings: Settings, offered: ReleaseFile, part: Path
) -> None:
    """The wheel into ``part``, hashed and counted while it streams; ReleaseCheckError
    (``size``, ``hash``, ``download``) when it is too large, not the wheel the index named,
    or does not arrive."""
    limit = settings.max_release_wheel_bytes
    too_large = f"{offered.filename} is larger than max_release_wheel_bytes ({limit:,})"
    if offered.size is not None and offered.size > limit:
        raise ReleaseCheckError("size", f"{too_large}: the index says {offered.size:,} bytes")
    await asyncio.to_thread(part.parent.mkdir, parents=True, exist_ok=True)
    digest = hashlib.sha256()
    received = 0
    handle = await asyncio.to_thread(part.open, "wb")
    try:
        async with http.get(
            offered.url, headers={"Accept-Encoding": "identity"}, auto_decompress=False,
            **_proxy(settings, offered.url),
        ) as response:  # fmt: skip
            if response.status != 200:
                raise ReleaseCheckError("download", f"{offered.url}: HTTP {response.status}")
            if response.content_length is not None and response.content_length > limit:
                raise ReleaseCheckError("size", f"{too_large}: {response.content_length:,} bytes")
            pace = _Pace(settings, offered.url)
            async for chunk in response.content.iter_chunked(_CHUNK):
                received += len(chunk)
                if received > limit:
                    raise ReleaseCheckError("size", too_large)
                digest.update(chunk)
                await asyncio.to_thread(handle.write, chunk)
                pace.moved(len(chunk))
        await asyncio.to_thread(_flush, handle)
    except (aiohttp.ClientError, TimeoutError) as error:
        raise ReleaseCheckError("download", _unreachable(offered.url, error)) from None
    finally:
        await asyncio.to_thread(handle.close)
    if digest.hexdigest() != offered.sha256:
        raise ReleaseCheckError(
            "hash", f"{offered.filename}: SHA-256 {digest.hexdigest()} is not the "
            f"{offered.sha256} the index names; nothing of it was used",
        )  # fmt: skip


def _flush(handle: Any) -> None:
    handle.flush()
    os.fsync(handle.fileno())


class _Pace:
    """The low-speed rule of bucket transfers (``low_speed_bytes_per_second`` over
    ``low_speed_seconds``) for the wheel: a server that drips bytes cannot hold a check for
    ever. A read that brings nothing at all is aiohttp's sock_read timeout."""

    def __init__(self, settings: Settings, url: str) -> None:
        self._url = url
        self._seconds = settings.low_speed_seconds
        self._floor = settings.low_speed_bytes_per_second * settings.low_speed_seconds
        self._start = time.monotonic()
        self._bytes = 0

    def moved(self, count: int) -> None:
        self._bytes += count
        now = time.monotonic()
        if now - self._start < self._seconds:
            return
        if self._bytes < self._floor:
            raise ReleaseCheckError(
                "download", f"{self._url}: slower than low_speed_bytes_per_second"
            )
        self._start, self._bytes = now, 0


async def follow_once(settings: Settings) -> CatalogSource | None:
    """``sync`` with ``follow_releases``: one check before the plan. The catalog of a newer
    release it fetched, or None; a failure is a warning and the sync goes on with the
    release it has."""
    try:
        check = await check_releases(settings, follow=True)
    except ReleaseCheckError as error:
        log.warning("checking %s for a newer IDC release failed (%s): %s; syncing the release "
                    "at hand", settings.index_url, error.reason, error)  # fmt: skip
        return None
    if check.followed is not None and check.offered is not None:
        log.info("fetched IDC release v%d (idc-index-data %s) into %s", check.offered.release,
                 check.offered.version, check.followed.location)  # fmt: skip
    return check.followed
