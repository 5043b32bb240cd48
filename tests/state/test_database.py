"""The state database itself, on real SQLite files: migrations bring any older state to the
current schema version one numbered step at a time, the life-cycle guards abort every state
change core/lifecycle.py does not list, and SQLite's own failures become our errors."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections import defaultdict
from pathlib import Path

import pytest

from idc_sync.core.errors import IllegalMove, LocalStorageError, StateError
from idc_sync.core.lifecycle import OBJECT_TRANSITIONS, SERIES_TRANSITIONS, ObjectState, SeriesState
from idc_sync.state.database import (
    MIGRATIONS,
    SCHEMA_VERSION,
    Database,
    peek,
    peek_selection,
    queries,
)
from idc_sync.state.guards import guard_statements


def _sql(db: Path, statement: str) -> list[tuple[object, ...]]:
    with contextlib.closing(sqlite3.connect(db)) as connection:
        return connection.execute(statement).fetchall()


def _open(db: Path) -> Database:
    return asyncio.run(Database.open(db))


def test_every_migration_file_is_numbered_in_order_and_the_version_counts_them() -> None:
    assert [name.split("_", 1)[0] for name in MIGRATIONS] == [
        f"{number:03d}" for number in range(1, len(MIGRATIONS) + 1)
    ]
    assert len(MIGRATIONS) == SCHEMA_VERSION
    # every named query parses against the current schema
    with contextlib.closing(sqlite3.connect(":memory:")) as connection:
        from idc_sync.state.database import _sql as read_sql

        for name in MIGRATIONS:
            connection.executescript(read_sql(name))
        connection.execute(queries()["create_listing"])
        anything: defaultdict[str, object] = defaultdict(lambda: None)
        for name, statement in queries().items():
            if name != "create_listing":
                connection.execute(f"EXPLAIN {statement}", anything)


def test_a_version_1_state_is_migrated_step_by_step_and_keeps_its_rows(tmp_path: Path) -> None:
    db = tmp_path / "state.sqlite"
    from idc_sync.state.database import _sql as read_sql

    with contextlib.closing(sqlite3.connect(db)) as connection:
        connection.executescript(read_sql("001_queue.sql"))
        connection.execute(
            "INSERT INTO series (crdc_series_uuid, SeriesInstanceUID, collection_id, aws_bucket,"
            " idc_version, root, rel_dir, state, updated_at) VALUES"
            " ('u', 'i', 'c', 'idc-open-data', 24, '/srv', 'c/i', 'complete', 0)"
        )
        connection.execute("PRAGMA user_version = 1")
        connection.commit()
    asyncio.run(_open(db).close())
    assert _sql(db, "PRAGMA user_version") == [(SCHEMA_VERSION,)]
    assert _sql(db, "SELECT crdc_series_uuid, state, leaving FROM series") == [
        ("u", "complete", None)
    ]
    assert _sql(db, "SELECT series_total, series_complete FROM collection_totals") == [(1, 1)]
    assert peek_selection(db) == []


def test_a_state_is_complete_when_every_selected_series_is_and_reading_it_writes_nothing(
    tmp_path: Path,
) -> None:
    db = tmp_path / "state.sqlite"
    assert not peek(db).complete  # no state
    asyncio.run(_open(db).close())
    assert not peek(db).complete  # no series

    def series(uuid: str, state: str, selected: int = 1) -> None:
        with contextlib.closing(sqlite3.connect(db)) as connection:
            connection.execute(
                "INSERT INTO series (crdc_series_uuid, SeriesInstanceUID, collection_id,"
                " aws_bucket, idc_version, root, rel_dir, state, selected, updated_at) VALUES"
                " (?, ?, 'c', 'idc-open-data', 24, '/srv', ?, ?, ?, 0)",
                (uuid, f"1.2.{uuid}", f"c/{uuid}", state, selected),
            )
            connection.commit()

    series("a", "complete")
    assert peek(db).complete
    series("b", "queued", selected=0)  # not selected: it does not count
    assert peek(db).complete
    series("c", "failed")
    assert not peek(db).complete
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.sqlite"]  # no -wal, -shm
    (tmp_path / "broken.sqlite").write_bytes(b"not a database" * 100)
    with pytest.raises(StateError, match=r"broken\.sqlite"):
        peek(tmp_path / "broken.sqlite")


async def _write(db: Database, statement: str) -> None:
    """A write no named query makes, through the database's error mapping."""
    async with db.transaction():
        await db._guarded(db._writer.execute(statement))


@pytest.mark.parametrize(
    ("table", "old", "new"),
    [
        ("object", ObjectState.DONE, ObjectState.REFUSED),
        ("object", ObjectState.PENDING, ObjectState.PENDING),
        ("object", ObjectState.QUARANTINED, ObjectState.DONE),
        ("series", SeriesState.QUEUED, SeriesState.COMPLETE),
        ("series", SeriesState.RETIRING, SeriesState.LEASED),
        ("series", SeriesState.COMPLETE, SeriesState.COMPLETE),
    ],
)
def test_a_move_the_table_forbids_fails_loudly_and_changes_nothing(
    tmp_path: Path, table: str, old: str, new: str
) -> None:
    transitions = OBJECT_TRANSITIONS if table == "object" else SERIES_TRANSITIONS
    assert new not in transitions[old]  # type: ignore[index]
    db_path = tmp_path / "state.sqlite"

    async def scenario() -> None:
        db = await Database.open(db_path)
        try:
            await _write(
                db,
                "INSERT INTO series (crdc_series_uuid, SeriesInstanceUID, "
                "collection_id, aws_bucket, idc_version, root, rel_dir, state, "
                "updated_at) VALUES ('s', 'i', 'c', 'b', 25, '/r', 'd', 'queued', 0)",
            )
            await _write(
                db,
                "INSERT INTO object (key, crdc_series_uuid, size, etag, path, "
                "state) VALUES ('s/k.dcm', 's', 1, 'e', '/r/d/k.dcm', 'pending')",
            )
            # put the row in ``old`` without the guards (as a state from elsewhere might be)
            await db._writer.execute("DROP TRIGGER temp.guard_object_move")
            await db._writer.execute("DROP TRIGGER temp.guard_series_move")
            await _write(db, f"UPDATE {table} SET state = '{old}'")
            for statement in guard_statements():
                await db._writer.execute(statement)
            with pytest.raises(IllegalMove, match=f"illegal state change of {table}"):
                await _write(db, f"UPDATE {table} SET state = '{new}'")
        finally:
            await db.close()

    asyncio.run(scenario())
    assert _sql(db_path, f"SELECT state FROM {table}") == [(str(old),)]


def test_a_row_may_only_start_in_an_initial_state(tmp_path: Path) -> None:
    async def scenario() -> None:
        db = await Database.open(tmp_path / "state.sqlite")
        try:
            with pytest.raises(IllegalMove, match="illegal initial state of series"):
                await _write(
                    db,
                    "INSERT INTO series (crdc_series_uuid, SeriesInstanceUID, "
                    "collection_id, aws_bucket, idc_version, root, rel_dir, state,"
                    " updated_at) VALUES ('s', 'i', 'c', 'b', 25, '/r', 'd', "
                    "'complete', 0)",
                )
        finally:
            await db.close()

    asyncio.run(scenario())


def test_sqlite_failures_become_our_errors_naming_the_database(tmp_path: Path) -> None:
    from idc_sync.state.database import storage_error

    path = tmp_path / "state.sqlite"
    full = storage_error(sqlite3.OperationalError("database or disk is full"), path)
    assert isinstance(full, LocalStorageError)
    assert str(full) == f"no space left on device writing the state database {path}"
    readonly = storage_error(sqlite3.OperationalError("attempt to write a readonly database"), path)
    assert isinstance(readonly, LocalStorageError)
    assert str(path) in str(readonly)
    garbage = storage_error(sqlite3.DatabaseError("file is not a database"), path)
    assert isinstance(garbage, StateError)


def test_the_page_cache_is_64_mib_unless_a_worker_asks_for_less(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite"

    async def cache_kib(cache_mib: int | None = None) -> int:
        db = await (
            Database.open(path) if cache_mib is None else Database.open(path, cache_mib=cache_mib)
        )
        try:
            cursor = await db._writer.execute("PRAGMA cache_size")
            row = await cursor.fetchone()
            assert row is not None
            return -int(row[0])  # negative: KiB, not pages
        finally:
            await db.close()

    assert asyncio.run(cache_kib()) == 64 * 1024
    assert asyncio.run(cache_kib(cache_mib=8)) == 8 * 1024


async def _fail_inside(db: Database) -> None:
    async with db.transaction():
        await db.execute("begin_plan")
        raise ZeroDivisionError


def test_a_failed_commit_leaves_no_transaction_open(tmp_path: Path) -> None:
    """After a COMMIT fails (a full disk), the next transaction must start: it once failed
    with "cannot start a transaction within a transaction"."""

    async def scenario() -> None:
        db = await Database.open(tmp_path / "state.sqlite")
        try:
            with pytest.raises(ZeroDivisionError):
                await _fail_inside(db)
            async with db.transaction():
                await db.execute("begin_plan")
        finally:
            await db.close()

    asyncio.run(scenario())
