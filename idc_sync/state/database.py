"""One SQLite state database: open it (WAL), bring its schema to the current version with the
numbered migrations in ``sql/``, install the life-cycle guards, run the named queries of
``sql/queries.sql``, and turn SQLite's own failures (a full disk, a read-only file system,
a file that is no database) into idc-sync's error tree, naming the database.

One connection writes, and every write transaction takes turns on it (``transaction``); a
second connection reads what was committed, so ``status`` never sees half a plan.

The workers' frequent, short transactions run whole on the writing connection's thread
(``run_transaction``): SQLite's write lock, which every worker process of a round shares,
is then held only while SQLite works. Held statement by statement, each statement a turn
of a busy event loop, one of two loops held it 13.5 s of a 27 s request-bound run, and the
other process waited up to 3.5 s at a time, its own reads queued behind the wait."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from importlib.resources import files
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite

from idc_sync.core.errors import ConfigurationError, IllegalMove, LocalStorageError, StateError
from idc_sync.state.guards import ILLEGAL_MOVE, ILLEGAL_START, guard_statements

# Every change to the schema is a new numbered file here and bumps the version by one.
MIGRATIONS = (
    "001_queue.sql",
    "002_running_totals.sql",
    "003_mirror_binding.sql",
    "004_series_catalog.sql",
)
SCHEMA_VERSION = len(MIGRATIONS)

Params = Mapping[str, Any]
# How long a write transaction may wait for another process's write lock in all.
BUSY_SECONDS = 60.0

T = TypeVar("T")

# The named queries read JSON parameters with ->> (SQLite 3.38, February 2022) and use
# RETURNING (3.35). Ubuntu 22.04's system SQLite, which a Python built there links, is 3.37.
MIN_SQLITE = (3, 38, 0)


def require_sqlite() -> None:
    """ConfigurationError unless Python's sqlite3 module runs SQLite MIN_SQLITE or newer:
    on an older one the first plan or listing would fail with a syntax error. Checked
    before the state is first read or written."""
    if sqlite3.sqlite_version_info < MIN_SQLITE:
        found = sqlite3.sqlite_version
        raise ConfigurationError(
            f"idc-sync needs SQLite {'.'.join(map(str, MIN_SQLITE))} or newer, and this "
            f"Python's sqlite3 module runs SQLite {found}: use a Python linked with a newer "
            "one (python.org or uv builds, conda, Debian 12, Ubuntu 24.04, or the Docker "
            "image)"
        )


@cache
def _sql(name: str) -> str:
    return (files("idc_sync.state") / "sql" / name).read_text(encoding="utf-8")


@cache
def queries() -> Mapping[str, str]:
    """The named queries of sql/queries.sql."""
    found: dict[str, str] = {}
    for block in re.split(r"^-- name: ", _sql("queries.sql"), flags=re.M)[1:]:
        name, _, body = block.partition("\n")
        found[name.strip()] = body.strip()
    return found


def json_list(values: Iterable[str]) -> str:
    """A list parameter for ``json_each``."""
    return json.dumps(list(values))


def storage_error(error: sqlite3.Error, path: Path) -> Exception:
    """Our error for a failure SQLite reports on the state database at ``path``."""
    text = str(error)
    lowered = text.lower()
    if ILLEGAL_MOVE in lowered or ILLEGAL_START in lowered:
        return IllegalMove(f"{text} (see core/lifecycle.py)")
    if "disk is full" in lowered:
        return LocalStorageError(f"no space left on device writing the state database {path}")
    if "readonly" in lowered or "read-only" in lowered:
        return LocalStorageError(f"read-only: cannot write the state database {path}")
    if "disk i/o error" in lowered:
        return LocalStorageError(f"I/O error on the state database {path}")
    if "unable to open" in lowered:
        return StateError(f"cannot open the state database {path} (permission denied or gone)")
    if "locked" in lowered:
        return StateError(f"the state database {path} is locked by another program")
    if isinstance(error, sqlite3.DatabaseError) and not isinstance(error, sqlite3.IntegrityError):
        return StateError(
            f"state database {path} is unreadable ({text}); it is not an idc-sync state file "
            "or it is corrupted. No mirrored file was touched."
        )
    return error


def _has_table(db: sqlite3.Connection, name: str) -> bool:
    found = db.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)
    ).fetchone()
    return found is not None


@dataclass(frozen=True, slots=True)
class Peek:
    """What a run reads of the state before it takes the state's lock (``peek``)."""

    selection: list[tuple[str, str, str]]  # the mirror's own: (part, value, origin)
    complete: bool  # every selected series complete (False: none selected, or no state)


def peek(path: Path) -> Peek:
    """The mirror's selection and whether the last run left every selected series complete,
    read without opening the state for writing (no migration, no lock). A state without a
    selection yet, or without running totals (older than schema version 2), reads as empty
    and not complete."""
    require_sqlite()
    if not path.exists():
        return Peek([], complete=False)
    # Without a WAL file nobody is writing: read it as immutable, which leaves no -shm or
    # -wal file behind (a refused run must change nothing). A write that starts meanwhile
    # is caught by the caller, which reads the state again under the lock.
    live = path.with_name(path.name + "-wal").exists()
    uri = f"{path.as_uri()}?{'mode=ro' if live else 'immutable=1'}"
    rows: list[Any] = []
    complete = False
    try:
        with contextlib.closing(sqlite3.connect(uri, uri=True)) as db:
            db.execute("PRAGMA busy_timeout = 10000")
            if _has_table(db, "selection"):
                rows = db.execute(queries()["stored_selection"]).fetchall()
            if _has_table(db, "collection_totals"):
                complete = bool(db.execute(queries()["mirror_complete"]).fetchone()[0])
    except sqlite3.Error as error:
        raise storage_error(error, path) from None
    return Peek([(str(r[0]), str(r[1]), str(r[2])) for r in rows], complete)


def peek_selection(path: Path) -> list[tuple[str, str, str]]:
    """The mirror's own selection (``peek``); empty for a state that has none yet."""
    return peek(path).selection


class Transaction:
    """The named queries inside one write transaction, on the writing connection's thread
    (blocking): what a ``run_transaction`` body is handed."""

    def __init__(self, connection: sqlite3.Connection, named: Mapping[str, str]) -> None:
        self._connection = connection
        self._queries = named

    def execute(self, name: str, params: Params | None = None) -> int:
        """Run one named statement; returns how many rows it changed."""
        return int(self._connection.execute(self._queries[name], params or {}).rowcount)

    def fetchall(self, name: str, params: Params | None = None) -> list[Sequence[Any]]:
        return list(self._connection.execute(self._queries[name], params or {}).fetchall())


def _begin_blocking(connection: sqlite3.Connection) -> None:
    """BEGIN IMMEDIATE on the connection's thread, waiting out another process's write
    lock as ``Database._begin_waiting`` does (SQLite's busy handler covers the rest)."""
    deadline = time.monotonic() + BUSY_SECONDS
    pause = 0.001
    while True:
        try:
            connection.execute("BEGIN IMMEDIATE")
            return
        except sqlite3.OperationalError as error:
            if not _is_busy(error) or time.monotonic() > deadline:
                raise
        time.sleep(pause)
        pause = min(pause * 2, 0.05)


def _is_busy(error: sqlite3.OperationalError) -> bool:
    text = str(error).lower()
    return "locked" in text or "busy" in text


def _transaction_blocking(
    connection: sqlite3.Connection, named: Mapping[str, str], body: Callable[[Transaction], T]
) -> T:
    _begin_blocking(connection)
    try:
        result = body(Transaction(connection, named))
        connection.execute("COMMIT")
    except BaseException:
        if connection.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                connection.execute("ROLLBACK")
        raise
    return result


def _on_thread(connection: aiosqlite.Connection, function: Callable[[], T]) -> Awaitable[T]:
    """Run ``function`` on the connection's own thread, between its other calls. aiosqlite
    has no public call for this: ``_execute`` is the queue every public method of it goes
    through (so pinned below 0.23 in pyproject.toml; tests/state cover it)."""
    queue_call: Callable[[Callable[[], T]], Awaitable[T]] = connection._execute
    return queue_call(function)


class Database:
    """The state database of one state directory; open with ``await Database.open(path)``."""

    def __init__(self, writer: aiosqlite.Connection, path: Path) -> None:
        self.path = path
        self._writer = writer
        self._reader: aiosqlite.Connection | None = None
        # One connection serves every coroutine: writes take turns, each in its own
        # transaction, or one coroutine's statements would land in another's.
        self._write_lock = asyncio.Lock()
        self._queries = queries()
        self._closed = False
        self._opening_reader = asyncio.Lock()

    # -- opening ------------------------------------------------------------------------

    @classmethod
    async def open(cls, path: Path, *, create: bool = True, cache_mib: int = 64) -> Database:
        """Open (and with ``create``, make or upgrade) the state at ``path``. StateError when
        it is missing without ``create``, not ours, or from a newer idc-sync. ``cache_mib``:
        SQLite's page cache of the writing connection."""
        require_sqlite()
        if not create and not path.exists():  # noqa: ASYNC240 - one stat before opening
            raise StateError(f"no idc-sync state at {path}")
        try:
            writer = await aiosqlite.connect(path, isolation_level=None)
        except sqlite3.Error as error:
            raise StateError(f"cannot open state database {path}: {error}") from None
        database = cls(writer, path)
        try:
            await database._prepare(create, cache_mib)
        except sqlite3.Error as error:
            await writer.close()
            raise storage_error(error, path) from None
        except BaseException:
            await writer.close()
            raise
        return database

    async def _prepare(self, create: bool, cache_mib: int) -> None:
        db = self._writer
        await db.execute("PRAGMA busy_timeout = 10000")
        version = await self._user_version()
        if version > SCHEMA_VERSION:
            raise StateError(
                f"state database {self.path} has schema version {version}, newer than this "
                f"idc-sync understands ({SCHEMA_VERSION}); upgrade idc-sync"
            )
        if version == 0 and not create:
            cursor = await db.execute("SELECT count(*) FROM sqlite_master")
            row = await cursor.fetchone()
            if row is not None and int(row[0]) > 0:
                raise StateError(f"{self.path} is not an idc-sync state database")
            raise StateError(f"no idc-sync state at {self.path}")
        await db.execute("PRAGMA journal_mode = WAL")
        # WAL + NORMAL may lose the last commits on power loss, never consistency; a lost
        # "done" only means the file is re-verified (not fetched) on the next run.
        await db.execute("PRAGMA synchronous = NORMAL")
        await db.execute("PRAGMA foreign_keys = ON")
        # Random UUID keys touch pages all over the B-trees; a 64 MB cache keeps a
        # 600k-series plan from thrashing (the default is 2 MB).
        await db.execute(f"PRAGMA cache_size = -{int(cache_mib) * 1024}")
        if version < SCHEMA_VERSION:
            await self._migrate(version)
        for statement in guard_statements():
            await db.execute(statement)
        await db.execute(self._queries["create_listing"])

    async def _user_version(self) -> int:
        cursor = await self._writer.execute("PRAGMA user_version")
        row = await cursor.fetchone()
        return int(row[0]) if row else 0

    async def _migrate(self, version: int) -> None:
        """Apply the migrations after ``version``, each in its own transaction with its
        version number, so a run killed in the middle leaves a state of one version."""
        if version == 1 and await self._has_table("collection_totals"):
            # idc-sync before schema files created the running totals without a version
            version = 2
            await self._writer.execute("PRAGMA user_version = 2")
        async with self._write_lock:
            for number in range(version, SCHEMA_VERSION):
                script = _sql(MIGRATIONS[number])
                try:
                    await self._writer.executescript(
                        f"BEGIN IMMEDIATE;\n{script}\nPRAGMA user_version = {number + 1};\nCOMMIT;"
                    )
                except BaseException:
                    if self._writer.in_transaction:
                        await self._writer.execute("ROLLBACK")
                    raise

    async def _has_table(self, name: str) -> bool:
        cursor = await self._writer.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)
        )
        return await cursor.fetchone() is not None

    async def close(self) -> None:
        self._closed = True
        reader, self._reader = self._reader, None
        if reader is not None:
            await reader.close()
        await self._writer.close()

    # -- statements ---------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[None]:
        """One write transaction; everything in it is committed together or not at all."""
        async with self._write_lock:
            await self._begin()
            try:
                yield
                await self._guarded(self._writer.execute("COMMIT"))
            except BaseException:
                # A failed COMMIT (disk full) leaves the transaction open: end it, or the
                # next BEGIN fails with "cannot start a transaction within a transaction".
                if self._writer.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        await self._writer.execute("ROLLBACK")
                raise

    async def run_transaction(self, body: Callable[[Transaction], T]) -> T:
        """``body`` in one write transaction, run whole on the writing connection's thread
        (see the module's doc). A cancelled caller still waits for the transaction to end,
        committed or rolled back, before the cancellation goes on: the transaction has then
        run its course, so the caller must not write it again."""
        async with self._write_lock:
            writer = self._writer
            work = asyncio.ensure_future(
                _on_thread(writer, lambda: _transaction_blocking(writer._conn, self._queries, body))
            )
            try:
                result: T = await self._guarded(asyncio.shield(work))
                return result
            except asyncio.CancelledError:
                with contextlib.suppress(Exception):
                    await work
                raise

    async def _begin(self) -> None:
        """BEGIN IMMEDIATE, never left open by a cancelled caller: the statement runs on
        aiosqlite's thread whether or not we still wait, and a transaction nobody ends
        holds SQLite's write lock against every other process of the round (and fails this
        connection's next BEGIN: "cannot start a transaction within a transaction")."""
        begin = asyncio.ensure_future(self._begin_waiting())
        try:
            await asyncio.shield(begin)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await begin
            if self._writer.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    await self._writer.execute("ROLLBACK")
            raise

    async def _begin_waiting(self) -> None:
        """BEGIN IMMEDIATE, waiting out another process's write lock. SQLite's busy
        handler waits busy_timeout for a plain lock, but some moments of a WAL database
        (another connection closing, and checkpointing as it goes) answer SQLITE_BUSY at
        once; with worker processes writing beside us, that is a moment to wait, too."""
        deadline = asyncio.get_running_loop().time() + BUSY_SECONDS
        pause = 0.005
        while True:
            try:
                await self._writer.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as error:
                if not _is_busy(error) or asyncio.get_running_loop().time() > deadline:
                    raise storage_error(error, self.path) from None
            except sqlite3.Error as error:
                raise storage_error(error, self.path) from None
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.25)

    async def _guarded(self, call: Any) -> Any:
        try:
            return await call
        except sqlite3.Error as error:
            raise storage_error(error, self.path) from None

    async def execute(self, name: str, params: Params | None = None) -> int:
        """Run one named statement; returns how many rows it changed."""
        cursor = await self._guarded(self._writer.execute(self._queries[name], params or {}))
        return int(cursor.rowcount)

    async def executemany(self, name: str, rows: Iterable[Params]) -> None:
        await self._guarded(self._writer.executemany(self._queries[name], rows))

    async def fetchall(self, name: str, params: Params | None = None) -> list[Sequence[Any]]:
        """Rows of a named query, on the writing connection (sees this run's own writes). One
        call: a statement stepped in one call and read out in the next keeps its snapshot
        open in between, and a transaction queued between the two could never begin."""
        rows = await self._guarded(self._writer.execute_fetchall(self._queries[name], params or {}))
        return list(rows)

    async def fetchone(self, name: str, params: Params | None = None) -> Sequence[Any] | None:
        rows = await self.fetchall(name, params)
        return rows[0] if rows else None

    async def _reading(self) -> aiosqlite.Connection:
        """The reports' connection, made on first use (by one caller, however many ask)."""
        async with self._opening_reader:
            if self._closed:
                raise StateError(f"the state database {self.path} is closed")
            if self._reader is None:
                reader = await self._guarded(aiosqlite.connect(self.path, isolation_level=None))
                if self._closed:  # closed while the connection was being made
                    await reader.close()
                    raise StateError(f"the state database {self.path} is closed")
                await self._guarded(reader.execute("PRAGMA busy_timeout = 10000"))
                self._reader = reader
            return self._reader

    async def snapshot(self, name: str, params: Params | None = None) -> list[Sequence[Any]]:
        """Rows of a named query as last committed: the reports' connection, which never
        sees a transaction in progress (a plan being written, say)."""
        reader = await self._reading()
        cursor = await self._guarded(reader.execute(self._queries[name], params or {}))
        return list(await self._guarded(cursor.fetchall()))
