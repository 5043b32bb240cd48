"""Planning into the state: a plan is written in one transaction (``Plans.writing``), so a
plan that is refused (a mass retirement without ``--allow-retire``), interrupted or killed
leaves the previous one as it was. Also the reads a dry run (``idc-sync plan``) needs."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass

from idc_sync.core.model import SeriesPlacement, SeriesRow
from idc_sync.core.planner import Leaving
from idc_sync.state.database import Database, json_list
from idc_sync.state.queue import series_row


@dataclass(frozen=True, slots=True)
class HeldSeries:
    """A series the mirror holds (not retired), with what it holds of it."""

    crdc_series_uuid: str
    SeriesInstanceUID: str
    collection_id: str
    state: str
    leaving: str | None
    files_done: int
    bytes_done: int


class PlanWriter:
    """The writes of one plan, all inside its transaction."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def enqueue(
        self, placements: Sequence[SeriesPlacement], catalog: str | None = None
    ) -> int:
        """Insert new series as queued and mark known ones selected; returns how many were
        new. Running the same selection twice changes nothing: a known series keeps its state.
        ``catalog``: the idc-index-data version the placements were resolved from."""
        now = time.time()
        rows = [
            {
                "crdc_series_uuid": p.record.crdc_series_uuid,
                "SeriesInstanceUID": p.record.SeriesInstanceUID,
                "collection_id": p.record.collection_id, "aws_bucket": p.record.aws_bucket,
                "license_short_name": p.record.license_short_name,
                "source_DOI": p.record.source_DOI, "instance_count": p.record.instance_count,
                "series_size_bytes": p.record.series_size_bytes,
                "idc_version": p.record.idc_version, "root": str(p.root), "rel_dir": p.rel_dir,
                "instances": (
                    json.dumps(sorted(p.record.instances))
                    if p.record.instances is not None else None
                ),
                "now": now, "catalog": catalog,
            }
            for p in placements
        ]  # fmt: skip
        before = await self._count()
        await self._db.executemany("enqueue", rows)
        return await self._count() - before

    async def _count(self) -> int:
        row = await self._db.fetchone("count_series")
        return int(row[0]) if row else 0

    async def requeue_reselected(self) -> None:
        """Series selected again after (or while) they left the mirror: queued again; the
        files of one caught mid-retirement are looked for at both ends of their move."""
        await self._db.execute("journal_reselected_objects")
        await self._db.execute("requeue_reselected")

    async def remember(self, entries: Iterable[tuple[str, str, str]], *, replace: bool) -> None:
        """Keep the run's selection entries (part, value, origin) as the mirror's own; with
        ``replace`` (a pruning run) they become the whole of it."""
        if replace:
            await self._db.execute("forget_selection")
        now = time.time()
        await self._db.executemany(
            "remember_selection",
            ({"kind": part, "value": value, "origin": origin, "now": now}
             for part, value, origin in entries),
        )  # fmt: skip

    async def unselected(self, after: str = "", limit: int = 5000) -> list[tuple[str, str]]:
        """(crdc_series_uuid, SeriesInstanceUID) of held series this plan did not select."""
        rows = await self._db.fetchall("unselected_series", {"after": after, "limit": limit})
        return [(str(uuid), str(uid)) for uuid, uid in rows]

    async def mark_leaving(self, reasons: Iterable[tuple[str, str]]) -> None:
        """Why each unselected series leaves: (crdc_series_uuid, reason)."""
        await self._db.executemany(
            "mark_leaving",
            ({"crdc_series_uuid": uuid, "leaving": reason} for uuid, reason in reasons),
        )

    async def leaving(self) -> dict[str, Leaving]:
        """What the unselected series hold, by reason."""
        rows = await self._db.fetchall("leaving_totals")
        return {str(r[0]): Leaving(int(r[1]), int(r[2]), int(r[3])) for r in rows if r[0]}

    async def verified_files(self) -> int:
        row = await self._db.fetchone("mirror_verified_files")
        return int(row[0]) if row else 0


class Plans:
    """Planning queries over one state database."""

    def __init__(self, db: Database) -> None:
        self._db = db

    @contextlib.asynccontextmanager
    async def writing(self) -> AsyncIterator[PlanWriter]:
        """A plan in one transaction: every series unselected, then the plan marks its own.
        An exception inside rolls the whole plan back."""
        async with self._db.transaction():
            await self._db.execute("begin_plan")
            yield PlanWriter(self._db)

    async def stored_selection(self) -> list[tuple[str, str, str]]:
        """The mirror's own selection: (part, value, origin)."""
        rows = await self._db.fetchall("stored_selection")
        return [(str(r[0]), str(r[1]), str(r[2])) for r in rows]

    # -- what a dry run reads ---------------------------------------------------------

    async def known_series(self, crdc_series_uuids: Sequence[str]) -> dict[str, SeriesRow]:
        rows = await self._db.fetchall("known_series", {"uuids": json_list(crdc_series_uuids)})
        return {str(row[0]): series_row(row) for row in rows}

    async def live_uids(self, series_instance_uids: Sequence[str]) -> set[str]:
        """Which of these SeriesInstanceUIDs the mirror holds under some version."""
        rows = await self._db.fetchall("live_uids", {"uids": json_list(series_instance_uids)})
        return {str(row[0]) for row in rows}

    async def done_of(self, crdc_series_uuids: Sequence[str]) -> tuple[int, int]:
        """Files and bytes already verified for the given series."""
        row = await self._db.fetchone("done_of", {"uuids": json_list(crdc_series_uuids)})
        return (int(row[0]), int(row[1])) if row else (0, 0)

    async def held_series(self, after: str = "", limit: int = 5000) -> list[HeldSeries]:
        rows = await self._db.fetchall("live_series", {"after": after, "limit": limit})
        return [
            HeldSeries(str(r[0]), str(r[1]), str(r[2]), str(r[3]), r[4], int(r[5]), int(r[6]))
            for r in rows
        ]
