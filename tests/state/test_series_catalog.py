"""Schema version 4: each series records the idc-index-data version whose catalog queued it;
a state of version 3 is upgraded in place and its series keep NULL (nobody knows)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import idc_index_data

from idc_sync.state.database import SCHEMA_VERSION
from idc_sync.state.store import STATE_DB
from tests.support import dataset
from tests.support.mirror import run, settings_for, state_rows
from tests.support.s3server import S3TestServer


def test_series_record_their_catalog_and_a_version_3_state_is_upgraded(
    tmp_path: Path, s3_server: S3TestServer
) -> None:
    assert SCHEMA_VERSION == 4
    before, later = dataset.selection("two"), dataset.selection("single_instance")
    dataset.populate(s3_server, before + later)
    settings = settings_for(tmp_path, s3_server.endpoint, before)
    assert run(settings).ok
    # the state as schema version 3 left it
    with sqlite3.connect(settings.state_path / STATE_DB) as db:
        db.execute("ALTER TABLE series DROP COLUMN catalog")
        db.execute("PRAGMA user_version = 3")

    report = run(settings.model_copy(update={"series": [str(later[0]["crdc_series_uuid"])]}))

    assert report.ok, report.problems
    assert state_rows(settings, "PRAGMA user_version") == [(4,)]
    catalogs = dict(state_rows(settings, "SELECT crdc_series_uuid, catalog FROM series"))
    assert catalogs == {str(before[0]["crdc_series_uuid"]): None,
                        str(later[0]["crdc_series_uuid"]): idc_index_data.__version__}  # fmt: skip
