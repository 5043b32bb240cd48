"""CRC-first verification end to end: a sync against the S3 test server (x-amz-checksum-*
when asked with x-amz-checksum-mode, ChecksumAlgorithm in the listing) or its GCS flavour
(x-goog-hash) verifies each file by the cheapest full-object checksum published, records
which one, and ``verify`` re-checks files by that kind; ``checksum = "md5"`` insists on MD5."""

from __future__ import annotations

import asyncio
import csv
from pathlib import Path

import pytest

from idc_sync.run.operator import verify
from tests.support import dataset
from tests.support.mirror import assert_mirrored, run, settings_for, state_rows
from tests.support.s3server import S3TestServer

ALGORITHMS = ("CRC64NVME", "CRC32C", "CRC32", "SHA256")


def kinds(settings: object) -> set[str]:
    return {row[0] for row in state_rows(settings, "SELECT checksum_kind FROM object")}  # type: ignore[arg-type]


def provenance_kinds(settings: object) -> set[str]:
    with settings.provenance_path.open(newline="") as handle:  # type: ignore[attr-defined]
        return {row["checksum_kind"] for row in csv.DictReader(handle)}


def object_gets(server: S3TestServer) -> list[dict[str, list[str]]]:
    return [r.headers for r in server.requests() if r.kind == "GET" and r.status == 200]


def flip_one_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_s3_objects_with_a_stored_checksum_are_verified_by_it_and_verify_rechecks_it(
    tmp_path: Path, algorithm: str
) -> None:
    rows = dataset.selection("two")
    with S3TestServer("s3", checksum_algorithm=algorithm) as server:
        uploaded = dataset.populate(server, rows)
        settings = settings_for(tmp_path, server.endpoint, rows)

        report = run(settings)

        assert report.ok, report.problems
        assert_mirrored(settings.mirror_root, rows, uploaded)
        assert kinds(settings) == {algorithm.lower()}
        assert provenance_kinds(settings) == {algorithm.lower()}
        gets = object_gets(server)
        assert len(gets) == len(uploaded)
        assert all(g.get("x-amz-checksum-mode") == ["ENABLED"] for g in gets)
        assert not server.errors

    verified = asyncio.run(verify(settings))
    assert verified.all_good
    assert verified.ok == len(uploaded)
    victim = next(p for p in settings.mirror_root.rglob("*.dcm"))
    flip_one_byte(victim)
    damaged = asyncio.run(verify(settings))
    assert [f.problem for f in damaged.findings] == ["corrupt"]
    assert damaged.findings[0].detail.startswith(f"{algorithm.lower()} (recorded) mismatch")


def test_a_wrong_s3_checksum_is_an_integrity_failure_and_the_retry_heals_it(
    tmp_path: Path,
) -> None:
    rows = dataset.selection("two")
    with S3TestServer("s3", checksum_algorithm="CRC64NVME") as server:
        uploaded = dataset.populate(server, rows)
        victims = sorted(key for _, key in uploaded)[:2]
        server.faults.add("bad_amz_checksum", keys=victims, on=["GET"], times=2)
        settings = settings_for(tmp_path, server.endpoint, rows)

        report = run(settings)

        assert report.ok, report.problems
        assert_mirrored(settings.mirror_root, rows, uploaded)
        for key in victims:
            assert server.count("GET", key_prefix=key) == 2  # the bad one, then a good one
        attempts = dict(state_rows(settings, "SELECT key, attempts FROM object"))
        assert {attempts[key] for key in victims} == {2}


def test_the_operator_may_insist_on_md5_and_then_no_checksum_is_asked_for(
    tmp_path: Path,
) -> None:
    rows = dataset.selection("two")
    with S3TestServer("s3", checksum_algorithm="CRC64NVME") as server:
        dataset.populate(server, rows)
        settings = settings_for(tmp_path, server.endpoint, rows, checksum="md5")

        assert run(settings).ok

        assert kinds(settings) == {"md5"}
        assert not any("x-amz-checksum-mode" in g for g in object_gets(server))


def test_objects_without_a_stored_checksum_fall_back_to_the_md5_etag(
    tmp_path: Path, s3_server: S3TestServer
) -> None:
    rows = dataset.selection("two")
    uploaded = dataset.populate(s3_server, rows)
    some = sorted(key for _, key in uploaded)[:3]
    for bucket, key in uploaded:
        if key in some:  # uploaded since December 2024: S3 stored a CRC64NVME
            s3_server.put(bucket, key, uploaded[(bucket, key)], checksum_algorithm="CRC64NVME")
    settings = settings_for(tmp_path, s3_server.endpoint, rows)

    assert run(settings).ok

    by_key = dict(state_rows(settings, "SELECT key, checksum_kind FROM object"))
    assert {by_key[key] for key in some} == {"crc64nvme"}
    assert {kind for key, kind in by_key.items() if key not in some} == {"md5"}


@pytest.mark.parametrize(("mode", "kind"), [("fastest", "crc32c"), ("md5", "md5")])
def test_gcs_objects_are_verified_by_crc32c_unless_md5_is_asked_for(
    tmp_path: Path, gcs_server: S3TestServer, mode: str, kind: str
) -> None:
    rows = dataset.selection("two")
    uploaded = dataset.populate(gcs_server, rows)
    victim = sorted(key for _, key in uploaded)[0]
    gcs_server.faults.add("flip", keys=[victim], on=["GET"], times=1)
    settings = settings_for(tmp_path, gcs_server.endpoint, rows, source="gcs", checksum=mode)

    report = run(settings)

    assert report.ok, report.problems
    assert_mirrored(settings.mirror_root, rows, uploaded)
    assert kinds(settings) == {kind}
    assert gcs_server.count("GET", key_prefix=victim) == 2  # the flipped byte was caught
    assert asyncio.run(verify(settings)).ok == len(uploaded)
