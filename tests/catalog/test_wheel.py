"""A wheel of idc-index-data made into a catalog directory: only its parquet files, bounded in
size however the zip describes itself, checked by opening them, whole or not at all; and the
clean-up that keeps the current and the previous catalog."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest

from idc_sync.catalog import sources
from idc_sync.catalog.sources import CatalogSource
from idc_sync.catalog.wheel import prune, unpack
from idc_sync.core.errors import ReleaseCheckError
from tests.support import wheels


@pytest.fixture(scope="module")
def second() -> wheels.FakeRelease:
    return wheels.two_releases()[1]


def unpack_wheel(
    tmp_path: Path, wheel: Path, version: str = "26.0.0", max_bytes: int = 10**7
) -> CatalogSource:
    return unpack(wheel, version, tmp_path / "catalogs", max_bytes=max_bytes,
                  provenance={"filename": wheel.name, "sha256": "ab" * 32})  # fmt: skip


def test_only_the_parquet_files_are_unpacked_with_a_marker_of_their_origin(
    tmp_path: Path, second: wheels.FakeRelease
) -> None:
    second.extra_files = {"idc_index_data/evil.py": b"raise SystemExit",
                          "../outside.parquet": b"PAR1"}  # fmt: skip
    try:
        wheel = wheels.write_wheel(tmp_path, second)
    finally:
        second.extra_files = {}
    source = unpack_wheel(tmp_path, wheel)
    assert source.location == tmp_path / "catalogs" / "26.0.0"
    assert sorted(p.name for p in source.location.iterdir()) == [
        "catalog.json", "idc_index.parquet", "prior_versions_index.parquet",
        "version_metadata_index.parquet",
    ]  # fmt: skip
    marker = json.loads((source.location / sources.MARKER).read_text())
    assert marker["version"] == "26.0.0"
    assert marker["filename"] == wheel.name
    assert not (tmp_path / "outside.parquet").exists()
    assert [p.name for p in (tmp_path / "catalogs").iterdir()] == ["26.0.0"]  # no leftovers
    # unpacking the same release again finds it there
    assert unpack_wheel(tmp_path, tmp_path / "absent.whl").location == source.location


def _refused(tmp_path: Path, wheel: Path, reason: str, message: str, **kwargs: object) -> None:
    with pytest.raises(ReleaseCheckError, match=message) as caught:
        unpack_wheel(tmp_path, wheel, **kwargs)  # type: ignore[arg-type]
    assert caught.value.reason == reason
    catalogs = tmp_path / "catalogs"
    assert not catalogs.exists() or not list(catalogs.iterdir()), "a failed unpack left files"


def test_a_file_that_is_not_a_zip_is_refused(tmp_path: Path) -> None:
    wheel = tmp_path / "idc_index_data-26.0.0-py3-none-any.whl"
    wheel.write_bytes(b"<html>a login page</html>")
    _refused(tmp_path, wheel, "wheel", "not a readable wheel")


def test_a_wheel_without_the_catalog_tables_is_refused(
    tmp_path: Path, second: wheels.FakeRelease
) -> None:
    files = wheels.catalog_files(second)
    del files["prior_versions_index.parquet"], files["version_metadata_index.parquet"]
    wheel = wheels.write_wheel(tmp_path, second, files=files)
    _refused(tmp_path, wheel, "wheel", "no prior_versions_index, version_metadata_index")


def test_parquet_files_duckdb_cannot_read_are_refused(
    tmp_path: Path, second: wheels.FakeRelease
) -> None:
    files = {**wheels.catalog_files(second), "idc_index.parquet": b"PAR1 but not really"}
    wheel = wheels.write_wheel(tmp_path, second, files=files)
    _refused(tmp_path, wheel, "wheel", "cannot read the IDC index files")


def test_a_wheel_whose_tables_describe_another_release_is_refused(
    tmp_path: Path, second: wheels.FakeRelease
) -> None:
    first = wheels.two_releases()[0]
    wheel = wheels.write_wheel(tmp_path, second, files=wheels.catalog_files(first))
    _refused(tmp_path, wheel, "wheel", "ends at release 25")


def test_a_zip_bomb_stops_at_the_byte_limit(tmp_path: Path, second: wheels.FakeRelease) -> None:
    wheel = wheels.write_wheel(tmp_path, second)
    with zipfile.ZipFile(wheel, "a", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("idc_index_data/sm_index.parquet", bytes(50_000_000))
    assert wheel.stat().st_size < 1_000_000
    _refused(tmp_path, wheel, "size", "larger than the bytes allowed", max_bytes=5_000_000)


def test_a_zip_that_understates_a_size_is_refused(
    tmp_path: Path, second: wheels.FakeRelease
) -> None:
    wheel = wheels.write_wheel(tmp_path, second)
    data = bytearray(wheel.read_bytes())
    with zipfile.ZipFile(wheel) as archive:
        info = archive.getinfo("idc_index_data/idc_index.parquet")
    # the central directory's record of the index (its fields from "version needed" on are
    # the local header's), its uncompressed size made 1 byte
    local = bytes(data[info.header_offset + 4 : info.header_offset + 26])
    start = data.find(local, info.header_offset + 26) - 6
    assert data[start : start + 4] == b"PK\x01\x02"
    data[start + 24 : start + 28] = (1).to_bytes(4, "little")
    wheel.write_bytes(bytes(data))
    _refused(tmp_path, wheel, "wheel", "not a readable wheel")


def test_twice_the_same_table_is_refused(tmp_path: Path, second: wheels.FakeRelease) -> None:
    wheel = wheels.write_wheel(tmp_path, second)
    with pytest.warns(UserWarning, match="Duplicate name"), zipfile.ZipFile(wheel, "a") as archive:
        archive.writestr("idc_index_data/idc_index.parquet", b"another index")
    _refused(tmp_path, wheel, "wheel", "twice")


def test_prune_keeps_the_two_newest_catalogs_and_removes_leftovers(
    tmp_path: Path, second: wheels.FakeRelease
) -> None:
    catalogs = tmp_path / "catalogs"
    for version in ("24.0.0", "25.0.0", "25.1.0", "26.0.0"):
        (catalogs / version).mkdir(parents=True)
        (catalogs / version / sources.MARKER).write_text(json.dumps({"version": version}))
    (catalogs / ".unpack-27.0.0").mkdir()
    (catalogs / ".download-idc_index_data-27.0.0-py3-none-any.whl").write_bytes(b"half")
    (catalogs / "27.0.0").mkdir()  # no marker: never whole
    removed = prune(catalogs)
    assert sorted(p.name for p in catalogs.iterdir()) == ["25.1.0", "26.0.0"]
    assert len(removed) == 5
    assert prune(tmp_path / "nothing") == []
