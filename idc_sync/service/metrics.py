"""Prometheus metrics of a running idc-sync, in a registry of its own: what was fetched,
what failed and how (by failure class), retries, queue depth, requests in flight and their
latency. Also the transfer rate over the last minute, for /status and its ETA.

``Metrics`` is the progress sink and the failure observer the workers report to;
``MeteredEngine`` wraps a transfer engine to time every request it makes."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from idc_sync.core.model import ListedObject
from idc_sync.core.retry import FailureClass
from idc_sync.core.verify import Verdict
from idc_sync.engines.base import Engine, FetchJob, ProgressCallback

PREFIX = "idc_sync"

# From a small HEAD to a slide-microscopy file of a few hundred MB on a slow link.
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class RateMeter:
    """Bytes per second over a sliding window, in one-second buckets (memory stays flat
    however many bytes arrive)."""

    def __init__(self, window: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._window = window
        self._clock = clock
        self._buckets: deque[list[float]] = deque()  # [second, bytes]
        self._started = clock()

    def add(self, count: int) -> None:
        second = float(int(self._clock()))
        if self._buckets and self._buckets[-1][0] == second:
            self._buckets[-1][1] += count
        else:
            self._buckets.append([second, float(count)])
        self._trim()

    def _trim(self) -> None:
        horizon = self._clock() - self._window
        while self._buckets and self._buckets[0][0] < horizon:
            self._buckets.popleft()

    def rate(self) -> float:
        self._trim()
        # A meter younger than the window divides by its age, not by the whole window.
        span = min(self._window, max(self._clock() - self._started, 1.0))
        return sum(bucket[1] for bucket in self._buckets) / span


@dataclass(frozen=True, slots=True)
class QueueDepth:
    series: int
    files: int
    bytes: int


class Metrics:
    """Every metric idc-sync exports. One instance per daemon; its registry holds nothing
    else, so two daemons in one test process do not collide."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        r = self.registry
        self.bytes_fetched = Counter(
            f"{PREFIX}_bytes_fetched", "Bytes received from the buckets (every attempt).",
            registry=r,
        )  # fmt: skip
        self.files_fetched = Counter(
            f"{PREFIX}_files_fetched", "Files fetched, verified and renamed into the mirror.",
            registry=r,
        )  # fmt: skip
        self.files_reverified = Counter(
            f"{PREFIX}_files_reverified",
            "Files found on disk without a done row and verified there instead of fetched.",
            registry=r,
        )
        self.files_failed = Counter(
            f"{PREFIX}_files_failed", "Files given up on (failed or quarantined) in a round.",
            registry=r,
        )  # fmt: skip
        self.errors = Counter(
            f"{PREFIX}_errors", "Failed attempts, by failure class.", ["class"], registry=r
        )
        self.retries = Counter(
            f"{PREFIX}_retries", "Attempts retried after a backoff, by failure class.",
            ["class"], registry=r,
        )  # fmt: skip
        for failure in FailureClass:
            self.errors.labels(failure.value)
            self.retries.labels(failure.value)
        self.queue_series = Gauge(
            f"{PREFIX}_queue_series", "Selected series not yet complete.", registry=r
        )
        self.queue_files = Gauge(
            f"{PREFIX}_queue_files", "Selected files not yet verified.", registry=r
        )
        self.queue_bytes = Gauge(
            f"{PREFIX}_queue_bytes", "Selected bytes not yet verified.", registry=r
        )
        self.in_flight = Gauge(
            f"{PREFIX}_requests_in_flight", "Requests to the buckets in progress.", ["kind"],
            registry=r,
        )  # fmt: skip
        self.latency = Histogram(
            f"{PREFIX}_request_seconds",
            "Request duration to the last body byte, by kind (list, head, get) and outcome.",
            ["kind", "outcome"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        for kind in ("list", "head", "get"):
            self.in_flight.labels(kind)
        self.ready = Gauge(f"{PREFIX}_ready", "1 once the state is open and planned.", registry=r)
        self.release = Gauge(
            f"{PREFIX}_idc_release", "IDC release (idc_version) of the installed index.",
            registry=r,
        )  # fmt: skip
        self.last_plan = Gauge(
            f"{PREFIX}_last_plan_timestamp_seconds", "When the last plan finished (Unix time).",
            registry=r,
        )  # fmt: skip
        self.rate = RateMeter()

    # -- the progress sink the workers feed ------------------------------------------

    def bytes_received(self, count: int) -> None:
        self.bytes_fetched.inc(count)
        self.rate.add(count)

    def file_finished(self, size: int, *, fetched: bool, ok: bool) -> None:
        if not ok:
            self.files_failed.inc()
        elif fetched:
            self.files_fetched.inc()
        else:
            self.files_reverified.inc()

    # -- the failure observer ----------------------------------------------------------

    def attempt_failed(self, failure: FailureClass) -> None:
        self.errors.labels(failure.value).inc()

    def retrying(self, failure: FailureClass) -> None:
        self.retries.labels(failure.value).inc()

    # -- gauges set by the daemon --------------------------------------------------------

    def set_queue(self, depth: QueueDepth) -> None:
        self.queue_series.set(depth.series)
        self.queue_files.set(depth.files)
        self.queue_bytes.set(depth.bytes)

    def exposition(self) -> bytes:
        """The Prometheus text format of every metric."""
        return generate_latest(self.registry)


class MeteredEngine:
    """A transfer engine that times each request and counts those in flight."""

    def __init__(self, engine: Engine, metrics: Metrics) -> None:
        self._engine = engine
        self._metrics = metrics

    async def list_series(
        self, bucket: str, crdc_series_uuid: str, instance_count: int | None
    ) -> list[ListedObject]:
        with _Timed(self._metrics, "list"):
            return await self._engine.list_series(bucket, crdc_series_uuid, instance_count)

    async def part_size(self, bucket: str, key: str) -> int:
        with _Timed(self._metrics, "head"):
            return await self._engine.part_size(bucket, key)

    async def fetch(self, job: FetchJob, on_bytes: ProgressCallback) -> Verdict:
        with _Timed(self._metrics, "get"):
            return await self._engine.fetch(job, on_bytes)


class _Timed:
    def __init__(self, metrics: Metrics, kind: str) -> None:
        self._metrics, self._kind = metrics, kind
        self._start = 0.0

    def __enter__(self) -> None:
        self._metrics.in_flight.labels(self._kind).inc()
        self._start = time.perf_counter()

    def __exit__(self, kind: type[BaseException] | None, *rest: object) -> None:
        elapsed = time.perf_counter() - self._start
        self._metrics.in_flight.labels(self._kind).dec()
        outcome = "ok" if kind is None else "error"
        self._metrics.latency.labels(self._kind, outcome).observe(elapsed)
