"""The durable queue: one SQLite database (WAL) with a row per series and a row per object.

This is the only module that speaks SQL. Claims are leases taken in one statement, so
work held by a crashed run is picked up again; completions are written in batches."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import time
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import aiosqlite

from idc_sync.core.errors import StateError
from idc_sync.core.model import (
    CollectionStatus,
    DoneObject,
    ObjectResult,
    ObjectRow,
    Problem,
    RetryCounts,
    SeriesPlacement,
    SeriesRow,
    SeriesTally,
)

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS series (
    crdc_series_uuid   TEXT PRIMARY KEY,
    SeriesInstanceUID  TEXT NOT NULL,
    collection_id      TEXT NOT NULL,
    aws_bucket         TEXT NOT NULL,
    license_short_name TEXT,
    source_DOI         TEXT,
    instance_count     INTEGER,           -- expected files; NULL for earlier-release versions
    series_size_bytes  INTEGER,           -- expected bytes (series_size_MB * 1e6)
    idc_version        INTEGER NOT NULL,  -- IDC release the row came from
    root               TEXT NOT NULL,     -- mirror root chosen by license policy
    rel_dir            TEXT NOT NULL,     -- rendered dir_template, relative to root
    instances          TEXT,              -- JSON list when a manifest named single instances
    selected           INTEGER NOT NULL DEFAULT 1,
    state              TEXT NOT NULL,     -- see lifecycle.SeriesState
    attempts           INTEGER NOT NULL DEFAULT 0,
    last_error         TEXT,
    lease_owner        TEXT,
    lease_expires      REAL,
    files_done         INTEGER NOT NULL DEFAULT 0,
    bytes_done         INTEGER NOT NULL DEFAULT 0,
    updated_at         REAL NOT NULL
);
-- (selected, state) entries end in rowid, so claims walk plan order without a sort and
-- a new plan's rows append at the end of this index instead of landing at random.
CREATE INDEX IF NOT EXISTS series_by_state ON series (selected, state);

CREATE TABLE IF NOT EXISTS object (
    key              TEXT PRIMARY KEY,    -- <crdc_series_uuid>/<crdc_instance_uuid>.dcm
    crdc_series_uuid TEXT NOT NULL REFERENCES series (crdc_series_uuid),
    size             INTEGER NOT NULL,
    etag             TEXT NOT NULL,
    path             TEXT UNIQUE,          -- two objects never share a local path; NULL if refused
    state            TEXT NOT NULL,        -- see lifecycle.ObjectState
    attempts         INTEGER NOT NULL DEFAULT 0,
    last_error       TEXT,
    checksum_kind    TEXT,                 -- md5 | multipart-md5 | crc32c | size-only
    checksum         TEXT,
    fetched_at       REAL
);
CREATE INDEX IF NOT EXISTS object_by_series ON object (crdc_series_uuid, state);
"""

_SERIES_COLUMNS = (
    "crdc_series_uuid, SeriesInstanceUID, collection_id, aws_bucket, license_short_name, "
    "source_DOI, instance_count, series_size_bytes, idc_version, root, rel_dir, instances, "
    "state, attempts, last_error"
)
_OBJECT_COLUMNS = "key, crdc_series_uuid, size, etag, path, state, attempts, last_error"


def _in_chunks(values: Sequence[str], size: int = 500) -> Iterator[tuple[list[str], str]]:
    """Slices of ``values`` with their ``?, ?, ...`` placeholders: SQLite caps the number
    of bound parameters per statement."""
    for start in range(0, len(values), size):
        chunk = list(values[start : start + size])
        yield chunk, ", ".join("?" * len(chunk))


def _series_row(row: sqlite3.Row | tuple[Any, ...]) -> SeriesRow:
    (
        uuid,
        uid,
        collection,
        bucket,
        license_name,
        doi,
        count,
        size,
        version,
        root,
        rel_dir,
        instances,
        state,
        attempts,
        last_error,
    ) = tuple(row)
    return SeriesRow(
        crdc_series_uuid=uuid, SeriesInstanceUID=uid, collection_id=collection,
        aws_bucket=bucket, license_short_name=license_name, source_DOI=doi,
        instance_count=count, series_size_bytes=size, idc_version=version, root=Path(root),
        rel_dir=rel_dir, instances=frozenset(json.loads(instances)) if instances else None,
        state=state, attempts=attempts, last_error=last_error,
    )  # fmt: skip


def _object_row(row: sqlite3.Row | tuple[Any, ...]) -> ObjectRow:
    key, uuid, size, etag, path, state, attempts, last_error = tuple(row)
    return ObjectRow(key, uuid, size, etag, Path(path), state, attempts, last_error)


def _collection_status(row: Sequence[Any]) -> CollectionStatus:
    """A CollectionStatus from the ten columns both status queries select, in field order."""
    return CollectionStatus(
        collection_id=row[0], series_total=int(row[1]), series_complete=int(row[2]),
        files_expected=int(row[3]), bytes_expected=int(row[4]),
        series_failed=int(row[5]), files_done=int(row[6]), bytes_done=int(row[7]),
        files_failed=int(row[8]), files_quarantined=int(row[9]),
    )  # fmt: skip


class Queue:
    """The SQLite queue of one state directory."""

    def __init__(self, db: aiosqlite.Connection, path: Path) -> None:
        self._db = db
        self.path = path
        # One connection serves every coroutine: writes take turns, each in its own
        # transaction, or one coroutine's statements would land in another's.
        self._write_lock = asyncio.Lock()

    @contextlib.asynccontextmanager
    async def _transaction(self) -> AsyncIterator[None]:
        async with self._write_lock:
            await self._db.execute("BEGIN IMMEDIATE")
            try:
                yield
            except BaseException:
                await self._db.execute("ROLLBACK")
                raise
            await self._db.execute("COMMIT")

    @classmethod
    async def open(cls, path: Path, *, create: bool = True) -> Queue:
        if not create and not path.exists():  # noqa: ASYNC240 - one stat before opening
            raise StateError(f"no idc-sync state at {path}")
        try:
            db = await aiosqlite.connect(path, isolation_level=None)
        except sqlite3.Error as error:
            raise StateError(f"cannot open state database {path}: {error}") from None
        queue = cls(db, path)
        try:
            await queue._prepare(create)
        except sqlite3.DatabaseError as error:
            await db.close()
            raise StateError(
                f"state database {path} is unreadable ({error}); it is not an idc-sync "
                "state file or it is corrupted. No mirrored file was touched."
            ) from None
        except BaseException:
            await db.close()
            raise
        return queue

    async def _prepare(self, create: bool) -> None:
        db = self._db
        await db.execute("PRAGMA busy_timeout = 10000")
        cursor = await db.execute("PRAGMA user_version")
        row = await cursor.fetchone()
        version = int(row[0]) if row else 0
        if version > SCHEMA_VERSION:
            raise StateError(
                f"state database {self.path} has schema version {version}, newer than this "
                f"idc-sync understands ({SCHEMA_VERSION}); upgrade idc-sync"
            )
        await db.execute("PRAGMA journal_mode = WAL")
        # WAL + NORMAL may lose the last commits on power loss, never consistency; a lost
        # "done" only means the file is re-verified (not fetched) on the next run.
        await db.execute("PRAGMA synchronous = NORMAL")
        await db.execute("PRAGMA foreign_keys = ON")
        # Random UUID keys touch pages all over the B-trees; a 64 MB cache keeps a
        # 600k-series plan from thrashing (the default is 2 MB).
        await db.execute("PRAGMA cache_size = -65536")
        if version < SCHEMA_VERSION:
            if not create and version == 0:
                raise StateError(f"{self.path} is not an idc-sync state database")
            await db.executescript(_SCHEMA)
            await db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        await self._prepare_totals()

    async def _prepare_totals(self) -> None:
        """Create the running totals (see _TOTALS_SCHEMA) once per state database."""
        cursor = await self._db.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'collection_totals'"
        )
        if await cursor.fetchone() is not None:
            return
        async with self._write_lock:
            try:
                await self._db.executescript(f"BEGIN IMMEDIATE; {_TOTALS_SCHEMA} COMMIT;")
            except sqlite3.OperationalError as error:
                if self._db.in_transaction:
                    await self._db.execute("ROLLBACK")
                if "already exists" not in str(error):  # another process made them first
                    raise

    async def close(self) -> None:
        await self._db.close()

    async def __aenter__(self) -> Queue:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- planning ---------------------------------------------------------------------

    async def begin_plan(self) -> None:
        """Forget which series were selected; the new plan marks its own."""
        async with self._transaction():
            await self._db.execute("UPDATE series SET selected = 0 WHERE selected = 1")

    async def enqueue(self, placements: Sequence[SeriesPlacement]) -> int:
        """Insert new series as queued and mark known ones selected; returns how many were new.

        Running the same selection twice changes nothing: a known series keeps its state."""
        now = time.time()
        rows = [
            (
                p.record.crdc_series_uuid, p.record.SeriesInstanceUID, p.record.collection_id,
                p.record.aws_bucket, p.record.license_short_name, p.record.source_DOI,
                p.record.instance_count, p.record.series_size_bytes, p.record.idc_version,
                str(p.root), p.rel_dir,
                json.dumps(sorted(p.record.instances)) if p.record.instances is not None else None,
                now,
            )
            for p in placements
        ]  # fmt: skip
        db = self._db
        async with self._transaction():
            cursor = await db.execute("SELECT COUNT(*) FROM series")
            before = (await cursor.fetchone() or (0,))[0]
            # One statement per row: new series are queued; known ones keep their state and
            # are marked selected, taking the bucket the current release names.
            await db.executemany(
                "INSERT INTO series (crdc_series_uuid, SeriesInstanceUID, collection_id, "
                "aws_bucket, license_short_name, source_DOI, instance_count, series_size_bytes, "
                "idc_version, root, rel_dir, instances, state, updated_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'queued', ?) "
                "ON CONFLICT (crdc_series_uuid) DO UPDATE SET selected = 1, "
                "aws_bucket = excluded.aws_bucket, instances = excluded.instances, "
                # selected again after it was retired: fetch (or re-adopt) it anew
                "state = CASE WHEN series.state = 'retired' THEN 'queued' ELSE series.state END "
                "WHERE series.selected = 0 OR series.aws_bucket != excluded.aws_bucket "
                "OR series.instances IS NOT excluded.instances",
                rows,
            )
            cursor = await db.execute("SELECT COUNT(*) FROM series")
            inserted = int((await cursor.fetchone() or (0,))[0]) - int(before)
        return inserted

    async def requeue_unfinished(self) -> None:
        """Give every selected, unfinished series another go in this run.

        Objects that failed for transient reasons are retried; quarantined and refused
        objects stay as they are until an operator asks for them again."""
        db = self._db
        async with self._transaction():
            await db.execute(
                "UPDATE series SET state = 'queued', lease_owner = NULL, lease_expires = NULL "
                "WHERE selected = 1 AND state IN ('leased', 'incomplete', 'failed')"
            )
            await db.execute(
                "UPDATE object SET state = 'pending' WHERE state = 'failed' AND crdc_series_uuid "
                "IN (SELECT crdc_series_uuid FROM series WHERE selected = 1 AND state = 'queued')"
            )

    # -- leases -----------------------------------------------------------------------

    async def claim_series(
        self, owner: str, limit: int, lease_seconds: float, now: float | None = None
    ) -> list[SeriesRow]:
        """Lease up to ``limit`` queued series (or series whose lease has expired)."""
        if limit <= 0:
            return []
        now = time.time() if now is None else now
        async with self._transaction():
            cursor = await self._db.execute(
                "UPDATE series SET state = 'leased', lease_owner = ?, lease_expires = ?, "
                "attempts = attempts + 1, updated_at = ? "
                # Two index range scans, no sort: claiming stays cheap with 600k rows queued.
                "WHERE crdc_series_uuid IN ("
                "  SELECT crdc_series_uuid FROM ("
                "    SELECT crdc_series_uuid FROM series WHERE selected = 1 AND state = 'leased'"
                "    AND lease_expires < ? LIMIT ?) "
                "  UNION ALL SELECT crdc_series_uuid FROM ("
                "    SELECT crdc_series_uuid FROM series WHERE selected = 1 AND state = 'queued'"
                "    ORDER BY rowid LIMIT ?) "
                "  LIMIT ?) "
                f"RETURNING {_SERIES_COLUMNS}",
                (owner, now + lease_seconds, now, now, limit, limit, limit),
            )
            rows = await cursor.fetchall()
        return [_series_row(row) for row in rows]

    async def renew_leases(self, owner: str, lease_seconds: float) -> None:
        async with self._transaction():
            await self._db.execute(
                "UPDATE series SET lease_expires = ? WHERE lease_owner = ? AND state = 'leased'",
                (time.time() + lease_seconds, owner),
            )

    # -- objects ----------------------------------------------------------------------

    async def record_listing(self, objects: Sequence[ObjectRow]) -> list[tuple[ObjectRow, str]]:
        """Store what a listing found. Known keys keep their state; a changed size or ETag
        of an unfinished object is updated. Returns objects whose local path is already
        taken by another key (collisions), which are never written."""
        collisions: list[tuple[ObjectRow, str]] = []
        db = self._db
        async with self._transaction():
            for obj in objects:
                try:
                    await db.execute(
                        "INSERT INTO object (key, crdc_series_uuid, size, etag, path, state) "
                        "VALUES (?, ?, ?, ?, ?, 'pending') ON CONFLICT (key) DO UPDATE SET "
                        "size = excluded.size, etag = excluded.etag, path = excluded.path, "
                        "crdc_series_uuid = excluded.crdc_series_uuid, "
                        "state = 'pending' WHERE object.state = 'retired' OR "
                        # the key's own series takes back a row another listing refused
                        "object.crdc_series_uuid != excluded.crdc_series_uuid OR "
                        "(object.state != 'done' AND "
                        "(object.size != excluded.size OR object.etag != excluded.etag))",
                        (obj.key, obj.crdc_series_uuid, obj.size, obj.etag, str(obj.path)),
                    )
                except sqlite3.IntegrityError:
                    cursor = await db.execute(
                        "SELECT key FROM object WHERE path = ?", (str(obj.path),)
                    )
                    other = await cursor.fetchone()
                    collisions.append((obj, str(other[0]) if other else "another object"))
        return collisions

    async def objects_to_fetch(
        self, crdc_series_uuid: str, after_key: str = "", limit: int = 1000
    ) -> list[ObjectRow]:
        """One page of a series' objects that are not yet done (pending or failed)."""
        cursor = await self._db.execute(
            f"SELECT {_OBJECT_COLUMNS} FROM object WHERE crdc_series_uuid = ? "
            "AND state IN ('pending', 'failed') AND key > ? ORDER BY key LIMIT ?",
            (crdc_series_uuid, after_key, limit),
        )
        return [_object_row(row) for row in await cursor.fetchall()]

    async def object_row(self, key: str) -> ObjectRow | None:
        """One object as the queue holds it now (after a listing of its series changed it)."""
        cursor = await self._db.execute(
            f"SELECT {_OBJECT_COLUMNS} FROM object WHERE key = ? AND path IS NOT NULL", (key,)
        )
        row = await cursor.fetchone()
        return None if row is None else _object_row(row)

    async def record_results(self, results: Iterable[ObjectResult]) -> None:
        """Write a batch of object outcomes in one transaction."""
        now = time.time()
        rows = [
            (r.state, r.attempts, r.last_error, r.checksum_kind, r.checksum,
             now if r.state == "done" else None, r.key)
            for r in results
        ]  # fmt: skip
        if not rows:
            return
        db = self._db
        async with self._transaction():
            await db.executemany(
                "UPDATE object SET state = ?, attempts = ?, last_error = ?, checksum_kind = ?, "
                "checksum = ?, fetched_at = COALESCE(?, fetched_at) WHERE key = ?",
                rows,
            )

    async def refuse_object(self, obj: ObjectRow, reason: str) -> None:
        """Record an object we will not write (bad key, path collision), with its reason."""
        async with self._transaction():
            await self._db.execute(
                "INSERT INTO object (key, crdc_series_uuid, size, etag, path, state, last_error) "
                "VALUES (?, ?, ?, ?, NULL, 'refused', ?) ON CONFLICT (key) DO UPDATE SET "
                "state = 'refused', last_error = excluded.last_error "
                # a listing naming another series' key must not touch that series' object
                "WHERE object.crdc_series_uuid = excluded.crdc_series_uuid",
                (obj.key, obj.crdc_series_uuid, obj.size, obj.etag, reason),
            )

    async def tally(self, crdc_series_uuid: str) -> SeriesTally:
        cursor = await self._db.execute(
            "SELECT state, COUNT(*), SUM(size) FROM object WHERE crdc_series_uuid = ? "
            "GROUP BY state",
            (crdc_series_uuid,),
        )
        by_state: dict[str, int] = {}
        files_done = bytes_done = 0
        for state, count, size in await cursor.fetchall():
            by_state[state] = int(count)
            if state == "done":
                files_done, bytes_done = int(count), int(size or 0)
        listed = sum(count for state, count in by_state.items() if state != "refused")
        return SeriesTally(files_done, bytes_done, listed, by_state)

    async def finish_series(
        self, crdc_series_uuid: str, state: str, tally: SeriesTally, last_error: str | None
    ) -> None:
        async with self._transaction():
            await self._db.execute(
            "UPDATE series SET state = ?, last_error = ?, files_done = ?, bytes_done = ?, "
            "lease_owner = NULL, lease_expires = NULL, updated_at = ? WHERE crdc_series_uuid = ?",
            (state, last_error, tally.files_done, tally.bytes_done, time.time(),
             crdc_series_uuid),
        )  # fmt: skip

    # -- reporting --------------------------------------------------------------------

    async def done_bytes_of(self, crdc_series_uuids: Sequence[str]) -> tuple[int, int]:
        """Files and bytes already verified for the given series (for `plan`)."""
        files = size = 0
        for chunk, marks in _in_chunks(crdc_series_uuids):
            cursor = await self._db.execute(
                f"SELECT COUNT(*), COALESCE(SUM(size), 0) FROM object WHERE state = 'done' "
                f"AND crdc_series_uuid IN ({marks})",
                chunk,
            )
            row = await cursor.fetchone()
            if row:
                files += int(row[0])
                size += int(row[1])
        return files, size

    async def status_by_collection(self) -> list[CollectionStatus]:
        cursor = await self._db.execute(
            "SELECT s.collection_id, COUNT(*), SUM(s.state = 'complete'), "
            "COALESCE(SUM(s.instance_count), 0), COALESCE(SUM(s.series_size_bytes), 0), "
            "SUM(s.state = 'failed'), "
            "COALESCE(SUM(o.files_done), 0), COALESCE(SUM(o.bytes_done), 0), "
            "COALESCE(SUM(o.failed), 0), COALESCE(SUM(o.quarantined), 0) "
            "FROM series AS s LEFT JOIN ("
            "  SELECT crdc_series_uuid, SUM(state = 'done') AS files_done, "
            "  SUM(CASE WHEN state = 'done' THEN size ELSE 0 END) AS bytes_done, "
            "  SUM(state IN ('failed', 'refused')) AS failed, "
            "  SUM(state = 'quarantined') AS quarantined "
            "  FROM object GROUP BY crdc_series_uuid) AS o "
            "ON o.crdc_series_uuid = s.crdc_series_uuid "
            "WHERE s.selected = 1 GROUP BY s.collection_id ORDER BY s.collection_id"
        )
        return [_collection_status(row) for row in await cursor.fetchall()]

    async def collection_totals(self) -> list[CollectionStatus]:
        """What ``status_by_collection`` counts, read from the running totals: one row per
        collection, however many objects the state holds."""
        cursor = await self._db.execute(
            "SELECT collection_id, series_total, series_complete, files_expected, "
            "bytes_expected, series_failed, files_done, bytes_done, files_failed, "
            "files_quarantined FROM collection_totals WHERE series_total > 0 "
            "ORDER BY collection_id"
        )
        return [_collection_status(row) for row in await cursor.fetchall()]

    async def recent_problems(self, limit: int = 20) -> list[Problem]:
        """What ``problems`` reports, found through the index of problem objects and the
        series state index, so it stays cheap however many objects are done."""
        cursor = await self._db.execute(
            "SELECT s.collection_id, s.crdc_series_uuid, o.key, o.state, o.last_error "
            # CROSS JOIN keeps the object side outer, where the partial index serves it
            "FROM object AS o CROSS JOIN series AS s "
            "ON s.crdc_series_uuid = o.crdc_series_uuid "
            "WHERE o.state IN ('failed', 'quarantined', 'refused') AND s.selected = 1 "
            "UNION ALL "
            "SELECT collection_id, crdc_series_uuid, NULL, state, last_error FROM series "
            "WHERE selected = 1 AND state IN ('queued', 'leased', 'incomplete', 'failed') "
            "LIMIT ?",
            (limit,),
        )
        return [Problem(*row) for row in await cursor.fetchall()]

    async def problems(self, limit: int = 50) -> list[Problem]:
        """Selected series that are not complete, and objects that failed, with reasons."""
        cursor = await self._db.execute(
            "SELECT s.collection_id, s.crdc_series_uuid, o.key, o.state, o.last_error "
            "FROM object AS o JOIN series AS s ON s.crdc_series_uuid = o.crdc_series_uuid "
            "WHERE s.selected = 1 AND o.state IN ('failed', 'quarantined', 'refused') "
            "UNION ALL "
            "SELECT collection_id, crdc_series_uuid, NULL, state, last_error FROM series "
            "WHERE selected = 1 AND state NOT IN ('complete') "
            "LIMIT ?",
            (limit,),
        )
        return [Problem(*row) for row in await cursor.fetchall()]

    async def count_selected(self) -> int:
        cursor = await self._db.execute("SELECT COUNT(*) FROM series WHERE selected = 1")
        row = await cursor.fetchone()
        return int(row[0]) if row else 0

    # -- following releases (retirement, plan differences) ----------------------------

    async def series_to_retire(self, after: str = "", limit: int = 500) -> list[SeriesRow]:
        """Series the last plan did not select (removed from the release, revised into a new
        crdc_series_uuid, or left the selection) that are not retired yet."""
        cursor = await self._db.execute(
            f"SELECT {_SERIES_COLUMNS} FROM series WHERE selected = 0 AND state != 'retired' "
            "AND crdc_series_uuid > ? ORDER BY crdc_series_uuid LIMIT ?",
            (after, limit),
        )
        return [_series_row(row) for row in await cursor.fetchall()]

    async def replacement_pending(self, series_instance_uid: str) -> bool:
        """True while a selected version of this SeriesInstanceUID is not yet complete: the
        old version's files stay until their replacement is verified."""
        cursor = await self._db.execute(
            "SELECT 1 FROM series WHERE SeriesInstanceUID = ? AND selected = 1 "
            "AND state != 'complete' LIMIT 1",
            (series_instance_uid,),
        )
        return await cursor.fetchone() is not None

    async def done_paths(self, crdc_series_uuid: str) -> list[tuple[str, Path]]:
        cursor = await self._db.execute(
            "SELECT key, path FROM object WHERE crdc_series_uuid = ? AND state = 'done' "
            "AND path IS NOT NULL ORDER BY key",
            (crdc_series_uuid,),
        )
        return [(str(key), Path(path)) for key, path in await cursor.fetchall()]

    async def mark_retired(self, crdc_series_uuid: str, note: str) -> None:
        """The series and its objects leave the live mirror. Object paths are released so a
        later series may use them; the note says where the files went."""
        async with self._transaction():
            await self._db.execute(
                "UPDATE object SET state = 'retired', path = NULL, last_error = ? "
                "WHERE crdc_series_uuid = ?",
                (note, crdc_series_uuid),
            )
            await self._db.execute(
                "UPDATE series SET state = 'retired', last_error = ?, lease_owner = NULL, "
                "lease_expires = NULL, updated_at = ? WHERE crdc_series_uuid = ?",
                (note, time.time(), crdc_series_uuid),
            )

    async def known_series(self, crdc_series_uuids: Sequence[str]) -> dict[str, SeriesRow]:
        """The queue's rows for these series, for planning a difference."""
        known: dict[str, SeriesRow] = {}
        for chunk, marks in _in_chunks(crdc_series_uuids):
            cursor = await self._db.execute(
                f"SELECT {_SERIES_COLUMNS} FROM series WHERE crdc_series_uuid IN ({marks})",
                chunk,
            )
            for row in await cursor.fetchall():
                known[str(row[0])] = _series_row(row)
        return known

    async def live_uids(self, series_instance_uids: Sequence[str]) -> set[str]:
        """Which of these SeriesInstanceUIDs the mirror already holds under another version."""
        found: set[str] = set()
        for chunk, marks in _in_chunks(series_instance_uids):
            cursor = await self._db.execute(
                f"SELECT DISTINCT SeriesInstanceUID FROM series WHERE state != 'retired' "
                f"AND SeriesInstanceUID IN ({marks})",
                chunk,
            )
            found.update(str(row[0]) for row in await cursor.fetchall())
        return found

    async def provenance(self, after: str = "", limit: int = 5000) -> list[tuple[Any, ...]]:
        """One page of verified files with what the index says of their series, for the
        provenance manifest (columns as PROVENANCE_COLUMNS)."""
        cursor = await self._db.execute(
            "SELECT o.path, o.crdc_series_uuid, o.key, s.SeriesInstanceUID, s.collection_id, "
            "s.license_short_name, s.source_DOI, o.size, o.checksum, o.checksum_kind, "
            "s.idc_version, o.fetched_at FROM object AS o JOIN series AS s "
            "ON s.crdc_series_uuid = o.crdc_series_uuid "
            "WHERE o.state = 'done' AND o.key > ? ORDER BY o.key LIMIT ?",
            (after, limit),
        )
        return [tuple(row) for row in await cursor.fetchall()]

    async def citations(self) -> list[tuple[str | None, str | None, int]]:
        """(license_short_name, source_DOI, series) over the series the mirror holds."""
        cursor = await self._db.execute(
            "SELECT license_short_name, source_DOI, COUNT(*) FROM series "
            "WHERE selected = 1 AND state = 'complete' GROUP BY 1, 2 ORDER BY 1, 2"
        )
        return [(row[0], row[1], int(row[2])) for row in await cursor.fetchall()]

    async def live_series(self, after: str = "", limit: int = 1000) -> list[SeriesRow]:
        """Series the mirror holds (not retired), one page at a time."""
        cursor = await self._db.execute(
            f"SELECT {_SERIES_COLUMNS} FROM series WHERE state != 'retired' "
            "AND crdc_series_uuid > ? ORDER BY crdc_series_uuid LIMIT ?",
            (after, limit),
        )
        return [_series_row(row) for row in await cursor.fetchall()]

    # -- operator tools (verify, retry-failed) ----------------------------------------

    async def objects_done(self, after_key: str = "", limit: int = 1000) -> list[DoneObject]:
        """One page, in key order, of objects recorded as verified on disk."""
        cursor = await self._db.execute(
            f"SELECT {_DONE_COLUMNS} FROM object WHERE state = 'done' AND key > ? "
            "ORDER BY key LIMIT ?",
            (after_key, limit),
        )
        return [_done_object(row) for row in await cursor.fetchall()]

    async def sample_done(self, count: int) -> list[DoneObject]:
        """``count`` done objects chosen at random (SQLite keeps only ``count`` rows while
        it sorts, so memory stays small on a large mirror)."""
        cursor = await self._db.execute(
            f"SELECT {_DONE_COLUMNS} FROM object WHERE state = 'done' ORDER BY random() LIMIT ?",
            (count,),
        )
        return [_done_object(row) for row in await cursor.fetchall()]

    async def mark_for_refetch(self, keys: Sequence[str], reason: str) -> int:
        """Put done objects whose local copy is damaged or gone back to pending, and their
        series back in the queue, so the next sync fetches them; returns how many moved."""
        moved = 0
        async with self._transaction():
            for chunk, marks in _in_chunks(keys):
                cursor = await self._db.execute(
                    "UPDATE object SET state = 'pending', last_error = ?, checksum_kind = NULL, "
                    f"checksum = NULL, fetched_at = NULL WHERE state = 'done' AND key IN ({marks})",
                    (reason, *chunk),
                )
                moved += cursor.rowcount
                await self._db.execute(
                    "UPDATE series SET state = 'queued', lease_owner = NULL, lease_expires = NULL, "
                    "last_error = ?, updated_at = ? WHERE crdc_series_uuid IN ("
                    f"SELECT crdc_series_uuid FROM object WHERE key IN ({marks}))",
                    (reason, time.time(), *chunk),
                )
        return moved

    async def retry_failed(self) -> RetryCounts:
        """Give quarantined and failed objects, and failed or incomplete series, another go.
        Refused objects stay refused: their key or path is unsafe whatever happens."""
        counts: dict[str, int] = {}
        async with self._transaction():
            for state in ("quarantined", "failed"):
                cursor = await self._db.execute(
                    "UPDATE object SET state = 'pending', last_error = NULL WHERE state = ?",
                    (state,),
                )
                counts[state] = cursor.rowcount
            cursor = await self._db.execute(
                "UPDATE series SET state = 'queued', lease_owner = NULL, lease_expires = NULL, "
                "updated_at = ? WHERE state IN ('failed', 'incomplete') OR (state != 'queued' "
                "AND crdc_series_uuid IN "
                "(SELECT crdc_series_uuid FROM object WHERE state = 'pending'))",
                (time.time(),),
            )
            counts["series"] = cursor.rowcount
        return RetryCounts(counts["quarantined"], counts["failed"], counts["series"])


_DONE_COLUMNS = "key, crdc_series_uuid, size, etag, path, checksum_kind, checksum"


def _done_object(row: Any) -> DoneObject:
    key, series, size, etag, path, kind, checksum = row
    return DoneObject(str(key), str(series), int(size), str(etag), Path(path), kind, checksum)


# -- running totals for status ---------------------------------------------------------
# /status must not aggregate 58 M object rows on every call. Triggers keep per-series object
# counts and per-collection totals of the selected series in the same transaction as every
# write to `series` or `object`, whichever method makes it, so the totals stay exact across
# restarts and replans. Created (and seeded with one full count) the first time a state
# database is opened without them.

_COUNTED_OBJECT_STATES = "('done', 'failed', 'refused', 'quarantined')"


def _object_deltas(row: str, sign: str) -> str:
    return (
        f"files_done = files_done {sign} ({row}.state = 'done'), "
        f"bytes_done = bytes_done {sign} (CASE WHEN {row}.state = 'done' THEN {row}.size "
        "ELSE 0 END), "
        f"files_failed = files_failed {sign} ({row}.state IN ('failed', 'refused')), "
        f"files_quarantined = files_quarantined {sign} ({row}.state = 'quarantined')"
    )


def _object_trigger(name: str, event: str, row: str, sign: str, when: str) -> str:
    return f"""
CREATE TRIGGER totals_object_{name} AFTER {event} ON object
WHEN {row}.state IN {_COUNTED_OBJECT_STATES} AND {when}
BEGIN
    UPDATE series_object_totals SET {_object_deltas(row, sign)}
        WHERE crdc_series_uuid = {row}.crdc_series_uuid;
    UPDATE collection_totals SET {_object_deltas(row, sign)}
        WHERE collection_id = (SELECT collection_id FROM series
            WHERE crdc_series_uuid = {row}.crdc_series_uuid AND selected = 1);
END;"""


def _series_deltas(row: str, sign: str) -> str:
    def held(column: str) -> str:
        return (
            f"COALESCE((SELECT {column} FROM series_object_totals "
            f"WHERE crdc_series_uuid = {row}.crdc_series_uuid), 0)"
        )

    return (
        f"series_total = series_total {sign} 1, "
        f"series_complete = series_complete {sign} ({row}.state = 'complete'), "
        f"series_failed = series_failed {sign} ({row}.state = 'failed'), "
        f"files_expected = files_expected {sign} COALESCE({row}.instance_count, 0), "
        f"bytes_expected = bytes_expected {sign} COALESCE({row}.series_size_bytes, 0), "
        + ", ".join(
            f"{c} = {c} {sign} {held(c)}"
            for c in ("files_done", "bytes_done", "files_failed", "files_quarantined")
        )
    )


def _series_trigger(name: str, event: str, row: str, sign: str, when: str) -> str:
    # not INSERT OR IGNORE: the conflict clause of the statement that fires a trigger
    # (an upsert's) overrides the one inside it
    create_row = (
        f"INSERT INTO collection_totals (collection_id) SELECT {row}.collection_id "
        "WHERE NOT EXISTS (SELECT 1 FROM collection_totals "
        f"WHERE collection_id = {row}.collection_id);"
        if sign == "+"
        else ""
    )
    return f"""
CREATE TRIGGER totals_series_{name} AFTER {event} ON series
WHEN {row}.selected = 1 AND {when}
BEGIN
    {create_row}
    UPDATE collection_totals SET {_series_deltas(row, sign)}
        WHERE collection_id = {row}.collection_id;
END;"""


# an update changes what a series or an object counts for only when one of these differs
_OBJECT_CHANGED = (
    "(OLD.state IS NOT NEW.state OR OLD.size IS NOT NEW.size "
    "OR OLD.crdc_series_uuid IS NOT NEW.crdc_series_uuid)"
)
_SERIES_CHANGED = (
    "(OLD.selected IS NOT NEW.selected OR OLD.collection_id IS NOT NEW.collection_id "
    "OR OLD.crdc_series_uuid IS NOT NEW.crdc_series_uuid "
    "OR (OLD.state = 'complete') IS NOT (NEW.state = 'complete') "
    "OR (OLD.state = 'failed') IS NOT (NEW.state = 'failed') "
    "OR OLD.instance_count IS NOT NEW.instance_count "
    "OR OLD.series_size_bytes IS NOT NEW.series_size_bytes)"
)
_OBJECT_UPDATE = "UPDATE OF state, size, crdc_series_uuid"
_SERIES_UPDATE = (
    "UPDATE OF selected, state, collection_id, crdc_series_uuid, instance_count, series_size_bytes"
)

_TOTALS_SCHEMA = (
    """
CREATE TABLE series_object_totals (
    crdc_series_uuid  TEXT PRIMARY KEY,
    files_done        INTEGER NOT NULL DEFAULT 0,
    bytes_done        INTEGER NOT NULL DEFAULT 0,
    files_failed      INTEGER NOT NULL DEFAULT 0,  -- failed or refused
    files_quarantined INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
CREATE TABLE collection_totals (                   -- over selected series only
    collection_id     TEXT PRIMARY KEY,
    series_total      INTEGER NOT NULL DEFAULT 0,
    series_complete   INTEGER NOT NULL DEFAULT 0,
    series_failed     INTEGER NOT NULL DEFAULT 0,
    files_expected    INTEGER NOT NULL DEFAULT 0,
    bytes_expected    INTEGER NOT NULL DEFAULT 0,
    files_done        INTEGER NOT NULL DEFAULT 0,
    bytes_done        INTEGER NOT NULL DEFAULT 0,
    files_failed      INTEGER NOT NULL DEFAULT 0,
    files_quarantined INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
-- a row for every series, made with it, so object triggers only ever update
INSERT INTO series_object_totals
    SELECT s.crdc_series_uuid, COALESCE(o.files_done, 0), COALESCE(o.bytes_done, 0),
        COALESCE(o.files_failed, 0), COALESCE(o.files_quarantined, 0)
    FROM series AS s LEFT JOIN (
        SELECT crdc_series_uuid, SUM(state = 'done') AS files_done,
            SUM(CASE WHEN state = 'done' THEN size ELSE 0 END) AS bytes_done,
            SUM(state IN ('failed', 'refused')) AS files_failed,
            SUM(state = 'quarantined') AS files_quarantined
        FROM object GROUP BY crdc_series_uuid) AS o
    ON o.crdc_series_uuid = s.crdc_series_uuid;
CREATE TRIGGER totals_series_register AFTER INSERT ON series
BEGIN
    INSERT INTO series_object_totals (crdc_series_uuid) SELECT NEW.crdc_series_uuid
        WHERE NOT EXISTS (SELECT 1 FROM series_object_totals
            WHERE crdc_series_uuid = NEW.crdc_series_uuid);
END;
INSERT INTO collection_totals
    SELECT s.collection_id, COUNT(*), SUM(s.state = 'complete'), SUM(s.state = 'failed'),
        COALESCE(SUM(s.instance_count), 0), COALESCE(SUM(s.series_size_bytes), 0),
        COALESCE(SUM(t.files_done), 0), COALESCE(SUM(t.bytes_done), 0),
        COALESCE(SUM(t.files_failed), 0), COALESCE(SUM(t.files_quarantined), 0)
    FROM series AS s LEFT JOIN series_object_totals AS t
        ON t.crdc_series_uuid = s.crdc_series_uuid
    WHERE s.selected = 1 GROUP BY s.collection_id;
-- holds only objects with a problem: recent_problems finds them without a full scan
CREATE INDEX object_problems ON object (crdc_series_uuid)
    WHERE state IN ('failed', 'quarantined', 'refused');
"""
    + _object_trigger("insert", "INSERT", "NEW", "+", "1")
    + _object_trigger("delete", "DELETE", "OLD", "-", "1")
    + _object_trigger("update_old", _OBJECT_UPDATE, "OLD", "-", _OBJECT_CHANGED)
    + _object_trigger("update_new", _OBJECT_UPDATE, "NEW", "+", _OBJECT_CHANGED)
    + _series_trigger("insert", "INSERT", "NEW", "+", "1")
    + _series_trigger("delete", "DELETE", "OLD", "-", "1")
    + _series_trigger("update_old", _SERIES_UPDATE, "OLD", "-", _SERIES_CHANGED)
    + _series_trigger("update_new", _SERIES_UPDATE, "NEW", "+", _SERIES_CHANGED)
)
