"""Tests of idc_sync.state.lock: one idc-sync per state directory, a refusal that names the
holder, and a lock that a killed holder (kill -9) does not leave behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from idc_sync.core.errors import StateError
from idc_sync.state.lock import LOCK_NAME, StateLock

REPO = Path(__file__).resolve().parents[2]

HOLDER = """
import sys, time
from pathlib import Path
from idc_sync.state.lock import StateLock
with StateLock(Path(sys.argv[1])):
    print("locked", flush=True)
    time.sleep(60)
"""


def test_a_second_lock_on_the_same_directory_names_the_holder(tmp_path: Path) -> None:
    state_dir = tmp_path / ".idc-sync"
    with StateLock(state_dir):
        with pytest.raises(StateError) as caught, StateLock(state_dir):
            pass
        message = str(caught.value)
        assert f"pid {os.getpid()}" in message
        assert str(state_dir) in message
        # the refused attempt did not disturb the holder's record
        assert f"pid {os.getpid()}" in (state_dir / LOCK_NAME).read_text()
    with StateLock(state_dir):  # free again once released
        pass


def test_locks_on_different_directories_are_independent(tmp_path: Path) -> None:
    with StateLock(tmp_path / "a"), StateLock(tmp_path / "b"):
        assert (tmp_path / "a" / LOCK_NAME).exists()
        assert (tmp_path / "b" / LOCK_NAME).exists()


def test_the_lock_file_says_who_holds_it_only_while_held(tmp_path: Path) -> None:
    lock = StateLock(tmp_path / "state" / "nested")
    with lock:
        assert lock.path.read_text().startswith(f"idc-sync pid {os.getpid()} on ")
    assert lock.path.read_text() == ""


def test_a_state_directory_that_cannot_be_created_is_a_state_error(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the state directory should be")
    with (
        pytest.raises(StateError, match="cannot use state directory") as caught,
        StateLock(blocker / ".idc-sync"),
    ):
        pass
    assert str(blocker) in str(caught.value)


@pytest.mark.slow
def test_a_lock_held_by_a_killed_process_is_free_again(tmp_path: Path) -> None:
    state_dir = tmp_path / ".idc-sync"
    with subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(state_dir)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    ) as holder:
        try:
            assert holder.stdout is not None
            assert holder.stdout.readline().strip() == "locked"
            with pytest.raises(StateError, match=f"pid {holder.pid} "), StateLock(state_dir):
                pass
        finally:
            holder.send_signal(signal.SIGKILL)
            holder.wait(timeout=30)
    assert holder.returncode == -signal.SIGKILL
    # the dead holder's line is still in the file, but the kernel released its lock
    assert f"pid {holder.pid}" in (state_dir / LOCK_NAME).read_text()
    with StateLock(state_dir):
        assert f"pid {os.getpid()} " in (state_dir / LOCK_NAME).read_text()
