"""Tests of idc_sync.disk.storage on real files: temp files filled by positional writes and
renamed into place, cleanup of temp files left by a killed run, and a full disk."""

from __future__ import annotations

import errno
import os
import random
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from idc_sync.core.errors import LocalStorageError
from idc_sync.disk.storage import (
    TempFile,
    fsync_directory,
    is_temp_name,
    local_error,
    remove_stale_temps,
    survey_directory,
    temp_path_for,
)

# An instance file as the buckets and idc-index name it: <crdc_instance_uuid>.dcm
INSTANCE = "0a2e0c3f-7d0b-4a8a-9c36-1b1f6f2c2d6e.dcm"


def payload(size: int, seed: int = 25) -> bytes:
    return random.Random(seed).randbytes(size)


def test_positional_writes_in_any_order_then_commit_give_the_exact_file(tmp_path: Path) -> None:
    final = tmp_path / "qin_pet_phantom" / "series" / INSTANCE
    data = payload(300_000)
    chunks = [(offset, data[offset : offset + 65_536]) for offset in range(0, len(data), 65_536)]
    random.Random(1).shuffle(chunks)

    temp = TempFile(final)
    assert temp.path.parent == final.parent  # created, and on the same file system
    for offset, chunk in chunks:
        temp.write_at(memoryview(chunk), offset)
    assert not final.exists()  # nothing under the final name until commit
    temp.commit()

    assert final.read_bytes() == data
    assert not temp.path.exists()
    assert [p.name for p in final.parent.iterdir()] == [INSTANCE]


def test_commit_replaces_an_existing_damaged_file(tmp_path: Path) -> None:
    final = tmp_path / INSTANCE
    final.write_bytes(b"truncated by an earlier tool")
    data = payload(10_000)
    temp = TempFile(final)
    temp.write_at(data, 0)
    temp.commit()
    assert final.read_bytes() == data
    assert os.listdir(tmp_path) == [INSTANCE]


def test_discard_removes_the_temp_file_and_leaves_the_final_name_alone(tmp_path: Path) -> None:
    final = tmp_path / INSTANCE
    final.write_bytes(b"verified earlier")
    temp = TempFile(final)
    temp.write_at(payload(1000), 0)
    assert temp.path.exists()
    temp.discard()
    temp.discard()  # twice is harmless
    assert not temp.path.exists()
    assert final.read_bytes() == b"verified earlier"
    assert os.listdir(tmp_path) == [INSTANCE]


def test_temp_names_are_recognised_and_never_the_final_name(tmp_path: Path) -> None:
    final = tmp_path / INSTANCE
    names = {temp_path_for(final).name for _ in range(50)}
    assert len(names) == 50  # two writers of one object never share a temp file
    for name in names:
        assert is_temp_name(name)
        assert name != final.name
        assert INSTANCE in name  # an operator can tell which object it was
    assert not is_temp_name(INSTANCE)
    assert not is_temp_name("state.sqlite")
    assert not is_temp_name(".idc-sync")  # the default state directory's name


def test_two_temp_files_for_one_object_do_not_clash(tmp_path: Path) -> None:
    final = tmp_path / INSTANCE
    first, second = TempFile(final), TempFile(final)
    try:
        assert first.path != second.path
        first.write_at(b"first", 0)
        second.write_at(b"second", 0)
        second.commit()
        assert final.read_bytes() == b"second"
    finally:
        first.discard()
    assert os.listdir(tmp_path) == [INSTANCE]


def test_survey_removes_only_temp_files_and_names_the_regular_files(tmp_path: Path) -> None:
    series = tmp_path / "series"
    series.mkdir()
    outside = tmp_path / "outside.dcm"
    outside.write_bytes(b"not ours to delete")
    stale = [temp_path_for(series / f"{n:08x}-0000-4000-8000-000000000000.dcm") for n in range(3)]
    for path in stale:
        path.write_bytes(b"half a file")
    (series / INSTANCE).write_bytes(b"verified")
    (series / "notes.partial").write_bytes(b"a user's file")
    temp_like_dir = temp_path_for(series / "subdir")
    temp_like_dir.mkdir()
    temp_like_link = temp_path_for(series / "link")
    temp_like_link.symlink_to(outside)

    survey = survey_directory(series)
    assert survey.removed_temp_files == 3
    # symlinks and directories are never taken for files already mirrored
    assert survey.files == {INSTANCE, "notes.partial"}

    assert not any(path.exists() for path in stale)
    assert sorted(os.listdir(series)) == sorted(
        [INSTANCE, "notes.partial", temp_like_dir.name, temp_like_link.name]
    )
    assert outside.read_bytes() == b"not ours to delete"
    assert survey_directory(series).removed_temp_files == 0


def test_stale_temps_of_one_file_go_and_nothing_else(tmp_path: Path) -> None:
    final = tmp_path / "a[1]*.csv"  # glob characters in the name match only themselves
    final.write_text("kept")
    stale = [temp_path_for(final), temp_path_for(final)]
    for path in stale:
        path.write_text("half")
    kept = [temp_path_for(tmp_path / "a1x.csv"), tmp_path / "a[1]*.csv.partial"]
    for path in kept:
        path.write_text("other")
    remove_stale_temps(final)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [final.name, *(p.name for p in kept)]
    )
    remove_stale_temps(tmp_path / "missing" / "b.csv")  # no directory: nothing to do


def test_survey_of_a_missing_directory_is_empty(tmp_path: Path) -> None:
    survey = survey_directory(tmp_path / "not-yet")
    assert survey.files == frozenset()
    assert survey.removed_temp_files == 0


def test_disk_errors_become_local_storage_errors_and_others_do_not(tmp_path: Path) -> None:
    for number in (errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS):
        error = local_error(OSError(number, os.strerror(number)), "cannot write", tmp_path)
        assert isinstance(error, LocalStorageError)
        assert str(tmp_path) in str(error)
        assert os.strerror(number) in str(error)
    not_found = OSError(errno.ENOENT, "No such file or directory")
    assert local_error(not_found, "cannot write", tmp_path) is not_found


def test_fsync_directory_of_a_missing_directory_is_not_a_disk_failure(tmp_path: Path) -> None:
    fsync_directory(tmp_path)
    with pytest.raises(FileNotFoundError):
        fsync_directory(tmp_path / "gone")


def write_in_chunks(temp: TempFile, data: bytes, chunk: int) -> None:
    for offset in range(0, len(data), chunk):
        temp.write_at(data[offset : offset + chunk], offset)


@pytest.fixture
def tiny_filesystem(tmp_path: Path) -> Iterator[Path]:
    """A 64 KiB tmpfs: a disk that really fills up."""
    mount_point = tmp_path / "tiny"
    mount_point.mkdir()
    mount = shutil.which("mount")
    if mount is None or os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root and mount(8)")
    result = subprocess.run(
        [mount, "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "--lazy", str(mount_point)], check=True)


def test_a_full_disk_raises_local_storage_error_and_leaves_no_partial_file(
    tiny_filesystem: Path,
) -> None:
    final = tiny_filesystem / "series" / INSTANCE
    temp = TempFile(final)
    data = payload(256 * 1024)
    with pytest.raises(LocalStorageError, match="No space left") as caught:
        write_in_chunks(temp, data, 16 * 1024)
    assert str(temp.path) in str(caught.value)
    assert not final.exists()
    temp.discard()
    assert not final.exists()
    assert os.listdir(final.parent) == []
    # discarding gave the space back: the same object fits once it is small enough
    retry = TempFile(final)
    retry.write_at(data[:8192], 0)
    retry.commit()
    assert final.read_bytes() == data[:8192]
