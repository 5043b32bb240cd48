"""Following IDC releases: a mirror made from an earlier release's UUIDs (built from real
prior_versions_index rows) is brought to the installed release. Revised series are fetched
first and their old files retired after; removed series are retired; a changed bucket with
the same UUIDs fetches nothing."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import duckdb
import idc_index_data
import pytest

from idc_sync.config import Settings
from idc_sync.state.store import STATE_DB
from tests.support import dataset
from tests.support.mirror import run, settings_for
from tests.support.s3server import S3TestServer

PRIOR = str(idc_index_data.PRIOR_VERSIONS_INDEX_PARQUET_FILEPATH)
INDEX = str(idc_index_data.IDC_INDEX_PARQUET_FILEPATH)


def _rows(sql: str) -> list[dict[str, Any]]:
    with duckdb.connect() as con:
        cursor = con.execute(sql)
        names = [d[0] for d in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def revised_pair() -> tuple[dict[str, Any], dict[str, Any]]:
    """A real series revised since an earlier release: (old version, current version)."""
    [row] = _rows(
        f"SELECT p.crdc_series_uuid AS old_uuid, p.max_idc_version, i.* "
        f"FROM read_parquet('{PRIOR}') p "
        f"JOIN read_parquet('{INDEX}') i USING (SeriesInstanceUID) "
        f"WHERE p.crdc_series_uuid != i.crdc_series_uuid AND i.instanceCount BETWEEN 2 AND 10 "
        f"AND i.series_size_MB < 2 ORDER BY i.series_size_MB, i.crdc_series_uuid LIMIT 1"
    )
    old, new = dict(row), dict(row)
    old = {**old, "crdc_series_uuid": old["old_uuid"]}
    return old, new


def removed_series() -> dict[str, Any]:
    """A real series of an earlier release that the installed release no longer has."""
    [row] = _rows(
        f"SELECT * FROM read_parquet('{PRIOR}') WHERE SeriesInstanceUID NOT IN "
        f"(SELECT SeriesInstanceUID FROM read_parquet('{INDEX}')) AND series_size_MB < 1 "
        f"ORDER BY series_size_MB DESC, crdc_series_uuid LIMIT 1"
    )
    return {**row, "instanceCount": 3, "PatientID": row["PatientID"]}


def put_series(server: S3TestServer, row: dict[str, Any]) -> dict[str, bytes]:
    objects = dataset.series_objects(row)
    server.put_many(str(row["aws_bucket"]), objects)
    return objects


def live_files(root: Path) -> set[str]:
    return {p.name for p in root.rglob("*.dcm") if ".idc-sync" not in p.parts}


def series_states(settings: Settings) -> dict[str, str]:
    with sqlite3.connect(settings.state_path / STATE_DB) as db:
        return dict(db.execute("SELECT crdc_series_uuid, state FROM series").fetchall())


def test_revised_series_new_version_first_then_old_files_moved_out(
    tmp_path: Path, s3_server: S3TestServer
) -> None:
    old, new = revised_pair()
    old_objects = put_series(s3_server, old)
    new_objects = put_series(s3_server, new)
    # The mirror as an earlier release made it: the old crdc_series_uuid.
    earlier = settings_for(tmp_path, s3_server.endpoint, [old])
    assert run(earlier).ok
    old_names = {key.split("/")[1] for key in old_objects}
    assert live_files(earlier.mirror_root) == old_names

    # The installed release names the series by SeriesInstanceUID: the new version. The
    # selection changes with the release, so this run prunes (the old uuid would otherwise
    # stay selected: a mirror keeps what it was given).
    current = earlier.model_copy(update={"series": [new["SeriesInstanceUID"]], "prune": True})
    report = run(current)

    assert report.ok, report.problems
    assert report.round.retired.series_retired == 1
    assert report.round.retired.files_moved == len(old_objects)
    assert live_files(current.mirror_root) == {key.split("/")[1] for key in new_objects}
    retired = current.retired_path / f"v{old['max_idc_version']}"
    assert {p.name for p in retired.rglob("*.dcm")} == old_names
    states = series_states(current)
    assert states[old["crdc_series_uuid"]] == "retired"
    assert states[new["crdc_series_uuid"]] == "complete"


def test_revised_series_whose_new_version_fails_keeps_the_old_files(
    tmp_path: Path, s3_server: S3TestServer
) -> None:
    old, new = revised_pair()
    old_objects = put_series(s3_server, old)
    new_objects = put_series(s3_server, new)
    earlier = settings_for(tmp_path, s3_server.endpoint, [old])
    assert run(earlier).ok
    s3_server.faults.add("flip", keys=list(new_objects), on=["GET"])

    current = earlier.model_copy(update={"series": [new["SeriesInstanceUID"]], "prune": True})
    report = run(current)

    assert not report.ok
    assert report.round.retired.series_retired == 0
    assert report.round.retired.series_deferred == 1
    old_names = {key.split("/")[1] for key in old_objects}
    assert old_names <= live_files(current.mirror_root)
    assert series_states(current)[old["crdc_series_uuid"]] != "retired"

    # once the new version can be fetched (and an operator released the quarantine),
    # the old one goes
    s3_server.faults.clear()
    with sqlite3.connect(current.state_path / STATE_DB) as db:
        db.execute("UPDATE object SET state = 'pending' WHERE state = 'quarantined'")
    healed = run(current)
    assert healed.ok, healed.problems
    assert healed.round.retired.series_retired == 1
    assert not old_names & live_files(current.mirror_root)


@pytest.mark.parametrize("policy", ["keep", "delete"])
def test_removed_series_retired_by_policy(
    tmp_path: Path, s3_server: S3TestServer, policy: str
) -> None:
    gone = removed_series()
    gone_objects = put_series(s3_server, gone)
    staying = dataset.selection("two")
    dataset.populate(s3_server, staying)
    earlier = settings_for(tmp_path, s3_server.endpoint, [gone, *staying], retired=policy)
    assert run(earlier).ok
    gone_names = {key.split("/")[1] for key in gone_objects}
    assert gone_names <= live_files(earlier.mirror_root)

    current = earlier.model_copy(
        update={"series": [str(r["crdc_series_uuid"]) for r in staying], "prune": True,
                # deleting a third of the mirror needs the operator's word
                "allow_retire": policy == "delete"}
    )  # fmt: skip
    report = run(current)

    assert report.ok, report.problems
    assert report.round.retired.series_retired == 1
    present = gone_names & live_files(current.mirror_root)
    assert present == (gone_names if policy == "keep" else set())
    assert not current.retired_path.exists()
    assert series_states(current)[gone["crdc_series_uuid"]] == "retired"


def test_series_whose_bucket_changed_but_not_its_uuids_fetches_nothing(
    tmp_path: Path, s3_server: S3TestServer
) -> None:
    rows = dataset.selection("two")
    dataset.populate(s3_server, rows)
    settings = settings_for(tmp_path, s3_server.endpoint, rows)
    assert run(settings).ok
    # The state as an earlier release left it: the same UUIDs in another bucket.
    with sqlite3.connect(settings.state_path / STATE_DB) as db:
        db.execute("UPDATE series SET aws_bucket = 'idc-open-data'")
    s3_server.clear_requests()

    report = run(settings)

    assert report.ok
    assert s3_server.requests() == []
    with sqlite3.connect(settings.state_path / STATE_DB) as db:
        buckets = {b for (b,) in db.execute("SELECT aws_bucket FROM series")}
    assert buckets == {rows[0]["aws_bucket"]}


def test_series_selected_again_after_retirement_is_adopted_without_fetching(
    tmp_path: Path, s3_server: S3TestServer
) -> None:
    rows = dataset.selection("two")
    other = dataset.selection("single_instance")
    dataset.populate(s3_server, rows + other)
    settings = settings_for(tmp_path, s3_server.endpoint, rows + other, retired="keep")
    assert run(settings).ok
    only_other = settings.model_copy(
        update={"series": [other[0]["crdc_series_uuid"]], "prune": True, "allow_retire": True}
    )
    assert run(only_other).round.retired.series_retired == 1
    s3_server.clear_requests()

    again = run(settings)

    assert again.ok, again.problems
    assert s3_server.count("GET") == 0  # kept files re-verified, not fetched
    assert again.round.summary.files_reverified == int(rows[0]["instanceCount"])


def test_tree_from_idc_download_is_adopted_without_fetching_and_mismatches_fetched(
    tmp_path: Path, s3_server: S3TestServer
) -> None:
    from tests.support.mirror import assert_mirrored, expected_path

    rows = dataset.selection("qin_pet_phantom_small")[:1]
    uploaded = dataset.populate(s3_server, rows)
    settings = settings_for(tmp_path, s3_server.endpoint, rows)
    # What `idc download` leaves: the same layout and names, no idc-sync state at all.
    keys = sorted(key for _, key in uploaded)
    for (_, key), data in uploaded.items():
        path = expected_path(settings.mirror_root, rows[0], key)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    damaged = expected_path(settings.mirror_root, rows[0], keys[0])
    content = bytearray(damaged.read_bytes())
    content[len(content) // 2] ^= 0xFF
    damaged.write_bytes(bytes(content))
    truncated = expected_path(settings.mirror_root, rows[0], keys[1])
    truncated.write_bytes(truncated.read_bytes()[:100])

    report = run(settings)

    assert report.ok, report.problems
    assert report.round.summary.files_reverified == len(uploaded) - 2
    assert sorted(str(r.key) for r in s3_server.requests() if r.kind == "GET") == keys[:2]
    assert_mirrored(settings.mirror_root, rows, uploaded)


def test_provenance_manifest_has_one_row_per_verified_file(
    tmp_path: Path, s3_server: S3TestServer
) -> None:
    import csv

    rows = dataset.selection("two") + dataset.selection("cr_nc")
    uploaded = dataset.populate(s3_server, rows)
    settings = settings_for(tmp_path, s3_server.endpoint, rows)

    report = run(settings)

    assert report.round.provenance_rows == len(uploaded)
    with settings.provenance_path.open(newline="") as handle:
        manifest = list(csv.DictReader(handle))
    by_series = {str(r["crdc_series_uuid"]): r for r in rows}
    assert len(manifest) == len(uploaded)
    for line in manifest:
        row = by_series[line["crdc_series_uuid"]]
        key = f"{line['crdc_series_uuid']}/{line['crdc_instance_uuid']}.dcm"
        data = uploaded[(str(row["aws_bucket"]), key)]
        assert Path(line["path"]).read_bytes() == data
        assert int(line["bytes"]) == len(data)
        assert line["checksum_kind"] == "md5"
        assert line["license_short_name"] == row["license_short_name"]
        assert line["source_DOI"] == row["source_DOI"]
        assert line["idc_release"] == "25"
        assert line["fetched_at"].endswith("+00:00")


def test_plan_shows_revised_added_and_retired_before_anything_happens(
    tmp_path: Path, s3_server: S3TestServer
) -> None:
    import asyncio

    from idc_sync.run.jobs import plan

    old, new = revised_pair()
    gone = removed_series()
    put_series(s3_server, old)
    put_series(s3_server, gone)
    added = dataset.selection("two")
    earlier = settings_for(tmp_path, s3_server.endpoint, [old, gone])
    assert run(earlier).ok
    s3_server.clear_requests()
    current = earlier.model_copy(
        update={
            "series": [new["SeriesInstanceUID"], str(added[0]["crdc_series_uuid"])],
            "prune": True,
        }
    )

    report = asyncio.run(plan(current))

    total = report.difference.total
    assert (total.added_series, total.revised_series, total.retired_series) == (1, 1, 2)
    assert total.added_bytes == dataset.series_size_bytes(added[0])
    assert total.revised_bytes == dataset.series_size_bytes(new)
    assert total.retired_bytes > 0
    assert report.difference.collections[new["collection_id"]].revised_series == 1
    assert s3_server.requests() == []  # a plan asks no server anything
    assert series_states(current)[old["crdc_series_uuid"]] == "complete"


def test_citations_list_dois_per_license(tmp_path: Path, s3_server: S3TestServer) -> None:
    import json
    import os
    import subprocess
    import sys

    rows = dataset.selection("two") + dataset.selection("cr_nc")
    dataset.populate(s3_server, rows)
    settings = settings_for(tmp_path, s3_server.endpoint, rows)
    assert run(settings).ok

    done = subprocess.run(
        [sys.executable, "-m", "idc_sync", "citations", "--destination",
         str(settings.mirror_root), "--json"],
        capture_output=True, text=True, check=False, env={**os.environ, "COLUMNS": "200"},
    )  # fmt: skip

    assert done.returncode == 0, done.stderr
    listed = {(c["license_short_name"], c["source_DOI"]) for c in json.loads(done.stdout)}
    assert listed == {(r["license_short_name"], r["source_DOI"]) for r in rows}
