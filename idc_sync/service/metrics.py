"""Prometheus metrics of a running idc-sync, in a registry of its own, named by Prometheus'
conventions (unit last, ``_total`` on counters): what was fetched, what failed and how (by
failure class), retries, requests in flight and their latency; what the selection holds by
state; the IDC release planned, the newest one known and failed checks for one; when the
mirror was last complete; the space left where it lives; the build, and the process itself
(CPU, memory, open files).
Also the transfer rate over the last minute, for /status and its ETA.

``Metrics`` is the progress sink, the failure observer and the request meter the workers
report to (engines/metered.py times every request)."""

from __future__ import annotations

import importlib.metadata
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)

from idc_sync import __version__
from idc_sync.core.errors import RELEASE_CHECK_REASONS
from idc_sync.core.retry import FailureClass

PREFIX = "idc_sync"

# prometheus_client adds a `<name>_created` series to every counter and histogram. In the
# text format Prometheus scrapes it is one more gauge per series, named against the
# conventions (unit in the middle), that no alert or dashboard of ours reads. Process-wide,
# and this process exports no other metrics.
disable_created_metrics()  # type: ignore[no-untyped-call]

# From a small HEAD to a slide-microscopy file of a few hundred MB on a slow link.
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)

# The states of idc_sync_selected_{series,files,bytes}: each family sums to what the
# selection holds, in the words /status uses ("pending" bytes include failed files').
SERIES_STATES = ("complete", "failed", "pending")
FILE_STATES = ("done", "failed", "quarantined", "pending")
BYTE_STATES = ("done", "pending")


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
class SelectionState:
    """The selection by state, as /status's ``overall`` counts it."""

    series: Mapping[str, int]  # SERIES_STATES
    files: Mapping[str, int]  # FILE_STATES
    bytes: Mapping[str, int]  # BYTE_STATES

    @classmethod
    def of(cls, overall: Mapping[str, int]) -> SelectionState:
        return cls(
            series={state: overall[f"series_{state}"] for state in SERIES_STATES},
            files={state: overall[f"files_{state}"] for state in FILE_STATES},
            bytes={state: overall[f"bytes_{state}"] for state in BYTE_STATES},
        )

    @property
    def complete(self) -> bool:
        """Every selected series complete and every selected file verified."""
        unfinished = [self.series[s] for s in SERIES_STATES if s != "complete"]
        unfinished += [self.files[s] for s in FILE_STATES if s != "done"]
        return not any(unfinished) and self.bytes["pending"] == 0


@dataclass(frozen=True, slots=True)
class FileSystemSpace:
    """One file system the mirror or the state lives on (``role``: mirror or state)."""

    role: str
    path: str
    avail_bytes: int  # what an unprivileged writer may still use (statvfs f_bavail)
    size_bytes: int


def installed_idc_release() -> str:
    """The IDC release of the installed idc-index-data, read from its metadata on disk now
    (not from the module imported at start, which an upgrade in place leaves behind)."""
    try:
        version = importlib.metadata.version("idc-index-data")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"
    major = version.split(".", 1)[0]
    return major if major.isdigit() else "unknown"


class Metrics:
    """Every metric idc-sync exports. One instance per daemon; its registry holds nothing
    else (but the process collector), so two daemons in one test process do not collide."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        r = self.registry
        ProcessCollector(registry=r)
        self.fetched_bytes = Counter(
            f"{PREFIX}_fetched_bytes_total", "Bytes received from the buckets (every attempt).",
            registry=r,
        )  # fmt: skip
        self.fetched_files = Counter(
            f"{PREFIX}_fetched_files_total", "Files fetched, verified and renamed into the mirror.",
            registry=r,
        )  # fmt: skip
        self.reverified_files = Counter(
            f"{PREFIX}_reverified_files_total",
            "Files found on disk without a done row and verified there instead of fetched.",
            registry=r,
        )
        self.failed_files = Counter(
            f"{PREFIX}_failed_files_total",
            "Files given up on (failed or quarantined) in a round; again in each round that "
            "gives up on them.",
            registry=r,
        )
        self.errors = Counter(
            f"{PREFIX}_errors_total", "Failed attempts, by failure class.", ["class"], registry=r
        )
        self.retries = Counter(
            f"{PREFIX}_retries_total", "Attempts retried after a backoff, by failure class.",
            ["class"], registry=r,
        )  # fmt: skip
        for failure in FailureClass:
            self.errors.labels(failure.value)
            self.retries.labels(failure.value)
        self.selected_series = Gauge(
            f"{PREFIX}_selected_series", "Selected series, by state (complete, failed, pending).",
            ["state"], registry=r,
        )  # fmt: skip
        self.selected_files = Gauge(
            f"{PREFIX}_selected_files",
            "Selected files, by state (done = verified, failed, quarantined, pending).",
            ["state"], registry=r,
        )  # fmt: skip
        self.selected_bytes = Gauge(
            f"{PREFIX}_selected_bytes",
            "Selected bytes, by state (done = verified; pending = not yet, failed files' too).",
            ["state"], registry=r,
        )  # fmt: skip
        for gauge, states in ((self.selected_series, SERIES_STATES),
                              (self.selected_files, FILE_STATES),
                              (self.selected_bytes, BYTE_STATES)):  # fmt: skip
            for state in states:
                gauge.labels(state)
        self.in_flight = Gauge(
            f"{PREFIX}_requests_in_flight", "Requests to the buckets in progress.", ["kind"],
            registry=r,
        )  # fmt: skip
        self.latency = Histogram(
            f"{PREFIX}_request_duration_seconds",
            "Request duration to the last body byte, by kind (list, head, get) and outcome.",
            ["kind", "outcome"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        for kind in ("list", "head", "get"):
            self.in_flight.labels(kind)
        self.ready = Gauge(
            f"{PREFIX}_ready", "1 while ready: the state open, a plan done, not draining.",
            registry=r,
        )  # fmt: skip
        self.phase = Gauge(
            f"{PREFIX}_phase", "1 for the phase the daemon is in, 0 for the others.", ["phase"],
            registry=r,
        )  # fmt: skip
        self.release = Gauge(
            f"{PREFIX}_idc_release", "IDC release (idc_version) of the last plan.", registry=r
        )
        self.latest_release_gauge = Gauge(
            f"{PREFIX}_latest_idc_release",
            "Newest IDC release known to exist (0 while unknown).",
            registry=r,
        )
        self.release_check_failures = Counter(
            f"{PREFIX}_release_check_failures_total",
            "Checks for a newer IDC release that failed, by step (index, download, hash, "
            "size, wheel); the mirror stays on its release.",
            ["reason"], registry=r,
        )  # fmt: skip
        for reason in RELEASE_CHECK_REASONS:
            self.release_check_failures.labels(reason)
        self.last_release_check = Gauge(
            f"{PREFIX}_last_release_check_timestamp_seconds",
            "When a check for a newer IDC release last succeeded, a newer one fetched if "
            "follow_releases asked for it (Unix time; 0: none since this process started).",
            registry=r,
        )
        self.last_plan = Gauge(
            f"{PREFIX}_last_plan_timestamp_seconds", "When the last plan finished (Unix time).",
            registry=r,
        )  # fmt: skip
        self.last_complete = Gauge(
            f"{PREFIX}_last_complete_timestamp_seconds",
            "When the daemon last saw every selected file verified (Unix time; 0: never).",
            registry=r,
        )
        self.filesystem_avail = Gauge(
            f"{PREFIX}_filesystem_avail_bytes",
            "Bytes an unprivileged writer may still use on the file system of the mirror "
            "(role=mirror) or of the state directory (role=state, when it is another one).",
            ["role", "path"], registry=r,
        )  # fmt: skip
        self.filesystem_size = Gauge(
            f"{PREFIX}_filesystem_size_bytes",
            "Size of the file system of the mirror (role=mirror) or of the state directory.",
            ["role", "path"], registry=r,
        )  # fmt: skip
        self.build_info = Gauge(
            f"{PREFIX}_build_info",
            "Always 1: the idc-sync version and the IDC release of the installed idc-index-data.",
            ["version", "idc_release"], registry=r,
        )  # fmt: skip
        self._latest_release: int | None = None
        self.rate = RateMeter()
        self.set_build_info()

    # -- the progress sink the workers feed ------------------------------------------

    def bytes_received(self, count: int) -> None:
        self.fetched_bytes.inc(count)
        self.rate.add(count)

    def file_finished(self, size: int, *, fetched: bool, ok: bool) -> None:
        if not ok:
            self.failed_files.inc()
        elif fetched:
            self.fetched_files.inc()
        else:
            self.reverified_files.inc()

    # -- the request meter (engines/metered.py) ----------------------------------------

    def request_started(self, kind: str) -> None:
        self.in_flight.labels(kind).inc()

    def request_finished(self, kind: str, outcome: str, seconds: float) -> None:
        self.in_flight.labels(kind).dec()
        self.latency.labels(kind, outcome).observe(seconds)

    # -- the failure observer ----------------------------------------------------------

    def attempt_failed(self, failure: FailureClass) -> None:
        self.errors.labels(failure.value).inc()

    def retrying(self, failure: FailureClass) -> None:
        self.retries.labels(failure.value).inc()

    # -- what the daemon sets --------------------------------------------------------

    def set_selection(self, selection: SelectionState) -> None:
        for gauge, counts in ((self.selected_series, selection.series),
                              (self.selected_files, selection.files),
                              (self.selected_bytes, selection.bytes)):  # fmt: skip
            for state, count in counts.items():
                gauge.labels(state).set(count)

    def set_phase(self, current: str, phases: Iterable[str]) -> None:
        for phase in phases:
            self.phase.labels(phase).set(1 if phase == current else 0)

    def planned(self, release: int) -> None:
        """A plan of IDC release ``release`` finished just now."""
        self.release.set(release)
        self.last_plan.set(time.time())
        self.set_build_info()

    def set_build_info(self) -> None:
        # one label set only: an upgrade in place replaces the old one, never adds to it
        self.build_info.clear()
        self.build_info.labels(__version__, installed_idc_release()).set(1)

    def set_last_complete(self, timestamp: float | None) -> None:
        self.last_complete.set(timestamp or 0)

    def set_filesystems(self, spaces: Iterable[FileSystemSpace]) -> None:
        # cleared first: a file system that is no longer used (a reload moved the mirror)
        # must not linger with its last value
        self.filesystem_avail.clear()
        self.filesystem_size.clear()
        for space in spaces:
            self.filesystem_avail.labels(space.role, space.path).set(space.avail_bytes)
            self.filesystem_size.labels(space.role, space.path).set(space.size_bytes)

    @property
    def latest_release(self) -> int | None:
        """The newest IDC release known to exist, None while unknown."""
        return self._latest_release

    def set_latest_release(self, release: int | None) -> None:
        """What a check of the package index found (None: it does not know)."""
        self._latest_release = release
        self.latest_release_gauge.set(release or 0)

    def release_check_failed(self, reason: str) -> None:
        self.release_check_failures.labels(reason).inc()

    def release_check_succeeded(self) -> None:
        self.last_release_check.set(time.time())

    def exposition(self) -> bytes:
        """The Prometheus text format of every metric."""
        return generate_latest(self.registry)
