"""The sync progress bar: a real rich Progress, a real sync in a subprocess."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

from idc_sync.cli.progress import ProgressDisplay
from tests.support import dataset
from tests.support.s3server import S3TestServer


def test_the_bar_is_told_at_most_every_interval_and_ends_on_the_exact_counts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    display = ProgressDisplay(True, Console(file=io.StringIO(), force_terminal=True))
    with display:
        progress = display._progress
        assert progress is not None
        updates = 0
        update = progress.update

        def counting(*args: object, **kwargs: object) -> None:
            nonlocal updates
            updates += 1
            update(*args, **kwargs)  # type: ignore[arg-type]

        monkeypatch.setattr(progress, "update", counting)
        sink = display.sink(2_000, 2_000 * 100, 0, 0)
        for number in range(2_000):
            if number % 2:
                sink.bytes_received(100)
                sink.file_finished(100, fetched=True, ok=True)
            else:  # already on disk and verified: its bytes count at once
                sink.file_finished(100, fetched=False, ok=True)
        assert updates <= 3  # 4,000 calls inside a few tenths of a second
    [task] = progress.tasks
    assert task.completed == 2_000 * 100
    assert task.fields["files"] == "2,000/2,000 files"


def test_sync_with_the_bar_ends_on_every_file(tmp_path: Path, s3_server: S3TestServer) -> None:
    rows = dataset.selection("two")
    uploaded = dataset.populate(s3_server, rows)
    series = [arg for row in rows for arg in ("--series", str(row["crdc_series_uuid"]))]
    done = subprocess.run(
        [sys.executable, "-m", "idc_sync", "sync", "--destination", str(tmp_path / "mirror"),
         "--endpoint", s3_server.endpoint, "--progress", *series],
        capture_output=True, text=True, check=False, env={**os.environ, "COLUMNS": "200"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert f"{len(uploaded):,}/{len(uploaded):,} files" in done.stderr
