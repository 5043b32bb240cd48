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

from idc_sync.errors import LocalStorageError, PermanentError, UnsafePathError
from idc_sync.layout import instance_file_name, parse_object_key, resolve_inside
from idc_sync.lifecycle import ObjectState, SeriesExpectation, SeriesState, series_verdict
from idc_sync.model import Source
from idc_sync.queue import ObjectResult, ObjectRow, Queue, SeriesRow
from idc_sync.retry import FailureClass, RetryExhausted, RetryPolicy, classify_exception
from idc_sync.routing import bucket_for
from idc_sync.storage import fsync_directory, survey_directory
from idc_sync.transfer import Engine, FetchJob
from idc_sync.verify import Expected, expectation_from_listing, hash_file, hashers_needed, verdict

log = logging.getLogger("idc_sync.mirror")

RECORD_BATCH = 256
RECORD_INTERVAL = 0.25
PAGE = 1000


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
    ) -> None:
        self._queue = queue
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

    async def _series(self, row: SeriesRow) -> None:
        expectation = SeriesExpectation(row.instance_count, row.series_size_bytes, row.instances)
        try:
            bucket = bucket_for(self._options.source, row.aws_bucket)
            directory = await asyncio.to_thread(
                resolve_inside, row.root, PurePosixPath(row.rel_dir)
            )
            missing = await self._list(row, bucket, directory)
            # One look at the directory per series: temp files a killed run left behind go,
            # and the files already there are the only ones worth re-verifying.
            survey = await asyncio.to_thread(survey_directory, directory)
        except (PermanentError, UnsafePathError, RetryExhausted) as error:
            reason = str(error)
            log.error("series %s (%s): %s", row.crdc_series_uuid, row.collection_id, reason)
            tally = await self._queue.tally(row.crdc_series_uuid)
            await self._queue.finish_series(row.crdc_series_uuid, SeriesState.FAILED, tally, reason)
            self.summary.series_failed += 1
            return
        except LocalStorageError as error:
            self.stop(str(error))
            return

        if survey.removed_temp_files:
            log.info(
                "removed %d temp files left by an earlier run in %s",
                survey.removed_temp_files,
                directory,
            )

        tasks: set[asyncio.Task[None]] = set()
        after = ""
        try:
            while self._stop_reason is None:
                page = await self._queue.objects_to_fetch(row.crdc_series_uuid, after, PAGE)
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
                    task = asyncio.create_task(self._object(bucket, obj, on_disk))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
        await self._recorder.flush()

        tally = await self._queue.tally(row.crdc_series_uuid)
        unfinished = {state: n for state, n in tally.by_state.items() if state != "done"}
        outcome = series_verdict(
            expectation, tally.files_done, tally.bytes_done, tally.listed, unfinished, missing
        )
        if outcome.state is SeriesState.INCOMPLETE and self._stop_reason is not None:
            # interrupted, not judged: leave it queued for the next run
            await self._queue.finish_series(
                row.crdc_series_uuid, SeriesState.QUEUED, tally, self._stop_reason
            )
            return
        await self._queue.finish_series(row.crdc_series_uuid, outcome.state, tally, outcome.reason)
        if outcome.state is SeriesState.COMPLETE:
            self.summary.series_complete += 1
        else:
            self.summary.series_incomplete += 1
            log.warning(
                "series %s (%s) incomplete: %s",
                row.crdc_series_uuid,
                row.collection_id,
                outcome.reason,
            )

    async def _list(self, row: SeriesRow, bucket: str, directory: Path) -> int:
        """List the series prefix into the queue; returns how many selected instances the
        bucket does not have."""
        policy = self._options.retry
        while True:
            try:
                listed = await self._engine.list_series(bucket, row.crdc_series_uuid)
                break
            except Exception as error:
                failure = classify_exception(error)
                self._observer.attempt_failed(failure)
                if failure is FailureClass.LOCAL:
                    raise
                policy = policy.increment(failure, str(error))  # raises RetryExhausted
                self._observer.retrying(failure)
                await asyncio.sleep(policy.backoff(self._rng))

        objects: list[ObjectRow] = []
        seen: set[str] = set()
        for item in listed:
            try:
                instance = parse_object_key(item.key, row.crdc_series_uuid)
            except UnsafePathError as error:
                log.error("series %s: refusing object: %s", row.crdc_series_uuid, error)
                await self._queue.refuse_object(
                    ObjectRow(item.key, row.crdc_series_uuid, item.size, item.etag, directory),
                    str(error),
                )
                continue
            if row.instances is not None and instance not in row.instances:
                continue
            seen.add(instance)
            path = directory / instance_file_name(instance)
            objects.append(ObjectRow(item.key, row.crdc_series_uuid, item.size, item.etag, path))
        for obj, other in await self._queue.record_listing(objects):
            reason = f"local path {obj.path} already belongs to {other}"
            log.error("series %s: refusing object %s: %s", row.crdc_series_uuid, obj.key, reason)
            await self._queue.refuse_object(obj, reason)
        return len(row.instances - seen) if row.instances is not None else 0

    # -- one object -------------------------------------------------------------------

    async def _object(self, bucket: str, obj: ObjectRow, on_disk: bool | None) -> None:
        try:
            await self._fetch_verified(bucket, obj, on_disk)
        finally:
            self._objects.release()

    async def _fetch_verified(self, bucket: str, obj: ObjectRow, on_disk: bool | None) -> None:
        """``on_disk`` says whether the series' directory survey saw a file at the final
        path (None: not surveyed, look)."""
        expected = expectation_from_listing(obj.etag, obj.size)
        policy = self._options.retry
        part_size: int | None = None
        attempts = obj.attempts
        reverify = on_disk is not False
        while True:
            try:
                if expected.multipart_parts is not None and part_size is None:
                    part_size = await self._engine.part_size(bucket, obj.key)
                if reverify:
                    reverify = False
                    if await self._reverify(obj, expected, part_size, attempts):
                        return
                attempts += 1
                await self._fetch_once(bucket, obj, expected, part_size, attempts)
                return
            except asyncio.CancelledError:
                raise
            except Exception as error:
                failure = classify_exception(error)
                self._observer.attempt_failed(failure)
                if failure is FailureClass.LOCAL:
                    # our disk, not the object: keep it pending for when space returns
                    self.stop(str(error))
                    self._recorder.add(
                        ObjectResult(obj.key, ObjectState.PENDING, attempts, str(error))
                    )
                    return
                try:
                    policy = policy.increment(failure, str(error))
                except RetryExhausted as exhausted:
                    state = (
                        ObjectState.QUARANTINED
                        if failure is FailureClass.INTEGRITY
                        else ObjectState.FAILED
                    )
                    reason = exhausted.policy.summary()
                    log.error("%s %s: %s", obj.key, state.value, reason)
                    self._recorder.add(ObjectResult(obj.key, state, attempts, reason))
                    self._progress.file_finished(obj.size, fetched=False, ok=False)
                    return
                log.info("%s: %s; retrying", obj.key, error)
                self._observer.retrying(failure)
                await asyncio.sleep(policy.backoff(self._rng))

    async def _reverify(
        self, obj: ObjectRow, expected: Expected, part_size: int | None, attempts: int
    ) -> bool:
        """A file already at the final path without a "done" row (a run killed after the
        rename, or a tree adopted from elsewhere) is hashed instead of fetched again."""
        if not await asyncio.to_thread(_existing_regular_file, obj.path):
            return False
        hasher = hashers_needed(expected, None, part_size)
        digests = await asyncio.to_thread(hash_file, obj.path, hasher)
        result = verdict(expected, digests, None)
        if not result.ok or result.kind == "size-only":
            log.warning("%s: existing file does not verify (%s); fetching", obj.path, result.reason)
            return False
        self._recorder.add(
            ObjectResult(obj.key, ObjectState.DONE, attempts, None, result.kind, result.checksum)
        )
        self.summary.files_reverified += 1
        self._progress.file_finished(obj.size, fetched=False, ok=True)
        return True

    async def _fetch_once(
        self,
        bucket: str,
        obj: ObjectRow,
        expected: Expected,
        part_size: int | None,
        attempts: int,
    ) -> None:
        job = FetchJob(bucket, obj.key, expected, obj.path, part_size)
        result = await self._engine.fetch(job, self._progress.bytes_received)
        if result.kind == "size-only":
            self.summary.files_size_only += 1
            log.warning("%s: no checksum available, verified by size only", obj.key)
        self._recorder.add(
            ObjectResult(obj.key, ObjectState.DONE, attempts, None, result.kind, result.checksum),
            obj.path.parent,
        )
        self.summary.files_fetched += 1
        self.summary.bytes_fetched += obj.size
        self._progress.file_finished(obj.size, fetched=True, ok=True)
