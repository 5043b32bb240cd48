"""The state side of retirement: which series leave now, and the journal that makes moving
their files crash-safe. A series is marked retiring with every file's destination written
down before any file moves, and retired only once the moves are on disk; a run killed in
between finishes the moves, or restores the files when the series is selected again."""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path

from idc_sync.core.model import RetiringFile, SeriesRow
from idc_sync.state.database import Database
from idc_sync.state.queue import series_row


class Retirement:
    """Retirement queries over one state database."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def series_to_retire(
        self, *, prune: bool, after: str = "", limit: int = 500
    ) -> list[SeriesRow]:
        """Unselected series that leave now (see queries.sql, series_to_retire)."""
        rows = await self._db.fetchall(
            "series_to_retire", {"prune": prune, "after": after, "limit": limit}
        )
        return [series_row(row) for row in rows]

    async def replacement_pending(self, series_instance_uid: str) -> bool:
        """True while a selected version of this SeriesInstanceUID is not yet complete: the
        old version's files stay until their replacement is verified."""
        row = await self._db.fetchone("replacement_pending", {"uid": series_instance_uid})
        return row is not None

    async def files(self, crdc_series_uuid: str) -> list[RetiringFile]:
        """The series' verified files, with where the journal says each one goes."""
        rows = await self._db.fetchall("retiring_files", {"crdc_series_uuid": crdc_series_uuid})
        return [
            RetiringFile(str(k), Path(p), Path(r) if r else None, int(s)) for k, p, r, s in rows
        ]

    async def begin(self, crdc_series_uuid: str, moves: Iterable[tuple[str, Path]]) -> None:
        """Write where each file goes, and mark the series retiring, before anything moves."""
        async with self._db.transaction():
            await self._db.executemany(
                "journal_move",
                ({"key": key, "retired_path": str(target)} for key, target in moves),
            )
            await self._db.execute(
                "begin_retiring", {"crdc_series_uuid": crdc_series_uuid, "now": time.time()}
            )

    async def finish(self, crdc_series_uuid: str, note: str, gone: Iterable[str]) -> None:
        """The moves are on disk: the series and its objects are retired. ``gone``: keys
        whose file was not there to move, or was deleted (nothing to restore from)."""
        async with self._db.transaction():
            await self._db.executemany("forget_move", ({"key": key} for key in gone))
            await self._db.execute(
                "retire_objects", {"crdc_series_uuid": crdc_series_uuid, "note": note}
            )
            await self._db.execute(
                "retire_series",
                {"crdc_series_uuid": crdc_series_uuid, "note": note, "now": time.time()},
            )
