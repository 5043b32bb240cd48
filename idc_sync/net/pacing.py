"""Adaptive request concurrency: additive increase, multiplicative decrease (as TCP does).

Every success lets the limit grow by about one request per limit's worth of successes, up
to the configured ceiling; a SlowDown, 503 or 429 halves it. The mirror's own semaphore
still bounds objects in flight; this one bounds the requests the server sees, so a
throttling bucket gets fewer of them at once instead of the same number retried."""

from __future__ import annotations

import asyncio
from collections import deque
from types import TracebackType


class AdaptiveLimit:
    """An async context manager admitting at most ``limit`` holders; see the module doc."""

    def __init__(self, ceiling: int, *, floor: int = 1, start: int | None = None) -> None:
        if not 1 <= floor <= ceiling:
            raise ValueError(f"need 1 <= floor ({floor}) <= ceiling ({ceiling})")
        self.ceiling = ceiling
        self.floor = floor
        self._limit = float(ceiling if start is None else min(max(start, floor), ceiling))
        self._held = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self.backoffs = 0

    @property
    def limit(self) -> int:
        return int(self._limit)

    @property
    def held(self) -> int:
        return self._held

    async def __aenter__(self) -> None:
        if self._held < self.limit and not self._waiters:
            self._held += 1
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self._release()  # admitted and cancelled at once: pass the slot on
            else:
                self._waiters.remove(waiter)
            raise

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._release()

    def _release(self) -> None:
        self._held -= 1
        self._wake()

    def _wake(self) -> None:
        while self._waiters and self._held < self.limit:
            waiter = self._waiters.popleft()
            if not waiter.done():
                self._held += 1
                waiter.set_result(None)

    def succeeded(self) -> None:
        if self._limit < self.ceiling:
            self._limit = min(self.ceiling, self._limit + 1 / self._limit)
            self._wake()

    def throttled(self) -> None:
        """The server asked us to slow down: halve the limit (never below the floor)."""
        self._limit = max(float(self.floor), self._limit / 2)
        self.backoffs += 1
