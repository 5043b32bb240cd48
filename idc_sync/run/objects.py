"""One object of a series being worked on: placed from where it already is (a file at its
final path without a "done" row, or the copy retirement moved away) when it verifies, else
fetched from the series' cloud, then, when failover is on and that cloud gave up, from the
other one, always verified against the same listing; every outcome recorded."""

from __future__ import annotations

import asyncio
import logging
import os
import random
import stat
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from idc_sync.core.errors import ObjectChangedError
from idc_sync.core.hashing import hash_file
from idc_sync.core.lifecycle import ObjectState
from idc_sync.core.logs import about
from idc_sync.core.model import ObjectResult, ObjectRow, SeriesRow, Source
from idc_sync.core.retry import FailureClass, RetryExhausted, RetryPolicy
from idc_sync.core.verify import (
    ChecksumMode,
    Expected,
    expectation_from_listing,
    hashers_needed,
    verdict,
)
from idc_sync.disk.retire import move_file
from idc_sync.disk.storage import local_error
from idc_sync.engines.base import Engine, FetchJob
from idc_sync.run.attempts import FailureObserver, LocalFailure, retrying
from idc_sync.run.recorder import Recorder

log = logging.getLogger("idc_sync.run.mirror")


class ProgressSink(Protocol):
    """What the workers tell a progress display (the CLI's bar, the daemon's metrics)."""

    def bytes_received(self, count: int) -> None: ...

    def file_finished(self, size: int, *, fetched: bool, ok: bool) -> None: ...


class NoProgress:
    def bytes_received(self, count: int) -> None:
        pass

    def file_finished(self, size: int, *, fetched: bool, ok: bool) -> None:
        pass


@dataclass(slots=True)
class RunSummary:
    series_complete: int = 0
    series_incomplete: int = 0
    series_failed: int = 0
    files_fetched: int = 0
    files_reverified: int = 0
    files_restored: int = 0  # moved back from retired_dir instead of fetched
    bytes_fetched: int = 0
    files_size_only: int = 0
    files_failover: int = 0  # served by the other cloud (``failover = true``)
    stopped: str | None = None  # why the run stopped early (disk full, ...)


@dataclass(frozen=True, slots=True)
class Cloud:
    """One cloud as a series sees it: the source, its engine and the series' bucket there."""

    source: Source
    engine: Engine
    bucket: str


@dataclass(slots=True)
class SeriesWork:
    """A series being worked on: where it is listed and fetched, the other cloud when
    failover is on, and its re-lists this run."""

    row: SeriesRow
    directory: Path
    cloud: Cloud
    fallback: Cloud | None
    failed_over: str | None = None  # why the series is listed and fetched on its fallback
    relists: int = 0
    listing: int = 0  # counts listings, so objects that hit a 412 together share one re-list
    relisting: asyncio.Lock = field(default_factory=asyncio.Lock)
    # key -> the full-object checksum algorithm the latest listing names (S3), for the
    # objects that have one: the queue keeps no such column, and each run lists anew
    checksums: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Exhausted:
    """An object whose retry budget on one cloud is spent (nothing recorded yet)."""

    obj: ObjectRow  # as last listed
    attempts: int
    failure: FailureClass
    reason: str
    part_size: int | None


@dataclass(slots=True)
class _Try:
    """What one cloud's attempts at an object carry from one attempt to the next."""

    obj: ObjectRow
    expected: Expected
    part_size: int | None
    attempts: int
    look_first: bool  # place it from where it already is, if it verifies, before fetching
    listing: int = 0


# Lists the series again after a 412 and returns the object as listed now (None: no news).
Relist = Callable[[SeriesWork, ObjectRow, int], Awaitable[ObjectRow | None]]


def _existing_regular_file(path: Path) -> bool:
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except FileNotFoundError:
        return False


def _restore(retired: Path, final: Path) -> None:
    try:
        move_file(retired, final)
    except OSError as error:
        raise local_error(error, "cannot restore", final) from error


class ObjectPlacer:
    """Places the objects of every series of one run (see the module docstring)."""

    def __init__(
        self,
        recorder: Recorder,
        retry: RetryPolicy,
        progress: ProgressSink,
        observer: FailureObserver,
        rng: random.Random,
        summary: RunSummary,
        stop: Callable[[str], None],
        stopped: Callable[[], bool],
        relist: Relist,
        checksum: ChecksumMode = "fastest",
    ) -> None:
        self._recorder = recorder
        self._retry = retry
        self._progress = progress
        self._observer = observer
        self._rng = rng
        self.summary = summary
        self._stop = stop
        self._stopped = stopped
        self._relist = relist
        self._checksum: ChecksumMode = checksum

    async def place(self, work: SeriesWork, obj: ObjectRow, on_disk: bool | None) -> None:
        """``on_disk``: whether the series' directory survey saw a file at the final path
        (None: not surveyed, look)."""
        uuid = work.row.crdc_series_uuid
        look = on_disk is not False or obj.retired_path is not None
        first = await self._from_cloud(work, work.cloud, obj, obj.attempts, look)
        if first is None:
            return
        last, reason = first, f"{work.cloud.source}: {first.reason}"
        fallback = work.fallback
        if fallback is not None and not self._stopped():
            given_up = (
                ObjectState.QUARANTINED if first.failure is FailureClass.INTEGRITY
                else ObjectState.FAILED
            )  # fmt: skip
            log.warning(
                "%s: %s on %s (%s); fetching it from %s", first.obj.key, given_up.value,
                work.cloud.source, first.reason, fallback.source,
                extra=about(uuid, first.obj.key, source=fallback.source),
            )  # fmt: skip
            second = await self._from_cloud(work, fallback, first.obj, first.attempts, False, first)
            if second is None:
                return
            last, reason = second, f"{reason}; {fallback.source}: {second.reason}"
        # bytes that never verified on either cloud are quarantined, whatever came last
        integrity = FailureClass.INTEGRITY in (first.failure, last.failure)
        state = ObjectState.QUARANTINED if integrity else ObjectState.FAILED
        log.error(
            "%s %s: %s", obj.key, state.value, reason, extra=about(uuid, obj.key, state=state.value)
        )
        self._recorder.add(ObjectResult(obj.key, state, last.attempts, reason))
        self._progress.file_finished(obj.size, fetched=False, ok=False)

    def _expected(self, work: SeriesWork, obj: ObjectRow, cloud: Cloud) -> Expected:
        return expectation_from_listing(
            obj.etag, obj.size, from_s3=work.cloud.source == "aws", foreign=cloud is not work.cloud
        )

    async def _from_cloud(
        self,
        work: SeriesWork,
        cloud: Cloud,
        obj: ObjectRow,
        attempts: int,
        look_first: bool,
        failed_before: Exhausted | None = None,
    ) -> Exhausted | None:
        """Try one cloud until the object is placed (None), the run stops (None, the object
        kept pending) or the retry budget is spent (what was tried, nothing recorded).
        ``failed_before``: this is the failover, after the series' own cloud gave up."""
        part_size = failed_before.part_size if failed_before is not None else None
        now = _Try(obj, self._expected(work, obj, cloud), part_size, attempts, look_first)

        async def attempt() -> None:
            now.listing = work.listing
            if (
                now.expected.multipart_parts is not None
                and now.part_size is None
                and not self._checked_by_listed_checksum(work, now)
            ):
                now.part_size = await cloud.engine.part_size(cloud.bucket, now.obj.key)
            if now.look_first:
                now.look_first = False
                if await self._already_here(work, now):
                    return
            now.attempts += 1
            await self._fetch_once(work, cloud, now, failed_before)

        async def relisted(error: Exception) -> bool:
            if not isinstance(error, ObjectChangedError):
                return False
            fresh = await self._relist(work, now.obj, now.listing)
            if fresh is None:
                return False
            # the listing was stale: try the object as listed now, no backoff
            now.obj, now.expected, now.part_size = fresh, self._expected(work, fresh, cloud), None
            return True

        try:
            await retrying(
                attempt, self._retry, observer=self._observer, rng=self._rng,
                what=obj.key, log_extra=about(work.row.crdc_series_uuid, obj.key,
                                               source=cloud.source),
                rescue=relisted,
            )  # fmt: skip
        except RetryExhausted as exhausted:
            return Exhausted(
                now.obj, now.attempts, exhausted.failure, exhausted.policy.summary(),
                now.part_size,
            )  # fmt: skip
        except LocalFailure as failure:
            # our disk, not the object: keep it pending for when space returns
            self._stop(str(failure.cause))
            self._recorder.add(ObjectResult(obj.key, None, now.attempts, str(failure.cause)))
        return None

    def _checked_by_listed_checksum(self, work: SeriesWork, now: _Try) -> bool:
        """Whether the object will be verified by the full-object checksum its listing
        names, so the part size of its multipart ETag (a HEAD) is not needed. A file
        already at its place is hashed before any request: it still needs the part size."""
        return (
            self._checksum == "fastest"
            and not now.expected.foreign
            and not now.look_first
            and now.obj.key in work.checksums
        )

    async def _already_here(self, work: SeriesWork, now: _Try) -> bool:
        """A file at the final path without a "done" row (a run killed after the rename, a
        tree adopted from elsewhere, a moved mirror) is hashed instead of fetched again; so
        is the copy a retirement moved away, which goes back into place when it verifies."""
        obj = now.obj
        for path, restoring in ((obj.path, False), (obj.retired_path, True)):
            if path is None or not await asyncio.to_thread(_existing_regular_file, path):
                continue
            hasher = hashers_needed(now.expected, None, now.part_size)
            digests = await asyncio.to_thread(hash_file, path, hasher)
            result = verdict(now.expected, digests, None)
            if not result.ok or result.kind == "size-only":
                log.warning(
                    "%s: existing file does not verify (%s); fetching", path, result.reason,
                    extra=about(work.row.crdc_series_uuid, obj.key),
                )  # fmt: skip
                continue
            if restoring:
                await asyncio.to_thread(_restore, path, obj.path)
                self.summary.files_restored += 1
            else:
                self.summary.files_reverified += 1
            self._recorder.add(
                ObjectResult(
                    obj.key, ObjectState.DONE, now.attempts, None, result.kind, result.checksum
                ),
                obj.path.parent if restoring else None,
            )
            self._progress.file_finished(obj.size, fetched=False, ok=True)
            return True
        return False

    async def _fetch_once(
        self, work: SeriesWork, cloud: Cloud, now: _Try, failed_before: Exhausted | None
    ) -> None:
        obj = now.obj
        job = FetchJob(
            cloud.bucket, obj.key, now.expected, obj.path, now.part_size, self._checksum,
            None if now.expected.foreign else work.checksums.get(obj.key),
        )  # fmt: skip
        result = await cloud.engine.fetch(job, self._progress.bytes_received)
        concerning = about(work.row.crdc_series_uuid, obj.key, source=cloud.source)
        if result.kind == "size-only":
            self.summary.files_size_only += 1
            log.warning(
                "%s: no checksum available, verified by size only", obj.key, extra=concerning
            )
        # Which cloud served a file is recorded (in the row's last_error) only when it is
        # not the configured source: that is the exception an operator wants to see.
        note: str | None = None
        if failed_before is not None:
            note = f"served by {cloud.source}; {work.cloud.source}: {failed_before.reason}"
        elif work.failed_over is not None:
            note = f"served by {cloud.source}; {work.failed_over}"
        if note is not None:
            self.summary.files_failover += 1
            log.warning("%s: %s", obj.key, note, extra=concerning)
        self._recorder.add(
            ObjectResult(
                obj.key, ObjectState.DONE, now.attempts, note, result.kind, result.checksum
            ),
            obj.path.parent,
        )
        self.summary.files_fetched += 1
        self.summary.bytes_fetched += obj.size
        self._progress.file_finished(obj.size, fetched=True, ok=True)
