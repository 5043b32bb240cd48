"""The bandwidth schedule: which cap applies at a local time, windows crossing midnight,
boundaries (start included, end excluded), and windows the config must refuse."""

from __future__ import annotations

import re
from datetime import datetime, time
from pathlib import Path

import pytest

from idc_sync.config import load_settings
from idc_sync.core.errors import ConfigurationError
from idc_sync.core.schedule import BandwidthSchedule, Window, parse_clock

NIGHT_OPEN = BandwidthSchedule(10_000_000, (Window(time(20), time(6), 0),))


def at(clock: str, day: int = 2) -> datetime:
    hour, minute = clock.split(":")[:2]
    second = int(clock.split(":")[2]) if clock.count(":") == 2 else 0
    return datetime(2026, 11, day, int(hour), int(minute), second)


@pytest.mark.parametrize(
    ("clock", "cap"),
    [
        ("19:59:59", 10_000_000),
        ("20:00", 0),  # the start is inside
        ("23:59:59", 0),
        ("00:00", 0),  # past midnight, still inside
        ("05:59:59", 0),
        ("06:00", 10_000_000),  # the end is outside
        ("12:00", 10_000_000),
    ],
)
def test_window_crossing_midnight_applies_from_start_up_to_end(clock: str, cap: int) -> None:
    assert NIGHT_OPEN.cap_at(at(clock)) == cap


def test_daytime_window_caps_inside_and_default_applies_outside() -> None:
    schedule = BandwidthSchedule(0, (Window(time(9), time(17, 30), 2_000_000),))
    assert schedule.cap_at(at("08:59:59")) == 0
    assert schedule.cap_at(at("09:00")) == 2_000_000
    assert schedule.cap_at(at("17:29:59")) == 2_000_000
    assert schedule.cap_at(at("17:30")) == 0


def test_window_ending_at_midnight_covers_the_evening_only() -> None:
    schedule = BandwidthSchedule(5, (Window(time(18), time(0), 0),))
    assert schedule.cap_at(at("17:59")) == 5
    assert schedule.cap_at(at("18:00")) == 0
    assert schedule.cap_at(at("23:59:59")) == 0
    assert schedule.cap_at(at("00:00")) == 5


def test_next_change_is_the_next_boundary_even_across_midnight() -> None:
    assert NIGHT_OPEN.next_change(at("12:00")) == at("20:00")
    assert NIGHT_OPEN.next_change(at("20:00")) == at("06:00", day=3)
    assert NIGHT_OPEN.next_change(at("23:00")) == at("06:00", day=3)
    assert NIGHT_OPEN.next_change(at("05:59:59")) == at("06:00")
    assert BandwidthSchedule(7).next_change(at("12:00")) is None


def test_adjacent_windows_do_not_overlap_and_each_keeps_its_cap() -> None:
    schedule = BandwidthSchedule(
        1,
        (Window(time(20), time(6), 0), Window(time(6), time(9), 3), Window(time(17), time(20), 2)),
    )
    assert [schedule.cap_at(at(c)) for c in ("05:59", "06:00", "09:00", "17:00", "20:00")] == [
        0, 3, 1, 2, 0,
    ]  # fmt: skip


@pytest.mark.parametrize(
    "windows",
    [
        [("20:00", "06:00"), ("05:00", "07:00")],  # overlap after midnight
        [("20:00", "06:00"), ("23:00", "01:00")],  # one inside the other, both crossing
        [("09:00", "17:00"), ("12:00", "13:00")],
        [("22:00", "02:00"), ("00:00", "00:30")],
    ],
)
def test_overlapping_windows_are_refused(windows: list[tuple[str, str]]) -> None:
    with pytest.raises(ValueError, match="overlap"):
        BandwidthSchedule(0, tuple(Window(parse_clock(a), parse_clock(b), 1) for a, b in windows))


@pytest.mark.parametrize("text", ["24:00", "7:00", "07:60", "0700", "07:00:00", "", "noon"])
def test_clock_must_be_hh_mm(text: str) -> None:
    with pytest.raises(ValueError, match="HH:MM"):
        parse_clock(text)


def test_always_unlimited_only_when_no_cap_anywhere() -> None:
    assert BandwidthSchedule().always_unlimited
    assert BandwidthSchedule(0, (Window(time(1), time(2), 0),)).always_unlimited
    assert not BandwidthSchedule(0, (Window(time(1), time(2), 5),)).always_unlimited
    assert not NIGHT_OPEN.always_unlimited


# -- the config keys --------------------------------------------------------------------


def _config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


def test_config_builds_the_schedule_from_cap_and_windows(tmp_path: Path) -> None:
    path = _config(
        tmp_path,
        'max_bytes_per_second = 10_000_000\n[[bandwidth]]\nfrom = "20:00"\nto = "06:00"\n'
        "max_bytes_per_second = 0\n",
    )
    assert load_settings(path).bandwidth_schedule == NIGHT_OPEN


@pytest.mark.parametrize(
    ("text", "key", "message"),
    [
        ('[[bandwidth]]\nfrom = "25:00"\nto = "06:00"\nmax_bytes_per_second = 0\n',
         "bandwidth.0.from", "HH:MM"),
        ('[[bandwidth]]\nfrom = "20:00"\nto = "6"\nmax_bytes_per_second = 0\n',
         "bandwidth.0.to", "HH:MM"),
        ('[[bandwidth]]\nfrom = "20:00"\nto = "20:00"\nmax_bytes_per_second = 0\n',
         "bandwidth.0", "empty"),
        ('[[bandwidth]]\nfrom = "20:00"\nto = "21:00"\n',
         "bandwidth.0.max_bytes_per_second", "required"),
        ('[[bandwidth]]\nfrom = "20:00"\nto = "21:00"\nmax_bytes_per_second = -5\n',
         "bandwidth.0.max_bytes_per_second", "greater than or equal to 0"),
        ('[[bandwidth]]\nfrom = "20:00"\nto = "21:00"\nmax_bytes_per_second = 1\nrate = 2\n',
         "bandwidth.0.rate", "unknown key"),
        ('[[bandwidth]]\nfrom = "20:00"\nto = "06:00"\nmax_bytes_per_second = 0\n'
         '[[bandwidth]]\nfrom = "05:00"\nto = "07:00"\nmax_bytes_per_second = 1\n',
         "bandwidth", "20:00-06:00 and 05:00-07:00 overlap"),
        ("max_bytes_per_second = -1\n", "max_bytes_per_second", "greater than or equal to 0"),
    ],
)  # fmt: skip
def test_config_errors_name_the_key(tmp_path: Path, text: str, key: str, message: str) -> None:
    path = _config(tmp_path, text)
    with pytest.raises(ConfigurationError) as caught:
        load_settings(path)
    assert f"in {path}: {key}: " in str(caught.value)
    assert message in str(caught.value)


def test_a_cap_with_the_s5cmd_engine_is_refused_not_ignored(tmp_path: Path) -> None:
    path = _config(tmp_path, 'engine = "s5cmd"\nmax_bytes_per_second = 1_000_000\n')
    with pytest.raises(ConfigurationError, match='caps need engine = "native"'):
        load_settings(path)
    path = _config(tmp_path, 'engine = "s5cmd"\nmax_bytes_per_second = 0\n')
    assert load_settings(path).engine == "s5cmd"


def test_the_readme_bandwidth_example_loads_and_means_what_it_says(tmp_path: Path) -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    (block,) = [
        b for b in re.findall(r"```toml\n(.*?)```", readme, re.DOTALL) if "[[bandwidth]]" in b
    ]
    schedule = load_settings(_config(tmp_path, block)).bandwidth_schedule
    assert schedule == NIGHT_OPEN
