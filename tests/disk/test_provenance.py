"""The provenance manifest (disk/provenance.py): one CSV row per verified file, written
atomically; a write that fails (a full disk) leaves the previous manifest and no temp file,
and says so as a local storage error."""

from __future__ import annotations

import asyncio
import csv
import errno
from pathlib import Path
from typing import Any

import pytest

from idc_sync.core.errors import LocalStorageError
from idc_sync.disk.provenance import PROVENANCE_COLUMNS, provenance_row, write_provenance

ROW = ("/m/a.dcm", "d98abc9a-0ddd-44a3-8646-df10344c49d7",
       "d98abc9a-0ddd-44a3-8646-df10344c49d7/0a1b2c3d-0000-4000-8000-000000000001.dcm",
       "1.2.3", "qin_pet_phantom", "CC BY 3.0", "10.7937/x", 100, "ab" * 16, "md5", 25,
       1_764_547_200.0)  # fmt: skip


class _Reports:
    """The one query write_provenance asks, over rows in memory."""

    def __init__(self, rows: list[tuple[Any, ...]], fail: bool = False) -> None:
        self.rows, self.fail = rows, fail

    async def provenance(self, after: str = "", limit: int = 5000) -> list[tuple[Any, ...]]:
        if self.fail:
            raise OSError(errno.ENOSPC, "No space left on device")
        return [row for row in self.rows if row[2] > after][:limit]


def test_a_row_names_the_instance_and_a_utc_time() -> None:
    line = provenance_row(ROW)
    assert dict(zip(PROVENANCE_COLUMNS, line, strict=True))["crdc_instance_uuid"] == (
        "0a1b2c3d-0000-4000-8000-000000000001"
    )
    assert line[-1] == "2025-12-01T00:00:00+00:00"


def test_the_manifest_is_replaced_whole_or_not_at_all(tmp_path: Path) -> None:
    target = tmp_path / "provenance.csv"
    assert asyncio.run(write_provenance(_Reports([ROW]), target)) == 1  # type: ignore[arg-type]
    with target.open(newline="") as handle:
        assert [r["path"] for r in csv.DictReader(handle)] == ["/m/a.dcm"]
    before = target.read_bytes()
    with pytest.raises(LocalStorageError, match="provenance manifest"):
        asyncio.run(write_provenance(_Reports([ROW], fail=True), target))  # type: ignore[arg-type]
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["provenance.csv"]
