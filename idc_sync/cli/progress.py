"""Progress of a sync: a rich bar on a terminal, a log line every 15 s otherwise.

The bar hears of the counts at most every BAR_INTERVAL seconds (it redraws ten times a
second anyway): telling it of every file cost 6% of a small-file run's CPU."""

from __future__ import annotations

import logging
import time

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from idc_sync.core.units import size_text as size
from idc_sync.run.objects import ProgressSink

# Seconds between progress bar updates.
BAR_INTERVAL = 0.1

log = logging.getLogger("idc_sync")


class BarSink:
    """The progress of one sync, on a bar (``progress``) or in the log."""

    def __init__(self, progress: Progress | None, task: TaskID | None, files: int,
                 total: int, files_done: int, bytes_done: int) -> None:  # fmt: skip
        self._progress, self._task = progress, task
        self.files, self.size = files, total
        self.files_done, self.bytes_done = files_done, bytes_done
        self._last_log = time.monotonic()
        self._next_push = 0.0

    def bytes_received(self, count: int) -> None:
        self.bytes_done += count
        if self._progress is not None and time.monotonic() >= self._next_push:
            self.push()

    def file_finished(self, size_: int, *, fetched: bool, ok: bool) -> None:
        self.files_done += 1
        if not fetched and ok:
            self.bytes_done += size_  # verified on disk: counts toward the total at once
        if self._progress is not None:
            self.bytes_received(0)  # the bar, when it is due
        elif time.monotonic() - self._last_log > 15:
            self._last_log = time.monotonic()
            log.info("progress: %s/%s files, %s/%s", f"{self.files_done:,}", f"{self.files:,}",
                     size(self.bytes_done), size(self.size))  # fmt: skip

    def push(self) -> None:
        """Show the current counts on the bar."""
        if self._progress is None:
            return
        assert self._task is not None  # a bar always has its task
        self._next_push = time.monotonic() + BAR_INTERVAL
        self._progress.update(
            self._task,
            completed=self.bytes_done,
            files=f"{self.files_done:,}/{self.files:,} files",
        )


class ProgressDisplay:
    """The bar (when ``show``) around a sync; ``sink`` makes the sync's progress sink."""

    def __init__(self, show: bool, console: Console) -> None:
        self._progress = (
            Progress(
                TextColumn("{task.fields[files]}"),
                BarColumn(),
                DownloadColumn(),
                TransferSpeedColumn(),
                TimeRemainingColumn(),
                console=console,
            )
            if show
            else None
        )
        self._sinks: list[BarSink] = []

    def __enter__(self) -> ProgressDisplay:
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            for sink in self._sinks:
                sink.push()  # the last counts, whenever they came in
            self._progress.stop()

    def sink(self, files: int, total: int, files_done: int, bytes_done: int) -> ProgressSink:
        task = None
        if self._progress is not None:
            task = self._progress.add_task(
                "sync", total=total, completed=bytes_done,
                files=f"{files_done:,}/{files:,} files",
            )  # fmt: skip
        sink = BarSink(self._progress, task, files, total, files_done, bytes_done)
        self._sinks.append(sink)
        return sink
