"""Free and total space of the file systems that hold the mirror (every mirror root) and
the state directory, each file system once, for the metrics a "disk nearly full" alert
reads and for /status.

statvfs runs in a thread of its own and is waited for only briefly: on a hung NFS mount it
never returns, and the event loop (and with it the watchdog, /healthz and the workers)
must not hang with it. While a probe is stuck the last answer stands and no second thread
is started; the thread is a daemon thread, so a stuck one does not hold up the exit."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
from collections.abc import Sequence
from pathlib import Path

from idc_sync.config import Settings
from idc_sync.service.metrics import FileSystemSpace

log = logging.getLogger(__name__)

# How long /status and /metrics wait for statvfs before answering with the last values.
PROBE_TIMEOUT = 1.0


def roots_of(settings: Settings) -> list[tuple[str, Path]]:
    """Where a daemon with these settings writes: the mirror (and every license's root of
    its own), the state directory, and the retired files."""
    # no destination: a configuration error the first plan reports; until then, no mirror
    main = [] if settings.destination is None else [settings.destination]
    mirrors = [*main, *settings.licenses.destinations.values()]
    return [*(("mirror", root) for root in mirrors), ("state", settings.state_path),
            ("retired", settings.retired_path)]  # fmt: skip


def measure(roots: Sequence[tuple[str, Path]]) -> list[FileSystemSpace]:
    """``(role, directory)`` pairs as one space per file system, the first pair naming it.
    A directory that does not exist yet is measured at its nearest existing parent (where
    it will be created); one that cannot be measured at all is left out."""
    seen: set[int] = set()
    spaces: list[FileSystemSpace] = []
    for role, directory in roots:
        for candidate in (directory, *directory.parents):
            try:
                device = candidate.stat().st_dev
                stats = os.statvfs(candidate)
            except FileNotFoundError:
                continue
            except OSError as error:
                log.debug("cannot measure the file system of %s: %s", directory, error)
                break
            if device not in seen:
                seen.add(device)
                spaces.append(FileSystemSpace(role, str(directory), stats.f_bavail * stats.f_frsize,
                                              stats.f_blocks * stats.f_frsize))  # fmt: skip
            break
    return spaces


class FileSystemProbe:
    """Measures in the background; ``spaces()`` answers within ``timeout`` seconds."""

    def __init__(self, timeout: float = PROBE_TIMEOUT) -> None:
        self._timeout = timeout
        self._pending: asyncio.Future[list[FileSystemSpace]] | None = None
        self._last: list[FileSystemSpace] = []
        self._warned = False  # about the probe now pending

    async def spaces(self, roots: Sequence[tuple[str, Path]]) -> list[FileSystemSpace]:
        if self._pending is None:
            self._pending, self._warned = self._start(list(roots)), False
        pending = self._pending
        done, _ = await asyncio.wait({pending}, timeout=self._timeout)
        if not done:
            if not self._warned:
                self._warned = True
                where = ", ".join(str(path) for _, path in roots)
                log.warning("statvfs of %s has not answered for %s s; reporting the last "
                            "values", where, f"{self._timeout:g}")  # fmt: skip
            return self._last
        if self._pending is pending:
            self._pending = None
        self._last = pending.result()
        return self._last

    def _start(self, roots: list[tuple[str, Path]]) -> asyncio.Future[list[FileSystemSpace]]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[FileSystemSpace]] = loop.create_future()

        def answer(spaces: list[FileSystemSpace]) -> None:
            if not future.done():
                future.set_result(spaces)

        def run() -> None:
            try:
                spaces = measure(roots)
            except Exception:  # never lose the future: an unexpected failure reads as empty
                log.exception("measuring the file systems failed")
                spaces = []
            with contextlib.suppress(RuntimeError):  # the loop closed while statvfs hung
                loop.call_soon_threadsafe(answer, spaces)

        threading.Thread(target=run, name="idc-sync-statvfs", daemon=True).start()
        return future
