"""What the state says about the mirror: per-collection totals (from the running totals, so
`status` costs the same on 58 M objects as on 58), problems with their reasons, what was
retired or waits for ``--prune``, the provenance manifest's rows and the DOIs to cite.
Reads go through the connection that sees only committed data."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from idc_sync.core.model import CollectionStatus, Problem
from idc_sync.state.database import Database


def collection_status(row: Sequence[Any]) -> CollectionStatus:
    """A CollectionStatus from the ten columns both status queries select, in field order."""
    return CollectionStatus(
        collection_id=row[0], series_total=int(row[1]), series_complete=int(row[2]),
        files_expected=int(row[3]), bytes_expected=int(row[4]),
        series_failed=int(row[5]), files_done=int(row[6]), bytes_done=int(row[7]),
        files_failed=int(row[8]), files_quarantined=int(row[9]),
    )  # fmt: skip


@dataclass(frozen=True, slots=True)
class Held:
    """Series, files and bytes in one condition (retired, or waiting for --prune)."""

    series: int = 0
    files: int = 0
    bytes: int = 0


class Reports:
    """Reporting queries over one state database."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def collection_totals(self) -> list[CollectionStatus]:
        return [collection_status(r) for r in await self._db.snapshot("collection_totals")]

    async def status_by_collection(self) -> list[CollectionStatus]:
        """The same numbers as ``collection_totals``, counted from the rows (slow)."""
        return [collection_status(r) for r in await self._db.fetchall("status_by_collection")]

    async def recent_problems(self, limit: int = 20) -> list[Problem]:
        rows = await self._db.snapshot("recent_problems", {"limit": limit})
        return [Problem(*row) for row in rows]

    async def problems(self, limit: int = 50) -> list[Problem]:
        """Selected series that are not complete, and objects that failed, with reasons."""
        rows = await self._db.snapshot("problems", {"limit": limit})
        return [Problem(*row) for row in rows]

    async def verified_files(self) -> int:
        """Every verified file the mirror holds, selected or not."""
        rows = await self._db.snapshot("mirror_verified_files")
        return int(rows[0][0]) if rows else 0

    async def count_selected(self) -> int:
        row = await self._db.fetchone("count_selected")
        return int(row[0]) if row else 0

    async def retired(self) -> Held:
        """Series retired, and the files (and bytes) of them kept in retired_dir."""
        rows = await self._db.snapshot("retired_totals")
        return Held(*(int(v) for v in rows[0])) if rows else Held()

    async def held_unselected(self) -> Held:
        """Series that left the selection but stay until a run prunes."""
        rows = await self._db.snapshot("held_unselected")
        return Held(*(int(v) for v in rows[0])) if rows else Held()

    async def provenance(self, after: str = "", limit: int = 5000) -> list[tuple[Any, ...]]:
        """One page of verified files with what the index says of their series, for the
        provenance manifest (columns as PROVENANCE_COLUMNS)."""
        rows = await self._db.fetchall("provenance_page", {"after": after, "limit": limit})
        return [tuple(row) for row in rows]

    async def citations(self) -> list[tuple[str | None, str | None, int]]:
        """(license_short_name, source_DOI, series) over the series the mirror holds."""
        rows = await self._db.snapshot("citations")
        return [(row[0], row[1], int(row[2])) for row in rows]
