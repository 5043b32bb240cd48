"""Object outcomes written in batches: every touched directory is fsynced first, so a row
that says "done" always describes a rename that is on disk. One transaction per batch (at
most RECORD_BATCH outcomes or RECORD_INTERVAL seconds), since every transaction is a thread
hop and SQLite an fsync-free WAL append per commit."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from pathlib import Path

from idc_sync.core.errors import LocalStorageError
from idc_sync.core.model import ObjectResult
from idc_sync.disk.storage import fsync_directory
from idc_sync.state.queue import Queue

RECORD_BATCH = 256
RECORD_INTERVAL = 0.25


def _fsync_all(directories: set[Path]) -> None:
    for directory in directories:
        fsync_directory(directory)


class Recorder:
    """Collects outcomes (``add``) and writes them (``flush``, and ``run`` in the background)."""

    def __init__(self, queue: Queue, on_failure: Callable[[str], None] | None = None) -> None:
        """``on_failure``: told when the state cannot be written (a full disk under it); the
        outcomes are kept for the next flush."""
        self._queue = queue
        self._on_failure = on_failure
        self._results: list[ObjectResult] = []
        self._directories: set[Path] = set()
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()

    def add(self, result: ObjectResult, directory: Path | None = None) -> None:
        """``directory``: where the object's file was renamed into place, to fsync first."""
        self._results.append(result)
        if directory is not None:
            self._directories.add(directory)
        if len(self._results) >= RECORD_BATCH:
            self._wake.set()

    async def flush(self) -> None:
        async with self._lock:
            results, self._results = self._results, []
            directories, self._directories = self._directories, set()
            recording = False
            try:
                if directories:
                    await asyncio.to_thread(_fsync_all, directories)
                recording = True
                await self._queue.record_results(results)
            except asyncio.CancelledError:
                # cancelled while recording: the transaction ran its course before the
                # cancellation came through (Database.run_transaction); recording the
                # batch again would move "done" to "done", which the guards refuse
                if not recording:
                    self._keep(results, directories)
                raise
            except BaseException:
                self._keep(results, directories)
                raise

    def _keep(self, results: list[ObjectResult], directories: set[Path]) -> None:
        """Outcomes not written: back in front of the next batch."""
        self._results = results + self._results
        self._directories |= directories

    async def run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), RECORD_INTERVAL)
            self._wake.clear()
            try:
                await self.flush()
            except LocalStorageError as error:
                if self._on_failure is not None:
                    self._on_failure(str(error))
                return
