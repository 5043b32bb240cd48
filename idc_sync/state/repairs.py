"""The operator's repairs in the state: pages of verified files for ``verify``, damaged files
and their series back in the queue, ``retry-failed``, and a mirror that moved to a new
destination (every path rewritten, every file re-verified where it is now)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from idc_sync.core.model import DoneObject, RetryCounts
from idc_sync.state.database import Database, json_list


def _done_object(row: Sequence[Any]) -> DoneObject:
    key, series, size, etag, path, kind, checksum = row
    return DoneObject(str(key), str(series), int(size), str(etag), Path(path), kind, checksum)


class Repairs:
    """Repair queries over one state database."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def objects_done(self, after_key: str = "", limit: int = 1000) -> list[DoneObject]:
        """One page, in key order, of objects recorded as verified on disk."""
        rows = await self._db.fetchall("objects_done", {"after": after_key, "limit": limit})
        return [_done_object(row) for row in rows]

    async def sample_done(self, count: int) -> list[DoneObject]:
        """``count`` done objects chosen at random."""
        return [_done_object(r) for r in await self._db.fetchall("sample_done", {"count": count})]

    async def mark_for_refetch(self, keys: Sequence[str], reason: str) -> int:
        """Put done objects whose local copy is damaged or gone back to pending, and their
        series back in the queue, so the next sync fetches them; returns how many moved."""
        params = {"keys": json_list(keys), "reason": reason, "now": time.time()}
        async with self._db.transaction():
            moved = await self._db.execute("refetch_objects", params)
            await self._db.execute("requeue_series_of", params)
        return moved

    async def retry_failed(self) -> RetryCounts:
        """Give quarantined and failed objects, and failed or incomplete series, another go.
        Refused objects stay refused: their key or path is unsafe whatever happens."""
        async with self._db.transaction():
            quarantined = await self._db.execute("retry_objects", {"state": "quarantined"})
            failed = await self._db.execute("retry_objects", {"state": "failed"})
            series = await self._db.execute("retry_series", {"now": time.time()})
        return RetryCounts(quarantined, failed, series)

    async def move_destination(self, old: Path, new: Path, reason: str) -> int:
        """The mirror at ``old`` now lives at ``new``: rewrite every path and queue every
        verified file to be hashed where it is now. Returns how many files will be checked."""
        params = {"old": str(old), "new": str(new), "reason": reason, "now": time.time()}
        async with self._db.transaction():
            await self._db.execute("move_series_root", params)
            await self._db.execute("move_object_paths", params)
            checked = await self._db.execute("reverify_moved_objects", params)
            await self._db.execute("requeue_moved_series", params)
        return checked
