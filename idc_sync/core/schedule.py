"""The bandwidth schedule: which cap (bytes per second, 0 = unlimited) applies at a given
local time. Windows are ``[from, to)`` on the wall clock and may cross midnight; outside
every window the default cap applies. Pure: no clock is read here."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, time, timedelta

UNLIMITED = 0
MINUTES_PER_DAY = 24 * 60

_CLOCK = re.compile(r"([01]\d|2[0-3]):([0-5]\d)")


def parse_clock(text: str) -> time:
    """``"HH:MM"`` (24-hour, 00:00 to 23:59) as a time of day."""
    match = _CLOCK.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"a time of day must be HH:MM from 00:00 to 23:59, got {text!r}")
    return time(int(match.group(1)), int(match.group(2)))


def _minute(moment: time) -> int:
    return moment.hour * 60 + moment.minute


@dataclass(frozen=True, slots=True)
class Window:
    """A daily stretch of local time, ``start`` included and ``end`` excluded, with its own
    cap. ``end`` earlier than ``start`` means the window runs past midnight."""

    start: time
    end: time
    max_bytes_per_second: int

    def __post_init__(self) -> None:
        if self.start.second or self.end.second or self.start.microsecond or self.end.microsecond:
            raise ValueError("window bounds are whole minutes")
        if self.start == self.end:
            raise ValueError(
                f"window from {self.start:%H:%M} to {self.end:%H:%M} is empty; leave the "
                "windows out and set the cap itself to cap the whole day"
            )
        if self.max_bytes_per_second < 0:
            raise ValueError("max_bytes_per_second must be 0 (unlimited) or more")

    def spans(self) -> list[tuple[int, int]]:
        """The minutes of the day it covers, as half-open ranges within one day."""
        start, end = _minute(self.start), _minute(self.end)
        if start < end:
            return [(start, end)]
        return [(start, MINUTES_PER_DAY), (0, end)] if end else [(start, MINUTES_PER_DAY)]

    def contains(self, moment: time) -> bool:
        minute = _minute(moment)
        return any(low <= minute < high for low, high in self.spans())

    def describe(self) -> str:
        return f"{self.start:%H:%M}-{self.end:%H:%M}"


def overlap(windows: Sequence[Window]) -> tuple[int, int] | None:
    """The positions of the first two windows that share a minute, if any."""
    for later, window in enumerate(windows):
        for earlier in range(later):
            for low, high in window.spans():
                for other_low, other_high in windows[earlier].spans():
                    if low < other_high and other_low < high:
                        return earlier, later
    return None


@dataclass(frozen=True, slots=True)
class BandwidthSchedule:
    """The default cap and the windows that override it; windows never overlap."""

    default: int = UNLIMITED
    windows: tuple[Window, ...] = ()

    def __post_init__(self) -> None:
        if self.default < 0:
            raise ValueError("max_bytes_per_second must be 0 (unlimited) or more")
        clash = overlap(self.windows)
        if clash is not None:
            first, second = (self.windows[i].describe() for i in clash)
            raise ValueError(f"bandwidth windows {first} and {second} overlap")

    @property
    def always_unlimited(self) -> bool:
        return self.default == UNLIMITED and all(
            w.max_bytes_per_second == UNLIMITED for w in self.windows
        )

    def cap_at(self, moment: datetime) -> int:
        """Bytes per second allowed at this local time; 0 means unlimited."""
        clock = moment.time()
        for window in self.windows:
            if window.contains(clock):
                return window.max_bytes_per_second
        return self.default

    def next_change(self, moment: datetime) -> datetime | None:
        """The next window boundary after ``moment`` (where the cap may change), or None
        when there are no windows."""
        boundaries = sorted({_minute(b) for w in self.windows for b in (w.start, w.end)})
        if not boundaries:
            return None
        midnight = moment.replace(hour=0, minute=0, second=0, microsecond=0)
        for day in (0, 1):
            for minute in boundaries:
                candidate = midnight + timedelta(days=day, minutes=minute)
                if candidate > moment:
                    return candidate
        raise AssertionError("a boundary within the next day always exists")
