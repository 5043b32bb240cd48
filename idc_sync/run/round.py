"""A round of the workers, shared by ``sync`` and ``serve``: open the transfer engines the
settings ask for, run the workers until the queue has nothing left (or they are stopped),
then finish the round: retire what leaves the mirror and rewrite the provenance manifest."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager, nullcontext
from dataclasses import dataclass, field

from idc_sync.config import Settings
from idc_sync.core.errors import LocalStorageError
from idc_sync.core.retry import RetryPolicy
from idc_sync.core.routing import other_source
from idc_sync.disk.provenance import write_provenance
from idc_sync.disk.retire import RetireSummary, retire_leaving
from idc_sync.engines.base import Engine
from idc_sync.engines.native import NativeEngine
from idc_sync.engines.s5cmd import S5cmdEngine
from idc_sync.net.bandwidth import BandwidthThrottle
from idc_sync.run.attempts import FailureObserver
from idc_sync.run.mirror import Mirror, MirrorOptions
from idc_sync.run.objects import ProgressSink, RunSummary
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
        pin_etag=False,
        # a series listed on the other cloud (its own listing failed) is verified by what
        # that cloud publishes; objects failed over are held to the source's listing only
        ask_checksums=other == "aws",
        throttle=BandwidthThrottle.following(settings.bandwidth_schedule),
        network=settings.network,
    )


# How a caller wraps each engine (the daemon meters every request).
Wrap = Callable[[Engine], Engine]


async def run_round(
    state: State,
    settings: Settings,
    progress: ProgressSink,
    *,
    observer: FailureObserver | None = None,
    wrap: Wrap = lambda engine: engine,
    started: Callable[[Mirror], None] = lambda mirror: None,
    finish: Callable[[], bool] = lambda: True,
) -> RoundOutcome:
    """Run the workers over the queue, then finish the round when it ran to its end and
    ``finish()`` still says so (not when it was stopped, by a full disk or a drain).
    ``started`` is handed the workers (the daemon drains them on SIGTERM)."""
    async with open_engine(settings) as engine, open_failover_engine(settings) as other:
        mirror = Mirror(
            state.queue, wrap(engine), mirror_options(settings), progress, observer=observer,
            failover=None if other is None else wrap(other),
        )  # fmt: skip
        started(mirror)
        summary = await mirror.run()
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
