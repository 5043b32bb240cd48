"""Planning, shared by ``sync``, ``serve`` and ``plan``: resolve the run's selection, together
with the mirror's own unless the run prunes, against the newest IDC release at hand (the
installed idc-index-data as it is on disk now, or a release followed into the state
directory: catalog/sources.py), read afresh by every plan; refuse typos
before anything is touched; then either write the plan into the state in one transaction
(``plan_into``) or only count what it would do (``dry_run``). Both decide through the same
pure functions (core/planner.py), so ``plan`` says what ``sync`` will do.

DuckDB runs on a worker thread: resolving all of IDC takes seconds, and the daemon's event
loop (its watchdog, its HTTP API) must keep answering meanwhile."""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from idc_sync.catalog import sources
from idc_sync.catalog.index import Catalog
from idc_sync.catalog.resolution import Resolution
from idc_sync.config import Settings
from idc_sync.core.errors import RetireRefused, SelectionError
from idc_sync.core.layout import template_columns
from idc_sync.core.model import SeriesRecord, UnknownSelection
from idc_sync.core.planner import (
    UNSELECTED,
    Layout,
    Leaving,
    PlanTally,
    leaving_reason,
    place_batch,
    retire_guard,
    retiring,
)
from idc_sync.core.releases import PlanDifference
from idc_sync.core.selection import Selection, merged, stored_selection
from idc_sync.core.shard import select
from idc_sync.run.select import NOTHING_SELECTED, check_unknown
from idc_sync.state.store import State


class PlanCancelled(Exception):
    """The daemon was asked to stop while planning; the plan was rolled back."""


@dataclass(slots=True)
class PlanOutcome:
    """What a plan selected and what leaves the mirror because of it."""

    release: int
    tally: PlanTally
    unknown: list[UnknownSelection]  # reported, not fatal (removed from IDC, SQL answers)
    catalog: str = ""  # which catalog the plan read (catalog/sources.py's description)
    leaving: dict[str, Leaving] = field(default_factory=dict)  # every unselected series
    retiring: dict[str, Leaving] = field(default_factory=dict)  # those this run retires
    refusal: str | None = None  # why a sync would stop (dry runs only)
    new_series: int = 0
    finished_at: float = 0.0
    seconds: float = 0.0

    @property
    def held_unselected(self) -> Leaving:
        """Series that left the selection and stay until a run prunes."""
        held = self.leaving.get(UNSELECTED)
        return held if held is not None and UNSELECTED not in self.retiring else Leaving(0, 0, 0)


@dataclass(slots=True)
class PlanReport:
    """A dry run: the plan, and what the mirror already holds of it."""

    outcome: PlanOutcome
    files_present: int = 0
    bytes_present: int = 0
    free_bytes: int | None = None
    difference: PlanDifference = field(default_factory=PlanDifference)

    @property
    def bytes_to_fetch(self) -> int:
        return max(self.outcome.tally.bytes - self.bytes_present, 0)


@dataclass(slots=True)
class Resolved:
    catalog: Catalog
    resolution: Resolution
    layout: Layout
    batches: Iterator[list[SeriesRecord]]
    closed: bool = False

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.catalog.close()


def _resolve(settings: Settings, selection: Selection) -> Resolved:
    """Open the newest release and resolve ``selection`` (blocking: run on a thread)."""
    catalog = Catalog(source=sources.newest(settings.state_path))
    try:
        columns = template_columns(settings.dir_template, catalog.index_columns)
        resolution = catalog.resolve(selection, layout_columns=columns)
        layout = Layout(
            template=settings.dir_template,
            known_columns=frozenset(catalog.index_columns),
            default_root=settings.mirror_root,
            policy=settings.license_policy,
        )
        return Resolved(catalog, resolution, layout, iter(resolution.batches()))
    except BaseException:
        catalog.close()
        raise


def compose(given: Selection, stored: list[tuple[str, str, str]], *, prune: bool) -> Selection:
    """What a plan resolves: this run's selection, plus the mirror's own (``stored``: the
    state's selection rows) unless the run prunes."""
    if prune:
        if given.is_empty():
            raise SelectionError(
                "--prune with no selection would retire the whole mirror: give the selection "
                "the mirror should hold"
            )
        return given
    selection = merged(given, stored_selection(stored))
    if selection.is_empty():
        raise SelectionError(NOTHING_SELECTED)
    return selection


async def resolve_plan(
    settings: Settings, given: Selection, stored: list[tuple[str, str, str]]
) -> Resolved:
    """Resolve the plan's selection and refuse the run's typos (SelectionError), before any
    state is touched: the caller may hold no lock yet."""
    selection = compose(given, stored, prune=settings.prune)
    resolved = await asyncio.to_thread(_resolve, settings, selection)
    try:
        check_unknown(resolved.resolution.unknown, strict=settings.strict)
    except BaseException:
        await asyncio.to_thread(resolved.close)
        raise
    return resolved


async def _reasons(catalog: Catalog, page: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """(crdc_series_uuid, why it leaves) for unselected (crdc_series_uuid, SeriesInstanceUID)."""
    uuids = await asyncio.to_thread(catalog.present, "crdc_series_uuid", [u for u, _ in page])
    uids = await asyncio.to_thread(catalog.present, "SeriesInstanceUID", [i for _, i in page])
    return [(uuid, leaving_reason(uuid in uuids, uid in uids)) for uuid, uid in page]


def _stored_entries(selection: Selection, resolution: Resolution) -> list[tuple[str, str, str]]:
    """This run's entries to keep as the mirror's own: what resolved (identifiers as what
    they were recognised as), not what IDC removed."""
    removed = {u.value for u in resolution.unknown if u.given}
    entries = [
        (part, value, origin)
        for part, value, origin in selection.entries()
        if value not in removed and value.split("/", 1)[0] not in removed
    ]
    return entries + list(resolution.recognised)


async def plan_into(
    state: State,
    settings: Settings,
    given: Selection,
    *,
    resolved: Resolved | None = None,
    stop: Callable[[], bool] = lambda: False,
) -> PlanOutcome:
    """Resolve and write the plan in one transaction; raises SelectionError (typos),
    RetireRefused (a mass retirement) or PlanCancelled, each leaving the state as it was.
    ``resolved``: what ``resolve_plan`` found for the state's own selection as it is now."""
    started = time.monotonic()
    prune = settings.prune
    if resolved is None:
        resolved = await resolve_plan(settings, given, await state.plans.stored_selection())
    try:
        catalog = resolved.catalog
        outcome = PlanOutcome(catalog.release, PlanTally(), resolved.resolution.unknown,
                              catalog.source.describe())  # fmt: skip
        async with state.plans.writing() as writer:
            while (batch := await asyncio.to_thread(next, resolved.batches, None)) is not None:
                if stop():
                    raise PlanCancelled
                placements = place_batch(select(batch, settings.series_shard), resolved.layout,
                                         outcome.tally)  # fmt: skip
                outcome.new_series += await writer.enqueue(placements, catalog.version)
            await writer.requeue_reselected()
            after = ""
            while page := await writer.unselected(after):
                after = page[-1][0]
                await writer.mark_leaving(await _reasons(resolved.catalog, page))
            outcome.leaving = await writer.leaving()
            outcome.retiring = retiring(outcome.leaving, prune=prune)
            refusal = retire_guard(
                outcome.leaving, await writer.verified_files(), prune=prune,
                policy=settings.retired, max_fraction=settings.max_retire_fraction,
            )  # fmt: skip
            if refusal is not None and not settings.allow_retire:
                raise RetireRefused(refusal)
            await writer.remember(_stored_entries(given, resolved.resolution), replace=prune)
        await state.queue.requeue_unfinished()
    finally:
        await asyncio.to_thread(resolved.close)
    outcome.finished_at = time.time()
    outcome.seconds = time.monotonic() - started
    return outcome


def free_bytes(path: Path) -> int | None:
    for candidate in (path, *path.parents):
        if candidate.exists():
            return shutil.disk_usage(candidate).free
    return None


async def dry_run(state: State | None, settings: Settings, given: Selection) -> PlanReport:
    """What ``sync`` with these settings would do, without writing anything."""
    stored = await state.plans.stored_selection() if state is not None else []
    resolved = await resolve_plan(settings, given, stored)
    try:
        unknown = resolved.resolution.unknown
        catalog = resolved.catalog
        report = PlanReport(
            PlanOutcome(catalog.release, PlanTally(), unknown, catalog.source.describe())
        )
        planned: set[str] = set()
        while (batch := await asyncio.to_thread(next, resolved.batches, None)) is not None:
            placements = place_batch(select(batch, settings.series_shard), resolved.layout,
                                     report.outcome.tally)  # fmt: skip
            if state is not None:
                await _count_present(state, report, [p.record for p in placements])
            planned.update(p.record.crdc_series_uuid for p in placements)
        if state is not None:
            await _count_leaving(state, report, resolved.catalog, planned, settings)
    finally:
        await asyncio.to_thread(resolved.close)
    report.free_bytes = free_bytes(settings.mirror_root)
    return report


async def _count_present(state: State, report: PlanReport, records: list[SeriesRecord]) -> None:
    uuids = [r.crdc_series_uuid for r in records]
    files, size = await state.plans.done_of(uuids)
    report.files_present += files
    report.bytes_present += size
    known = await state.plans.known_series(uuids)
    fresh = [r.SeriesInstanceUID for r in records if r.crdc_series_uuid not in known
             or known[r.crdc_series_uuid].state in ("retired", "retiring")]  # fmt: skip
    held = await state.plans.live_uids(fresh) if fresh else set()
    for record in records:
        report.difference.selected(
            record, known.get(record.crdc_series_uuid), record.SeriesInstanceUID in held
        )


async def _count_leaving(
    state: State, report: PlanReport, catalog: Catalog, planned: set[str], settings: Settings
) -> None:
    """The held series the plan does not select: why each leaves, and the guard's verdict."""
    outcome = report.outcome
    leaving: dict[str, list[int]] = {}
    verified = 0
    after = ""
    while page := await state.plans.held_series(after):
        after = page[-1].crdc_series_uuid
        verified += sum(h.files_done for h in page)
        gone = [h for h in page if h.crdc_series_uuid not in planned and h.state != "retiring"]
        reasons = dict(await _reasons(catalog, [(h.crdc_series_uuid, h.SeriesInstanceUID)
                                                for h in gone]))  # fmt: skip
        for held in gone:
            reason = reasons[held.crdc_series_uuid]
            counts = leaving.setdefault(reason, [0, 0, 0])
            counts[0] += 1
            counts[1] += held.files_done
            counts[2] += held.bytes_done
            if reason != UNSELECTED or settings.prune:
                report.difference.retired(held.collection_id, held.bytes_done)
    outcome.leaving = {reason: Leaving(*counts) for reason, counts in leaving.items()}
    outcome.retiring = retiring(outcome.leaving, prune=settings.prune)
    refusal = retire_guard(
        outcome.leaving, verified, prune=settings.prune, policy=settings.retired,
        max_fraction=settings.max_retire_fraction,
    )  # fmt: skip
    outcome.refusal = None if settings.allow_retire else refusal
