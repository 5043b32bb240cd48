"""Reliability under attack: every fault class of the test server at once, an object that
never verifies, kill -9 in a loop, a disk that fills up, an fsync that fails, and bad
configuration or manifests. The promise under test: every file idc-sync says it has is
complete and verified, and nothing it had is lost.

Fault counts are printed (``pytest -s``); README.md's reliability table quotes them."""

from __future__ import annotations

import asyncio
import errno
import functools
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from idc_sync.config import Settings
from idc_sync.core.retry import RetryPolicy
from idc_sync.disk.storage import is_temp_name
from idc_sync.run.jobs import SyncReport, sync
from tests.support import dataset
from tests.support.disks import tmpfs
from tests.support.mirror import assert_mirrored, expected_path, settings_for, state_rows
from tests.support.s3server import FAULT_KINDS, FaultKind, RequestKind, S3TestServer

Row = Mapping[str, Any]

IDC_SYNC = [sys.executable, "-m", "idc_sync"]
# Enough attempts that 5% of every fault class at once cannot exhaust an object's budget.
MAX_ATTEMPTS = 16
MAX_INTEGRITY_ATTEMPTS = 8


def run(settings: Settings) -> SyncReport:
    return asyncio.run(sync(settings))


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*IDC_SYNC, *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout,
        env={**os.environ, "COLUMNS": "400"},  # keep messages on one line
    )


def no_temp_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if is_temp_name(p.name)]


def print_fault_counts(title: str, server: S3TestServer) -> dict[str, int]:
    fired = {str(kind): server.faults.fired(kind) for kind in FAULT_KINDS}
    counts = {kind: n for kind, n in fired.items() if n}
    print(f"\n{title}: faults injected {json.dumps(counts)} (total {sum(counts.values())})")
    return counts


# -- 1. every fault class at 5% -----------------------------------------------------------

# Faults on an object's GET/HEAD, healed by retrying the object within the run.
OBJECT_FAULTS: tuple[FaultKind, ...] = (
    "latency",
    "status_500",
    "slow_down",
    "throttle_429",
    "reset",
    "truncate",
    "flip",
    "wrong_etag",
    "missing_etag",
    "multipart_etag",
    "changed",
)
# Faults on a listing. A wrong ETag in a listing cannot be healed by retrying the GET (S3
# answers 412 to our If-Match every time): the 412 makes the run list the series again (at
# most mirror.RELISTS_PER_SERIES times), and what a re-list cannot heal (a new wrong ETag,
# an omitted key) is reported incomplete with the reason and listed again by the next run.
# A multipart-shaped ETag in the listing is left out here: see
# test_an_unreproducible_multipart_etag_in_a_listing_does_not_let_bad_bytes_in.
LISTING_FAULTS: tuple[FaultKind, ...] = ("listing_etag", "wrong_etag", "list_omit", "list_extra")


@pytest.fixture
def fast_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    """Retries back off in milliseconds instead of seconds: the budget is what is tested,
    not the wall clock (the backoff itself is tested in test_retry)."""
    import idc_sync.run.round

    monkeypatch.setattr(
        idc_sync.run.round,
        "RetryPolicy",
        functools.partial(RetryPolicy, base_delay=0.002, max_delay=0.05),
    )


def add_every_fault(
    server: S3TestServer, rows: Sequence[Row], rate: float = 0.05, *, listings: bool = True
) -> None:
    for kind in OBJECT_FAULTS:
        on: list[RequestKind] = (
            ["GET", "HEAD"] if kind not in ("reset", "truncate", "flip") else ["GET"]
        )
        server.faults.add(kind, rate=rate, on=on, seconds=0.05)
    listed: tuple[FaultKind, ...] = ("status_500", "slow_down", "throttle_429", "reset", "truncate")
    for kind in listed:
        server.faults.add(kind, rate=rate, on=["LIST"])
    if listings:
        for kind in LISTING_FAULTS:
            if kind != "list_extra":
                server.faults.add(kind, rate=rate, on=["LIST"])
        for row in rows:
            # A listing that repeats one of the series' own keys. It fires per LIST request
            # (one per series and run), so 5% would rarely fire at all. Hostile extra keys
            # are refused and reported: see test_hostile_names.
            uuid = str(row["crdc_series_uuid"])
            server.faults.add(
                "list_extra",
                rate=0.5,
                on=["LIST"],
                key_prefix=f"{uuid}/",
                extra_keys=[dataset.instance_keys(row)[0]],
            )
    if server.flavour == "gcs":
        server.faults.add("bad_goog_hash", rate=rate, on=["GET"])
    elif server.checksum_algorithm is not None:
        server.faults.add("bad_amz_checksum", rate=rate, on=["GET"])


def sync_until_complete(settings: Settings, runs: int = 6) -> list[SyncReport]:
    """Run sync as a service would, until a run reports the mirror complete."""
    reports: list[SyncReport] = []
    for _ in range(runs):
        report = run(settings)
        reports.append(report)
        if report.ok:
            break
        # a run that is not complete must say why
        assert report.problems or report.round.summary.stopped, "incomplete run reported nothing"
    return reports


@pytest.mark.slow
@pytest.mark.parametrize("flavour", ["s3", "s3-crc64nvme", "gcs"])
@pytest.mark.usefixtures("fast_backoff")
def test_every_fault_class_at_5_percent_ends_byte_identical_and_exit_0(
    tmp_path: Path, flavour: str
) -> None:
    rows = dataset.selection("qin_pet_phantom_small")
    if flavour != "s3":
        rows = rows[:2]
    crc = "CRC64NVME" if flavour == "s3-crc64nvme" else None
    with S3TestServer(
        "gcs" if flavour == "gcs" else "s3", seed=4, goog_hash="two", checksum_algorithm=crc
    ) as server:
        uploaded = dataset.populate(server, rows)
        # GCS is not pinned with If-Match, so a wrong listing ETag is an integrity failure
        # there and ends quarantined (waiting for retry-failed): listing faults run on S3.
        add_every_fault(server, rows, listings=flavour != "gcs")
        settings = settings_for(
            tmp_path,
            server.endpoint,
            rows,
            source="gcs" if flavour == "gcs" else "aws",
            max_attempts=MAX_ATTEMPTS,
            max_integrity_attempts=MAX_INTEGRITY_ATTEMPTS,
        )
        started = time.monotonic()
        reports = sync_until_complete(settings)
        elapsed = time.monotonic() - started
        counts = print_fault_counts(f"{flavour}: {len(uploaded)} files", server)
        assert not server.errors
    kinds = state_rows(settings, "SELECT checksum_kind, COUNT(*) FROM object GROUP BY 1")
    print(f"{flavour}: complete after {len(reports)} run(s), {elapsed:.1f} s, verified {kinds}")

    assert reports[-1].ok, reports[-1].problems
    assert_mirrored(settings.mirror_root, rows, uploaded)
    assert no_temp_files(settings.mirror_root) == []
    done = state_rows(settings, "SELECT COUNT(*) FROM object WHERE state = 'done'")
    assert done == [(len(uploaded),)]
    # each verified by the cheapest checksum its source publishes, none by size alone
    kind = {"s3": "md5", "s3-crc64nvme": "crc64nvme", "gcs": "crc32c"}[flavour]
    assert kinds == [(kind, len(uploaded))], "a file was accepted without its checksum"
    expected_kinds = set(OBJECT_FAULTS) | (set(LISTING_FAULTS) if flavour != "gcs" else set())
    if flavour == "gcs":
        expected_kinds.add("bad_goog_hash")
    if flavour == "s3-crc64nvme":
        expected_kinds.add("bad_amz_checksum")
    assert expected_kinds <= set(counts), f"never fired: {expected_kinds - set(counts)}"
    # and the CLI, from the state alone, agrees: exit 0
    final = cli("status", "--destination", str(settings.mirror_root), "--json")
    assert final.returncode == 0, final.stdout + final.stderr


def test_an_unreproducible_multipart_etag_in_a_listing_does_not_let_bad_bytes_in(
    tmp_path: Path, s3_server: S3TestServer
) -> None:
    rows = dataset.selection("two")
    uploaded = dataset.populate(s3_server, rows)
    key = sorted(k for _, k in uploaded)[0]
    # The server says "<md5>-2" for a small single-part object, in the listing and in the
    # GET headers alike (so If-Match holds), and flips a byte of every GET of it.
    s3_server.faults.add("multipart_etag", keys=[key])
    s3_server.faults.add("flip", keys=[key], on=["GET"])
    settings = settings_for(tmp_path, s3_server.endpoint, rows)

    report = run(settings)

    path = expected_path(settings.mirror_root, rows[0], key)
    data = uploaded[(str(rows[0]["aws_bucket"]), key)]
    assert not path.exists() or path.read_bytes() == data
    # nothing trustworthy to check: an integrity failure, quarantined and reported
    assert not report.ok
    [problem] = [p for p in report.problems if p.key == key]
    assert problem.state == "quarantined"
    assert "impossible multipart ETag" in (problem.reason or "")
    assert report.round.summary.files_size_only == 0
    # every other object of the selection is placed and verified by its MD5
    kinds = dict(state_rows(settings, "SELECT key, checksum_kind FROM object"))
    assert kinds.pop(key) is None
    assert set(kinds.values()) == {"md5"}
    assert len(kinds) == len(uploaded) - 1


# -- 2. an object whose bytes never match -------------------------------------------------


def cli_settings_args(settings: Settings, endpoint: str, rows: Sequence[Row]) -> list[str]:
    args = ["--destination", str(settings.mirror_root), "--endpoint", endpoint]
    if settings.state_dir is not None:
        args += ["--state-dir", str(settings.state_dir)]
    for row in rows:
        args += ["--series", str(row["crdc_series_uuid"])]
    return args


@pytest.mark.slow
def test_object_never_served_right_is_quarantined_reported_and_never_placed(
    tmp_path: Path, s3_server: S3TestServer
) -> None:
    rows = dataset.selection("qin_pet_phantom_small")[:1]
    uploaded = dataset.populate(s3_server, rows)
    bad_key = sorted(key for _, key in uploaded)[40]
    s3_server.faults.add("flip", keys=[bad_key], on=["GET"])
    settings = settings_for(tmp_path, s3_server.endpoint, rows)
    args = cli_settings_args(settings, s3_server.endpoint, rows)

    synced = cli("sync", *args, "--no-progress", "--log-level", "info")

    assert synced.returncode == 1, synced.stdout + synced.stderr
    assert "quarantined" in synced.stdout
    assert bad_key in synced.stdout
    assert bad_key in synced.stderr
    assert "mismatch" in synced.stderr
    assert s3_server.count("GET", key_prefix=bad_key) == 3  # max_integrity_attempts
    bad_path = expected_path(settings.mirror_root, rows[0], bad_key)
    assert not bad_path.exists()
    assert [p for p in bad_path.parent.iterdir() if p.name.startswith(".")] == []
    status = cli("status", "--destination", str(settings.mirror_root), "--json")
    assert status.returncode == 1
    report = json.loads(status.stdout)
    [collection] = report["collections"]
    assert collection["files_quarantined"] == 1
    assert collection["files_done"] == len(uploaded) - 1
    quarantined = [p for p in report["problems"] if p["key"] == bad_key]
    assert [p["state"] for p in quarantined] == ["quarantined"]
    assert "md5 (ETag) mismatch" in quarantined[0]["reason"]
    # a second run leaves it quarantined (no blind refetching) and still exits 1
    s3_server.clear_requests()
    again = cli("sync", *args, "--no-progress")
    assert again.returncode == 1
    assert s3_server.count("GET", key_prefix=bad_key) == 0
    assert not bad_path.exists()


# -- 3. kill -9 in a loop -----------------------------------------------------------------

KILLS = 20


@pytest.mark.slow
def test_20_kill_9_at_random_moments_then_resume_loses_and_refetches_nothing(
    tmp_path: Path, s3_server: S3TestServer
) -> None:
    rows = dataset.selection("qin_pet_phantom_small")
    uploaded = dataset.populate(s3_server, rows)
    # ~0.15 s per GET at 4 in flight: the mirror needs ~12 s of fetching, spread over kills
    s3_server.faults.add("latency", seconds=0.15, on=["GET"])
    destination = tmp_path / "mirror"
    command = [*IDC_SYNC, "sync", "--destination", str(destination), "--endpoint",
               s3_server.endpoint, "--no-progress", "--concurrency", "4",
               "--series-concurrency", "2", "--log-level", "error"]  # fmt: skip
    for row in rows:
        command += ["--series", str(row["crdc_series_uuid"])]
    rng = random.Random(20261128)
    fetched_again: set[str] = set()
    verified: set[str] = set()
    gets_per_run: list[int] = []
    mark = 0

    def check_gets() -> None:
        nonlocal mark
        requests = s3_server.requests()
        gets = [r.key for r in requests[mark:] if r.method == "GET" and r.key]
        gets_per_run.append(len(gets))
        fetched_again.update(k for k in gets if k.split("/")[1] in verified)
        mark = len(requests)

    kills = 0
    started = time.monotonic()
    while kills < KILLS:
        before = len(s3_server.requests())
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if kills % 2:
            # during transfers: once this run's first GET arrived (after ~2.5 s of startup)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and process.poll() is None:
                if any(r.method == "GET" for r in s3_server.requests()[before:]):
                    break
                time.sleep(0.01)
            time.sleep(rng.uniform(0.0, 0.5))
        else:
            # anywhere: imports, planning into SQLite, listing, transfers
            time.sleep(rng.uniform(0.3, 2.8))
        if process.poll() is not None:
            break
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
        kills += 1
        check_gets()
        # everything under a final name was verified before its rename
        verified = {p.name for p in destination.rglob("*.dcm") if not is_temp_name(p.name)}
    assert kills == KILLS, f"the mirror finished after {kills} kills: too fast to interrupt"
    assert len(verified) < len(uploaded)

    final = subprocess.run(command, capture_output=True, text=True, check=False, timeout=120)
    check_gets()
    elapsed = time.monotonic() - started
    print(f"\nkill -9: {kills} kills, {len(verified)} files verified before the last kill, "
          f"GETs per run {gets_per_run}, {elapsed:.1f} s")  # fmt: skip

    assert final.returncode == 0, final.stdout + final.stderr
    assert fetched_again == set(), f"fetched again after a kill: {sorted(fetched_again)[:5]}"
    assert no_temp_files(destination) == []
    got = {p.name: p.read_bytes() for p in destination.rglob("*.dcm")}
    assert got == {key.split("/")[1]: data for (_, key), data in uploaded.items()}


# -- 4. a disk that fills up, and an fsync that fails -------------------------------------


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs as the mirror root: a disk that really fills up, and can grow."""
    with tmpfs(tmp_path / "small-disk", "2m") as mount_point:
        yield mount_point


@pytest.mark.slow
def test_full_disk_stops_with_a_clear_message_keeps_good_files_and_resumes(
    tmp_path: Path, s3_server: S3TestServer, small_tmpfs: Path
) -> None:
    rows = dataset.selection("qin_pet_phantom_small")
    uploaded = dataset.populate(s3_server, rows)
    by_name = {key.split("/")[1]: data for (_, key), data in uploaded.items()}
    settings = settings_for(
        tmp_path, s3_server.endpoint, rows, destination=small_tmpfs, state_dir=tmp_path / "state"
    )
    args = cli_settings_args(settings, s3_server.endpoint, rows)

    # 16 objects in flight: what was already asked for when the disk filled is all that
    # may still arrive (cancelled the moment the run stops, never written)
    full = cli("sync", *args, "--no-progress", "--concurrency", "16")

    assert full.returncode == 1, full.stdout + full.stderr
    assert "stopped early" in full.stderr
    assert "No space left on device" in full.stderr
    placed = {p.name: p.read_bytes() for p in small_tmpfs.rglob("*.dcm") if p.is_file()}
    assert 0 < len(placed) < len(uploaded)
    assert all(by_name[name] == data for name, data in placed.items()), "a partial file"
    assert no_temp_files(small_tmpfs) == []
    done = {Path(p).name for (p,) in state_rows(settings, "SELECT path FROM object "
                                                          "WHERE state = 'done'")}  # fmt: skip
    assert done <= set(placed), "recorded done but not on disk"
    requests_before = len(s3_server.requests())
    stopped_gets = s3_server.count("GET")
    print(f"\ndisk full: {len(placed)} of {len(uploaded)} files fit, {stopped_gets} GETs")
    assert stopped_gets <= len(placed) + 16 + 4, "kept fetching into a full disk"

    subprocess.run(["mount", "-o", "remount,size=64m", str(small_tmpfs)], check=True)
    resumed = cli("sync", *args, "--no-progress")

    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert_mirrored(small_tmpfs, rows, uploaded)
    assert no_temp_files(small_tmpfs) == []
    refetched = {
        r.key.split("/")[1]
        for r in s3_server.requests()[requests_before:]
        if r.method == "GET" and r.key
    }
    assert not refetched & set(placed), "a file kept through the full disk was fetched again"


def test_eio_from_fsync_discards_that_file_and_fetches_it_again(
    tmp_path: Path, s3_server: S3TestServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    rows = dataset.selection("two")
    uploaded = dataset.populate(s3_server, rows)
    victim = sorted(key for _, key in uploaded)[0]
    victim_name = victim.split("/")[1]
    real_fsync = os.fsync
    failed: list[str] = []

    def fsync(fd: int) -> None:
        target = os.readlink(f"/proc/self/fd/{fd}")
        if not failed and is_temp_name(Path(target).name) and victim_name in target:
            failed.append(target)
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    # one event loop: the fsync patched here is this process's
    settings = settings_for(tmp_path, s3_server.endpoint, rows, workers=1)

    report = run(settings)

    assert failed, "the fault was never injected"
    assert report.ok, report.problems
    assert report.round.summary.stopped is None
    assert s3_server.count("GET", key_prefix=victim) == 2
    assert not Path(failed[0]).exists()  # the copy whose fsync failed is gone
    assert_mirrored(settings.mirror_root, rows, uploaded)
    assert no_temp_files(settings.mirror_root) == []


# -- 5. bad configuration and manifests touch nothing -------------------------------------


def snapshot(*roots: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under the roots with its bytes and mtime (state, lock and mirror)."""
    return {
        str(p): (p.read_bytes(), p.stat().st_mtime_ns)
        for root in roots
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.mark.slow
def test_bad_config_and_manifests_exit_2_and_leave_mirror_and_queue_untouched(
    tmp_path: Path, s3_server: S3TestServer
) -> None:
    rows = dataset.selection("two")
    dataset.populate(s3_server, rows)
    settings = settings_for(tmp_path, s3_server.endpoint, rows)
    assert run(settings).ok
    root = settings.mirror_root
    series = str(rows[0]["crdc_series_uuid"])
    bucket = str(rows[0]["aws_bucket"])
    unknown_uuid = "00000000-0000-4000-8000-000000000000"

    def manifest(name: str, text: str) -> str:
        path = tmp_path / name
        path.write_text(text)
        return str(path)

    def config(name: str, text: str) -> str:
        path = tmp_path / name
        path.write_text(f'destination = "{root}"\n{text}')
        return str(path)

    base = ["--destination", str(root), "--endpoint", s3_server.endpoint]
    cases: dict[str, tuple[list[str], str]] = {
        "unknown key": (["--config", config("typo.toml", "colections = ['x']\n")], "colections"),
        "wrong type": (
            ["--config", config("type.toml", "concurrency = 'lots'\n")],
            "concurrency",
        ),
        "missing manifest": ([*base, "--manifest", str(tmp_path / "gone.s5cmd")], "gone.s5cmd"),
        "malformed url": (
            [*base, "--manifest", manifest("url.s5cmd", f"cp s3:/{bucket}/{series}/* .\n")],
            "url.s5cmd:1",
        ),
        "unknown bucket": (
            [*base, "--manifest", manifest("bucket.s5cmd", f"s3://idc-private/{series}/*\n")],
            "unknown bucket 'idc-private'",
        ),
        "not a uuid": (
            [*base, "--manifest", manifest("uuid.s5cmd", f"s3://{bucket}/not-a-uuid/*\n")],
            "uuid.s5cmd:1",
        ),
        "unknown to the release, strict": (
            [
                *base,
                "--strict",
                "--manifest",
                manifest("unknown.s5cmd", f"s3://{bucket}/{unknown_uuid}/*\n"),
            ],
            unknown_uuid,
        ),
        "bad endpoint": (
            ["--destination", str(root), "--endpoint", "ftp://127.0.0.1", "--series", series],
            "--endpoint",
        ),
    }
    before = snapshot(root)
    assert any(name.endswith("state.sqlite") for name in before)
    for name, (args, named) in cases.items():
        result = cli("sync", *args, "--no-progress")
        assert result.returncode == 2, f"{name}: {result.returncode} {result.stderr}"
        assert named in result.stderr, f"{name}: {result.stderr}"
        assert "Traceback" not in result.stderr, name
        assert snapshot(root) == before, f"{name}: the mirror or the queue changed"
    # the untouched state still serves: a good run sends no GET
    s3_server.clear_requests()
    assert run(settings).ok
    assert s3_server.count("GET") == 0
