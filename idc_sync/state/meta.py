"""Facts the state keeps about the mirror it describes (``meta`` table): its destination,
its id, the roots its series live under."""

from __future__ import annotations

from pathlib import Path

from idc_sync.state.database import Database

DESTINATION = "destination"
MIRROR_ID = "mirror_id"


class Meta:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def get(self, key: str) -> str | None:
        row = await self._db.fetchone("get_meta", {"key": key})
        return None if row is None else str(row[0])

    async def set(self, key: str, value: str) -> None:
        async with self._db.transaction():
            await self._db.execute("set_meta", {"key": key, "value": value})

    async def series_roots(self) -> list[tuple[Path, int]]:
        """The roots the state's series live under, most series first."""
        return [(Path(r), int(n)) for r, n in await self._db.fetchall("series_roots")]
