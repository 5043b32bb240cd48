"""End-to-end runs of `sync` against real HTTP servers on 127.0.0.1: real index rows,
synthetic DICOM contents, a real SQLite state and real files on disk."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.support import dataset
from tests.support.mirror import (
    assert_mirrored,
    expected_path,
    mirror_files,
    run,
    settings_for,
    state_rows,
)
from tests.support.s3server import S3TestServer


def test_sync_mirrors_real_series_byte_identical_and_records_md5(
    tmp_path: Path, s3_server: S3TestServer
) -> None:
    rows = dataset.selection("qin_pet_phantom_small") + dataset.selection("two")
    uploaded = dataset.populate(s3_server, rows)
    settings = settings_for(tmp_path, s3_server.endpoint, rows)

    report = run(settings)

    assert report.ok, report.problems
    assert report.round.summary.series_complete == len(rows)
    assert report.round.summary.files_fetched == len(uploaded)
    assert_mirrored(settings.mirror_root, rows, uploaded)
    kinds = state_rows(settings, "SELECT checksum_kind, COUNT(*) FROM object GROUP BY 1")
    assert kinds == [("md5", len(uploaded))]
    series = state_rows(settings, "SELECT state, files_done, bytes_done FROM series")
    assert {s[0] for s in series} == {"complete"}
    assert sum(s[2] for s in series) == sum(len(d) for d in uploaded.values())


def test_second_sync_of_complete_mirror_sends_no_request(
    tmp_path: Path, s3_server: S3TestServer
) -> None:
    rows = dataset.selection("two")
    dataset.populate(s3_server, rows)
    settings = settings_for(tmp_path, s3_server.endpoint, rows)
    assert run(settings).ok
    s3_server.clear_requests()

    again = run(settings)

    assert again.ok
    assert s3_server.requests() == []
    assert again.round.summary.files_fetched == 0


def test_requests_are_anonymous_even_with_aws_credentials_in_environment(
    tmp_path: Path, s3_server: S3TestServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAEXAMPLEEXAMPLE00")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-a-real-secret")
    rows = dataset.selection("two")
    dataset.populate(s3_server, rows)

    assert run(settings_for(tmp_path, s3_server.endpoint, rows)).ok

    requests = s3_server.requests()
    assert requests, "nothing was requested"
    assert not any(r.has_authorization for r in requests)


def test_gcs_flavour_uses_gcs_bucket_names_and_checks_goog_hash(
    tmp_path: Path, gcs_server: S3TestServer
) -> None:
    rows = dataset.selection("cr_nc") + dataset.selection("two")
    uploaded = dataset.populate(gcs_server, rows)
    assert {bucket for bucket, _ in uploaded} == {"idc-open-cr", "idc-open-idc1"}
    settings = settings_for(tmp_path, gcs_server.endpoint, rows, source="gcs")

    report = run(settings)

    assert report.ok, report.problems
    assert_mirrored(settings.mirror_root, rows, uploaded)
    # GCS's crc32c is the cheapest checksum it publishes (tests/run/test_checksums.py)
    kinds = state_rows(settings, "SELECT DISTINCT checksum_kind FROM object")
    assert kinds == [("crc32c",)]


def test_gcs_composite_objects_are_verified_by_crc32c_from_two_header_lines(
    tmp_path: Path,
) -> None:
    rows = dataset.selection("two")
    with S3TestServer("gcs", goog_hash="two") as server:
        uploaded: dict[tuple[str, str], bytes] = {}
        for row in rows:
            bucket = dataset.bucket_for(row, "gcs")
            for key, data in dataset.series_objects(row).items():
                server.put(bucket, key, data, composite=True)
                uploaded[(bucket, key)] = data
        settings = settings_for(tmp_path, server.endpoint, rows, source="gcs")
        report = run(settings)
    assert report.ok, report.problems
    assert_mirrored(settings.mirror_root, rows, uploaded)
    assert state_rows(settings, "SELECT DISTINCT checksum_kind FROM object") == [("crc32c",)]


def test_multipart_etag_is_recomputed_with_part_size_from_head(
    tmp_path: Path, s3_server: S3TestServer
) -> None:
    rows = dataset.selection("single_instance")
    uploaded: dict[tuple[str, str], bytes] = {}
    for row in rows:
        for key, data in dataset.series_objects(row).items():
            part_size = max(len(data) // 3, 1)
            stored = s3_server.put(str(row["aws_bucket"]), key, data, part_size=part_size)
            assert stored.etag.endswith("-3") or stored.etag.endswith("-4")
            uploaded[(str(row["aws_bucket"]), key)] = data
    settings = settings_for(tmp_path, s3_server.endpoint, rows)

    report = run(settings)

    assert report.ok, report.problems
    assert_mirrored(settings.mirror_root, rows, uploaded)
    assert state_rows(settings, "SELECT DISTINCT checksum_kind FROM object") == [("multipart-md5",)]
    heads = [r for r in s3_server.requests() if r.method == "HEAD"]
    assert heads
    assert all(r.query.get("partNumber") == ["1"] for r in heads)


def test_unverifiable_object_is_recorded_size_only_visibly(
    tmp_path: Path, s3_server: S3TestServer
) -> None:
    rows = dataset.selection("single_instance")
    for row in rows:
        for key, data in dataset.series_objects(row).items():
            s3_server.put(str(row["aws_bucket"]), key, data, etag="not-a-checksum")
    settings = settings_for(tmp_path, s3_server.endpoint, rows)

    report = run(settings)

    assert report.ok
    assert report.round.summary.files_size_only == 1
    assert state_rows(settings, "SELECT checksum_kind FROM object") == [("size-only",)]


def test_object_whose_bytes_never_match_is_quarantined_and_never_placed(
    tmp_path: Path, s3_server: S3TestServer
) -> None:
    rows = dataset.selection("qin_pet_phantom_small")[:1]
    uploaded = dataset.populate(s3_server, rows)
    bad_key = sorted(key for _, key in uploaded)[5]
    s3_server.faults.add("flip", keys=[bad_key], on=["GET"])
    settings = settings_for(tmp_path, s3_server.endpoint, rows, max_integrity_attempts=3)

    report = run(settings)

    assert not report.ok
    assert s3_server.count("GET", key_prefix=bad_key) == 3
    states = dict(state_rows(settings, "SELECT key, state FROM object"))
    assert states[bad_key] == "quarantined"
    assert sum(1 for s in states.values() if s == "done") == len(uploaded) - 1
    assert not expected_path(settings.mirror_root, rows[0], bad_key).exists()
    assert [p.key for p in report.problems if p.key] == [bad_key]
    series_state, reason = state_rows(settings, "SELECT state, last_error FROM series")[0]
    assert series_state == "incomplete"
    assert "1 quarantined" in reason


def test_transient_faults_are_retried_until_the_mirror_is_complete(
    tmp_path: Path, s3_server: S3TestServer
) -> None:
    rows = dataset.selection("qin_pet_phantom_small")[:2]
    uploaded = dataset.populate(s3_server, rows)
    for kind in ("status_500", "slow_down", "throttle_429", "reset", "truncate", "flip"):
        s3_server.faults.add(kind, rate=0.05, on=["GET"])
    s3_server.faults.add("slow_down", rate=0.3, on=["LIST"])
    settings = settings_for(tmp_path, s3_server.endpoint, rows, max_attempts=12)
    settings = settings.model_copy(update={"max_integrity_attempts": 6})

    report = run(settings)

    assert report.ok, report.problems
    assert s3_server.faults.fired() > 10
    assert_mirrored(settings.mirror_root, rows, uploaded)


def test_missing_object_is_permanent_and_series_flagged_with_difference(
    tmp_path: Path, s3_server: S3TestServer
) -> None:
    rows = dataset.selection("qin_pet_phantom_small")[:1]
    uploaded = dataset.populate(s3_server, rows)
    gone = sorted(key for _, key in uploaded)[0]
    s3_server.delete(str(rows[0]["aws_bucket"]), gone)
    settings = settings_for(tmp_path, s3_server.endpoint, rows)

    report = run(settings)

    assert not report.ok
    state, reason = state_rows(settings, "SELECT state, last_error FROM series")[0]
    assert state == "incomplete"
    assert f"80 of {rows[0]['instanceCount']} files verified" in reason
    assert "short by" in reason


def test_hostile_keys_in_a_listing_are_refused_and_nothing_escapes(
    tmp_path: Path, s3_server: S3TestServer
) -> None:
    rows = dataset.selection("two")
    uploaded = dataset.populate(s3_server, rows)
    uuid = str(rows[0]["crdc_series_uuid"])
    hostile = [f"{uuid}/../../escape.dcm", f"{uuid}/sub/x.dcm", f"{uuid}/notes.txt"]
    s3_server.faults.add("list_extra", extra_keys=hostile, on=["LIST"])
    settings = settings_for(tmp_path, s3_server.endpoint, rows)

    report = run(settings)

    assert not report.ok  # refused objects are reported, not hidden
    refused = state_rows(settings, "SELECT key FROM object WHERE state = 'refused'")
    assert sorted(k for (k,) in refused) == sorted(hostile)
    assert not (tmp_path / "escape.dcm").exists()
    assert_mirrored(settings.mirror_root, rows, uploaded)


def test_license_policy_excludes_nc_series(tmp_path: Path, s3_server: S3TestServer) -> None:
    nc = dataset.selection("cr_nc") + dataset.selection("nc_in_open_data")
    open_rows = dataset.selection("two")
    uploaded = dataset.populate(s3_server, open_rows)
    settings = settings_for(
        tmp_path, s3_server.endpoint, nc + open_rows, licenses={"exclude": ["CC BY-NC*"]}
    )

    report = run(settings)

    assert report.ok, report.problems
    assert report.plan.tally.excluded_series == 2
    assert_mirrored(settings.mirror_root, open_rows, uploaded)
    assert not any(r.key.startswith(str(nc[0]["crdc_series_uuid"])) for r in s3_server.requests()
                   if r.key)  # fmt: skip


def test_license_destinations_keep_nc_data_apart(tmp_path: Path, s3_server: S3TestServer) -> None:
    nc = dataset.selection("cr_nc")
    open_rows = dataset.selection("two")
    uploaded = dataset.populate(s3_server, nc + open_rows)
    nc_root = tmp_path / "restricted"
    settings = settings_for(
        tmp_path, s3_server.endpoint, nc + open_rows,
        licenses={"destinations": {"CC BY-NC*": str(nc_root)}},
    )  # fmt: skip

    report = run(settings)

    assert report.ok, report.problems
    nc_uploaded = {k: v for k, v in uploaded.items() if k[0] == "idc-open-data-cr"}
    open_uploaded = {k: v for k, v in uploaded.items() if k[0] != "idc-open-data-cr"}
    assert_mirrored(nc_root, nc, nc_uploaded)
    assert_mirrored(settings.mirror_root, open_rows, open_uploaded)


def test_manifest_selection_with_portal_lines(tmp_path: Path, s3_server: S3TestServer) -> None:
    rows = dataset.selection("qin_pet_phantom_small")[:2]
    uploaded = dataset.populate(s3_server, rows)
    manifest = tmp_path / "cohort.s5cmd"
    manifest.write_text(
        "# exported from the IDC portal\n\n"
        f"cp s3://{rows[0]['aws_bucket']}/{rows[0]['crdc_series_uuid']}/* .\n"
        f"s3://{rows[1]['aws_bucket']}/{rows[1]['crdc_series_uuid']}/*\n"
    )
    settings = settings_for(tmp_path, s3_server.endpoint, [], manifests=[manifest])

    report = run(settings)

    assert report.ok, report.problems
    assert_mirrored(settings.mirror_root, rows, uploaded)


def test_single_instance_manifest_lines_fetch_only_those_instances(
    tmp_path: Path, s3_server: S3TestServer
) -> None:
    rows = dataset.selection("qin_pet_phantom_small")[:1]
    uploaded = dataset.populate(s3_server, rows)
    wanted = sorted(key for _, key in uploaded)[:2]
    manifest = tmp_path / "two-instances.txt"
    manifest.write_text("".join(f"s3://{rows[0]['aws_bucket']}/{key}\n" for key in wanted))
    settings = settings_for(tmp_path, s3_server.endpoint, [], manifests=[manifest])

    report = run(settings)

    assert report.ok, report.problems
    got = sorted(p.name for p in settings.mirror_root.rglob("*.dcm"))
    assert got == sorted(key.split("/")[1] for key in wanted)


def test_flat_layout_puts_every_file_in_the_root(tmp_path: Path, s3_server: S3TestServer) -> None:
    rows = dataset.selection("two") + dataset.selection("single_instance")
    uploaded = dataset.populate(s3_server, rows)
    settings = settings_for(tmp_path, s3_server.endpoint, rows, dir_template="")

    assert run(settings).ok

    names = sorted(p.name for p in settings.mirror_root.iterdir() if p.suffix == ".dcm")
    assert names == sorted(key.split("/")[1] for _, key in uploaded)
    assert sorted(p.name for p in mirror_files(settings.mirror_root)) == names


def test_an_unknown_series_stops_the_run_before_anything_is_created(
    tmp_path: Path, s3_server: S3TestServer
) -> None:
    rows = dataset.selection("two")
    dataset.populate(s3_server, rows)
    unknown = "1.2.3.4.5.6.7.8.9"
    settings = settings_for(tmp_path, s3_server.endpoint, rows)
    settings = settings.model_copy(update={"series": [*settings.series, unknown]})

    from idc_sync.core.errors import SelectionError

    with pytest.raises(SelectionError, match=f"unknown SeriesInstanceUID '{unknown}'"):
        run(settings)
    assert not settings.mirror_root.exists()
    assert s3_server.requests() == []


@pytest.mark.slow
def test_sync_against_moto_as_reference_s3(tmp_path: Path, moto_endpoint: str) -> None:
    rows = dataset.selection("qin_pet_phantom_small")[:2] + dataset.selection("cr_nc")
    uploaded = dataset.populate(moto_endpoint, rows)
    settings = settings_for(tmp_path, moto_endpoint, rows)

    report = run(settings)

    assert report.ok, report.problems
    assert_mirrored(settings.mirror_root, rows, uploaded)


def test_status_json_reports_per_collection(tmp_path: Path, s3_server: S3TestServer) -> None:
    import subprocess
    import sys

    rows = dataset.selection("two")
    uploaded = dataset.populate(s3_server, rows)
    settings = settings_for(tmp_path, s3_server.endpoint, rows)
    run(settings)

    done = subprocess.run(
        [sys.executable, "-m", "idc_sync", "status", "--destination", str(settings.mirror_root),
         "--json"],
        capture_output=True, text=True, check=False, env={**os.environ, "COLUMNS": "200"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    status = json.loads(done.stdout)
    [collection] = status["collections"]
    assert collection["collection_id"] == rows[0]["collection_id"]
    assert collection["files_done"] == len(uploaded)
    assert collection["series_complete"] == collection["series_total"] == 1
