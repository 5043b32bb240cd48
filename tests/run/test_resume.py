"""kill -9 at random moments, then resume: the mirror ends byte-identical, no temp file is
left, and no file that reached its final name before a kill is fetched again."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from idc_sync.disk.storage import is_temp_name
from tests.support import dataset
from tests.support.s3server import S3TestServer


def _command(destination: Path, endpoint: str, series: list[str]) -> list[str]:
    command = [sys.executable, "-m", "idc_sync", "sync", "--destination", str(destination),
               "--endpoint", endpoint, "--no-progress", "--concurrency", "4",
               "--series-concurrency", "2", "--log-level", "warning"]  # fmt: skip
    for uuid in series:
        command += ["--series", uuid]
    return command


def _final_files(root: Path) -> set[str]:
    return {p.name for p in root.rglob("*.dcm") if not is_temp_name(p.name)}


@pytest.mark.slow
def test_kill_9_at_random_moments_then_resume_loses_and_refetches_nothing(
    tmp_path: Path, s3_server: S3TestServer
) -> None:
    rows = dataset.selection("qin_pet_phantom_small")[:3]
    uploaded = dataset.populate(s3_server, rows)
    # Slow the server down so a run lasts several seconds and kills land mid-transfer.
    s3_server.faults.add("latency", seconds=0.1, on=["GET"])
    destination = tmp_path / "mirror"
    command = _command(destination, s3_server.endpoint, [str(r["crdc_series_uuid"]) for r in rows])
    rng = random.Random(20261128)
    verified: set[str] = set()
    mark = 0

    def assert_nothing_verified_was_fetched_again() -> None:
        again = {
            r.key.split("/")[1]
            for r in s3_server.requests()[mark:]
            if r.method == "GET" and r.key is not None and r.key.split("/")[1] in verified
        }
        assert not again, f"fetched again after a kill: {sorted(again)[:5]}"

    kills = 0
    for _ in range(6):
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(1.0, 3.0))
        finished = process.poll() is not None
        if not finished:
            os.kill(process.pid, signal.SIGKILL)
            kills += 1
        process.wait()
        assert_nothing_verified_was_fetched_again()
        if finished:
            break
        # Everything under a final name was verified before its rename.
        verified = _final_files(destination)
        mark = len(s3_server.requests())
    assert kills >= 2, "kills did not land: the run was too fast to interrupt"

    final = subprocess.run(command, capture_output=True, text=True, check=False, timeout=120)
    assert final.returncode == 0, final.stdout + final.stderr
    assert_nothing_verified_was_fetched_again()

    leftovers = [p for p in destination.rglob("*") if is_temp_name(p.name)]
    assert leftovers == []
    got = {p.name: p.read_bytes() for p in destination.rglob("*.dcm")}
    assert got == {key.split("/")[1]: data for (_, key), data in uploaded.items()}
