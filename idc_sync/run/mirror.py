"""The workers: lease series from the queue, list each one, fetch and verify its objects
with bounded concurrency, and record every outcome. Crash-safe by order of steps:
temp file -> hash -> fsync -> verify -> rename -> fsync directory -> record done."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import socket
import stat
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Protocol

from idc_sync.core.errors import (
    LocalStorageError,
    NetworkSetupError,
    ObjectChangedError,
    PermanentError,
    UnsafePathError,
)
from idc_sync.core.layout import instance_file_name, parse_object_key, resolve_inside
from idc_sync.core.lifecycle import ObjectState, SeriesExpectation, SeriesState, series_verdict
from idc_sync.core.logs import about
from idc_sync.core.model import ObjectResult, ObjectRow, SeriesRow, Source
from idc_sync.core.retry import (
    STOPS_RUN,
    FailureClass,
    RetryExhausted,
    RetryPolicy,
    classify_exception,
)
from idc_sync.core.routing import bucket_for, other_source
from idc_sync.core.verify import (
    Expected,
    expectation_from_listing,
    hash_file,
    hashers_needed,
    verdict,
)
from idc_sync.disk.storage import fsync_directory, survey_directory
from idc_sync.engines.base import Engine, FetchJob
from idc_sync.state.queue import Queue

log = logging.getLogger(__name__)

RECORD_BATCH = 256
RECORD_INTERVAL = 0.25
PAGE = 1000
# A 412 to If-Match means the listing is stale: list the series again, this often per run.
RELISTS_PER_SERIES = 2


class ProgressSink(Protocol):
    def bytes_received(self, count: int) -> None: ...

    def file_finished(self, size: int, *, fetched: bool, ok: bool) -> None: ...


class NoProgress:
    def bytes_received(self, count: int) -> None:
        pass

    def file_finished(self, size: int, *, fetched: bool, ok: bool) -> None:
        pass


class FailureObserver(Protocol):
    """Told of every failed attempt and every retry (metrics.Metrics counts them)."""

    def attempt_failed(self, failure: FailureClass) -> None: ...

    def retrying(self, failure: FailureClass) -> None: ...


class NoObserver:
    def attempt_failed(self, failure: FailureClass) -> None:
        pass

    def retrying(self, failure: FailureClass) -> None:
        pass


@dataclass(frozen=True, slots=True)
class MirrorOptions:
    source: Source = "aws"
    concurrency: int = 64
    series_concurrency: int = 8
    lease_seconds: float = 600.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)


@dataclass(slots=True)
class RunSummary:
    series_complete: int = 0
    series_incomplete: int = 0
    series_failed: int = 0
    files_fetched: int = 0
    files_reverified: int = 0
    bytes_fetched: int = 0
    files_size_only: int = 0
    files_failover: int = 0  # served by the other cloud (``failover = true``)
    stopped: str | None = None  # why the run stopped early (disk full, ...)


class _Recorder:
    """Collects object outcomes and writes them in batches: fsync every touched directory
    first, so a row that says "done" always describes a rename that is on disk."""

    def __init__(self, queue: Queue) -> None:
        self._queue = queue
        self._results: list[ObjectResult] = []
        self._directories: set[Path] = set()
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()

    def add(self, result: ObjectResult, directory: Path | None = None) -> None:
        self._results.append(result)
        if directory is not None:
            self._directories.add(directory)
        if len(self._results) >= RECORD_BATCH:
            self._wake.set()

    async def flush(self) -> None:
        async with self._lock:
            results, self._results = self._results, []
            directories, self._directories = self._directories, set()
            if directories:
                await asyncio.to_thread(_fsync_all, directories)
            await self._queue.record_results(results)

    async def run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), RECORD_INTERVAL)
            self._wake.clear()
            await self.flush()


@dataclass(frozen=True, slots=True)
class _Cloud:
    """One cloud as a series sees it: the source, its engine and the series' bucket there."""

    source: Source
    engine: Engine
    bucket: str


@dataclass(slots=True)
class _SeriesWork:
    """A series being worked on: where it is listed and fetched, the other cloud when
    failover is on, and its re-lists this run."""

    row: SeriesRow
    directory: Path
    cloud: _Cloud
    fallback: _Cloud | None
    failed_over: str | None = None  # why the series is listed and fetched on its fallback
    relists: int = 0
    listing: int = 0  # counts listings, so objects that hit a 412 together share one re-list
    relisting: asyncio.Lock = field(default_factory=asyncio.Lock)


@dataclass(frozen=True, slots=True)
class _Exhausted:
    """An object whose retry budget on one cloud is spent (nothing recorded yet)."""

    obj: ObjectRow  # as last listed
    attempts: int
    failure: FailureClass
    reason: str
    part_size: int | None


def _fsync_all(directories: set[Path]) -> None:
    for directory in directories:
        fsync_directory(directory)


def _existing_regular_file(path: Path) -> bool:
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except FileNotFoundError:
        return False


class Mirror:
    """One run of the workers over the queue."""

    def __init__(
        self,
        queue: Queue,
        engine: Engine,
        options: MirrorOptions,
        progress: ProgressSink | None = None,
        rng: random.Random | None = None,
        observer: FailureObserver | None = None,
        failover: Engine | None = None,
    ) -> None:
        """``failover``: an engine for the other cloud (aws <-> gcs), used for the objects
        and listings of a series that its own cloud keeps failing."""
        self._queue = queue
        self._failover = failover
        self._observer = observer or NoObserver()
        self._engine = engine
        self._options = options
        self._progress = progress or NoProgress()
        self._rng = rng or random.Random()
        self._owner = f"{socket.gethostname()}:{os.getpid()}:{self._rng.getrandbits(32):08x}"
        self._objects = asyncio.Semaphore(options.concurrency)
        self._recorder = _Recorder(queue)
        self._stop_reason: str | None = None
        self.summary = RunSummary()

    def stop(self, reason: str) -> None:
        """Claim no more work; in-flight objects finish or stay pending."""
        if self._stop_reason is None:
            self._stop_reason = reason
            log.error("stopping: %s", reason)

    def drain(self, reason: str) -> None:
        """Like stop(), for a planned shutdown: claim no more series or objects; in-flight
        objects finish (the caller bounds how long) and unfinished series stay queued."""
        if self._stop_reason is None:
            self._stop_reason = reason
            log.info("draining: %s", reason)

    async def run(self) -> RunSummary:
        recorder = asyncio.create_task(self._recorder.run())
        heartbeat = asyncio.create_task(self._heartbeat())
        try:
            await self._work()
        finally:
            for task in (recorder, heartbeat):
                task.cancel()
            await asyncio.gather(recorder, heartbeat, return_exceptions=True)
            await self._recorder.flush()
        self.summary.stopped = self._stop_reason
        return self.summary

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(self._options.lease_seconds / 3)
            await self._queue.renew_leases(self._owner, self._options.lease_seconds)

    async def _work(self) -> None:
        active: set[asyncio.Task[None]] = set()
        try:
            while True:
                free = self._options.series_concurrency - len(active)
                if free > 0 and self._stop_reason is None:
                    claimed = await self._queue.claim_series(
                        self._owner, free, self._options.lease_seconds
                    )
                    for row in claimed:
                        active.add(asyncio.create_task(self._series(row)))
                    if claimed:
                        continue
                if not active:
                    return
                done, active = await asyncio.wait(active, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    task.result()  # a bug in a series task must not pass silently
        finally:
            for task in active:
                task.cancel()
            await asyncio.gather(*active, return_exceptions=True)

    # -- one series -------------------------------------------------------------------

    def _clouds(self, row: SeriesRow) -> tuple[_Cloud, _Cloud | None]:
        """Where the series is listed and fetched, and the other cloud when failover is on."""
        source = self._options.source
        primary = _Cloud(source, self._engine, bucket_for(source, row.aws_bucket))
        if self._failover is None:
            return primary, None
        other = other_source(source)
        return primary, _Cloud(other, self._failover, bucket_for(other, row.aws_bucket))

    async def _series(self, row: SeriesRow) -> None:
        uuid = row.crdc_series_uuid
        concerning = about(uuid, collection=row.collection_id)
        expectation = SeriesExpectation(row.instance_count, row.series_size_bytes, row.instances)
        try:
            cloud, fallback = self._clouds(row)
            directory = await asyncio.to_thread(
                resolve_inside, row.root, PurePosixPath(row.rel_dir)
            )
            work = _SeriesWork(row, directory, cloud, fallback)
            missing = await self._list_with_failover(work)
            # One look at the directory per series: temp files a killed run left behind go,
            # and the files already there are the only ones worth re-verifying.
            survey = await asyncio.to_thread(survey_directory, directory)
        except (PermanentError, UnsafePathError, RetryExhausted) as error:
            reason = str(error)
            log.error("series %s (%s): %s", uuid, row.collection_id, reason, extra=concerning)
            tally = await self._queue.tally(uuid)
            await self._queue.finish_series(uuid, SeriesState.FAILED, tally, reason)
            self.summary.series_failed += 1
            return
        except (LocalStorageError, NetworkSetupError) as error:
            # our disk, or the way to the buckets: nothing else can succeed either
            self.stop(str(error))
            return

        if survey.removed_temp_files:
            log.info(
                "removed %d temp files left by an earlier run in %s",
                survey.removed_temp_files,
                directory,
                extra=concerning,
            )

        tasks: set[asyncio.Task[None]] = set()
        after = ""
        try:
            while self._stop_reason is None:
                page = await self._queue.objects_to_fetch(uuid, after, PAGE)
                if not page:
                    break
                after = page[-1].key
                for obj in page:
                    if self._stop_reason is not None:
                        break
                    await self._objects.acquire()
                    on_disk = (
                        obj.path.name in survey.files if obj.path.parent == directory else None
                    )
                    task = asyncio.create_task(self._object(work, obj, on_disk))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
        await self._recorder.flush()

        tally = await self._queue.tally(uuid)
        unfinished = {state: n for state, n in tally.by_state.items() if state != "done"}
        outcome = series_verdict(
            expectation, tally.files_done, tally.bytes_done, tally.listed, unfinished, missing
        )
        if outcome.state is SeriesState.INCOMPLETE and self._stop_reason is not None:
            # interrupted, not judged: leave it queued for the next run
            await self._queue.finish_series(uuid, SeriesState.QUEUED, tally, self._stop_reason)
            return
        await self._queue.finish_series(uuid, outcome.state, tally, outcome.reason)
        if outcome.state is SeriesState.COMPLETE:
            self.summary.series_complete += 1
        else:
            self.summary.series_incomplete += 1
            log.warning(
                "series %s (%s) incomplete: %s",
                uuid,
                row.collection_id,
                outcome.reason,
                extra=concerning,
            )

    async def _list_with_failover(self, work: _SeriesWork) -> int:
        """List the series where it is fetched; when that listing fails for good and
        failover is on, list it on the other cloud and fetch everything from there."""
        try:
            return await self._list(work)
        except (PermanentError, RetryExhausted) as error:
            if work.fallback is None:
                raise
            uuid = work.row.crdc_series_uuid
            work.failed_over = f"listing on {work.cloud.source} failed: {error}"
            log.warning(
                "series %s: %s; listing and fetching it on %s",
                uuid,
                work.failed_over,
                work.fallback.source,
                extra=about(uuid, source=work.fallback.source),
            )
            work.cloud, work.fallback = work.fallback, None
            return await self._list(work)

    async def _list(self, work: _SeriesWork) -> int:
        """List the series prefix into the queue; returns how many selected instances the
        bucket does not have."""
        row, cloud, directory = work.row, work.cloud, work.directory
        uuid = row.crdc_series_uuid
        policy = self._options.retry
        while True:
            try:
                listed = await cloud.engine.list_series(cloud.bucket, uuid, row.instance_count)
                break
            except Exception as error:
                failure = classify_exception(error)
                self._observer.attempt_failed(failure)
                if failure in STOPS_RUN:
                    raise
                policy = policy.increment(failure, str(error))  # raises RetryExhausted
                self._observer.retrying(failure)
                await asyncio.sleep(policy.backoff(self._rng))

        objects: list[ObjectRow] = []
        seen: set[str] = set()
        for item in listed:
            try:
                instance = parse_object_key(item.key, uuid)
            except UnsafePathError as error:
                log.error(
                    "series %s: refusing object: %s", uuid, error, extra=about(uuid, item.key)
                )
                await self._queue.refuse_object(
                    ObjectRow(item.key, uuid, item.size, item.etag, directory), str(error)
                )
                continue
            if row.instances is not None and instance not in row.instances:
                continue
            seen.add(instance)
            path = directory / instance_file_name(instance)
            objects.append(ObjectRow(item.key, uuid, item.size, item.etag, path))
        for obj, other in await self._queue.record_listing(objects):
            reason = f"local path {obj.path} already belongs to {other}"
            log.error(
                "series %s: refusing object %s: %s",
                uuid,
                obj.key,
                reason,
                extra=about(uuid, obj.key),
            )
            await self._queue.refuse_object(obj, reason)
        return len(row.instances - seen) if row.instances is not None else 0

    async def _relisted(self, work: _SeriesWork, obj: ObjectRow, listing: int) -> ObjectRow | None:
        """After a 412 (the object is not the one listed): list the series again, at most
        RELISTS_PER_SERIES times per run, and return the object's row when the new listing
        describes it differently (None: nothing new to try). Objects that hit a 412 while
        a re-list ran read its result instead of listing again."""
        uuid = work.row.crdc_series_uuid
        async with work.relisting:
            if work.listing == listing:
                if work.relists >= RELISTS_PER_SERIES:
                    return None
                work.relists += 1
                log.info(
                    "series %s: %s is not the object listed (412); listing the series again",
                    uuid,
                    obj.key,
                    extra=about(uuid, obj.key, source=work.cloud.source),
                )
                try:
                    await self._list(work)
                except (PermanentError, RetryExhausted) as error:
                    log.warning(
                        "series %s: listing it again failed: %s",
                        uuid,
                        error,
                        extra=about(uuid, obj.key, source=work.cloud.source),
                    )
                    return None
                finally:
                    work.listing += 1
        fresh = await self._queue.object_row(obj.key)
        if fresh is None or (fresh.size, fresh.etag) == (obj.size, obj.etag):
            return None
        return fresh

    # -- one object -------------------------------------------------------------------

    async def _object(self, work: _SeriesWork, obj: ObjectRow, on_disk: bool | None) -> None:
        try:
            await self._fetch_verified(work, obj, on_disk)
        finally:
            self._objects.release()

    async def _fetch_verified(
        self, work: _SeriesWork, obj: ObjectRow, on_disk: bool | None
    ) -> None:
        """Fetch one object from the series' cloud, then, when its budget there is spent and
        failover is on, from the other cloud, verified against the same listing.

        ``on_disk`` says whether the series' directory survey saw a file at the final path
        (None: not surveyed, look)."""
        uuid = work.row.crdc_series_uuid
        first = await self._from_cloud(work, work.cloud, obj, obj.attempts, on_disk is not False)
        if first is None:
            return
        state_of = {FailureClass.INTEGRITY: ObjectState.QUARANTINED}
        last, reason = first, f"{work.cloud.source}: {first.reason}"
        fallback = work.fallback
        if fallback is not None and self._stop_reason is None:
            log.warning(
                "%s: %s on %s (%s); fetching it from %s",
                first.obj.key,
                state_of.get(first.failure, ObjectState.FAILED).value,
                work.cloud.source,
                first.reason,
                fallback.source,
                extra=about(uuid, first.obj.key, source=fallback.source),
            )
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

    def _expected(self, work: _SeriesWork, obj: ObjectRow) -> Expected:
        return expectation_from_listing(obj.etag, obj.size, from_s3=work.cloud.source == "aws")

    async def _from_cloud(
        self,
        work: _SeriesWork,
        cloud: _Cloud,
        obj: ObjectRow,
        attempts: int,
        reverify: bool,
        failed_before: _Exhausted | None = None,
    ) -> _Exhausted | None:
        """Try one cloud until the object is placed (None), the run stops (None, the object
        kept pending) or the retry budget is spent (what was tried, nothing recorded).
        ``failed_before``: this is the failover, after the series' own cloud gave up."""
        uuid = work.row.crdc_series_uuid
        expected = self._expected(work, obj)
        part_size = failed_before.part_size if failed_before is not None else None
        policy = self._options.retry
        while True:
            listing = work.listing
            try:
                if expected.multipart_parts is not None and part_size is None:
                    part_size = await cloud.engine.part_size(cloud.bucket, obj.key)
                if reverify:
                    reverify = False
                    if await self._reverify(work, obj, expected, part_size, attempts):
                        return None
                attempts += 1
                await self._fetch_once(
                    work, cloud, obj, expected, part_size, attempts, failed_before
                )
                return None
            except asyncio.CancelledError:
                raise
            except Exception as error:
                failure = classify_exception(error)
                self._observer.attempt_failed(failure)
                if failure in STOPS_RUN:
                    # our disk or the way out, not the object: keep it pending for a run
                    # that can succeed
                    self.stop(str(error))
                    self._recorder.add(
                        ObjectResult(obj.key, ObjectState.PENDING, attempts, str(error))
                    )
                    return None
                if isinstance(error, ObjectChangedError):
                    fresh = await self._relisted(work, obj, listing)
                    if fresh is not None:
                        # the listing was stale: try the object as listed now, no backoff
                        obj, expected, part_size = fresh, self._expected(work, fresh), None
                        continue
                try:
                    policy = policy.increment(failure, str(error))
                except RetryExhausted as exhausted:
                    return _Exhausted(obj, attempts, failure, exhausted.policy.summary(), part_size)
                log.info(
                    "%s: %s; retrying",
                    obj.key,
                    error,
                    extra=about(uuid, obj.key, source=cloud.source),
                )
                self._observer.retrying(failure)
                await asyncio.sleep(policy.backoff(self._rng))

    async def _reverify(
        self,
        work: _SeriesWork,
        obj: ObjectRow,
        expected: Expected,
        part_size: int | None,
        attempts: int,
    ) -> bool:
        """A file already at the final path without a "done" row (a run killed after the
        rename, or a tree adopted from elsewhere) is hashed instead of fetched again."""
        if not await asyncio.to_thread(_existing_regular_file, obj.path):
            return False
        hasher = hashers_needed(expected, None, part_size)
        digests = await asyncio.to_thread(hash_file, obj.path, hasher)
        result = verdict(expected, digests, None)
        if not result.ok or result.kind == "size-only":
            log.warning(
                "%s: existing file does not verify (%s); fetching",
                obj.path,
                result.reason,
                extra=about(work.row.crdc_series_uuid, obj.key),
            )
            return False
        self._recorder.add(
            ObjectResult(obj.key, ObjectState.DONE, attempts, None, result.kind, result.checksum)
        )
        self.summary.files_reverified += 1
        self._progress.file_finished(obj.size, fetched=False, ok=True)
        return True

    async def _fetch_once(
        self,
        work: _SeriesWork,
        cloud: _Cloud,
        obj: ObjectRow,
        expected: Expected,
        part_size: int | None,
        attempts: int,
        failed_before: _Exhausted | None,
    ) -> None:
        job = FetchJob(cloud.bucket, obj.key, expected, obj.path, part_size)
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
            ObjectResult(obj.key, ObjectState.DONE, attempts, note, result.kind, result.checksum),
            obj.path.parent,
        )
        self.summary.files_fetched += 1
        self.summary.bytes_fetched += obj.size
        self._progress.file_finished(obj.size, fetched=True, ok=True)
