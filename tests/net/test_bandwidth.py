"""The bandwidth throttle: a token bucket that follows the schedule. Pacing is checked on
an injected clock (exact), the schedule's open windows on the real clock (by the throttle's
own accounting), and a real sync against the local S3 server with a cap takes at least
the time the cap allows and still mirrors byte-identical files."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime, timedelta
from datetime import time as clock_time
from pathlib import Path

from idc_sync.core.schedule import BandwidthSchedule, Window
from idc_sync.net.bandwidth import BURST_SECONDS, BandwidthThrottle
from tests.support import dataset
from tests.support.mirror import assert_mirrored, run, settings_for
from tests.support.s3server import S3TestServer


class FakeClock:
    """Monotonic and local time that move only when the throttle sleeps."""

    def __init__(self, local: datetime) -> None:
        self.local = local
        self.elapsed = 0.0

    def monotonic(self) -> float:
        return self.elapsed

    def now(self) -> datetime:
        return self.local

    async def sleep(self, seconds: float) -> None:
        self.elapsed += seconds
        self.local += timedelta(seconds=seconds)
        await asyncio.sleep(0)


def throttle_on(clock: FakeClock, schedule: BandwidthSchedule) -> BandwidthThrottle:
    return BandwidthThrottle(
        schedule, clock=clock.monotonic, local_now=clock.now, sleep=clock.sleep
    )


def test_concurrent_takes_are_paced_to_the_cap_after_one_burst() -> None:
    clock = FakeClock(datetime(2026, 11, 2, 12, 0))
    rate = 1_000_000
    throttle = throttle_on(clock, BandwidthSchedule(rate))

    async def main() -> None:
        # 8 transfers x 10 slices of 100 kB: 8 MB in all
        await asyncio.gather(*(throttle.take(100_000) for _ in range(80)))

    asyncio.run(main())

    expected = (8_000_000 - rate * BURST_SECONDS) / rate
    assert abs(clock.elapsed - expected) < 1e-6
    assert throttle.account.bytes_capped == 8_000_000
    assert throttle.account.bytes_unlimited == 0


def test_slice_larger_than_the_bucket_passes_once_paid_for() -> None:
    clock = FakeClock(datetime(2026, 11, 2, 12, 0))
    throttle = throttle_on(clock, BandwidthSchedule(1_000_000))

    asyncio.run(throttle.take(8 << 20))

    assert abs(clock.elapsed - ((8 << 20) - 500_000) / 1_000_000) < 1e-6


def test_window_opening_during_a_wait_releases_the_waiter_at_the_boundary() -> None:
    # capped at 1 kB/s until 20:00, unlimited from then; 19:59:58 now
    clock = FakeClock(datetime(2026, 11, 2, 19, 59, 58))
    schedule = BandwidthSchedule(1_000, (Window(clock_time(20), clock_time(6), 0),))
    throttle = throttle_on(clock, schedule)

    asyncio.run(throttle.take(100_000))  # 99.5 s of debt at the cap

    assert abs(clock.elapsed - 2.0) < 1e-6
    assert throttle.account.seconds_waited == clock.elapsed
    asyncio.run(throttle.take(10_000_000))
    assert abs(clock.elapsed - 2.0) < 1e-6, "inside the open window nothing waits"
    assert throttle.account.bytes_unlimited == 10_000_000


def test_cap_changing_between_windows_paces_at_the_new_cap() -> None:
    # 1 MB/s until 08:00, 100 kB/s from 08:00 to 18:00
    clock = FakeClock(datetime(2026, 11, 2, 7, 59, 59))
    schedule = BandwidthSchedule(1_000_000, (Window(clock_time(8), clock_time(18), 100_000),))
    throttle = throttle_on(clock, schedule)

    asyncio.run(throttle.take(1_700_000))

    # 500 kB from the bucket, 1 MB paid in the last second before 08:00, and the last
    # 200 kB at 100 kB/s (the bucket refills at the new cap)
    assert abs(clock.elapsed - 3.0) < 1e-6


def _open_now_schedule(default: int, window_cap: int) -> BandwidthSchedule:
    now = datetime.now()
    start = (now - timedelta(hours=1)).time().replace(second=0, microsecond=0)
    end = (now + timedelta(hours=1)).time().replace(second=0, microsecond=0)
    return BandwidthSchedule(default, (Window(start, end, window_cap),))


def test_window_open_now_is_not_throttled_on_the_real_clock() -> None:
    throttle = BandwidthThrottle(_open_now_schedule(default=1_000, window_cap=0))

    async def main() -> None:
        await asyncio.gather(*(throttle.take(1 << 20) for _ in range(16)))

    asyncio.run(main())

    assert throttle.current_cap() == 0
    assert throttle.account.bytes_unlimited == 16 << 20
    assert throttle.account.bytes_capped == 0
    assert throttle.account.waits == 0
    assert throttle.account.seconds_waited == 0.0


def test_window_cap_applies_now_instead_of_the_default_on_the_real_clock() -> None:
    throttle = BandwidthThrottle(_open_now_schedule(default=0, window_cap=2_000_000))
    started = time.monotonic()

    async def main() -> None:
        await asyncio.gather(*(throttle.take(200_000) for _ in range(10)))

    asyncio.run(main())

    assert throttle.current_cap() == 2_000_000
    assert throttle.account.bytes_capped == 2_000_000
    assert throttle.account.waits > 0
    assert time.monotonic() - started >= (2_000_000 - 1_000_000) / 2_000_000


def test_never_capping_schedule_needs_no_throttle() -> None:
    assert BandwidthThrottle.following(BandwidthSchedule()) is None
    assert BandwidthThrottle.following(_open_now_schedule(0, 0)) is None
    assert BandwidthThrottle.following(BandwidthSchedule(1)) is not None


# -- a real sync --------------------------------------------------------------------------


def test_capped_sync_takes_at_least_what_the_cap_allows_and_mirrors_identically(
    tmp_path: Path, s3_server: S3TestServer
) -> None:
    rows = dataset.selection("two") + dataset.selection("cr_nc")
    uploaded = dataset.populate(s3_server, rows)
    total = sum(len(data) for data in uploaded.values())
    assert total > 1_000_000
    rate = 500_000
    settings = settings_for(tmp_path, s3_server.endpoint, rows, max_bytes_per_second=rate)

    started = time.monotonic()
    report = run(settings)
    elapsed = time.monotonic() - started

    assert report.ok, report.problems
    assert report.round.summary.bytes_fetched == total
    assert_mirrored(settings.mirror_root, rows, uploaded)
    assert elapsed >= (total - rate * BURST_SECONDS) / rate


def test_sync_inside_an_unlimited_window_is_not_held_to_the_default_cap(
    tmp_path: Path, s3_server: S3TestServer
) -> None:
    rows = dataset.selection("two") + dataset.selection("cr_nc")
    uploaded = dataset.populate(s3_server, rows)
    now = datetime.now()
    window = {
        "from": f"{now - timedelta(hours=1):%H:%M}",
        "to": f"{now + timedelta(hours=1):%H:%M}",
        "max_bytes_per_second": 0,
    }
    # at the default cap of 1 kB/s these 1.4 MB would take over 20 minutes
    settings = settings_for(
        tmp_path, s3_server.endpoint, rows, max_bytes_per_second=1_000, bandwidth=[window]
    )
    assert settings.bandwidth_schedule.cap_at(datetime.now()) == 0

    report = run(settings)

    assert report.ok, report.problems
    assert_mirrored(settings.mirror_root, rows, uploaded)
