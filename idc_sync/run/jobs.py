"""The three jobs behind the CLI: plan (dry run), sync (one shot) and status, wired from
settings to catalog, planner, queue and workers. Output formatting lives in cli.py."""

from __future__ import annotations

import logging
import shutil
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager, contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

from idc_sync.catalog.index import Catalog, Resolution, Selection
from idc_sync.config import Settings
from idc_sync.core.errors import SelectionError
from idc_sync.core.layout import template_columns
from idc_sync.core.manifest import read_manifest
from idc_sync.core.model import CollectionStatus, Problem, SeriesPlacement, UnknownSelection
from idc_sync.core.planner import Layout, PlanTally, place_batch
from idc_sync.core.releases import PlanDifference
from idc_sync.core.retry import RetryPolicy
from idc_sync.core.routing import other_source
from idc_sync.core.shard import select
from idc_sync.disk.provenance import write_provenance
from idc_sync.disk.retire import RetireSummary, retire_unselected
from idc_sync.engines.base import Engine
from idc_sync.engines.native import NativeEngine
from idc_sync.engines.s5cmd import S5cmdEngine
from idc_sync.net.bandwidth import BandwidthThrottle
from idc_sync.run.mirror import Mirror, MirrorOptions, NoProgress, ProgressSink, RunSummary
from idc_sync.state.lock import StateLock
from idc_sync.state.queue import Queue

log = logging.getLogger("idc_sync")

STATE_DB = "state.sqlite"


def selection_of(settings: Settings) -> Selection:
    """The selection the settings describe; reads (and checks) every manifest first."""
    entries = []
    for manifest in settings.manifests:
        entries.extend(read_manifest(manifest))
    selection = Selection(
        collections=tuple(settings.collections),
        series=tuple(settings.series),
        sql=settings.sql,
        manifest_entries=tuple(entries),
    )
    if selection.is_empty():
        raise SelectionError(
            "nothing is selected: give collections, series, sql or manifests "
            "(for example --collection qin_pet_phantom)"
        )
    return selection


@contextmanager
def resolved(settings: Settings) -> Iterator[tuple[Catalog, Resolution, Layout]]:
    """Resolve the selection against the installed IDC release; unknown entries are fatal
    under ``strict`` and reported otherwise."""
    selection = selection_of(settings)
    with Catalog() as catalog:
        columns = template_columns(settings.dir_template, catalog.index_columns)
        resolution = catalog.resolve(selection, layout_columns=columns)
        if resolution.unknown and settings.strict:
            raise SelectionError(
                "the installed IDC release does not know: " + describe_unknown(resolution.unknown)
            )
        layout = Layout(
            template=settings.dir_template,
            known_columns=frozenset(catalog.index_columns),
            default_root=settings.mirror_root,
            policy=settings.license_policy,
        )
        yield catalog, resolution, layout


def describe_unknown(unknown: list[UnknownSelection], limit: int = 20) -> str:
    shown = [f"{item.kind} {item.value!r} ({item.origin})" for item in unknown[:limit]]
    more = f" and {len(unknown) - limit} more" if len(unknown) > limit else ""
    return "; ".join(shown) + more


@dataclass(slots=True)
class PlanReport:
    release: int
    tally: PlanTally
    unknown: list[UnknownSelection]
    files_present: int = 0
    bytes_present: int = 0
    free_bytes: int | None = None
    difference: PlanDifference = field(default_factory=PlanDifference)

    @property
    def bytes_to_fetch(self) -> int:
        return max(self.tally.bytes - self.bytes_present, 0)


def _free_bytes(path: Path) -> int | None:
    for candidate in (path, *path.parents):
        if candidate.exists():
            return shutil.disk_usage(candidate).free
    return None


async def _difference(
    queue: Queue, placements: list[SeriesPlacement], difference: PlanDifference
) -> None:
    known = await queue.known_series([p.record.crdc_series_uuid for p in placements])
    new_uids = [
        p.record.SeriesInstanceUID
        for p in placements
        if p.record.crdc_series_uuid not in known
        or known[p.record.crdc_series_uuid].state == "retired"
    ]
    held = await queue.live_uids(new_uids) if new_uids else set()
    for p in placements:
        record = p.record
        difference.selected(
            record, known.get(record.crdc_series_uuid), record.SeriesInstanceUID in held
        )


async def _retiring(queue: Queue, selected: set[str], difference: PlanDifference) -> None:
    """Series the mirror holds that this selection would retire."""
    after = ""
    while page := await queue.live_series(after):
        after = page[-1].crdc_series_uuid
        gone = [row for row in page if row.crdc_series_uuid not in selected]
        for row in gone:
            _files, size = await queue.done_bytes_of([row.crdc_series_uuid])
            difference.retired(row, size)


async def plan(settings: Settings) -> PlanReport:
    """A dry run: what the selection holds, what is already verified, what it needs."""
    state_db = settings.state_path / STATE_DB
    queue = await Queue.open(state_db, create=False) if state_db.exists() else None
    shard = settings.series_shard
    try:
        with resolved(settings) as (catalog, resolution, layout):
            report = PlanReport(catalog.release, PlanTally(), list(resolution.unknown))
            selected: set[str] = set()
            for batch in resolution.batches():
                placements = place_batch(select(batch, shard), layout, report.tally)
                if queue is not None:
                    uuids = [p.record.crdc_series_uuid for p in placements]
                    files, size = await queue.done_bytes_of(uuids)
                    report.files_present += files
                    report.bytes_present += size
                    await _difference(queue, placements, report.difference)
                    selected.update(uuids)
            if queue is not None:
                await _retiring(queue, selected, report.difference)
    finally:
        if queue is not None:
            await queue.close()
    report.free_bytes = _free_bytes(settings.mirror_root)
    return report


@dataclass(slots=True)
class SyncReport:
    release: int
    tally: PlanTally
    unknown: list[UnknownSelection]
    summary: RunSummary
    status: list[CollectionStatus] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    retired: RetireSummary = field(default_factory=RetireSummary)
    provenance_rows: int = 0

    @property
    def ok(self) -> bool:
        return (
            self.summary.stopped is None
            and not self.problems
            and all(c.series_complete == c.series_total for c in self.status)
        )


# Builds the progress sink once totals are known: (files, bytes, files_done, bytes_done).
ProgressFactory = Callable[[int, int, int, int], ProgressSink]


def _no_progress(files: int, size: int, files_done: int, bytes_done: int) -> ProgressSink:
    return NoProgress()


def mirror_options(settings: Settings) -> MirrorOptions:
    return MirrorOptions(
        source=settings.source,
        concurrency=settings.concurrency,
        series_concurrency=settings.series_concurrency,
        lease_seconds=settings.lease_seconds,
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
        throttle=BandwidthThrottle.following(settings.bandwidth_schedule),
        network=settings.network,
    )


async def _fetch(
    settings: Settings,
    queue: Queue,
    tally: PlanTally,
    release: int,
    unknown: list[UnknownSelection],
    progress: ProgressFactory | None,
) -> SyncReport:
    for item in unknown:
        log.warning("not in IDC release %s: %s %r (%s)", release, item.kind, item.value,
                    item.origin)  # fmt: skip
    await queue.requeue_unfinished()
    before = await queue.status_by_collection()
    sink = (progress or _no_progress)(
        tally.files,
        tally.bytes,
        sum(c.files_done for c in before),
        sum(c.bytes_done for c in before),
    )
    async with open_engine(settings) as engine, open_failover_engine(settings) as failover:
        mirror = Mirror(queue, engine, mirror_options(settings), sink, failover=failover)
        summary = await mirror.run()
    report = SyncReport(release, tally, unknown, summary)
    report.retired = await retire_unselected(queue, settings.retired, settings.retired_path)
    report.provenance_rows = await write_provenance(queue, settings.provenance_path)
    report.status = await queue.status_by_collection()
    report.problems = await queue.problems()
    return report


async def sync(settings: Settings, progress: ProgressFactory | None = None) -> SyncReport:
    """Plan the selection into the queue, then fetch and verify until nothing is left."""
    # Resolve first: a bad selection is reported before the state or the mirror is touched.
    shard = settings.series_shard
    with resolved(settings) as (catalog, resolution, layout):
        release, unknown = catalog.release, list(resolution.unknown)
        with StateLock(settings.state_path):
            queue = await Queue.open(settings.state_path / STATE_DB)
            try:
                tally = PlanTally()
                await queue.begin_plan()
                for batch in resolution.batches():
                    await queue.enqueue(place_batch(select(batch, shard), layout, tally))
                catalog.close()  # the workers may run for days; free DuckDB now
                report = await _fetch(settings, queue, tally, release, unknown, progress)
            finally:
                await queue.close()
    return report


@dataclass(slots=True)
class StatusReport:
    state_db: Path
    collections: list[CollectionStatus]
    problems: list[Problem]


async def status(settings: Settings) -> StatusReport:
    state_db = settings.state_path / STATE_DB
    async with await Queue.open(state_db, create=False) as queue:
        return StatusReport(
            state_db, await queue.collection_totals(), await queue.problems(limit=100)
        )


async def citations(settings: Settings) -> list[tuple[str | None, str | None, int]]:
    """(license_short_name, source_DOI, series) of what the mirror holds."""
    state_db = settings.state_path / STATE_DB
    async with await Queue.open(state_db, create=False) as queue:
        return await queue.citations()
