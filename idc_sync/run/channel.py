"""The pipe between a round's parent and its worker processes (run/pool.py, run/worker.py):
one JSON object per line. A worker reports what the parent's progress bar, metrics, log
and summary need; the parent tells a worker to start, drain or stop.

Worker to parent: ``{"ready": owner}`` once its engine is open (``owner`` names its
leases), ``{"progress": {...}}`` batches, ``{"stopped": reason}`` when its own disk or
network setup stops it, ``{"summary": {...}}`` last. Parent to worker: ``{"go": true}``,
``{"drain": reason}``, ``{"stop": reason}``; end of input means the parent is gone.

A worker batches: per 0.1 s one line with the bytes received, each finished file, failed
attempts and retries by class, request timings and its log records, so a file costs the
worker a few list appends and the parent one JSON line per batch, not per file."""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable
from typing import IO, Any

from idc_sync.core.logs import concerns
from idc_sync.core.retry import FailureClass
from idc_sync.engines.metered import RequestMeter
from idc_sync.run.attempts import FailureObserver
from idc_sync.run.objects import ProgressSink, RunSummary

FLUSH_SECONDS = 0.1

# the log record attributes that are not the call's own extras
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message",
    "asctime",
    "taskName",
}


def encode(message: dict[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode() + b"\n"


class Outbox:
    """The worker's side: the progress sink, failure observer and request meter of its
    round, and a log handler, all buffered until ``flush`` writes one line."""

    def __init__(self, out: IO[bytes]) -> None:
        self._out = out
        self._bytes = 0
        self._files: list[tuple[int, bool, bool]] = []
        self._errors: dict[str, int] = {}
        self._retries: dict[str, int] = {}
        self._started: dict[str, int] = {}
        self._finished: list[tuple[str, str, float]] = []
        self._logs: list[dict[str, Any]] = []
        self.parent_gone = False

    def send(self, message: dict[str, Any]) -> None:
        """Write one message now (after what is buffered)."""
        self.flush()
        self._write(message)

    def _write(self, message: dict[str, Any]) -> None:
        if self.parent_gone:
            return
        try:
            self._out.write(encode(message))
            self._out.flush()
        except BrokenPipeError:
            # the parent was killed: nobody is left to tell, and its death (SIGTERM by
            # PR_SET_PDEATHSIG, end of input) is stopping this worker already
            self.parent_gone = True

    def flush(self) -> None:
        if not (self._bytes or self._files or self._errors or self._retries
                or self._started or self._finished or self._logs):  # fmt: skip
            return
        batch = {
            "b": self._bytes, "f": self._files, "e": self._errors, "r": self._retries,
            "s": self._started, "q": self._finished, "log": self._logs,
        }  # fmt: skip
        self._bytes = 0
        self._files, self._finished, self._logs = [], [], []
        self._errors, self._retries, self._started = {}, {}, {}
        self._write({"progress": batch})

    # ProgressSink
    def bytes_received(self, count: int) -> None:
        self._bytes += count

    def file_finished(self, size: int, *, fetched: bool, ok: bool) -> None:
        self._files.append((size, fetched, ok))

    # FailureObserver
    def attempt_failed(self, failure: FailureClass) -> None:
        self._errors[failure.value] = self._errors.get(failure.value, 0) + 1

    def retrying(self, failure: FailureClass) -> None:
        self._retries[failure.value] = self._retries.get(failure.value, 0) + 1

    # RequestMeter
    def request_started(self, kind: str) -> None:
        self._started[kind] = self._started.get(kind, 0) + 1

    def request_finished(self, kind: str, outcome: str, seconds: float) -> None:
        self._finished.append((kind, outcome, seconds))

    def log(self, record: logging.LogRecord) -> None:
        series, key = concerns(record)
        entry: dict[str, Any] = {
            key_: value
            for key_, value in vars(record).items()
            if key_ not in _STANDARD and isinstance(value, str | int | float | bool)
        }
        entry.update(
            name=record.name, levelno=record.levelno, levelname=record.levelname,
            msg=record.getMessage(), created=record.created, msecs=record.msecs,
        )  # fmt: skip
        if series is not None:
            entry.setdefault("series", series)
        if key is not None:
            entry.setdefault("object", key)
        if record.exc_info:
            entry["exc_text"] = logging.Formatter().formatException(record.exc_info)
        self._logs.append(entry)


class ForwardingHandler(logging.Handler):
    """A worker's log handler: records go to the parent, which writes them."""

    def __init__(self, outbox: Outbox) -> None:
        super().__init__()
        self._outbox = outbox

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._outbox.log(record)
        except Exception:  # a logging handler must never raise into the caller
            self.handleError(record)


@dataclasses.dataclass(slots=True)
class Inbox:
    """The parent's side for one worker: applies its batches to the round's sinks and
    remembers what a worker that dies would leave behind (its requests still counted as
    in flight)."""

    progress: ProgressSink
    observer: FailureObserver
    meter: RequestMeter | None
    on_ready: Callable[[str], None]
    on_stopped: Callable[[str], None]
    summary: RunSummary | None = None
    owner: str | None = None
    in_flight: dict[str, int] = dataclasses.field(default_factory=dict)

    def receive(self, line: bytes) -> None:
        message = json.loads(line)
        if "progress" in message:
            self._progress(message["progress"])
        elif "ready" in message:
            self.owner = str(message["ready"])
            self.on_ready(self.owner)
        elif "stopped" in message:
            self.on_stopped(str(message["stopped"]))
        elif "summary" in message:
            self.summary = RunSummary(**message["summary"])

    def _progress(self, batch: dict[str, Any]) -> None:
        if batch["b"]:
            self.progress.bytes_received(int(batch["b"]))
        for size, fetched, ok in batch["f"]:
            self.progress.file_finished(int(size), fetched=bool(fetched), ok=bool(ok))
        for name, count in batch["e"].items():
            for _ in range(int(count)):
                self.observer.attempt_failed(FailureClass(name))
        for name, count in batch["r"].items():
            for _ in range(int(count)):
                self.observer.retrying(FailureClass(name))
        for kind, count in batch["s"].items():
            self.in_flight[kind] = self.in_flight.get(kind, 0) + int(count)
            if self.meter is not None:
                for _ in range(int(count)):
                    self.meter.request_started(kind)
        for kind, outcome, seconds in batch["q"]:
            self.in_flight[kind] = self.in_flight.get(kind, 0) - 1
            if self.meter is not None:
                self.meter.request_finished(kind, outcome, float(seconds))
        for entry in batch["log"]:
            replay(entry)

    def lost(self) -> None:
        """The worker is gone: its requests are no longer in flight."""
        if self.meter is not None:
            for kind, count in self.in_flight.items():
                for _ in range(count):
                    self.meter.request_finished(kind, "error", 0.0)
        self.in_flight.clear()


def replay(entry: dict[str, Any]) -> None:
    """Write a worker's log record through this process's handlers."""
    record = logging.makeLogRecord({**entry, "args": None})
    logging.getLogger(record.name).handle(record)


def summary_message(summary: RunSummary) -> dict[str, Any]:
    return {"summary": dataclasses.asdict(summary)}


def add_up(total: RunSummary, part: RunSummary) -> None:
    """Add a worker's counts to the round's; the first reason to stop is kept."""
    for field in dataclasses.fields(RunSummary):
        if field.name == "stopped":
            continue
        setattr(total, field.name, getattr(total, field.name) + getattr(part, field.name))
    if total.stopped is None:
        total.stopped = part.stopped
