"""The file systems of the mirror and the state: each measured once, as statvfs sees it, a
directory not made yet at its parent, and a statvfs that hangs (a dead NFS server) never
holds up the caller nor piles up threads."""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

import pytest

from idc_sync.service.filesystems import FileSystemProbe, measure, roots_of
from tests.support.mirror import settings_for


def test_one_file_system_is_reported_once_under_the_first_role(tmp_path: Path) -> None:
    (tmp_path / "mirror").mkdir()
    spaces = measure([("mirror", tmp_path / "mirror"), ("state", tmp_path / "mirror" / ".s")])
    assert [(s.role, s.path) for s in spaces] == [("mirror", str(tmp_path / "mirror"))]
    usage = shutil.disk_usage(tmp_path)
    assert spaces[0].size_bytes == usage.total
    assert abs(spaces[0].avail_bytes - usage.free) < 2**30  # others write meanwhile


def test_a_directory_not_made_yet_is_measured_where_it_will_be(tmp_path: Path) -> None:
    (space,) = measure([("mirror", tmp_path / "not" / "yet")])
    assert space.path == str(tmp_path / "not" / "yet")
    assert space.size_bytes == shutil.disk_usage(tmp_path).total


def test_a_state_directory_on_another_file_system_is_reported_too(tmp_path: Path) -> None:
    shm = Path("/dev/shm")
    if not shm.is_dir() or shm.stat().st_dev == tmp_path.stat().st_dev:
        pytest.skip("no second file system (tmpfs at /dev/shm) here")
    with tempfile.TemporaryDirectory(dir=shm) as state:
        spaces = measure([("mirror", tmp_path), ("state", Path(state))])
        assert [(s.role, s.path) for s in spaces] == [("mirror", str(tmp_path)),
                                                      ("state", state)]  # fmt: skip
        assert spaces[1].size_bytes == shutil.disk_usage(state).total


def test_roots_are_the_mirror_each_license_root_the_state_and_the_retired_files(
    tmp_path: Path,
) -> None:
    settings = settings_for(
        tmp_path, "http://127.0.0.1:9", [],
        licenses={"destinations": {"CC BY-NC*": str(tmp_path / "nc")}},
        state_dir=tmp_path / "state", retired_dir=tmp_path / "retired",
    )  # fmt: skip
    assert roots_of(settings) == [("mirror", tmp_path / "mirror"), ("mirror", tmp_path / "nc"),
                                  ("state", tmp_path / "state"),
                                  ("retired", tmp_path / "retired")]  # fmt: skip


def _probe_threads() -> int:
    return sum(1 for thread in threading.enumerate() if thread.name == "idc-sync-statvfs")


def test_a_hung_statvfs_answers_with_the_last_values_and_starts_no_second_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_statvfs = os.statvfs
    release = threading.Event()
    hung = threading.Event()

    def statvfs(path: object) -> os.statvfs_result:
        if hung.is_set():
            release.wait(30)
        return real_statvfs(path)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "statvfs", statvfs)
    roots = [("mirror", tmp_path)]

    async def main() -> None:
        probe = FileSystemProbe(timeout=0.3)
        first = await probe.spaces(roots)
        assert [s.path for s in first] == [str(tmp_path)]
        hung.set()
        for _ in range(3):
            started = time.monotonic()
            assert await probe.spaces(roots) == first
            assert time.monotonic() - started < 2
        assert _probe_threads() == 1
        hung.clear()
        release.set()
        # the stuck probe finishes; its answer is taken and the next one starts afresh
        await probe.spaces(roots)
        assert [s.path for s in await probe.spaces(roots)] == [str(tmp_path)]

    try:
        asyncio.run(main())
    finally:
        release.set()


def test_without_a_destination_only_the_state_is_measured(tmp_path: Path) -> None:
    settings = settings_for(tmp_path, "http://127.0.0.1:9", [], destination=None,
                            state_dir=tmp_path / "state")  # fmt: skip
    assert roots_of(settings) == [("state", tmp_path / "state"),
                                  ("retired", tmp_path / "state" / "retired")]  # fmt: skip
