"""Write transactions of the state database against other writers and cancellation: a
caller cancelled while its BEGIN runs leaves no transaction open (which would hold SQLite's
write lock against every worker process), and a write lock another process holds for a
while is waited out."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from pathlib import Path

from idc_sync.state.database import Database


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
    held = threading.Event()

    def hold() -> None:
        other = sqlite3.connect(path, timeout=1, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        held.set()
        time.sleep(1.5)
        other.execute("COMMIT")
        other.close()

    holder = threading.Thread(target=hold)
    holder.start()
    held.wait()

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
