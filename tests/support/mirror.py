"""Helpers for tests that run a whole sync against a local S3 server: settings for a
selection of real index rows, the run itself, and checks of the mirror and the state."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from idc_sync.config import Settings, load_settings
from idc_sync.run.binding import MARKER
from idc_sync.run.jobs import SyncReport, sync
from idc_sync.state.store import STATE_DB

Row = dict[str, Any]


def settings_for(tmp_path: Path, endpoint: str, rows: Sequence[Row], **overrides: Any) -> Settings:
    source = overrides.pop("source", "aws")
    values: dict[str, Any] = {
        "destination": tmp_path / "mirror",
        "source": source,
        "endpoints": {source: endpoint},
        "series": [str(row["crdc_series_uuid"]) for row in rows],
        "concurrency": 16,
        "series_concurrency": 4,
    }
    values.update(overrides)
    return load_settings(None, **values)


def run(settings: Settings) -> SyncReport:
    return asyncio.run(sync(settings))


def expected_path(root: Path, row: Row, key: str) -> Path:
    """idc-index's default layout, spelled out for ordinary values."""
    instance = key.split("/")[1]
    return (
        root
        / str(row["collection_id"])
        / str(row["PatientID"])
        / str(row["StudyInstanceUID"])
        / f"{row['Modality']}_{row['SeriesInstanceUID']}"
        / instance
    )


def assert_mirrored(
    root: Path, rows: Sequence[Row], uploaded: Mapping[tuple[str, str], bytes]
) -> None:
    by_series = {str(row["crdc_series_uuid"]): row for row in rows}
    for (_bucket, key), data in uploaded.items():
        row = by_series[key.split("/")[0]]
        path = expected_path(root, row, key)
        assert path.read_bytes() == data, f"{path} differs from {key}"
    files = mirror_files(root)
    assert len(files) == len(uploaded), "the mirror holds files nobody asked for"


def mirror_files(root: Path) -> list[Path]:
    """Every file under the mirror root but the state directory and the mirror's marker."""
    return [
        path
        for path in root.rglob("*")
        if path.is_file()
        and ".idc-sync" not in path.relative_to(root).parts
        and path.name != MARKER
    ]


def state_rows(settings: Settings, sql: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(settings.state_path / STATE_DB) as db:
        return db.execute(sql).fetchall()
