"""A transfer engine that reports every request it makes (its kind, how it ended, how long
it took) to a ``RequestMeter``: the daemon's Prometheus metrics, or, in a worker process,
the pipe to the parent that keeps them (run/channel.py)."""

from __future__ import annotations

import time
from typing import Protocol

from idc_sync.core.model import ListedObject
from idc_sync.core.verify import Verdict
from idc_sync.engines.base import Engine, FetchJob, ProgressCallback


class RequestMeter(Protocol):
    """Told when a request (kind: "list", "head", "get") starts and how it ends."""

    def request_started(self, kind: str) -> None: ...

    def request_finished(self, kind: str, outcome: str, seconds: float) -> None: ...


class MeteredEngine:
    """A transfer engine that times each request and counts those in flight."""

    def __init__(self, engine: Engine, meter: RequestMeter) -> None:
        self._engine = engine
        self._meter = meter

    async def list_series(
        self, bucket: str, crdc_series_uuid: str, instance_count: int | None
    ) -> list[ListedObject]:
        with _Timed(self._meter, "list"):
            return await self._engine.list_series(bucket, crdc_series_uuid, instance_count)

    async def part_size(self, bucket: str, key: str) -> int:
        with _Timed(self._meter, "head"):
            return await self._engine.part_size(bucket, key)

    async def fetch(self, job: FetchJob, on_bytes: ProgressCallback) -> Verdict:
        with _Timed(self._meter, "get"):
            return await self._engine.fetch(job, on_bytes)


class _Timed:
    def __init__(self, meter: RequestMeter, kind: str) -> None:
        self._meter, self._kind = meter, kind
        self._start = 0.0

    def __enter__(self) -> None:
        self._meter.request_started(self._kind)
        self._start = time.perf_counter()

    def __exit__(self, kind: type[BaseException] | None, *rest: object) -> None:
        elapsed = time.perf_counter() - self._start
        self._meter.request_finished(self._kind, "ok" if kind is None else "error", elapsed)
