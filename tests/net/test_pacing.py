"""Adaptive request concurrency: the AIMD limit on its own, then inside the native engine
against the S3 test server answering SlowDown."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from idc_sync.core.errors import RetryableError
from idc_sync.core.verify import expectation_from_listing
from idc_sync.engines.base import FetchJob
from idc_sync.engines.native import NativeEngine
from idc_sync.net.pacing import AdaptiveLimit
from tests.support.s3server import S3TestServer

BUCKET = "idc-open-data"
SERIES = "7b7b7b7b-0000-4000-8000-000000000001"


def test_halving_on_throttle_and_additive_growth_on_success() -> None:
    limit = AdaptiveLimit(32, floor=2)
    assert limit.limit == 32
    for expected in (16, 8, 4, 2, 2):
        limit.throttled()
        assert limit.limit == expected
    assert limit.backoffs == 5
    # from 2, about `limit` successes add one
    for _ in range(3):
        limit.succeeded()
    assert limit.limit == 3
    for _ in range(200):
        limit.succeeded()
    assert limit.limit == 20
    for _ in range(2000):
        limit.succeeded()
    assert limit.limit == 32  # never above the ceiling


def test_bad_bounds_are_refused() -> None:
    with pytest.raises(ValueError, match="floor"):
        AdaptiveLimit(4, floor=5)


def test_holders_never_exceed_the_limit_and_cancelled_waiters_free_nothing() -> None:
    async def go() -> tuple[int, int]:
        limit = AdaptiveLimit(8, start=3)
        peak = 0

        async def hold() -> None:
            nonlocal peak
            async with limit:
                peak = max(peak, limit.held)
                await asyncio.sleep(0.01)

        waiting = asyncio.create_task(hold())
        tasks = [asyncio.create_task(hold()) for _ in range(30)]
        await asyncio.sleep(0)
        waiting.cancel()
        limit.throttled()  # 3 -> 1.5 -> admits one at a time
        await asyncio.gather(*tasks)
        await asyncio.gather(waiting, return_exceptions=True)
        return peak, limit.held

    peak, held = asyncio.run(go())
    assert peak <= 3
    assert held == 0


def test_the_engine_halves_its_requests_in_flight_on_slow_down(
    s3_server: S3TestServer, tmp_path: Path
) -> None:
    keys = [f"{SERIES}/{n:08d}-0000-4000-8000-000000000000.dcm" for n in range(12)]
    stored = {key: s3_server.put(BUCKET, key, bytes([n]) * 100) for n, key in enumerate(keys)}
    s3_server.faults.add("slow_down", on=["GET"], times=3)

    async def go() -> tuple[int, int, int, int]:
        async with NativeEngine(s3_server.endpoint, concurrency=56) as engine:
            assert engine.pace.limit == 64
            refused = 0
            for key in keys:
                job = FetchJob(
                    BUCKET, key, expectation_from_listing(stored[key].etag, 100),
                    tmp_path / key.replace("/", "_"),
                )  # fmt: skip
                try:
                    await engine.fetch(job, lambda n: None)
                except RetryableError:
                    refused += 1
            after_throttle = engine.pace.limit
            for _ in range(5000):
                engine.pace.succeeded()
            return refused, engine.pace.backoffs, after_throttle, engine.pace.limit

    refused, backoffs, after_throttle, recovered = asyncio.run(go())
    assert refused == 3
    assert backoffs == 3
    assert after_throttle == 9  # 64 / 2 / 2 / 2, then nine successes add about one
    assert recovered == 64
