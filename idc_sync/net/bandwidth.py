"""The bandwidth cap: a token bucket shared by every transfer of one engine, paced by the
schedule (see schedule.py) and re-checked as time passes, so a window that opens while
transfers wait releases them.

The engine calls ``take(n)`` after receiving ``n`` bytes; ``take`` returns once those bytes
fit under the cap. The bucket holds at most ``burst_seconds`` worth of the cap and may go
into debt by one slice (a slice can be larger than the bucket); waiters queue in order."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime

from idc_sync.core.schedule import UNLIMITED, BandwidthSchedule

# Sleep at most this long between looks at the schedule and the clock: the local clock can
# jump (daylight saving, NTP, a suspended host) without the monotonic one noticing.
RECHECK_SECONDS = 1.0
BURST_SECONDS = 0.5


@dataclass(slots=True)
class ThrottleAccount:
    """What the throttle has let through, and how long it held transfers back."""

    bytes_capped: int = 0  # passed while a cap applied
    bytes_unlimited: int = 0  # passed while no cap applied
    seconds_waited: float = 0.0
    waits: int = 0


class BandwidthThrottle:
    """Implements transfer.Throttle. ``clock`` is monotonic seconds, ``local_now`` the wall
    clock the schedule is written in, ``sleep`` waits; tests may pass their own."""

    def __init__(
        self,
        schedule: BandwidthSchedule,
        *,
        burst_seconds: float = BURST_SECONDS,
        clock: Callable[[], float] = time.monotonic,
        local_now: Callable[[], datetime] = datetime.now,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if burst_seconds <= 0:
            raise ValueError("burst_seconds must be positive")
        self.schedule = schedule
        self.account = ThrottleAccount()
        self._burst_seconds = burst_seconds
        self._clock = clock
        self._local_now = local_now
        self._sleep = sleep
        self._lock = asyncio.Lock()
        self._tokens: float | None = None  # bytes; negative is debt; None until first cap
        self._stamp = clock()

    @classmethod
    def following(cls, schedule: BandwidthSchedule) -> BandwidthThrottle | None:
        """A throttle for this schedule, or None when it never caps anything."""
        return None if schedule.always_unlimited else cls(schedule)

    def capacity(self, rate: int) -> float:
        return rate * self._burst_seconds

    def current_cap(self) -> int:
        return self.schedule.cap_at(self._local_now())

    def _refill(self, rate: int) -> None:
        now = self._clock()
        elapsed = max(now - self._stamp, 0.0)
        self._stamp = now
        tokens = self.capacity(rate) if self._tokens is None else self._tokens
        self._tokens = min(self.capacity(rate), tokens + elapsed * rate)

    def _until_change(self) -> float:
        now = self._local_now()
        change = self.schedule.next_change(now)
        if change is None:
            return RECHECK_SECONDS
        return max((change - now).total_seconds(), 0.001)

    async def take(self, nbytes: int) -> None:
        if nbytes <= 0:
            return
        async with self._lock:
            rate = self.current_cap()
            if rate == UNLIMITED:
                self.account.bytes_unlimited += nbytes
                self._tokens = None  # the next capped stretch starts with a full bucket
                return
            self._refill(rate)
            assert self._tokens is not None
            self._tokens -= nbytes
            self.account.bytes_capped += nbytes
            if self._tokens <= -1.0:
                self.account.waits += 1
            # less than a byte of debt counts as paid: float sums never reach 0 exactly
            while self._tokens <= -1.0:
                pause = min(-self._tokens / rate, self._until_change(), RECHECK_SECONDS)
                started = self._clock()
                await self._sleep(pause)
                self.account.seconds_waited += max(self._clock() - started, 0.0)
                self._refill(rate)  # the time slept was paid for at the cap it slept under
                rate = self.current_cap()
                if rate == UNLIMITED:
                    self._tokens = None
                    return
                self._tokens = min(self._tokens, self.capacity(rate))
