"""kill -9 at any moment of a run that retires, then the truth: the state agrees with the
disk, and a later sync exits 0 only if every selected file is in the live tree and
verified. Real `idc-sync` processes, killed while they move files (the test watches the
state database and kills when retirement is under way), on real files."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from idc_sync.state.store import STATE_DB
from tests.support import dataset
from tests.support.cli import dicom_files, idc_sync
from tests.support.mirror import expected_path
from tests.support.s3server import S3TestServer

Row = dict[str, Any]


def _args(destination: Path, endpoint: str) -> list[str]:
    return ["--destination", str(destination), "--endpoint", endpoint, "--concurrency", "8",
            "--series-concurrency", "4", "--log-level", "error"]  # fmt: skip


def _series(rows: list[Row]) -> list[str]:
    return ["--series", ",".join(str(row["crdc_series_uuid"]) for row in rows)]


def _leaving(db: Path) -> tuple[int, int]:
    """(series retiring, series retired), read while the run works."""
    with contextlib.closing(sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True)) as conn:
        conn.execute("PRAGMA busy_timeout = 50")
        rows = dict(conn.execute(
            "SELECT state, COUNT(*) FROM series WHERE state IN ('retiring', 'retired') "
            "GROUP BY state"
        ).fetchall())  # fmt: skip
    return int(rows.get("retiring", 0)), int(rows.get("retired", 0))


def _kill_while_retiring(command: list[str], db: Path, wanted: int) -> str:
    """Run ``command`` and kill -9 it once ``wanted`` series are retired (or one is being
    retired, when ``wanted`` is 0); returns what the kill hit."""
    environment = {**os.environ, "IDC_SYNC_CONFIG": ""}
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               env=environment)  # fmt: skip
    deadline = time.monotonic() + 60
    hit = "ended first"
    try:
        while process.poll() is None and time.monotonic() < deadline:
            try:
                retiring, retired = _leaving(db)
            except sqlite3.Error:
                continue  # the run holds a write lock for a moment
            if (retiring and retired >= wanted) or retired > wanted:
                os.kill(process.pid, signal.SIGKILL)
                hit = f"killed at {retired} retired, {retiring} retiring"
                break
    finally:
        if process.poll() is None and hit == "ended first":
            process.kill()
        process.wait(30)
    return hit


def _truth(db: Path, *, settled: bool = True) -> None:
    """The state agrees with the disk: every verified file is where the state says (or, for
    a series a kill left retiring, where its journal says it goes), every retired file the
    journal kept is where it says; ``settled``: no series is left half retired."""
    with contextlib.closing(sqlite3.connect(db)) as conn:
        done = conn.execute(
            "SELECT o.path, o.retired_path, s.state FROM object AS o JOIN series AS s "
            "USING (crdc_series_uuid) WHERE o.state = 'done'"
        ).fetchall()
        kept = conn.execute(
            "SELECT retired_path FROM object WHERE state = 'retired' AND retired_path IS NOT NULL"
        ).fetchall()
        half = conn.execute("SELECT COUNT(*) FROM series WHERE state = 'retiring'").fetchone()
    for path, journal, series in done:
        moving = series == "retiring" and journal is not None and Path(journal).is_file()
        assert Path(path).is_file() or moving, f"{path}: done, but neither here nor moved"
    assert all(Path(path).is_file() for (path,) in kept), "a retired file is not where it was put"
    if settled:
        assert half == (0,)


@pytest.mark.slow
def test_kill_9_while_retiring_then_every_sync_tells_the_truth(
    tmp_path: Path, s3_server: S3TestServer
) -> None:
    rows = dataset.real_series(
        where="instanceCount BETWEEN 1 AND 3 AND series_size_MB < 0.05", limit=60
    )
    uploaded = dataset.populate(s3_server, rows)
    keep, leave = rows[:10], rows[10:]
    destination = tmp_path / "mirror"
    db = destination / ".idc-sync" / STATE_DB
    args = _args(destination, s3_server.endpoint)
    assert idc_sync("sync", *_series(rows), *args).returncode == 0
    prune = [sys.executable, "-m", "idc_sync", "sync", *_series(keep), "--prune",
             "--allow-retire", *args]  # fmt: skip
    rng = random.Random(20261201)
    hits = []
    for _ in range(8):
        hits.append(_kill_while_retiring(prune, db, rng.randrange(len(leave))))
        _truth(db, settled=False)
        # the whole selection again: every file back in the live tree, none fetched
        s3_server.clear_requests()
        back = idc_sync("sync", *_series(rows), *args)
        assert back.returncode == 0, back.stdout + back.stderr
        assert "mirror complete" in back.stdout
        assert [r.key for r in s3_server.requests() if r.kind == "GET"] == []
        for (_, key), data in uploaded.items():
            row = next(r for r in rows if key.startswith(str(r["crdc_series_uuid"])))
            assert expected_path(destination, row, key).read_bytes() == data
        _truth(db)
    assert sum(hit.startswith("killed") for hit in hits) >= 6, hits

    # killed once more, then the pruned selection finished: retired files are out of the
    # live tree, in the retired folder, and the state says so
    _kill_while_retiring(prune, db, len(leave) // 2)
    done = idc_sync("sync", *_series(keep), "--prune", "--allow-retire", *args)
    assert done.returncode == 0, done.stdout + done.stderr
    _truth(db)
    live = {p.name for p in dicom_files(destination)}
    assert live == {k.split("/")[1] for r in keep for k in dataset.instance_keys(r)}
    retired = {p.name for p in dicom_files(tmp_path / "mirror.retired")}
    assert retired == {k.split("/")[1] for r in leave for k in dataset.instance_keys(r)}
