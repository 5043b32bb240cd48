"""The workers: lease series from the queue, list each one, place its objects with bounded
concurrency (run/objects.py), and judge the series against the index. Crash-safe by order of
steps: temp file -> hash -> fsync -> verify -> rename -> fsync directory -> record done."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import random
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import PurePosixPath

from idc_sync.core.errors import (
    LocalStorageError,
    NetworkSetupError,
    PermanentError,
    UnsafePathError,
)
from idc_sync.core.layout import instance_file_name, parse_object_key, resolve_inside
from idc_sync.core.lifecycle import ObjectState, SeriesExpectation, SeriesState, series_verdict
from idc_sync.core.logs import about
from idc_sync.core.model import ListedObject, ObjectRow, SeriesRow, Source
from idc_sync.core.retry import RetryExhausted, RetryPolicy
from idc_sync.core.routing import bucket_for, other_source
from idc_sync.core.verify import ChecksumMode
from idc_sync.disk.storage import survey_directory
from idc_sync.engines.base import Engine
from idc_sync.run.attempts import FailureObserver, LocalFailure, NoObserver, retrying
from idc_sync.run.objects import (
    Cloud,
    NoProgress,
    ObjectPlacer,
    ProgressSink,
    RunSummary,
    SeriesWork,
)
from idc_sync.run.recorder import Recorder
from idc_sync.state.queue import Queue

log = logging.getLogger(__name__)

PAGE = 1000
# A 412 to If-Match means the listing is stale: list the series again, this often per run.
RELISTS_PER_SERIES = 2


class _Unfinished:
    """The objects of one series still to place, read from the queue a page at a time as
    the runners of the series take them."""

    def __init__(self, queue: Queue, crdc_series_uuid: str) -> None:
        self._queue = queue
        self._uuid = crdc_series_uuid
        self._page: collections.deque[ObjectRow] = collections.deque()
        self._after = ""
        self._read_all = False
        self._reading = asyncio.Lock()

    async def next(self) -> ObjectRow | None:
        """The next object, or None when every one has been handed out."""
        if not self._page and not self._read_all:
            async with self._reading:
                if not self._page and not self._read_all:
                    page = await self._queue.objects_to_fetch(self._uuid, self._after, PAGE)
                    if page:
                        self._after = page[-1].key
                        self._page.extend(page)
                    else:
                        self._read_all = True
        return self._page.popleft() if self._page else None


@dataclass(frozen=True, slots=True)
class MirrorOptions:
    source: Source = "aws"
    concurrency: int = 64
    series_concurrency: int = 8
    lease_seconds: float = 600.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    checksum: ChecksumMode = "fastest"


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
        *,
        idle: Callable[[], Awaitable[bool]] | None = None,
        stopped: Callable[[str], None] | None = None,
    ) -> None:
        """``failover``: an engine for the other cloud (aws <-> gcs), used for the objects
        and listings of a series that its own cloud keeps failing. ``idle``: awaited when
        the queue has nothing to claim and nothing is in flight; True means look again (a
        worker process died and its series were queued again), False that the run is over.
        ``stopped``: told the reason when this run stops itself (a full disk)."""
        self._queue = queue
        self._failover = failover
        self._observer = observer or NoObserver()
        self._engine = engine
        self._options = options
        self._rng = rng or random.Random()
        self._idle = idle
        self._stopped = stopped
        self._owner = f"{socket.gethostname()}:{os.getpid()}:{self._rng.getrandbits(32):08x}"
        self._objects = asyncio.Semaphore(options.concurrency)
        self._recorder = Recorder(queue, self.stop)
        self._stop_reason: str | None = None
        self._in_flight: set[asyncio.Task[None]] = set()  # objects of every series
        self.summary = RunSummary()
        self._placer = ObjectPlacer(
            self._recorder, options.retry, progress or NoProgress(), self._observer,
            self._rng, self.summary, self.stop, lambda: self._stop_reason is not None,
            self._relisted, options.checksum,
        )  # fmt: skip

    def stop(self, reason: str) -> None:
        """Our disk or the way to the buckets failed: claim no more work, and cancel the
        objects in flight (their bytes could not be written, or would fail alike); they
        stay pending for the next run."""
        if self._stop_reason is None:
            self._stop_reason = reason
            log.error("stopping: %s", reason)
            current = asyncio.current_task()
            for task in self._in_flight:
                if task is not current:
                    task.cancel()
            if self._stopped is not None:
                self._stopped(reason)

    def drain(self, reason: str) -> None:
        """Like stop(), for a planned shutdown: claim no more series or objects; in-flight
        objects finish (the caller bounds how long) and unfinished series stay queued."""
        if self._stop_reason is None:
            self._stop_reason = reason
            log.info("draining: %s", reason)

    @property
    def owner(self) -> str:
        """The lease owner of this run's claims."""
        return self._owner

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
                    if self._idle is None or self._stop_reason is not None:
                        return
                    if not await self._idle():
                        return
                    continue
                done, active = await asyncio.wait(active, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    task.result()  # a bug in a series task must not pass silently
        finally:
            for task in active:
                task.cancel()
            await asyncio.gather(*active, return_exceptions=True)

    # -- one series -------------------------------------------------------------------

    def _clouds(self, row: SeriesRow) -> tuple[Cloud, Cloud | None]:
        """Where the series is listed and fetched, and the other cloud when failover is on."""
        source = self._options.source
        primary = Cloud(source, self._engine, bucket_for(source, row.aws_bucket))
        if self._failover is None:
            return primary, None
        other = other_source(source)
        return primary, Cloud(other, self._failover, bucket_for(other, row.aws_bucket))

    async def _series(self, row: SeriesRow) -> None:
        uuid = row.crdc_series_uuid
        concerning = about(uuid, collection=row.collection_id)
        expectation = SeriesExpectation(row.instance_count, row.series_size_bytes, row.instances)
        try:
            cloud, fallback = self._clouds(row)
            directory = await asyncio.to_thread(
                resolve_inside, row.root, PurePosixPath(row.rel_dir)
            )
            work = SeriesWork(row, directory, cloud, fallback)
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
        except (LocalStorageError, NetworkSetupError, LocalFailure) as error:
            # our disk, or the way to the buckets: nothing else can succeed either
            self.stop(str(error))
            with contextlib.suppress(LocalStorageError):  # the state's own disk may be full
                await self._queue.finish_series(
                    uuid, SeriesState.QUEUED, await self._queue.tally(uuid), str(error)
                )
            return

        if survey.removed_temp_files:
            log.info(
                "removed %d temp files left by an earlier run in %s",
                survey.removed_temp_files, directory, extra=concerning,
            )  # fmt: skip

        # Object slots are run-wide (``concurrency``). Each slot this series takes runs one
        # runner that places the series' objects one after another until none are left:
        # a task and a semaphore wait per object were ~7% of the event loop's py-spy
        # samples at 2,000 files/s (37k files of 59 KB at 50 ms); in wall time the gain
        # is within this machine's noise (README, Performance).
        todo = _Unfinished(self._queue, uuid)
        runners: list[asyncio.Task[None]] = []  # at most one per slot: all kept, for errors
        try:
            # a runner starts only for an object no runner has taken: it begins with that one
            while self._stop_reason is None and (first := await todo.next()) is not None:
                await self._objects.acquire()
                if self._stop_reason is not None:
                    self._objects.release()
                    break  # ``first`` stays pending, as every object not begun
                runner = asyncio.create_task(self._place_each(work, first, todo, survey.files))
                runners.append(runner)
                self._in_flight.add(runner)
                runner.add_done_callback(self._in_flight.discard)
            for ended in await asyncio.gather(*runners, return_exceptions=True):
                # a cancelled object stays pending; anything else is a bug to surface
                if isinstance(ended, BaseException) and not isinstance(
                    ended, asyncio.CancelledError
                ):
                    raise ended
        finally:
            for runner in runners:
                runner.cancel()
        await self._recorder.flush()

        tally = await self._queue.tally(uuid)
        unfinished = {str(s): n for s, n in tally.by_state.items() if s is not ObjectState.DONE}
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
                "series %s (%s) incomplete: %s", uuid, row.collection_id, outcome.reason,
                extra=concerning,
            )  # fmt: skip

    async def _place_each(
        self, work: SeriesWork, first: ObjectRow, todo: _Unfinished, surveyed: frozenset[str]
    ) -> None:
        """One object slot: place ``first``, then the series' other objects one at a time
        until none are left or the run stops (the object in hand is finished first when
        draining)."""
        directory = str(work.directory)
        obj: ObjectRow | None = first
        try:
            while obj is not None:
                head, _, name = str(obj.path).rpartition(os.sep)
                # the survey saw the series' own directory (None: not surveyed, look)
                on_disk = name in surveyed if head == directory else None
                await self._placer.place(work, obj, on_disk)
                obj = await todo.next() if self._stop_reason is None else None
        finally:
            self._objects.release()

    # -- listing ----------------------------------------------------------------------

    async def _list_with_failover(self, work: SeriesWork) -> int:
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
                "series %s: %s; listing and fetching it on %s", uuid, work.failed_over,
                work.fallback.source, extra=about(uuid, source=work.fallback.source),
            )  # fmt: skip
            work.cloud, work.fallback = work.fallback, None
            return await self._list(work)

    async def _list(self, work: SeriesWork) -> int:
        """List the series prefix into the queue; returns how many selected instances the
        bucket does not have."""
        row, cloud, directory = work.row, work.cloud, work.directory
        uuid = row.crdc_series_uuid

        async def listing() -> list[ListedObject]:
            return await cloud.engine.list_series(cloud.bucket, uuid, row.instance_count)

        listed = await retrying(
            listing, self._options.retry, observer=self._observer, rng=self._rng,
            what=f"LIST {cloud.bucket}/{uuid}/", log_extra=about(uuid, source=cloud.source),
        )  # fmt: skip
        objects: list[ObjectRow] = []
        seen: set[str] = set()
        work.checksums = {
            item.key: item.checksum_algorithm for item in listed if item.checksum_algorithm
        }
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
                "series %s: refusing object %s: %s", uuid, obj.key, reason,
                extra=about(uuid, obj.key),
            )  # fmt: skip
            await self._queue.refuse_object(obj, reason)
        return len(row.instances - seen) if row.instances is not None else 0

    async def _relisted(self, work: SeriesWork, obj: ObjectRow, listing: int) -> ObjectRow | None:
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
                    uuid, obj.key, extra=about(uuid, obj.key, source=work.cloud.source),
                )  # fmt: skip
                try:
                    await self._list(work)
                except (PermanentError, RetryExhausted) as error:
                    log.warning(
                        "series %s: listing it again failed: %s", uuid, error,
                        extra=about(uuid, obj.key, source=work.cloud.source),
                    )  # fmt: skip
                    return None
                finally:
                    work.listing += 1
        fresh = await self._queue.object_row(obj.key)
        if fresh is None or (fresh.size, fresh.etag) == (obj.size, obj.etag):
            return None
        return fresh
