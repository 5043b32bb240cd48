"""Receive buffers lent to small GET bodies and handed back once the body is written, so that
a body of half a megabyte is not a fresh allocation each time: a new bytearray is
zero-filled and, above glibc's mmap threshold, page-faulted in, which cost a tenth of the
event loop's time on CT-sized files (README, Performance)."""

from __future__ import annotations

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
