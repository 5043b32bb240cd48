"""The interface every transfer engine offers the workers (run/mirror.py): list a series,
learn a multipart object's part size, and place one verified object. Small on purpose, so
the native and the s5cmd engines (and the metered wrapper of the daemon) stand behind it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from idc_sync.core.model import ListedObject
from idc_sync.core.verify import ChecksumMode, Expected, Verdict


@dataclass(frozen=True, slots=True)
class FetchJob:
    bucket: str
    key: str
    expected: Expected
    final: Path
    part_size: int | None = None  # for multipart ETags
    # "fastest": the cheapest checksum the source publishes; "md5": MD5 where there is one
    checksum: ChecksumMode = "fastest"
    # The listing's ChecksumAlgorithm (S3: "CRC64NVME", ...) when it is a full-object one:
    # a large object's ranges carry no checksum header, so a HEAD asks for it first.
    listed_checksum: str | None = None


ProgressCallback = Callable[[int], None]


class Throttle(Protocol):
    """Paces received bytes (a bandwidth cap); ``take`` returns once ``nbytes`` may pass."""

    async def take(self, nbytes: int) -> None: ...


class Engine(Protocol):
    async def list_series(
        self, bucket: str, crdc_series_uuid: str, instance_count: int | None
    ) -> list[ListedObject]:
        """Every object of the series. ``instance_count`` is the index's count (None when
        unknown): a listing that goes far past it raises ListingTooLong."""
        ...

    async def part_size(self, bucket: str, key: str) -> int: ...

    async def fetch(self, job: FetchJob, on_bytes: ProgressCallback) -> Verdict:
        """Fetch one object, verify it and rename it into place (see ``settle``). Raises
        IntegrityError (nothing placed), RetryableError, PermanentError,
        LocalStorageError or NetworkSetupError."""
        ...
