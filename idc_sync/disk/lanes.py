"""Worker threads for short blocking jobs (create, hash, write, fsync, rename a file).

``loop.run_in_executor`` builds a ``concurrent.futures.Future`` (a Condition and an RLock)
and chains it to an asyncio future for every job: about a fifth of the event loop's CPU
when thousands of small files a second pass through two pools (see README, Performance).
A lane is a ``queue.SimpleQueue`` drained by a fixed set of threads; a job reports back
with one ``call_soon_threadsafe``, and a job may hand its follow-up to another lane
directly, so a file crosses from the event loop to the threads and back once.

Jobs run to the end once submitted: a cancelled caller stops waiting, but a file half
written is finished or discarded by its own job, never abandoned mid-way.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

log = logging.getLogger(__name__)

Job = Callable[[], None]


class Lane:
    """``threads`` threads running submitted jobs in order of submission."""

    def __init__(self, threads: int, name: str) -> None:
        if threads < 1:
            raise ValueError(f"a lane needs at least one thread, got {threads}")
        self._jobs: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._closed = False
        # Daemon threads: a run that dies without closing its lanes must still exit; the
        # jobs they might cut short leave only temp files, which the next run removes.
        self._threads = [
            threading.Thread(target=self._work, name=f"{name}-{number}", daemon=True)
            for number in range(threads)
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, job: Job) -> None:
        """Queue ``job``; it must report its own outcome (it runs on a lane thread)."""
        if self._closed:
            raise RuntimeError("lane is closed")
        self._jobs.put(job)

    def run(self, function: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        """``function(*args)`` on a lane thread, as a future of the running loop."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self.submit(functools.partial(answer, loop, future, function, *args))
        return future

    def close(self) -> None:
        """Let the queued jobs finish, then stop the threads. Blocking."""
        if self._closed:
            return
        self._closed = True
        for _ in self._threads:
            self._jobs.put(None)
        for thread in self._threads:
            thread.join()

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            try:
                job()
            except BaseException:
                # jobs report their own errors; one that escapes is a bug, and must not
                # take the thread (and every job queued behind it) down with it
                log.exception("a storage job failed without reporting it")


def answer(
    loop: asyncio.AbstractEventLoop,
    future: asyncio.Future[T],
    function: Callable[..., T],
    *args: Any,
) -> None:
    """From a lane thread: run ``function(*args)`` and resolve ``future`` with its result
    or its error."""
    try:
        result = function(*args)
    except BaseException as error:
        report(loop, future, None, error)
    else:
        report(loop, future, result, None)


def report(
    loop: asyncio.AbstractEventLoop,
    future: asyncio.Future[T],
    result: T | None,
    error: BaseException | None,
) -> None:
    """From a lane thread: resolve ``future`` on its loop with ``result`` or ``error``."""
    # a closed loop raises RuntimeError: nobody waits for this answer any more
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(_resolve, future, result, error)


def _resolve(future: asyncio.Future[T], result: T | None, error: BaseException | None) -> None:
    if future.done():  # the caller was cancelled
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)  # type: ignore[arg-type]
