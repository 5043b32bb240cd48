"""The one-shot jobs behind the CLI: ``sync`` (plan, a round, its end), ``plan`` (a dry run),
``status`` and ``citations``, wired from settings to the state and the shared steps of
run/plan.py and run/round.py (which ``serve`` runs too). Output is cli/'s business."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from idc_sync.config import Settings
from idc_sync.core.model import CollectionStatus, Problem
from idc_sync.core.selection import names_nothing_new
from idc_sync.run.binding import bind
from idc_sync.run.objects import NoProgress, ProgressSink
from idc_sync.run.plan import PlanOutcome, PlanReport, Resolved, dry_run, plan_into, resolve_plan
from idc_sync.run.pool import Prestarted
from idc_sync.run.round import RoundOutcome, run_round
from idc_sync.run.select import selection_of
from idc_sync.state.database import peek
from idc_sync.state.lock import StateLock
from idc_sync.state.reports import Held
from idc_sync.state.store import STATE_DB, State

log = logging.getLogger("idc_sync")

# Builds the progress sink once totals are known: (files, bytes, files_done, bytes_done).
ProgressFactory = Callable[[int, int, int, int], ProgressSink]


def _no_progress(files: int, size: int, files_done: int, bytes_done: int) -> ProgressSink:
    return NoProgress()


def license_roots(settings: Settings) -> frozenset[Path]:
    return frozenset(settings.licenses.destinations.values())


@dataclass(slots=True)
class SyncReport:
    plan: PlanOutcome
    round: RoundOutcome
    status: list[CollectionStatus] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    retired_total: Held = field(default_factory=Held)  # everything the mirror has retired
    retired_dir: Path | None = None

    @property
    def ok(self) -> bool:
        return (
            self.round.summary.stopped is None
            and not self.problems
            and all(c.series_complete == c.series_total for c in self.status)
        )


def _warn_unknown(outcome: PlanOutcome) -> None:
    for item in outcome.unknown:
        log.warning("IDC release v%s: %s", outcome.release, item.describe())


async def sync(
    settings: Settings,
    progress: ProgressFactory | None = None,
    arguments: Sequence[str] = (),
    *,
    adopt: bool = False,
) -> SyncReport:
    """Plan the selection into the state, then fetch and verify until nothing is left, then
    retire what leaves the mirror. A bad selection is refused before anything is touched.
    With ``follow_releases``, a newer IDC release is fetched first and planned."""
    given = selection_of(settings, arguments)
    state_db = settings.state_path / STATE_DB
    # Resolve before the lock is taken or anything is written: a typo changes nothing.
    peeked = peek(state_db)
    stored = peeked.selection
    # The round's worker processes import meanwhile, on a core this one leaves idle; but not
    # on a re-sync that names nothing new of a mirror the last run completed, which most
    # likely has nothing to fetch (a newer release does: its round starts workers itself).
    # ct-sized mirror, up to date, 2 cores: 1.06-1.33 s without the spare, 1.25-1.65 with.
    idle = peeked.complete and names_nothing_new(given, stored)
    spares = Prestarted() if idle else await Prestarted.start(settings)
    resolved: Resolved | None = None
    try:
        resolved = await resolve_plan(settings, given, stored)
        with StateLock(settings.state_path):
            async with await State.open(state_db) as state:
                await bind(
                    state, settings.mirror_root, other_roots=license_roots(settings), adopt=adopt
                )
                changed = await state.plans.stored_selection() != stored
                # under the lock: a newer release goes into the state directory, and then
                # the plan resolves against it
                if settings.follow_releases and await _follow_once(settings):
                    changed = True
                if changed:
                    # another run changed the mirror's selection meanwhile, or a newer
                    # release came: resolve it anew
                    assert resolved is not None
                    resolved.close()
                    resolved = None
                outcome = await plan_into(state, settings, given, resolved=resolved)
                resolved = None  # plan_into closed it
                _warn_unknown(outcome)
                before = await state.reports.collection_totals()
                sink = (progress or _no_progress)(
                    outcome.tally.files, outcome.tally.bytes,
                    sum(c.files_done for c in before), sum(c.bytes_done for c in before),
                )  # fmt: skip
                ran = await run_round(state, settings, sink, spares=spares)
                return SyncReport(
                    outcome,
                    ran,
                    await state.reports.collection_totals(),
                    await state.reports.problems(),
                    await state.reports.retired(),
                    settings.retired_path,
                )
    finally:
        if resolved is not None:  # refused before the plan began
            resolved.close()
        await spares.close()


async def plan(settings: Settings, arguments: Sequence[str] = ()) -> PlanReport:
    """A dry run: what the selection holds, what is already verified, what a sync would
    fetch and retire. Changes nothing, and holds no lock (a daemon may be running)."""
    given = selection_of(settings, arguments)
    state_db = settings.state_path / STATE_DB
    if not state_db.exists():
        return await dry_run(None, settings, given)
    async with await State.open(state_db, create=False) as state:
        await bind(state, settings.mirror_root, other_roots=license_roots(settings), write=False)
        return await dry_run(state, settings, given)


@dataclass(slots=True)
class StatusReport:
    state_db: Path
    destination: str | None
    collections: list[CollectionStatus]
    problems: list[Problem]
    retired: Held
    held_unselected: Held
    retired_dir: Path
    selection: list[tuple[str, str, str]]


async def status(settings: Settings) -> StatusReport:
    state_db = settings.state_path / STATE_DB
    async with await State.open(state_db, create=False) as state:
        return StatusReport(
            state_db,
            await state.meta.get("destination"),
            await state.reports.collection_totals(),
            await state.reports.problems(limit=100),
            await state.reports.retired(),
            await state.reports.held_unselected(),
            settings.retired_path,
            await state.plans.stored_selection(),
        )


async def citations(settings: Settings) -> list[tuple[str | None, str | None, int]]:
    """(license_short_name, source_DOI, series) of what the mirror holds."""
    async with await State.open(settings.state_path / STATE_DB, create=False) as state:
        return await state.reports.citations()


async def _follow_once(settings: Settings) -> bool:
    """Fetch a newer IDC release when there is one; True when one came. Imported here:
    run/follow.py brings aiohttp (0.16 s), which a sync that follows nothing never needs."""
    from idc_sync.run.follow import follow_once

    return await follow_once(settings) is not None
