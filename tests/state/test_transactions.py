"""Write transactions of the state database against other writers and cancellation: a
caller cancelled while its BEGIN runs leaves no transaction open (which would hold SQLite's
write lock against every worker process), a write lock another process holds for a while
is waited out, and the workers' one-call transactions (``run_transaction``) are atomic,
end before a cancellation comes through, and never stall beside another writer."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from idc_sync.state.database import Database, Transaction


def test_a_caller_cancelled_during_begin_leaves_no_transaction_open(tmp_path: Path) -> None:
    async def go() -> None:
        db = await Database.open(tmp_path / "state.sqlite")
        try:
            for _ in range(50):  # cancel at every moment of the BEGIN's trip to the thread

                async def write() -> None:
                    async with db.transaction():
                        await db.execute("set_meta", {"key": "k", "value": "v"})

                task = asyncio.create_task(write())
                await asyncio.sleep(0)
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
                assert not db._writer.in_transaction
            # and another process can still write
            other = sqlite3.connect(tmp_path / "state.sqlite", timeout=1)
            other.execute("BEGIN IMMEDIATE")
            other.execute("ROLLBACK")
            other.close()
            async with db.transaction():
                await db.execute("set_meta", {"key": "k", "value": "w"})
        finally:
            await db.close()

    asyncio.run(go())


def test_a_write_lock_held_by_another_process_for_a_while_is_waited_out(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite"

    async def create() -> None:
        await (await Database.open(path)).close()

    asyncio.run(create())
    holder = _hold_write_lock(path, 1.5)

    async def write() -> float:
        db = await Database.open(path, create=False)
        started = time.monotonic()
        try:
            async with db.transaction():
                await db.execute("set_meta", {"key": "k", "value": "v"})
        finally:
            await db.close()
        return time.monotonic() - started

    waited = asyncio.run(write())
    holder.join()
    assert waited >= 1.0


def _hold_write_lock(path: Path, seconds: float) -> threading.Thread:
    """Another connection holds SQLite's write lock for ``seconds`` (on a thread)."""
    held = threading.Event()

    def hold() -> None:
        other = sqlite3.connect(path, timeout=1, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        held.set()
        time.sleep(seconds)
        other.execute("COMMIT")
        other.close()

    holder = threading.Thread(target=hold)
    holder.start()
    held.wait()
    return holder


def _meta(path: Path, key: str) -> list[tuple[str]]:
    with contextlib.closing(sqlite3.connect(path)) as connection:
        return connection.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchall()


def test_run_transaction_waits_out_another_writer_off_the_event_loop(tmp_path: Path) -> None:
    """The wait is on the state's thread: the event loop goes on meanwhile."""
    path = tmp_path / "state.sqlite"

    async def go() -> tuple[float, int]:
        db = await Database.open(path)
        holder = _hold_write_lock(path, 1.0)
        ticks = 0

        async def tick() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        ticker = asyncio.create_task(tick())
        started = time.monotonic()
        try:
            await db.run_transaction(lambda tx: tx.execute("set_meta", {"key": "k", "value": "v"}))
            return time.monotonic() - started, ticks
        finally:
            ticker.cancel()
            holder.join()
            await db.close()

    waited, ticks = asyncio.run(go())
    assert waited >= 0.9
    assert ticks >= 30  # ~100 a second when the loop is free
    assert _meta(path, "k") == [("v",)]


def test_a_failing_run_transaction_body_writes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite"

    def half_then_fail(tx: Transaction) -> None:
        tx.execute("set_meta", {"key": "k", "value": "half"})
        raise ValueError("the body's own bug")

    async def go() -> None:
        db = await Database.open(path)
        try:
            with pytest.raises(ValueError, match="own bug"):
                await db.run_transaction(half_then_fail)
            assert not db._writer.in_transaction
            await db.run_transaction(lambda tx: tx.execute("set_meta", {"key": "j", "value": "w"}))
        finally:
            await db.close()

    asyncio.run(go())
    assert _meta(path, "k") == []
    assert _meta(path, "j") == [("w",)]


def test_a_cancelled_run_transaction_ends_its_transaction_before_the_cancel(
    tmp_path: Path,
) -> None:
    """Cancelled while it waits for another writer, the caller waits on until the transaction
    is committed, then sees the cancellation: no transaction is left open, and the caller
    knows its write happened."""
    path = tmp_path / "state.sqlite"

    async def go() -> None:
        db = await Database.open(path)
        holder = _hold_write_lock(path, 0.5)
        try:
            task = asyncio.create_task(
                db.run_transaction(lambda tx: tx.execute("set_meta", {"key": "k", "value": "v"}))
            )
            await asyncio.sleep(0.1)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert _meta(path, "k") == [("v",)]  # committed before the cancellation came
            assert not db._writer.in_transaction
        finally:
            holder.join()
            await db.close()

    asyncio.run(go())


def test_reads_and_transactions_on_one_connection_beside_another_writer_never_stall(
    tmp_path: Path,
) -> None:
    """A read answered in two calls kept its snapshot open between them; a transaction
    queued in between, with another process committing meanwhile, could never begin (it
    waited the whole BUSY_SECONDS). Reads are one call: all of this ends in seconds."""
    path = tmp_path / "state.sqlite"
    stop = threading.Event()

    def commit_often() -> None:
        other = sqlite3.connect(path, timeout=10, isolation_level=None)
        number = 0
        while not stop.is_set():
            other.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('other', ?)", (number,))
            number += 1
            time.sleep(0.001)
        other.close()

    async def go() -> None:
        db = await Database.open(path)
        writer = threading.Thread(target=commit_often)
        writer.start()
        try:

            async def write(number: int) -> None:
                await db.run_transaction(
                    lambda tx: tx.execute("set_meta", {"key": f"k{number}", "value": "v"})
                )

            async def read() -> None:
                await db.fetchall("get_meta", {"key": "other"})

            work = [write(n) if n % 2 else read() for n in range(400)]
            await asyncio.wait_for(asyncio.gather(*work), timeout=30)
        finally:
            stop.set()
            writer.join()
            await db.close()

    asyncio.run(go())
    assert _meta(path, "k399") == [("v",)]
