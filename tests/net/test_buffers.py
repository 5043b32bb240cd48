"""The memory of small bodies: the byte budget alone, and the native engine keeping to it
against the S3 test server over real HTTP."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

import pytest

from idc_sync.core.verify import expectation_from_listing
from idc_sync.engines.base import FetchJob
from idc_sync.engines.native import NativeEngine
from idc_sync.net.buffers import BodyBudget
from tests.support.s3server import S3TestServer

BUCKET = "idc-open-data"
SERIES = "0a1b2c3d-0000-4000-8000-00000000b0d1"
KIB = 1 << 10


def test_holders_never_exceed_the_budget_and_are_served_in_order() -> None:
    async def go() -> tuple[int, list[int], int]:
        budget = BodyBudget(100)
        peak = 0
        order: list[int] = []

        async def hold(number: int, size: int) -> None:
            nonlocal peak
            taken = await budget.take(size)
            order.append(number)
            peak = max(peak, budget.held)
            await asyncio.sleep(0.005)
            budget.give(taken)

        # 60 + 60 cannot share; 10 waits behind the second 60 (in order, not squeezed in)
        tasks = [asyncio.create_task(hold(n, size)) for n, size in enumerate([60, 60, 10, 30, 90])]
        await asyncio.gather(*tasks)
        return peak, order, budget.held

    peak, order, held = asyncio.run(go())
    assert peak <= 100
    assert order == [0, 1, 2, 3, 4]
    assert held == 0


def test_a_body_larger_than_the_budget_goes_alone() -> None:
    async def go() -> tuple[int, int, int]:
        budget = BodyBudget(100)
        small = await budget.take(40)
        large = asyncio.create_task(budget.take(500))
        await asyncio.sleep(0.01)
        waited = large.done()
        budget.give(small)
        taken = await large
        held = budget.held
        budget.give(taken)
        return int(waited), taken, held

    waited, taken, held = asyncio.run(go())
    assert waited == 0  # it waited for the 40 bytes held before it
    assert taken == 100  # and then holds the whole budget
    assert held == 100


def test_cancelled_waiters_hold_nothing_and_hold_no_one_back() -> None:
    async def go() -> tuple[int, int]:
        budget = BodyBudget(100)
        first = await budget.take(80)
        blocked = asyncio.create_task(budget.take(50))  # waits for the 80
        behind = asyncio.create_task(budget.take(20))  # fits, but waits in order
        await asyncio.sleep(0.01)
        assert not behind.done()
        blocked.cancel()
        await asyncio.gather(blocked, return_exceptions=True)
        got = await asyncio.wait_for(behind, 1)  # the cancelled one no longer blocks it
        budget.give(got)
        budget.give(first)
        # granted and cancelled in the same turn: the grant goes back
        budget_full = await budget.take(100)
        late = asyncio.create_task(budget.take(100))
        await asyncio.sleep(0)
        budget.give(budget_full)  # grants ``late`` ...
        late.cancel()  # ... which is cancelled before it runs
        await asyncio.gather(late, return_exceptions=True)
        return got, budget.held

    got, held = asyncio.run(go())
    assert got == 20
    assert held == 0


def test_a_budget_of_nothing_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one byte"):
        BodyBudget(0)


def _fetch_all(server: S3TestServer, tmp_path: Path, budget: int, count: int, size: int) -> int:
    keys = [f"{SERIES}/{n:08d}-0000-4000-8000-000000000000.dcm" for n in range(count)]
    bodies = {key: hashlib.sha256(key.encode()).digest() * (size // 32) for key in keys}
    stored = {key: server.put(BUCKET, key, body) for key, body in bodies.items()}
    server.reset_peak()

    async def go() -> None:
        engine = NativeEngine(server.endpoint, concurrency=32, body_budget=budget)
        async with engine:
            jobs = []
            for key in keys:
                expected = expectation_from_listing(stored[key].etag, size)
                final = tmp_path / f"{budget}" / key.replace("/", "_")
                jobs.append(FetchJob(BUCKET, key, expected, final))
            await asyncio.gather(*(engine.fetch(job, lambda n: None) for job in jobs))

    asyncio.run(go())
    for key, body in bodies.items():
        assert (tmp_path / f"{budget}" / key.replace("/", "_")).read_bytes() == body
    return server.peak_in_flight


def test_the_engine_asks_for_no_more_bodies_than_its_budget_holds(
    s3_server: S3TestServer, tmp_path: Path
) -> None:
    size = 64 * KIB
    # every GET waits 50 ms at the server, so requests sent together are answered together
    s3_server.faults.add("latency", on=["GET"], seconds=0.05)
    unbounded = _fetch_all(s3_server, tmp_path, 32 * size, 24, size)
    bounded = _fetch_all(s3_server, tmp_path, 3 * size, 24, size)
    assert unbounded > 3  # without the bound the 32 slots overlap at the server
    assert 2 <= bounded <= 3  # with it, at most three bodies are asked for at once
    assert s3_server.errors == []
