"""Memory for small GET bodies: receive buffers lent to them and handed back once the body is
written, so that a body of half a megabyte is not a fresh allocation each time (a new
bytearray is zero-filled and, above glibc's mmap threshold, page-faulted in, which cost a
tenth of the event loop's time on CT-sized files; README, Performance), and the budget that
bounds how many bytes of bodies a loop holds at once."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import threading

# Lent body buffers come in multiples of this, and idle ones are kept up to this total.
BUFFER_STEP = 64 << 10
POOL_BYTES = 64 << 20


class BufferPool:
    """Buffers in multiples of BUFFER_STEP. Thread-safe: buffers come back from storage
    threads."""

    def __init__(self, max_bytes: int = POOL_BYTES) -> None:
        self._free: dict[int, list[bytearray]] = {}
        self._held = 0
        self._max = max_bytes
        self._lock = threading.Lock()

    @property
    def idle_bytes(self) -> int:
        return self._held

    def take(self, size: int) -> bytearray:
        """A buffer of at least ``size`` bytes (its contents are whatever was there)."""
        capacity = -(-max(size, 1) // BUFFER_STEP) * BUFFER_STEP
        with self._lock:
            free = self._free.get(capacity)
            if free:
                self._held -= capacity
                return free.pop()
        return bytearray(capacity)

    def give(self, buffer: bytearray) -> None:
        """Keep ``buffer`` for a later take(); nothing may use it any more."""
        capacity = len(buffer)
        if capacity % BUFFER_STEP:
            return  # not one of ours
        with self._lock:
            if self._held + capacity <= self._max:
                self._free.setdefault(capacity, []).append(buffer)
                self._held += capacity


class BodyBudget:
    """The bytes of small bodies one event loop holds at once, from the GET to the file in
    place: an asyncio semaphore counted in bytes, taken before the request (the listing
    gives the size) and returned when the file is placed or the attempt fails.

    Without it the loop receives bodies as fast as the network allows while the storage
    threads hash and write them; on 667 files of 5-8 MB from loopback that queue held 2 GB
    of bodies, each in fresh, page-faulted memory and written back cold (README,
    Performance). A body larger than the whole budget is let through alone. Waiters are
    served in order, so a large body is not starved by small ones."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"a body budget needs at least one byte, got {capacity}")
        self.capacity = capacity
        self._held = 0
        self._waiters: collections.deque[tuple[int, asyncio.Future[None]]] = collections.deque()

    @property
    def held(self) -> int:
        return self._held

    async def take(self, size: int) -> int:
        """Wait until ``size`` bytes fit; returns what was taken (give that back)."""
        size = min(max(size, 0), self.capacity)
        if not self._waiters and self._held + size <= self.capacity:
            self._held += size
            return size
        waiter = asyncio.get_running_loop().create_future()
        entry = (size, waiter)
        self._waiters.append(entry)
        try:
            await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self.give(size)  # granted just as the caller was cancelled
            else:
                with contextlib.suppress(ValueError):  # _wake may have dropped it already
                    self._waiters.remove(entry)
                self._wake()  # it may have been the one holding the others back
            raise
        return size

    def give(self, size: int) -> None:
        self._held -= size
        self._wake()

    def _wake(self) -> None:
        while self._waiters:
            size, waiter = self._waiters[0]
            if waiter.done():  # cancelled; take() removes it
                self._waiters.popleft()
                continue
            if self._held + size > self.capacity:
                return
            self._waiters.popleft()
            self._held += size
            waiter.set_result(None)
