"""Carrying out a journalled retirement on real files (disk/retire.py): every file goes where
the journal says, a retirement resumed after a kill finishes the moves that were left,
"keep" and "delete" do what they say, and a move to another file system copies, fsyncs and
only then removes the original."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
from pathlib import Path

from idc_sync.core.lifecycle import SeriesState
from idc_sync.core.model import RetiringFile, SeriesRow
from idc_sync.disk.retire import apply, move_file, retired_location
from idc_sync.disk.storage import is_temp_name
from tests.support.disks import tmpfs

SERIES = "d98abc9a-0ddd-44a3-8646-df10344c49d7"


def _row(root: Path) -> SeriesRow:
    return SeriesRow(
        crdc_series_uuid=SERIES, SeriesInstanceUID="1.2.3", collection_id="c",
        aws_bucket="idc-open-data", license_short_name=None, source_DOI=None,
        instance_count=3, series_size_bytes=30, idc_version=24, root=root, rel_dir="c/p/s",
        instances=None, state=SeriesState.RETIRING, attempts=1, last_error=None,
    )  # fmt: skip


def _files(root: Path, retired: Path | None, count: int = 3) -> list[RetiringFile]:
    row = _row(root)
    found = []
    for number in range(count):
        path = root / "c" / "p" / "s" / f"{number}.dcm"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"%d" % number * 10)
        target = retired_location(retired, row, path) if retired is not None else None
        found.append(RetiringFile(f"{SERIES}/{number}.dcm", path, target, 10))
    return found


def test_files_go_where_the_journal_says_and_emptied_folders_go(tmp_path: Path) -> None:
    root, retired = tmp_path / "mirror", tmp_path / "mirror.retired"
    files = _files(root, retired)
    done, gone = apply("move", _row(root), files)
    assert (done.files_moved, done.files_missing, done.bytes_retired, gone) == (3, 0, 30, [])
    assert sorted(p.name for p in (retired / "v24" / "c" / "p" / "s").iterdir()) == [
        "0.dcm", "1.dcm", "2.dcm",
    ]  # fmt: skip
    assert list(root.iterdir()) == []  # the series' folders are gone, the root stays


def test_a_resumed_retirement_finishes_what_a_kill_left(tmp_path: Path) -> None:
    root, retired = tmp_path / "mirror", tmp_path / "mirror.retired"
    files = _files(root, retired)
    assert files[0].retired_path is not None
    move_file(files[0].path, files[0].retired_path)  # moved before the kill
    files[2].path.unlink()  # gone meanwhile: nothing to restore from
    done, gone = apply("move", _row(root), files)
    assert (done.files_moved, done.files_missing) == (2, 1)
    assert gone == [files[2].key]
    assert files[1].retired_path is not None
    assert files[1].retired_path.read_bytes() == b"1" * 10


def test_keep_leaves_files_and_delete_removes_them(tmp_path: Path) -> None:
    root = tmp_path / "mirror"
    files = _files(root, None)
    kept, gone = apply("keep", _row(root), files)
    assert (kept.files_kept, len(gone)) == (3, 3)
    assert all(f.path.exists() for f in files)
    deleted, gone = apply("delete", _row(root), files)
    assert (deleted.files_deleted, len(gone)) == (3, 3)
    assert not any(f.path.exists() for f in files)


def test_a_move_to_another_file_system_copies_then_removes(tmp_path: Path) -> None:
    root = tmp_path / "mirror"
    with tmpfs(tmp_path / "elsewhere", "1m") as elsewhere:
        files = _files(root, elsewhere)
        done, _ = apply("move", _row(root), files)
        assert done.files_moved == 3
        for item in files:
            assert item.retired_path is not None
            assert item.retired_path.read_bytes() == item.path.name[0].encode() * 10
            assert not item.path.exists()
        assert not [p for p in elsewhere.rglob("*") if p.name.startswith(".idc-sync-")]


def test_a_retirement_killed_while_copying_to_another_file_system_leaves_no_temp(
    tmp_path: Path,
) -> None:
    """kill -9 of a real process while it copies a file into a retired tree on another file
    system; the resumed retirement moves the file and leaves no half copy there."""
    root = tmp_path / "mirror"
    with tmpfs(tmp_path / "elsewhere", "400m") as elsewhere:
        files = _files(root, elsewhere, count=2)
        big, target = files[0].path, files[0].retired_path
        assert target is not None
        with big.open("wb") as handle:  # long enough a copy to land a kill in it
            for _ in range(128):
                handle.write(os.urandom(1 << 20))
        content = hashlib.sha256(big.read_bytes()).hexdigest()
        mover = (
            "import sys; from pathlib import Path; from idc_sync.disk.retire import move_file; "
            "move_file(Path(sys.argv[1]), Path(sys.argv[2]))"
        )
        half: list[Path] = []
        for _ in range(5):  # the copy can finish before a poll sees it: try again
            target.parent.mkdir(parents=True, exist_ok=True)
            with subprocess.Popen([sys.executable, "-c", mover, str(big), str(target)]) as process:
                while process.poll() is None and not half:
                    half = [p for p in target.parent.iterdir() if is_temp_name(p.name)]
                if half:
                    process.send_signal(signal.SIGKILL)
                process.wait(timeout=30)
            if half:
                break
            target.replace(big)  # the copy finished: put the file back and kill sooner
        assert half, "no kill landed during the copy in 5 tries"
        assert big.exists()  # the original is removed only after the copy is in place
        done, gone = apply("move", _row(root), files)
        assert (done.files_moved, done.files_missing, gone) == (2, 0, [])
        assert hashlib.sha256(target.read_bytes()).hexdigest() == content
        assert not big.exists()
        assert not [p for p in elsewhere.rglob("*") if is_temp_name(p.name)]
