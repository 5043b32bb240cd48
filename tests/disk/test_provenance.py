"""The provenance manifest (disk/provenance.py): one CSV row per verified file, written
atomically; a write that fails (a full disk) leaves the previous manifest and no temp file,
and says so as a local storage error."""

from __future__ import annotations

import asyncio
import csv
import errno
import io
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from idc_sync.core.errors import LocalStorageError
from idc_sync.disk.provenance import (
    PROVENANCE_COLUMNS,
    csv_text,
    provenance_row,
    write_provenance,
)
from idc_sync.disk.storage import temp_path_for

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


def test_a_temp_file_a_killed_run_left_is_removed_by_the_next_write(tmp_path: Path) -> None:
    """kill -9 while the manifest was being written leaves its temp file; no directory survey
    visits the state directory, so the next write removes it."""
    target = tmp_path / "provenance.csv"
    left = temp_path_for(target)
    left.write_text("path,crdc_series_uuid\n/m/half")
    other = temp_path_for(tmp_path / "other.csv")  # another file's: not ours to remove
    other.write_text("x")
    assert asyncio.run(write_provenance(_Reports([ROW]), target)) == 1  # type: ignore[arg-type]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([other.name, target.name])


_FIELD = st.one_of(
    st.text(alphabet=st.sampled_from('ab.,"\r\n /-1'), max_size=8),
    st.integers(min_value=0, max_value=10**12),
)


@given(st.lists(st.lists(_FIELD, min_size=12, max_size=12), max_size=6))
def test_csv_text_is_what_csv_writer_writes(rows: list[list[Any]]) -> None:
    """The plain join is taken only where csv.writer would quote nothing: commas, quotes
    and line breaks inside fields come out byte for byte as csv.writer has them."""
    expected = io.StringIO()
    csv.writer(expected).writerows(rows)
    assert csv_text(rows) == expected.getvalue()


def test_unknown_values_are_empty_fields_and_a_doi_with_a_comma_is_quoted(
    tmp_path: Path,
) -> None:
    odd = (*ROW[:5], None, "10.1/a,b", 100, None, None, 25, None)
    target = tmp_path / "provenance.csv"
    assert asyncio.run(write_provenance(_Reports([odd]), target)) == 1  # type: ignore[arg-type]
    with target.open(newline="") as handle:
        (row,) = list(csv.DictReader(handle))
    assert row["license_short_name"] == ""
    assert row["source_DOI"] == "10.1/a,b"
    assert row["checksum"] == row["fetched_at"] == ""
