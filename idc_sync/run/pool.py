"""Every core on the data plane: the worker processes of a round (run/worker.py), each with
its own event loop leasing series from the same SQLite queue as the parent's own loop. The
parent keeps the state lock, plans and finishes the round; the workers only mirror, and
their progress, failures, request timings, log records and summaries come back over their
pipes (run/channel.py) to be added up.

Why processes: one event loop carries every request's and every file's bookkeeping, about
0.4 ms of CPU per small file, and is the bound of a request-bound run however many
requests are in flight (README, Performance). Leases already make several claimants safe.

A worker that dies (kill -9, an OOM kill) loses nothing: files it renamed without a "done"
row are re-verified where they are, its temp files are removed by the next look at their
directory, and the parent queues its leased series again at once (``release_leases``)
instead of waiting ``lease_seconds``; the parent's own loop, or another worker, takes them."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import signal
import sys
from dataclasses import dataclass, field
from typing import Any

from idc_sync.config import Settings
from idc_sync.engines.metered import RequestMeter
from idc_sync.run.attempts import FailureObserver
from idc_sync.run.channel import Inbox, add_up, encode
from idc_sync.run.objects import ProgressSink, RunSummary
from idc_sync.state.queue import Queue

log = logging.getLogger(__name__)

# How long a worker told to stop (SIGTERM) may take to flush what it recorded.
STOP_SECONDS = 10.0

# With ``workers = 0``, one more event loop per this many objects to fetch, up to one per
# core. A worker costs ~0.5 s of start-up (overlapping the plan when it was prestarted)
# and pays where per-object work on the loop is the bound. Measured on 2 cores
# (benchmarks/run.py, one sitting each, 2 loops against 1, after the workers' state writes
# stopped holding SQLite's lock across loop turns): 2,816 files of 87 KB 3.37 vs 4.03 s,
# 4,682 of 0.53 MB 7.54 vs 8.51 s, 37,113 of 60 KB 23.0 vs ~29 s;
# but 4 files of 860 MB 7.99 vs 7.56 s and 47 files 1.9 vs 1.2 s (few objects: one loop).
# Thousands of large objects would get two loops too; that case is not measured.
OBJECTS_PER_LOOP = 1_000


def event_loops(settings: Settings, to_fetch: int) -> int:
    """How many event loops a round with ``to_fetch`` objects left runs (the parent's
    included): ``workers``, or with 0 one per ``OBJECTS_PER_LOOP`` objects, at most one per
    core. A bandwidth cap or the s5cmd engine keeps one: a cap is exact only in one
    process, and s5cmd runs its own transfers."""
    if settings.engine != "native" or not settings.bandwidth_schedule.always_unlimited:
        return 1
    if settings.workers:
        return settings.workers
    return max(1, min(os.cpu_count() or 1, to_fetch // OBJECTS_PER_LOOP))


def share(settings: Settings, loops: int) -> Settings:
    """One loop's part of the round's settings: objects and series in flight are totals."""
    return settings.model_copy(
        update={
            "concurrency": max(1, math.ceil(settings.concurrency / loops)),
            "series_concurrency": max(1, math.ceil(settings.series_concurrency / loops)),
            "body_memory_bytes": max(1, settings.body_memory_bytes // loops),
        }
    )


async def _spawn() -> asyncio.subprocess.Process:
    """A worker process: it imports its modules, then waits for its first line. It has a
    session (so a process group) of its own, so a Ctrl-C at the terminal reaches the parent
    only, which decides what the workers do: else one still importing or waiting for its
    settings (the whole plan, when it was prestarted) would die of it with a traceback.
    (uvloop takes ``start_new_session`` but not ``process_group``.) The parent's death
    still reaches it: PR_SET_PDEATHSIG and the end of its input (run/worker.py)."""
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "idc_sync.run.worker",
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, start_new_session=True,
    )  # fmt: skip


async def _stop(processes: list[asyncio.subprocess.Process]) -> None:
    """SIGTERM each process, then SIGKILL those still running after STOP_SECONDS."""
    for process in processes:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
    for process in processes:
        try:
            await asyncio.wait_for(process.wait(), STOP_SECONDS)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()


# At most this many worker processes are started before the plan (Prestarted): one that
# the round turns out not to need costs ~0.4 CPU-s and ~60 MB until it is stopped, which a
# 32-core machine should not pay 31 times for a re-sync with nothing to fetch.
PRESTARTED = 3


class Prestarted:
    """Worker processes started before the plan exists, as many as the settings could call
    for (at most PRESTARTED): a worker's imports are ~0.4 s of CPU, and begun at once they
    run on a core the parent's own start-up (imports, resolving the selection, planning)
    leaves idle, so the round's workers take their first series as the round begins
    instead of ~0.5 s later (2,816 files of 87 KB on 2 cores: the worker's first message
    0.02-0.10 s after the parent's loop started, against 0.41-0.60 s). A round takes what
    it needs (``WorkerPool.start``); ``close`` stops the others, which never heard a word:
    a worker reads nothing before its first line, its settings."""

    def __init__(self) -> None:
        self._processes: list[asyncio.subprocess.Process] = []

    @classmethod
    async def start(cls, settings: Settings) -> Prestarted:
        spares = cls()
        try:
            for _ in range(min(PRESTARTED, event_loops(settings, sys.maxsize) - 1)):
                spares._processes.append(await _spawn())
        except BaseException:
            await spares.close()
            raise
        return spares

    @property
    def pids(self) -> list[int]:
        return [process.pid for process in self._processes]

    def take(self) -> asyncio.subprocess.Process | None:
        """A started worker process that has been told nothing yet, if one is left."""
        return self._processes.pop() if self._processes else None

    async def close(self) -> None:
        """Stop the processes no round took (SIGTERM, then SIGKILL)."""
        spares, self._processes = self._processes, []
        await _stop(spares)
        for process in spares:
            if process.stdin is not None:
                process.stdin.close()


@dataclass(slots=True)
class _Worker:
    process: asyncio.subprocess.Process
    inbox: Inbox
    reader: asyncio.Task[None] | None = None
    exited: bool = False


@dataclass(slots=True)
class _Sinks:
    progress: ProgressSink
    observer: FailureObserver
    meter: RequestMeter | None
    stopped: list[Any] = field(default_factory=list)  # callbacks told a worker stopped


class WorkerPool:
    """Worker processes for one round; ``start`` them (from ``Prestarted`` ones where there
    are: their imports then overlap the plan), ``go`` at once, ``close`` always."""

    def __init__(self, settings: Settings, count: int) -> None:
        self._settings = settings
        self._count = count
        self._workers: list[_Worker] = []
        self._sinks: _Sinks | None = None
        self._queue: Queue | None = None
        self._changed = asyncio.Event()
        self._requeued = False
        self._stop_reason: str | None = None
        self._started_go = False

    @property
    def size(self) -> int:
        return len(self._workers)

    async def start(self, spares: Prestarted | None = None) -> None:
        """Start the workers, taking ``spares`` first; they open their engines meanwhile."""
        first = {"settings": self._settings.model_dump(mode="json")}
        for _ in range(self._count):
            process = (spares.take() if spares is not None else None) or await _spawn()
            inbox = Inbox(_Ignore(), _Ignore(), None, lambda owner: None, self._worker_stopped)
            worker = _Worker(process, inbox)
            self._workers.append(worker)
            self._send(worker, first)

    def go(
        self,
        queue: Queue,
        progress: ProgressSink,
        observer: FailureObserver,
        meter: RequestMeter | None,
        stopped: Any,
    ) -> None:
        """The queue is planned: report to these sinks, and start leasing."""
        self._queue = queue
        self._sinks = _Sinks(progress, observer, meter, [stopped])
        for worker in self._workers:
            worker.inbox.progress, worker.inbox.observer = progress, observer
            worker.inbox.meter = meter
            worker.reader = asyncio.create_task(self._read(worker))
            self._send(worker, {"go": True, "meter": meter is not None})
        self._started_go = True

    def drain(self, reason: str) -> None:
        self._tell({"drain": reason})

    def stop(self, reason: str) -> None:
        if self._stop_reason is None:
            self._stop_reason = reason
        self._tell({"stop": reason})

    def _tell(self, message: dict[str, Any]) -> None:
        for worker in self._workers:
            if not worker.exited:
                self._send(worker, message)

    def _send(self, worker: _Worker, message: dict[str, Any]) -> None:
        stdin = worker.process.stdin
        if stdin is None or stdin.is_closing():
            return
        with contextlib.suppress(ConnectionError, RuntimeError):
            stdin.write(encode(message))

    def _worker_stopped(self, reason: str) -> None:
        if self._sinks is not None:
            for callback in self._sinks.stopped:
                callback(reason)

    async def idle(self) -> bool:
        """For the parent's own loop when it has nothing to claim: True once a worker's
        series were queued again (claim them), False once every worker has exited."""
        while True:
            if self._requeued:
                self._requeued = False
                return True
            if all(worker.exited for worker in self._workers):
                return False
            await self._changed.wait()
            self._changed.clear()

    async def _read(self, worker: _Worker) -> None:
        stdout = worker.process.stdout
        assert stdout is not None
        try:
            while line := await stdout.readline():
                try:
                    worker.inbox.receive(line)
                except (ValueError, KeyError, TypeError) as error:
                    log.error("worker %d sent something unreadable: %s", worker.process.pid, error)
        finally:
            code = await worker.process.wait()
            worker.exited = True
            await self._after_exit(worker, code)

    async def _after_exit(self, worker: _Worker, code: int) -> None:
        inbox = worker.inbox
        inbox.lost()
        if inbox.summary is None or code != 0:
            how = f"signal {-code}" if code < 0 else f"exit code {code}"
            log.warning(
                "worker process %d died (%s); its series are queued again",
                worker.process.pid, how,
            )  # fmt: skip
        if inbox.owner is not None and self._queue is not None:
            released = await self._queue.release_leases(inbox.owner)
            if released:
                self._requeued = True
        self._changed.set()

    async def close(self) -> None:
        """Stop what still runs (SIGTERM, then SIGKILL), and queue its series again."""
        await _stop([w.process for w in self._workers if w.process.returncode is None])
        readers = [w.reader for w in self._workers if w.reader is not None]
        await asyncio.gather(*readers, return_exceptions=True)
        for worker in self._workers:
            if worker.reader is None:  # never told to go: nothing of it to read
                worker.exited = True
            if worker.process.stdin is not None:
                worker.process.stdin.close()

    def summary(self) -> RunSummary:
        """The workers' summaries added up."""
        total = RunSummary()
        for worker in self._workers:
            if worker.inbox.summary is not None:
                add_up(total, worker.inbox.summary)
        return total


class _Ignore:
    """Sinks for the time before ``go`` (a worker reports nothing but ``ready`` then)."""

    def bytes_received(self, count: int) -> None:
        pass

    def file_finished(self, size: int, *, fetched: bool, ok: bool) -> None:
        pass

    def attempt_failed(self, failure: object) -> None:
        pass

    def retrying(self, failure: object) -> None:
        pass
