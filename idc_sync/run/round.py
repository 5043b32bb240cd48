"""A round of the workers, shared by ``sync`` and ``serve``: open the transfer engines the
settings ask for, run the workers until the queue has nothing left (or they are stopped),
then finish the round: retire what leaves the mirror and rewrite the provenance manifest.
With ``workers`` above one, worker processes (run/pool.py) lease from the same queue
beside this process's own loop, and their counts are added up here."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Protocol

from idc_sync.config import Settings
from idc_sync.core.errors import LocalStorageError
from idc_sync.core.retry import RetryPolicy
from idc_sync.core.routing import other_source
from idc_sync.disk.provenance import write_provenance
from idc_sync.disk.retire import RetireSummary, retire_leaving
from idc_sync.engines.base import Engine
from idc_sync.engines.metered import MeteredEngine, RequestMeter
from idc_sync.engines.native import NativeEngine
from idc_sync.engines.s5cmd import S5cmdEngine
from idc_sync.net.bandwidth import BandwidthThrottle
from idc_sync.run.attempts import FailureObserver, NoObserver
from idc_sync.run.channel import add_up
from idc_sync.run.mirror import Mirror, MirrorOptions
from idc_sync.run.objects import ProgressSink, RunSummary
from idc_sync.run.pool import Prestarted, WorkerPool, event_loops, share
from idc_sync.state.store import State


@dataclass(slots=True)
class RoundOutcome:
    summary: RunSummary
    retired: RetireSummary = field(default_factory=RetireSummary)
    provenance_rows: int = 0


def mirror_options(settings: Settings) -> MirrorOptions:
    return MirrorOptions(
        source=settings.source,
        concurrency=settings.concurrency,
        series_concurrency=settings.series_concurrency,
        lease_seconds=settings.lease_seconds,
        checksum=settings.checksum,
        # the settings count attempts; the policy counts retries after the first attempt
        retry=RetryPolicy(
            max_retryable=settings.max_attempts - 1,
            max_integrity=settings.max_integrity_attempts - 1,
        ),
    )


@asynccontextmanager
async def open_engine(settings: Settings) -> AsyncIterator[Engine]:
    """The transfer engine the settings ask for, as ``async with open_engine(s) as engine``.
    The s5cmd engine lists through a native one."""
    native = NativeEngine(
        settings.endpoint,
        concurrency=settings.concurrency,
        body_budget=settings.body_memory_bytes,
        pin_etag=settings.source == "aws",
        ask_checksums=settings.source == "aws",
        throttle=BandwidthThrottle.following(settings.bandwidth_schedule),
        network=settings.network,
    )
    async with native:
        if settings.engine != "s5cmd":
            yield native
            return
        async with S5cmdEngine(
            settings.endpoint,
            lister=native,
            concurrency=settings.concurrency,
            network=settings.network,
        ) as engine:
            yield engine


def open_failover_engine(settings: Settings) -> AbstractAsyncContextManager[Engine | None]:
    """With ``failover = true``, a native engine for the other cloud; else None. It does
    not pin If-Match: its bytes are verified against the checksum the source listed."""
    if not settings.failover:
        return nullcontext(None)
    other = other_source(settings.source)
    return NativeEngine(
        settings.endpoints.aws if other == "aws" else settings.endpoints.gcs,
        concurrency=settings.concurrency,
        body_budget=settings.body_memory_bytes,
        pin_etag=False,
        # a series listed on the other cloud (its own listing failed) is verified by what
        # that cloud publishes; objects failed over are held to the source's listing only
        ask_checksums=other == "aws",
        throttle=BandwidthThrottle.following(settings.bandwidth_schedule),
        network=settings.network,
    )


class Drainable(Protocol):
    """What a caller may do to a running round (the daemon drains it on SIGTERM)."""

    def drain(self, reason: str) -> None: ...

    def stop(self, reason: str) -> None: ...


@dataclass(frozen=True, slots=True)
class _Loops:
    """The round's event loops: this process's workers and the worker processes."""

    mirror: Mirror
    pool: WorkerPool | None

    def drain(self, reason: str) -> None:
        self.mirror.drain(reason)
        if self.pool is not None:
            self.pool.drain(reason)

    def stop(self, reason: str) -> None:
        self.mirror.stop(reason)


def start_pool(settings: Settings, to_fetch: int) -> WorkerPool | None:
    """The worker processes a round of these settings with ``to_fetch`` objects left runs
    beside this process (None for one event loop), not yet started; see run/pool.py."""
    loops = event_loops(settings, to_fetch)
    if loops <= 1:
        return None
    return WorkerPool(share(settings, loops), loops - 1)


async def run_round(
    state: State,
    settings: Settings,
    progress: ProgressSink,
    *,
    observer: FailureObserver | None = None,
    meter: RequestMeter | None = None,
    started: Callable[[Drainable], None] = lambda workers: None,
    finish: Callable[[], bool] = lambda: True,
    spares: Prestarted | None = None,
) -> RoundOutcome:
    """Run the workers over the queue, then finish the round when it ran to its end and
    ``finish()`` still says so (not when it was stopped, by a full disk or a drain).
    ``started`` is handed the workers (the daemon drains them on SIGTERM); ``meter`` is
    told of every request. Worker processes are started as the settings and the objects
    left to fetch call for (run/pool.py), from ``spares`` first; the spares not taken are
    stopped."""
    totals = await state.reports.collection_totals()
    to_fetch = sum(max(0, c.files_expected - c.files_done) for c in totals)
    if (pool := start_pool(settings, to_fetch)) is not None:
        await pool.start(spares)
    if spares is not None:
        await spares.close()
    loops = 1 if pool is None else pool.size + 1
    mine = settings if pool is None else share(settings, loops)

    def wrap(engine: Engine) -> Engine:
        return engine if meter is None else MeteredEngine(engine, meter)

    try:
        async with open_engine(mine) as engine, open_failover_engine(mine) as other:
            mirror = Mirror(
                state.queue, wrap(engine), mirror_options(mine), progress, observer=observer,
                failover=None if other is None else wrap(other),
                idle=None if pool is None else pool.idle,
                stopped=None if pool is None else pool.stop,
            )  # fmt: skip
            if pool is not None:
                pool.go(state.queue, progress, observer or NoObserver(), meter, mirror.stop)
            started(_Loops(mirror, pool))
            summary = await mirror.run()
    finally:
        if pool is not None:
            await pool.close()
    if pool is not None:
        add_up(summary, pool.summary())
    outcome = RoundOutcome(summary)
    if summary.stopped is None and finish():
        try:
            outcome.retired = await retire_leaving(
                state, settings.retired, settings.retired_path, prune=settings.prune
            )
            outcome.provenance_rows = await write_provenance(
                state.reports, settings.provenance_path
            )
        except LocalStorageError as error:
            # a retirement cut short is finished by the next round (its journal says how)
            summary.stopped = str(error)
    return outcome
