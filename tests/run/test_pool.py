"""Worker processes beside the parent's own event loop (run/pool.py, run/worker.py), as real
processes against the S3 test server: they share the queue, their progress, log records and
summaries add up in the parent, and kill -9 of one loses nothing and waits for no lease."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import idc_sync.run.jobs
import idc_sync.run.plan
import idc_sync.run.pool
import idc_sync.run.round
from idc_sync.config import Settings
from idc_sync.core.errors import SelectionError
from idc_sync.run.channel import Outbox
from idc_sync.run.jobs import sync
from idc_sync.run.operator import retry_failed
from idc_sync.run.pool import OBJECTS_PER_LOOP, WorkerPool, event_loops, share
from idc_sync.run.round import start_pool
from tests.support import dataset
from tests.support.mirror import assert_mirrored, settings_for
from tests.support.s3server import S3TestServer


class Counting:
    def __init__(self) -> None:
        self.bytes = 0
        self.files: list[tuple[int, bool, bool]] = []

    def bytes_received(self, count: int) -> None:
        self.bytes += count

    def file_finished(self, size: int, *, fetched: bool, ok: bool) -> None:
        self.files.append((size, fetched, ok))


def spy_on_pools(monkeypatch: pytest.MonkeyPatch) -> list[WorkerPool]:
    """The worker pools the rounds of this test start, as they start them."""
    pools: list[WorkerPool] = []

    def spied(given: Settings, to_fetch: int) -> WorkerPool | None:
        pool = start_pool(given, to_fetch)
        if pool is not None:
            pools.append(pool)
        return pool

    monkeypatch.setattr(idc_sync.run.round, "start_pool", spied)
    return pools


@pytest.mark.slow
def test_workers_share_the_queue_and_their_progress_and_summaries_add_up(
    tmp_path: Path,
    s3_server: S3TestServer,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rows = dataset.selection("qin_pet_phantom_small") + dataset.selection("two")
    uploaded = dataset.populate(s3_server, rows)
    # every GET waits: no loop can take all the series before the others start
    s3_server.faults.add("latency", seconds=0.03, on=["GET"])
    victim = sorted(key for _, key in uploaded)[-1]
    s3_server.faults.add("flip", keys=[victim], on=["GET"], times=1)
    settings = settings_for(tmp_path, s3_server.endpoint, rows, workers=3, series_concurrency=3)
    counting = Counting()

    pools = spy_on_pools(monkeypatch)
    with caplog.at_level(logging.INFO, logger="idc_sync"):
        report = asyncio.run(sync(settings, lambda *totals: counting))

    assert report.ok, report.problems
    (pool,) = pools
    assert pool.size == 2
    total, by_workers = report.round.summary.files_fetched, pool.summary().files_fetched
    assert total == len(uploaded)
    assert 0 < by_workers < total  # the parent's loop and the workers each took series
    # every byte received, the flipped copy's too
    victim_size = next(len(d) for (_, key), d in uploaded.items() if key == victim)
    assert counting.bytes == sum(len(d) for d in uploaded.values()) + victim_size
    assert sorted(size for size, _, _ in counting.files) == sorted(
        len(d) for d in uploaded.values()
    )
    assert all(ok and fetched for _, fetched, ok in counting.files)
    assert_mirrored(settings.mirror_root, rows, uploaded)
    # a worker's retry of the flipped byte is logged by the parent, naming the object
    retried = [r for r in caplog.records if getattr(r, "object", None) == victim]
    assert retried, [r.getMessage() for r in caplog.records]
    assert "mismatch" in retried[0].getMessage()


@pytest.mark.parametrize(
    ("workers", "to_fetch", "cores", "loops"),
    [
        (0, OBJECTS_PER_LOOP - 1, 32, 1),  # a small run: a worker's start-up would not pay
        (0, 3 * OBJECTS_PER_LOOP, 32, 3),
        (0, 3 * OBJECTS_PER_LOOP, 2, 2),  # never more loops than cores
        (0, 0, 2, 1),
        (4, 10, 2, 4),  # the operator's number stands
    ],
)
def test_the_default_runs_one_event_loop_per_thousand_objects_up_to_one_per_core(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    workers: int,
    to_fetch: int,
    cores: int,
    loops: int,
) -> None:
    monkeypatch.setattr(os, "cpu_count", lambda: cores)
    settings = settings_for(tmp_path, "http://127.0.0.1:9", [], workers=workers)
    assert event_loops(settings, to_fetch) == loops
    capped = settings_for(
        tmp_path, "http://127.0.0.1:9", [], workers=workers, max_bytes_per_second=1_000_000
    )
    assert event_loops(capped, to_fetch) == 1  # a bandwidth cap is exact in one process


def test_each_loop_gets_its_share_of_what_the_settings_bound_in_total(tmp_path: Path) -> None:
    settings = settings_for(
        tmp_path, "http://127.0.0.1:9", [], concurrency=256, series_concurrency=32,
        body_memory_bytes=128 << 20,
    )  # fmt: skip
    one = share(settings, 3)
    assert (one.concurrency, one.series_concurrency) == (86, 11)
    assert one.body_memory_bytes == (128 << 20) // 3
    assert share(settings, 1).body_memory_bytes == 128 << 20


class Spawns:
    """Counts the worker processes started (run/pool.py's _spawn) and when."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.processes: list[asyncio.subprocess.Process] = []
        self.before_plan = 0
        real = idc_sync.run.pool._spawn

        async def spawn() -> asyncio.subprocess.Process:
            process = await real()
            self.processes.append(process)
            return process

        planning = idc_sync.run.plan.plan_into

        async def plan_into(*args: object, **kwargs: object) -> object:
            self.before_plan = len(self.processes)
            return await planning(*args, **kwargs)  # type: ignore[arg-type]

        monkeypatch.setattr(idc_sync.run.pool, "_spawn", spawn)
        monkeypatch.setattr(idc_sync.run.jobs, "plan_into", plan_into)

    def all_gone(self) -> bool:
        return all(p.returncode is not None for p in self.processes)


@pytest.mark.slow
def test_the_round_runs_the_worker_processes_started_before_the_plan(
    tmp_path: Path, s3_server: S3TestServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    rows = dataset.selection("qin_pet_phantom_small")
    uploaded = dataset.populate(s3_server, rows)
    s3_server.faults.add("latency", seconds=0.03, on=["GET"])
    settings = settings_for(tmp_path, s3_server.endpoint, rows, workers=3, series_concurrency=3)
    spawns = Spawns(monkeypatch)
    pools = spy_on_pools(monkeypatch)
    report = asyncio.run(sync(settings))

    assert report.ok, report.problems
    # both workers were started before the plan, and no others after it
    assert spawns.before_plan == 2
    assert len(spawns.processes) == 2
    (pool,) = pools
    assert 0 < pool.summary().files_fetched < len(uploaded)
    assert spawns.all_gone()
    assert_mirrored(settings.mirror_root, rows, uploaded)


@pytest.mark.slow
def test_prestarted_workers_a_round_does_not_need_are_stopped(
    tmp_path: Path, s3_server: S3TestServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # four cores could take four loops; 47 files need one: the three spares must go
    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    rows = dataset.selection("two")
    uploaded = dataset.populate(s3_server, rows)
    settings = settings_for(tmp_path, s3_server.endpoint, rows)
    spawns = Spawns(monkeypatch)

    report = asyncio.run(sync(settings))

    assert report.ok, report.problems
    assert spawns.before_plan == 3
    assert spawns.all_gone()
    assert report.round.summary.files_fetched == len(uploaded)


@pytest.mark.slow
def test_a_re_sync_of_a_complete_mirror_starts_no_worker_before_its_plan(
    tmp_path: Path, s3_server: S3TestServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Up to date and naming nothing new: no spare imports for a round that fetches nothing.
    A file the mirror lacks, or a series the run adds, brings the spares back."""
    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    rows = dataset.selection("two")
    uploaded = dataset.populate(s3_server, rows)
    settings = settings_for(tmp_path, s3_server.endpoint, rows, max_integrity_attempts=1)
    victim = sorted(key for _, key in uploaded)[0]
    s3_server.faults.add("flip", keys=[victim], on=["GET"], times=1)
    assert not asyncio.run(sync(settings)).ok  # the flipped file is quarantined

    def spares_of_a_sync(given: Settings) -> tuple[int, int]:
        """(workers started before the plan, files fetched) of one more sync."""
        spawns = Spawns(monkeypatch)
        report = asyncio.run(sync(given))
        assert spawns.all_gone()
        return spawns.before_plan, report.round.summary.files_fetched

    # unfinished: the spares come, though a quarantined file waits for an operator
    assert spares_of_a_sync(settings) == (3, 0)
    asyncio.run(retry_failed(settings))  # the operator's `idc-sync retry`
    assert asyncio.run(sync(settings)).ok
    assert spares_of_a_sync(settings) == (0, 0)  # complete, and nothing new named
    added = rows + dataset.selection("qin_pet_phantom_small")[:1]
    new = dataset.populate(s3_server, added[-1:])
    grown = settings_for(tmp_path, s3_server.endpoint, added)
    assert spares_of_a_sync(grown) == (3, len(new))
    uploaded |= new
    assert spares_of_a_sync(grown) == (0, 0)
    assert_mirrored(settings.mirror_root, added, uploaded)


def test_a_refused_selection_stops_the_prestarted_workers(
    tmp_path: Path, s3_server: S3TestServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    settings = settings_for(tmp_path, s3_server.endpoint, [], collections=["lidc_idrii"])
    spawns = Spawns(monkeypatch)

    with pytest.raises(SelectionError, match="lidc_idrii"):
        asyncio.run(sync(settings))

    assert len(spawns.processes) == 1
    assert spawns.all_gone()
    assert not settings.mirror_root.exists()


def _with_spares(tmp_path: Path, body: str) -> str:
    """A parent program (python -c) that starts the spare workers of a three-loop sync on
    uvloop, as the CLI does, then runs ``body`` with them as ``spares``."""
    return (
        "import asyncio, os, signal, sys, uvloop\n"
        "from idc_sync.config import load_settings\n"
        "from idc_sync.run.pool import Prestarted\n"
        f"settings = load_settings(None, destination={str(tmp_path)!r}, workers=3)\n"
        "async def main():\n"
        "    spares = await Prestarted.start(settings)\n"
        f"{body}"
        "uvloop.run(main())\n"
    )


def _run_parent(parent: str, wait: float) -> subprocess.CompletedProcess[str]:
    """Run a ``_with_spares`` program with ``wait`` as its argument, in a session of its
    own (a signal it sends its process group reaches nothing of the test's)."""
    return subprocess.run(
        [sys.executable, "-c", parent, str(wait)], capture_output=True, text=True,
        timeout=60, check=False, start_new_session=True,
    )  # fmt: skip


def test_prestarted_workers_do_not_outlive_a_killed_parent(tmp_path: Path) -> None:
    # a parent killed while it resolves or plans leaves workers that were told nothing:
    # they must see it and go, whether still importing or waiting for their settings
    parent = _with_spares(
        tmp_path,
        "    print(' '.join(map(str, spares.pids)), flush=True)\n"
        "    await asyncio.sleep(float(sys.argv[1]))\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n",
    )
    for wait in (0.0, 2.0):  # mid-import, then blocked on the first line
        done = _run_parent(parent, wait)
        assert done.returncode == -signal.SIGKILL, done.stderr
        pids = [int(pid) for pid in done.stdout.split()]
        assert len(pids) == 2
        gone_by = time.monotonic() + 15
        while time.monotonic() < gone_by and any(_alive(pid) for pid in pids):
            time.sleep(0.1)
        assert not [pid for pid in pids if _alive(pid)]


def test_a_ctrl_c_at_the_terminal_reaches_the_parent_only(tmp_path: Path) -> None:
    # the terminal sends SIGINT to its foreground process group: prestarted workers,
    # importing or waiting for their settings, must neither die of it nor print a traceback
    parent = _with_spares(
        tmp_path,
        "    asyncio.get_running_loop().add_signal_handler(signal.SIGINT, lambda: None)\n"
        "    await asyncio.sleep(float(sys.argv[1]))\n"
        "    os.killpg(os.getpgid(0), signal.SIGINT)\n"
        "    await asyncio.sleep(1.5)\n"
        "    print(' '.join(str(int(_alive)) for _alive in\n"
        "          [os.path.exists(f'/proc/{pid}') for pid in spares.pids]), flush=True)\n"
        "    await spares.close()\n",
    )
    for wait in (0.1, 2.0):  # mid-import, then blocked on the first line
        done = _run_parent(parent, wait)
        assert done.returncode == 0, done.stderr
        assert done.stdout.split() == ["1", "1"]  # both still there after the Ctrl-C
        assert "Traceback" not in done.stderr
        assert "KeyboardInterrupt" not in done.stderr


def _alive(pid: int) -> bool:
    status = Path(f"/proc/{pid}/status")
    try:
        return "zombie" not in status.read_text()
    except FileNotFoundError:
        return False


def _children(pid: int) -> list[int]:
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return [int(child) for child in text.split()]


def _sync_command(destination: Path, endpoint: str, rows: list[dataset.Row]) -> list[str]:
    """A sync of ``rows`` with three event loops: the parent's and two worker processes."""
    command = [
        sys.executable, "-m", "idc_sync", "sync", "--destination", str(destination),
        "--endpoint", endpoint, "--no-progress", "--workers", "3",
        "--concurrency", "12", "--series-concurrency", "3", "--log-level", "info",
    ]  # fmt: skip
    for row in rows:
        command += ["--series", str(row["crdc_series_uuid"])]
    return command


def _workers_once_files_flow(process: subprocess.Popen[str], destination: Path) -> list[int]:
    """The worker processes' pids once both run and some files are placed (mid-series)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        workers = _children(process.pid)
        placed = len(list(destination.rglob("*.dcm"))) if destination.exists() else 0
        if len(workers) == 2 and placed >= 40:
            return workers
        time.sleep(0.05)
    raise AssertionError("the run never got going")


def _slow_series(
    tmp_path: Path, s3_server: S3TestServer
) -> tuple[list[dataset.Row], dict[tuple[str, str], bytes], Path]:
    """Real qin_pet_phantom rows uploaded, GETs slowed to 50 ms so a run lasts long enough
    to kill something in it: (rows, uploaded, destination)."""
    rows = dataset.selection("qin_pet_phantom_small")
    uploaded = dataset.populate(s3_server, rows)
    s3_server.faults.add("latency", seconds=0.05, on=["GET"])
    return rows, uploaded, tmp_path / "mirror"


@pytest.mark.slow
def test_kill_9_of_a_worker_queues_its_series_again_at_once_and_loses_nothing(
    tmp_path: Path, s3_server: S3TestServer
) -> None:
    rows, uploaded, destination = _slow_series(tmp_path, s3_server)
    started = time.monotonic()
    process = subprocess.Popen(
        _sync_command(destination, s3_server.endpoint, rows), stderr=subprocess.PIPE, text=True
    )
    victim = _workers_once_files_flow(process, destination)[0]
    os.kill(victim, signal.SIGKILL)
    _, stderr = process.communicate(timeout=120)
    elapsed = time.monotonic() - started

    assert process.returncode == 0, stderr[-3000:]
    assert f"worker process {victim} died (signal 9); its series are queued again" in stderr
    assert elapsed < 60  # not lease_seconds (600 s): the parent queued them again at once
    assert_mirrored(destination, rows, uploaded)
    assert not list(destination.rglob("*.partial"))


def test_a_worker_whose_parent_is_gone_stops_writing_to_it_without_an_error() -> None:
    # a sync killed with kill -9 mid-fetch: its workers, stopping, still send their summary
    # into the pipe; a BrokenPipeError there used to end them with a traceback on stderr
    read, write = os.pipe()
    os.close(read)
    out = os.fdopen(write, "wb")
    outbox = Outbox(out)
    outbox.bytes_received(4096)
    outbox.file_finished(4096, fetched=True, ok=True)
    outbox.send({"ready": "worker-1"})
    assert outbox.parent_gone
    outbox.bytes_received(1)
    outbox.flush()
    outbox.send({"summary": {}})
    with contextlib.suppress(BrokenPipeError):  # what the buffer held when the pipe broke
        out.close()


@pytest.mark.slow
def test_workers_do_not_outlive_a_killed_parent_and_the_next_run_completes(
    tmp_path: Path, s3_server: S3TestServer
) -> None:
    rows, uploaded, destination = _slow_series(tmp_path, s3_server)
    command = _sync_command(destination, s3_server.endpoint, rows)
    said = tmp_path / "stderr.txt"
    with said.open("w") as stderr:  # the workers write theirs there too, after the kill
        process = subprocess.Popen(command, stderr=stderr, text=True)
    workers = _workers_once_files_flow(process, destination)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    gone_by = time.monotonic() + 15
    while time.monotonic() < gone_by and any(Path(f"/proc/{pid}").exists() for pid in workers):
        time.sleep(0.1)
    assert not [pid for pid in workers if Path(f"/proc/{pid}/status").exists()
                and "zombie" not in Path(f"/proc/{pid}/status").read_text()]  # fmt: skip
    # a worker whose parent is gone has nobody to report to: it goes without a traceback
    assert "Traceback" not in said.read_text(), said.read_text()[-3000:]

    again = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)

    assert again.returncode == 0, again.stderr[-3000:]
    assert_mirrored(destination, rows, uploaded)
