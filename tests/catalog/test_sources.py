"""Where a catalog comes from: the installed idc-index-data as its metadata on disk says now
(not the module imported at start), a catalog directory of a followed release, and the
newest of them for a plan."""

from __future__ import annotations

import importlib.metadata
import logging
from pathlib import Path

import idc_index_data
import pytest

from idc_sync.catalog import sources
from idc_sync.catalog.index import Catalog
from idc_sync.catalog.wheel import unpack
from idc_sync.core.errors import ConfigurationError
from idc_sync.core.selection import Selection
from tests.support import wheels

Releases = tuple[wheels.FakeRelease, wheels.FakeRelease, dict[str, wheels.Row]]


@pytest.fixture(scope="module")
def releases() -> tuple[wheels.FakeRelease, wheels.FakeRelease, dict[str, wheels.Row]]:
    return wheels.two_releases()


def follow_into(state_dir: Path, release: wheels.FakeRelease) -> Path:
    wheel = wheels.write_wheel(state_dir / "downloads", release)
    return unpack(wheel, release.version, state_dir / sources.CATALOGS_DIR,
                  max_bytes=10_000_000, provenance={}).location  # fmt: skip


def test_installed_catalog_is_read_from_the_metadata_on_disk_at_every_call(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, releases: Releases
) -> None:
    first, second, roles = releases
    site = wheels.unpack_into(tmp_path / "site", first)
    monkeypatch.syspath_prepend(str(site))
    assert sources.installed().version == "25.0.0"
    with Catalog() as catalog:
        assert catalog.release == 25
        assert catalog.version == "25.0.0"
        assert catalog.source.tables["index"] == site / "idc_index_data" / "idc_index.parquet"
        assert catalog.resolve(Selection(collections=(wheels.COLLECTION,))).series_count == 4

    # an upgrade in place: the module imported at start still says 25.0.5 ...
    wheels.unpack_into(site, second)
    assert idc_index_data.__version__ == "25.0.5"
    # ... and the next look sees what is on disk
    assert importlib.metadata.version("idc-index-data") == "26.0.0"
    with Catalog() as catalog:
        assert catalog.release == 26
        resolution = catalog.resolve(Selection(collections=(wheels.COLLECTION,)))
        uuids = {r.crdc_series_uuid for batch in resolution.batches() for r in batch}
        assert uuids == second.uuids
        assert roles["revised_new"]["crdc_series_uuid"] in uuids


def test_package_version_disagreeing_with_its_version_table_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, releases: Releases
) -> None:
    first, _, _ = releases
    # a half-finished upgrade: the metadata says 26, the files are still release 25's
    files = wheels.catalog_files(first)
    site = wheels.unpack_into(
        tmp_path / "site", wheels.FakeRelease("26.0.0", first.index), files=files
    )
    monkeypatch.syspath_prepend(str(site))
    with pytest.raises(ConfigurationError, match=r"26.0.0 says IDC release 26 but .* ends at "
                       r"release 25: reinstall it"):  # fmt: skip
        Catalog()


def test_a_followed_catalog_directory_opens_as_a_catalog(
    tmp_path: Path, releases: Releases
) -> None:
    _, second, _ = releases
    location = follow_into(tmp_path, second)
    assert location == tmp_path / sources.CATALOGS_DIR / "26.0.0"
    with Catalog(source=sources.directory(location)) as catalog:
        assert (catalog.release, catalog.version) == (26, "26.0.0")
        assert catalog.source.origin == sources.FOLLOWED
        assert set(catalog.source.tables) == {
            "index", "prior_versions_index", "version_metadata_index"}  # fmt: skip
        assert catalog.present("crdc_series_uuid", second.uuids) == second.uuids


def test_a_directory_without_its_marker_is_no_catalog(tmp_path: Path, releases: Releases) -> None:
    _, second, _ = releases
    location = follow_into(tmp_path, second)
    (location / sources.MARKER).write_text('{"version": "soon"}')
    with pytest.raises(ConfigurationError, match="names no idc-index-data version"):
        sources.directory(location)
    (location / sources.MARKER).unlink()
    with pytest.raises(ConfigurationError, match=r"no readable catalog\.json"):
        sources.directory(location)


def test_a_plan_uses_the_newest_of_installed_and_followed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, releases: Releases,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    first, second, _ = releases
    state_dir = tmp_path / "state"
    site = wheels.unpack_into(tmp_path / "site", first)
    monkeypatch.syspath_prepend(str(site))
    assert sources.newest(state_dir).version == "25.0.0"  # nothing followed yet

    follow_into(state_dir, second)
    chosen = sources.newest(state_dir)
    assert (chosen.version, chosen.origin) == ("26.0.0", sources.FOLLOWED)

    # the same release installed: the installed package wins the tie
    wheels.unpack_into(site, second)
    assert sources.newest(state_dir).origin == sources.INSTALLED

    # a newer one installed than followed
    wheels.unpack_into(site, wheels.FakeRelease("26.0.1", second.index, second.prior))
    assert sources.newest(state_dir).version == "26.0.1"

    # half-made and broken directories are passed over
    (state_dir / sources.CATALOGS_DIR / ".unpack-27.0.0").mkdir()
    (state_dir / sources.CATALOGS_DIR / "27.0.0").mkdir()
    with caplog.at_level(logging.WARNING):
        assert [s.version for s in sources.followed(state_dir)] == ["26.0.0"]
    assert "27.0.0 has no readable catalog.json" in caplog.text


def test_installed_and_followed_catalogs_of_the_same_release_resolve_alike(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, releases: Releases
) -> None:
    _, second, _ = releases
    site = wheels.unpack_into(tmp_path / "site", second)
    monkeypatch.syspath_prepend(str(site))
    location = follow_into(tmp_path, second)
    selection = Selection(collections=(wheels.COLLECTION,))
    found = []
    for source in (sources.installed(), sources.directory(location)):
        with Catalog(source=source) as catalog:
            resolution = catalog.resolve(selection, layout_columns=("PatientID",))
            found.append(sorted((r.crdc_series_uuid, r.idc_version, r.layout_values["PatientID"])
                                for batch in resolution.batches() for r in batch))  # fmt: skip
    assert found[0] == found[1]
    assert len(found[0]) == 4
