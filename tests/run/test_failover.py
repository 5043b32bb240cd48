"""Source failover (``failover = true``) and the re-list after a 412, against two local
servers: an S3-flavoured one as AWS and a GCS-flavoured one as GCS, holding the same series
under the twin bucket names. The other cloud's bytes must match the checksum the source
listed; without failover the other cloud never sees a request."""

from __future__ import annotations

import asyncio
import functools
import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from idc_sync.config import Settings, load_settings
from idc_sync.core.retry import RetryPolicy
from idc_sync.run.jobs import SyncReport, sync
from idc_sync.run.mirror import RELISTS_PER_SERIES
from tests.support import dataset
from tests.support.mirror import assert_mirrored, expected_path, state_rows
from tests.support.s3server import S3TestServer

Row = dict[str, Any]


@pytest.fixture(autouse=True)
def fast_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    """Retries back off in milliseconds: the budget is under test here, not the clock."""
    import idc_sync.run.round

    monkeypatch.setattr(
        idc_sync.run.round,
        "RetryPolicy",
        functools.partial(RetryPolicy, base_delay=0.002, max_delay=0.02),
    )


@pytest.fixture(scope="module")
def rows() -> list[Row]:
    # two buckets with different GCS twin names: idc-open-data-two -> idc-open-idc1,
    # idc-open-data-cr -> idc-open-cr
    return dataset.selection("two") + dataset.selection("cr_nc")


def settings_for(
    tmp_path: Path, aws: S3TestServer, gcs: S3TestServer, rows: Sequence[Row], **overrides: Any
) -> Settings:
    values: dict[str, Any] = {
        "destination": tmp_path / "mirror",
        "source": "aws",
        "endpoints": {"aws": aws.endpoint, "gcs": gcs.endpoint},
        "series": [str(row["crdc_series_uuid"]) for row in rows],
        "failover": True,
        "max_attempts": 2,
        "max_integrity_attempts": 2,
        "concurrency": 8,
        "series_concurrency": 2,
    }
    values.update(overrides)
    return load_settings(None, **values)


def run(settings: Settings) -> SyncReport:
    return asyncio.run(sync(settings))


def gets(server: S3TestServer) -> set[str]:
    return {r.key for r in server.requests() if r.kind == "GET" and r.key is not None}


def object_rows(settings: Settings) -> dict[str, tuple[Any, ...]]:
    found = state_rows(settings, "SELECT key, state, checksum_kind, last_error FROM object")
    return {row[0]: row[1:] for row in found}


def test_objects_the_source_never_serves_come_from_the_other_cloud_byte_identical(
    tmp_path: Path, s3_server: S3TestServer, gcs_server: S3TestServer, rows: list[Row]
) -> None:
    uploaded = dataset.populate(s3_server, rows)
    dataset.populate(gcs_server, rows)
    keys = sorted(key for _, key in uploaded)
    broken, corrupt = keys[0], keys[-1]
    s3_server.faults.add("status_500", keys=[broken], on=["GET"])  # every try, for good
    s3_server.faults.add("flip", keys=[corrupt], on=["GET"])  # never the right bytes
    settings = settings_for(tmp_path, s3_server, gcs_server, rows)

    report = run(settings)

    assert report.ok, report.problems
    assert report.round.summary.files_failover == 2
    assert_mirrored(settings.mirror_root, rows, uploaded)
    # the other cloud was asked for exactly the two objects the source failed on
    assert gets(gcs_server) == {broken, corrupt}
    assert {r.bucket for r in gcs_server.requests()} <= {"idc-open-idc1", "idc-open-cr"}
    assert s3_server.count("GET", key_prefix=broken) == 2  # max_attempts on the source
    found = object_rows(settings)
    assert {state for state, _, _ in found.values()} == {"done"}
    assert {kind for _, kind, _ in found.values()} == {"md5"}
    # which cloud served a file is recorded with the reason, for those two only
    assert found[broken][2].startswith("served by gcs; aws: 2 attempts: GET: HTTP 500")
    assert found[corrupt][2].startswith("served by gcs; aws: 2 attempts: md5 (ETag) mismatch")
    assert sorted(k for k, (_, _, note) in found.items() if note) == sorted([broken, corrupt])


def test_a_series_whose_listing_fails_is_listed_and_fetched_on_the_other_cloud(
    tmp_path: Path, s3_server: S3TestServer, gcs_server: S3TestServer, rows: list[Row]
) -> None:
    uploaded = dataset.populate(s3_server, rows)
    dataset.populate(gcs_server, rows)
    failing = str(rows[0]["crdc_series_uuid"])
    s3_server.faults.add("slow_down", key_prefix=f"{failing}/", on=["LIST"])
    settings = settings_for(tmp_path, s3_server, gcs_server, rows)

    report = run(settings)

    assert report.ok, report.problems
    assert_mirrored(settings.mirror_root, rows, uploaded)
    assert s3_server.count("LIST", key_prefix=failing) == 2  # max_attempts
    assert s3_server.count("GET", key_prefix=failing) == 0
    served = gets(gcs_server)
    assert served == {key for _, key in uploaded if key.startswith(failing)}
    assert report.round.summary.files_failover == len(served)
    notes = {k: note for k, (_, _, note) in object_rows(settings).items()}
    assert all(notes[key].startswith("served by gcs; listing on aws failed") for key in served)


def test_other_bytes_on_the_other_cloud_are_never_placed(
    tmp_path: Path, s3_server: S3TestServer, gcs_server: S3TestServer, rows: list[Row]
) -> None:
    uploaded = dataset.populate(s3_server, rows)
    dataset.populate(gcs_server, rows)
    keys = sorted(key for _, key in uploaded)
    plain, composite = keys[0], keys[1]
    bucket = dataset.bucket_for(next(r for r in rows if plain.startswith(r["crdc_series_uuid"])))
    gcs_bucket = dataset.bucket_for(
        next(r for r in rows if plain.startswith(r["crdc_series_uuid"])), "gcs"
    )
    for key in (plain, composite):
        s3_server.faults.add("status_500", keys=[key], on=["GET"])
    # GCS holds other bytes of the same length, with hashes true to those bytes: only the
    # source's listing can tell. A composite object (crc32c only) must not slip through.
    for key in (plain, composite):
        data = bytearray(uploaded[(bucket, key)])
        data[len(data) // 2] ^= 0x01
        gcs_server.put(gcs_bucket, key, bytes(data), composite=key == composite)
    settings = settings_for(tmp_path, s3_server, gcs_server, rows)

    report = run(settings)

    assert not report.ok
    problems = {p.key: p for p in report.problems if p.key is not None}
    assert set(problems) == {plain, composite}
    for key in (plain, composite):
        assert problems[key].state == "quarantined"
        reason = problems[key].reason or ""
        assert reason.startswith("aws: 2 attempts: GET: HTTP 500"), reason
        assert "gcs: 2 attempts: md5 (ETag) mismatch" in reason
        path = expected_path(settings.mirror_root, _row_of(rows, key), key)
        assert not path.exists()
        assert [p.name for p in path.parent.iterdir() if p.name.startswith(".")] == []
    assert report.round.summary.files_failover == 0


def _row_of(rows: Sequence[Row], key: str) -> Row:
    return next(r for r in rows if key.startswith(str(r["crdc_series_uuid"])))


def test_without_failover_the_other_cloud_sees_no_request(
    tmp_path: Path, s3_server: S3TestServer, gcs_server: S3TestServer, rows: list[Row]
) -> None:
    uploaded = dataset.populate(s3_server, rows)
    dataset.populate(gcs_server, rows)
    broken = sorted(key for _, key in uploaded)[0]
    s3_server.faults.add("status_500", keys=[broken], on=["GET"])
    s3_server.faults.add("slow_down", key_prefix=f"{rows[1]['crdc_series_uuid']}/", on=["LIST"])
    settings = settings_for(tmp_path, s3_server, gcs_server, rows, failover=False)

    report = run(settings)

    assert not report.ok
    assert gcs_server.requests() == []
    assert {p.key for p in report.problems if p.key is not None} == {broken}
    [failed_series] = [p for p in report.problems if p.key is None and p.state == "failed"]
    assert failed_series.crdc_series_uuid == str(rows[1]["crdc_series_uuid"])


def test_gcs_as_source_fails_over_to_aws_with_the_gcs_md5(
    tmp_path: Path, s3_server: S3TestServer, gcs_server: S3TestServer, rows: list[Row]
) -> None:
    uploaded = dataset.populate(gcs_server, rows)
    dataset.populate(s3_server, rows)
    keys = sorted(key for _, key in uploaded)
    gcs_server.faults.add("flip", keys=keys[:3], on=["GET"])
    settings = settings_for(tmp_path, s3_server, gcs_server, rows, source="gcs")

    report = run(settings)

    assert report.ok, report.problems
    assert_mirrored(settings.mirror_root, rows, uploaded)
    assert gets(s3_server) == set(keys[:3])
    # no If-Match to AWS: the GCS listing's ETag is compared with the bytes instead
    assert all("if-match" not in r.headers for r in s3_server.requests() if r.kind == "GET")
    kinds = {key: kind for key, (_, kind, _) in object_rows(settings).items()}
    # the three from AWS are held to the GCS listing's md5; the rest to GCS's own crc32c
    assert {kinds[key] for key in keys[:3]} == {"md5"}
    assert {kinds[key] for key in keys[3:]} == {"crc32c"}


# -- a 412 re-lists the series --------------------------------------------------------------


def test_a_412_lists_the_series_again_and_the_object_is_fetched_in_the_same_run(
    tmp_path: Path, s3_server: S3TestServer, gcs_server: S3TestServer, rows: list[Row]
) -> None:
    uploaded = dataset.populate(s3_server, rows)
    series = str(rows[0]["crdc_series_uuid"])
    stale = sorted(key for _, key in uploaded if key.startswith(series))[:3]
    # the first listing shows a wrong ETag for three objects: If-Match gets 412 for each
    s3_server.faults.add("listing_etag", keys=stale, times=len(stale))
    settings = settings_for(tmp_path, s3_server, gcs_server, rows, failover=False)

    report = run(settings)

    assert report.ok, report.problems
    assert_mirrored(settings.mirror_root, rows, uploaded)
    assert s3_server.count("LIST", key_prefix=series) == 2  # three 412s share one re-list
    for key in stale:
        statuses = [r.status for r in s3_server.requests() if r.kind == "GET" and r.key == key]
        assert statuses == [412, 200]
    assert gcs_server.requests() == []


def test_re_lists_are_bounded_per_series_and_run(
    tmp_path: Path, s3_server: S3TestServer, gcs_server: S3TestServer, rows: list[Row]
) -> None:
    uploaded = dataset.populate(s3_server, rows)
    series = str(rows[0]["crdc_series_uuid"])
    stale = sorted(key for _, key in uploaded if key.startswith(series))[0]
    s3_server.faults.add("listing_etag", keys=[stale])  # every listing is wrong for it
    settings = settings_for(tmp_path, s3_server, gcs_server, rows, failover=False)

    report = run(settings)

    assert s3_server.count("LIST", key_prefix=series) == 1 + RELISTS_PER_SERIES
    assert {p.key for p in report.problems if p.key is not None} == {stale}
    assert object_rows(settings)[stale][0] == "failed"
    assert not expected_path(settings.mirror_root, rows[0], stale).exists()


# -- JSON logs name the series and the object -----------------------------------------------


def test_json_log_lines_of_a_failure_carry_series_object_and_source(
    tmp_path: Path, s3_server: S3TestServer, gcs_server: S3TestServer, rows: list[Row]
) -> None:
    uploaded = dataset.populate(s3_server, rows[:1])
    dataset.populate(gcs_server, rows[:1])
    series = str(rows[0]["crdc_series_uuid"])
    broken = sorted(key for _, key in uploaded)[0]
    s3_server.faults.add("status_500", keys=[broken], on=["GET"])
    gcs_server.faults.add("status_500", keys=[broken], on=["GET"])
    env = {
        **os.environ,
        "IDC_SYNC_LOG_FORMAT": "json",
        "IDC_SYNC_FAILOVER": "true",
        "IDC_SYNC_MAX_ATTEMPTS": "1",
        "IDC_SYNC_ENDPOINTS__AWS": s3_server.endpoint,
        "IDC_SYNC_ENDPOINTS__GCS": gcs_server.endpoint,
    }
    args = ["--destination", str(tmp_path / "mirror"), "--series", series, "--no-progress"]
    synced = subprocess.run(
        [sys.executable, "-m", "idc_sync", "sync", *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
        env=env,
    )

    assert synced.returncode == 1, synced.stdout + synced.stderr
    lines = [json.loads(line) for line in synced.stderr.splitlines() if line.startswith("{")]
    about_broken = [line for line in lines if line.get("object") == broken]
    assert about_broken, synced.stderr
    assert all(line["series"] == series for line in about_broken)
    [failed] = [line for line in about_broken if line["level"] == "error"]
    assert failed["state"] == "failed"
    assert failed["logger"] == "idc_sync.run.mirror"
    assert "aws: 1 attempt: GET: HTTP 500" in failed["message"]
    [failing_over] = [line for line in about_broken if "fetching it from gcs" in line["message"]]
    assert failing_over["source"] == "gcs"
    [incomplete] = [line for line in lines if "incomplete" in line["message"]]
    assert incomplete["series"] == series
    assert incomplete["collection"] == str(rows[0]["collection_id"])
