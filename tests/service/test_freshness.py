"""LastComplete: when the mirror was last seen complete, advanced only while it is, written
to the state directory on every change of completeness and now and then while complete,
read back by the next daemon; an unreadable file reads as never."""

from __future__ import annotations

from pathlib import Path

from idc_sync.service.freshness import LAST_COMPLETE_FILE, LastComplete


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _stored(tmp_path: Path) -> float | None:
    path = tmp_path / LAST_COMPLETE_FILE
    return float(path.read_text()) if path.exists() else None


def test_never_complete_is_none_and_writes_nothing(tmp_path: Path) -> None:
    tracker = LastComplete.in_state_dir(tmp_path)
    tracker.observe(False)
    assert tracker.timestamp is None
    assert _stored(tmp_path) is None


def test_the_time_advances_while_complete_and_stands_while_not(tmp_path: Path) -> None:
    clock = Clock()
    tracker = LastComplete(tmp_path / LAST_COMPLETE_FILE, clock=clock, persist_every=600)
    tracker.observe(True)
    assert tracker.timestamp == clock.now == _stored(tmp_path)
    clock.now += 30
    tracker.observe(True)
    assert tracker.timestamp == clock.now
    assert _stored(tmp_path) == clock.now - 30  # not rewritten every observation
    clock.now += 30
    tracker.observe(False)  # a new release arrived: the last moment seen complete is kept
    assert tracker.timestamp == clock.now - 30 == _stored(tmp_path)
    clock.now += 3600
    tracker.observe(False)
    assert tracker.timestamp == clock.now - 3630 == _stored(tmp_path)


def test_while_complete_the_file_is_rewritten_every_persist_every_seconds(tmp_path: Path) -> None:
    clock = Clock()
    tracker = LastComplete(tmp_path / LAST_COMPLETE_FILE, clock=clock, persist_every=600)
    tracker.observe(True)
    start = clock.now
    for _ in range(25):
        clock.now += 30
        tracker.observe(True)
    stored = _stored(tmp_path)
    assert stored is not None
    assert start + 600 <= stored <= clock.now
    assert clock.now - stored < 600


def test_a_restart_reads_the_time_back(tmp_path: Path) -> None:
    clock = Clock()
    LastComplete(tmp_path / LAST_COMPLETE_FILE, clock=clock).observe(True)
    again = LastComplete(tmp_path / LAST_COMPLETE_FILE, clock=clock)
    assert again.timestamp == clock.now
    clock.now += 100
    again.observe(False)
    assert again.timestamp == clock.now - 100


def test_an_unreadable_file_reads_as_never_and_is_replaced(tmp_path: Path) -> None:
    path = tmp_path / LAST_COMPLETE_FILE
    path.write_text("\x00 torn")
    clock = Clock()
    tracker = LastComplete(path, clock=clock)
    assert tracker.timestamp is None
    tracker.observe(True)
    assert _stored(tmp_path) == clock.now


def test_a_state_directory_that_refuses_writes_does_not_raise(tmp_path: Path) -> None:
    tracker = LastComplete(tmp_path / "missing" / LAST_COMPLETE_FILE, clock=Clock())
    tracker.observe(True)
    tracker.observe(True)
    assert tracker.timestamp == 1_000_000.0


def test_flush_writes_the_latest_time_once(tmp_path: Path) -> None:
    clock = Clock()
    tracker = LastComplete(tmp_path / LAST_COMPLETE_FILE, clock=clock)
    tracker.flush()
    assert _stored(tmp_path) is None
    tracker.observe(True)
    clock.now += 30
    tracker.observe(True)
    assert _stored(tmp_path) == clock.now - 30
    tracker.flush()
    assert _stored(tmp_path) == clock.now
