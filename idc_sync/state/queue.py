"""The workers' side of the state: lease series, record what a listing found, read the objects
still to fetch, write outcomes in batches, and judge a series. Claims are leases taken in one
statement, so work held by a crashed run is picked up again. Every write here is one
``run_transaction``: the worker processes of a round share SQLite's write lock, and it is
held only while SQLite works (state/database.py)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from idc_sync.core.lifecycle import ObjectState, SeriesState
from idc_sync.core.model import ObjectResult, ObjectRow, SeriesRow, SeriesTally
from idc_sync.state.database import Database, Transaction


def series_row(row: Sequence[Any]) -> SeriesRow:
    """A SeriesRow from the fifteen series columns the queries select, in field order."""
    (uuid, uid, collection, bucket, license_name, doi, count, size, version, root, rel_dir,
     instances, state, attempts, last_error) = tuple(row)  # fmt: skip
    return SeriesRow(
        crdc_series_uuid=uuid, SeriesInstanceUID=uid, collection_id=collection,
        aws_bucket=bucket, license_short_name=license_name, source_DOI=doi,
        instance_count=count, series_size_bytes=size, idc_version=version, root=Path(root),
        rel_dir=rel_dir, instances=frozenset(json.loads(instances)) if instances else None,
        state=SeriesState(state), attempts=attempts, last_error=last_error,
    )  # fmt: skip


def object_row(row: Sequence[Any]) -> ObjectRow:
    key, uuid, size, etag, path, state, attempts, last_error, retired = tuple(row)
    return ObjectRow(
        key, uuid, size, etag, Path(path), ObjectState(state), attempts, last_error,
        Path(retired) if retired else None,
    )  # fmt: skip


class Queue:
    """The workers' queries over one state database."""

    def __init__(self, db: Database) -> None:
        self._db = db

    @property
    def path(self) -> Path:
        return self._db.path

    # -- leases -----------------------------------------------------------------------

    async def claim_series(
        self, owner: str, limit: int, lease_seconds: float, now: float | None = None
    ) -> list[SeriesRow]:
        """Lease up to ``limit`` queued series (or series whose lease has expired)."""
        if limit <= 0:
            return []
        now = time.time() if now is None else now
        params = {"owner": owner, "expires": now + lease_seconds, "now": now, "limit": limit}
        rows = await self._db.run_transaction(lambda tx: tx.fetchall("claim_series", params))
        return [series_row(row) for row in rows]

    async def renew_leases(self, owner: str, lease_seconds: float) -> None:
        params = {"owner": owner, "expires": time.time() + lease_seconds}
        await self._db.run_transaction(lambda tx: tx.execute("renew_leases", params))

    async def release_leases(self, owner: str) -> int:
        """Queue again every series ``owner`` still holds (its process is gone); returns
        how many."""
        return await self._db.run_transaction(
            lambda tx: tx.execute("release_leases", {"owner": owner})
        )

    async def requeue_unfinished(self) -> None:
        """Give every selected, unfinished series another go in this run: objects that
        failed for transient reasons are retried; quarantined and refused ones stay."""

        def requeue(tx: Transaction) -> None:
            tx.execute("requeue_unfinished_series")
            tx.execute("requeue_failed_objects")

        await self._db.run_transaction(requeue)

    # -- objects ----------------------------------------------------------------------

    async def record_listing(self, objects: Sequence[ObjectRow]) -> list[tuple[ObjectRow, str]]:
        """Store what a listing found. Known keys keep their state; a retired object, or a
        changed unfinished one, starts over as pending. Returns the objects whose local path
        another key already holds (collisions), which are never written."""
        rows = [
            {"key": o.key, "crdc_series_uuid": o.crdc_series_uuid, "size": o.size,
             "etag": o.etag, "path": str(o.path)}
            for o in objects
        ]  # fmt: skip
        by_key = {o.key: o for o in objects}
        listing = json.dumps(rows)

        def record(tx: Transaction) -> list[Sequence[Any]]:
            # A first listing in one INSERT: 40-43 against 59-72 us of CPU per object (122
            # series x 304 objects, 3 runs each); a listing is about half of what the state
            # writes per object.
            if len(tx.fetchall("insert_new_listing", {"objects": listing})) == len(rows):
                return []
            tx.execute("clear_listing")
            tx.execute("add_to_listing", {"objects": listing})
            tx.execute("reset_relisted_objects")
            tx.execute("update_relisted_objects")
            tx.execute("insert_listed_objects")
            found = tx.fetchall("listing_collisions")
            tx.execute("clear_listing")
            return found

        found = await self._db.run_transaction(record)
        return [(by_key[str(row[0])], str(row[5] or "another object")) for row in found]

    async def refuse_object(self, obj: ObjectRow, reason: str) -> None:
        """Record an object we will not write (bad key, path collision), with its reason."""
        params = {"key": obj.key, "crdc_series_uuid": obj.crdc_series_uuid, "size": obj.size,
                  "etag": obj.etag, "reason": reason}  # fmt: skip
        await self._db.run_transaction(lambda tx: tx.execute("refuse_object", params))

    async def objects_to_fetch(
        self, crdc_series_uuid: str, after_key: str = "", limit: int = 1000
    ) -> list[ObjectRow]:
        """One page of a series' objects that are not yet done (pending or failed)."""
        rows = await self._db.fetchall(
            "objects_to_fetch",
            {"crdc_series_uuid": crdc_series_uuid, "after": after_key, "limit": limit},
        )
        return [object_row(row) for row in rows]

    async def object_row(self, key: str) -> ObjectRow | None:
        """One object as the queue holds it now (after a listing of its series changed it)."""
        row = await self._db.fetchone("object_row", {"key": key})
        return None if row is None else object_row(row)

    async def record_results(self, results: Iterable[ObjectResult]) -> None:
        """Write a batch of object outcomes in one transaction."""
        now = time.time()
        # by key, the last outcome of a key winning; each kind goes as one JSON array in one
        # statement, since a statement run row by row takes the GIL back for every row's
        # bind, behind the busy event loop: up to 1.4 s per batch of 256 (request-bound, two
        # loops), where one statement takes milliseconds
        outcomes: dict[str, dict[str, Any]] = {}
        notes: dict[str, dict[str, Any]] = {}
        for r in results:
            if r.state is None:
                notes[r.key] = {"key": r.key, "attempts": r.attempts, "last_error": r.last_error}
                continue
            outcomes[r.key] = {
                "key": r.key, "state": r.state.value, "attempts": r.attempts,
                "last_error": r.last_error, "checksum_kind": r.checksum_kind,
                "checksum": r.checksum,
                "fetched_at": now if r.state is ObjectState.DONE else None,
            }  # fmt: skip
        if not outcomes and not notes:
            return

        def record(tx: Transaction) -> None:
            if outcomes:
                tx.execute("record_outcomes", {"outcomes": json.dumps(list(outcomes.values()))})
            if notes:
                tx.execute("record_notes", {"notes": json.dumps(list(notes.values()))})

        await self._db.run_transaction(record)

    # -- judging a series -------------------------------------------------------------

    async def tally(self, crdc_series_uuid: str) -> SeriesTally:
        rows = await self._db.fetchall("tally", {"crdc_series_uuid": crdc_series_uuid})
        by_state: dict[ObjectState, int] = {}
        files_done = bytes_done = 0
        for state, count, size in rows:
            by_state[ObjectState(state)] = int(count)
            if state == ObjectState.DONE:
                files_done, bytes_done = int(count), int(size or 0)
        listed = sum(n for state, n in by_state.items() if state is not ObjectState.REFUSED)
        return SeriesTally(files_done, bytes_done, listed, by_state)

    async def finish_series(
        self,
        crdc_series_uuid: str,
        state: SeriesState,
        tally: SeriesTally,
        last_error: str | None,
    ) -> None:
        params = {"crdc_series_uuid": crdc_series_uuid, "state": state.value,
                  "last_error": last_error, "files_done": tally.files_done,
                  "bytes_done": tally.bytes_done, "now": time.time()}  # fmt: skip
        await self._db.run_transaction(lambda tx: tx.execute("finish_series", params))
