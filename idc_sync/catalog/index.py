"""The installed IDC release as DuckDB views over idc-index-data's parquet files: tables
``index`` and ``prior_versions_index`` (and the other tables the package bundles), the IDC
release they describe, and the collection ids they know."""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import duckdb
import idc_index_data

from idc_sync.catalog.resolution import Resolution
from idc_sync.catalog.resolve import Resolver
from idc_sync.catalog.sql import load_table, sql_identifier, sql_literal
from idc_sync.core.errors import ConfigurationError
from idc_sync.core.selection import Selection, normalize_collection_id

_INDEX_REQUIRED = (
    "crdc_series_uuid",
    "SeriesInstanceUID",
    "collection_id",
    "aws_bucket",
    "license_short_name",
    "source_DOI",
    "instanceCount",
    "series_size_MB",
)
_PRIOR_REQUIRED = (
    "crdc_series_uuid",
    "SeriesInstanceUID",
    "collection_id",
    "aws_bucket",
    "min_idc_version",
    "max_idc_version",
)
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _installed_path(path: Path | str | None) -> Path | None:
    return None if path is None else Path(path)


def _package_release() -> int:
    version = str(idc_index_data.__version__)
    major = version.split(".", 1)[0]
    if not major.isdigit():
        raise ConfigurationError(f"cannot read an IDC release from idc-index-data {version!r}")
    return int(major)


class Catalog:
    """The installed IDC release, queryable as tables ``index`` and ``prior_versions_index``.

    ``release``: for the installed idc-index-data, the major number of its version (the package
    numbers itself ``<IDC release>.<data fix>.<code fix>``, e.g. 25.0.5), which must equal the
    last ``idc_version`` of its ``version_metadata_index`` table when the package ships one;
    a mismatch means a broken installation and raises ConfigurationError. For other index
    files: the last ``idc_version`` of a ``version_metadata_index.parquet`` next to the index,
    else the highest ``series_revised_idc_version`` (a lower bound). In every case the release
    must not be older than a revision the index itself records.

    One DuckDB in-memory database; each resolution gets its own cursor (DuckDB connection), so
    a Resolution can stream its batches while another selection is resolved.
    """

    release: int
    index_columns: tuple[str, ...]
    prior_columns: tuple[str, ...]

    def __init__(
        self, index_path: Path | None = None, prior_versions_path: Path | None = None
    ) -> None:
        installed_index = _installed_path(idc_index_data.IDC_INDEX_PARQUET_FILEPATH)
        paths: list[Path] = []
        for given, default in (
            (index_path, installed_index),
            (prior_versions_path, idc_index_data.PRIOR_VERSIONS_INDEX_PARQUET_FILEPATH),
        ):
            path = given if given is not None else _installed_path(default)
            if path is None:
                raise ConfigurationError("idc-index-data ships no index parquet file: reinstall it")
            if not path.is_file():
                raise ConfigurationError(f"IDC index file {path} does not exist")
            paths.append(path)
        self._index_path, self._prior_path = paths
        self._conn = duckdb.connect(":memory:")
        self._resolutions: list[Resolution] = []
        try:
            # Rows stream out in any order; keeping insertion order would buffer them.
            self._conn.execute("SET preserve_insertion_order = false")
            installed = self._same_file(installed_index)
            self._create_views(installed=installed)
            self.index_columns = self._columns("index")
            self.prior_columns = self._columns("prior_versions_index")
            self._require_columns("index", self.index_columns, _INDEX_REQUIRED)
            self._require_columns("prior_versions_index", self.prior_columns, _PRIOR_REQUIRED)
            self.release = self._derive_release(installed=installed)
        except duckdb.Error as exc:
            self._conn.close()
            raise ConfigurationError(f"cannot read the IDC index files: {exc}") from exc
        except BaseException:
            self._conn.close()
            raise
        self._collection_ids: dict[str, str] | None = None

    def _same_file(self, installed_index: Path | None) -> bool:
        return (
            installed_index is not None
            and installed_index.is_file()
            and self._index_path.samefile(installed_index)
        )

    def _create_views(self, *, installed: bool) -> None:
        tables = {"index": self._index_path, "prior_versions_index": self._prior_path}
        if installed:
            # idc-index users query the other tables the package bundles (collections_index,
            # analysis_results_index, ...) by name in the same SQL.
            bundled: dict[str, Any] = getattr(idc_index_data, "INDEX_METADATA", {})
            for name, metadata in bundled.items():
                path = metadata.get("parquet_filepath") if isinstance(metadata, dict) else None
                if (
                    name not in ("idc_index", *tables)
                    and path is not None
                    and _IDENTIFIER.fullmatch(name)
                    and Path(path).is_file()
                ):
                    tables[name] = Path(path)
        else:
            metadata_path = self._index_path.with_name("version_metadata_index.parquet")
            if metadata_path.is_file():
                tables["version_metadata_index"] = metadata_path
        for name, path in tables.items():
            self._conn.execute(
                f"CREATE VIEW {sql_identifier(name)} AS "
                f"SELECT * FROM read_parquet({sql_literal(str(path))})"
            )
        self._tables = tables

    def _columns(self, table: str) -> tuple[str, ...]:
        cursor = self._conn.execute(f"SELECT * FROM {sql_identifier(table)} LIMIT 0")
        return tuple(str(column[0]) for column in cursor.description or ())

    @staticmethod
    def _require_columns(table: str, present: Sequence[str], required: Sequence[str]) -> None:
        missing = [column for column in required if column not in present]
        if missing:
            raise ConfigurationError(f"table {table} lacks columns {', '.join(missing)}")

    def _scalar(self, sql: str) -> Any:
        row = self._conn.execute(sql).fetchone()
        return None if row is None else row[0]

    def _derive_release(self, *, installed: bool) -> int:
        revised = (
            self._scalar('SELECT max(series_revised_idc_version) FROM "index"')
            if ("series_revised_idc_version" in self.index_columns)
            else None
        )
        metadata: int | None = None
        if "version_metadata_index" in self._tables:
            metadata = self._scalar("SELECT max(idc_version) FROM version_metadata_index")
        if installed:
            release = _package_release()
            if metadata is not None and metadata != release:
                raise ConfigurationError(
                    f"idc-index-data {idc_index_data.__version__} says IDC release {release} but "
                    f"its version_metadata_index ends at release {metadata}: reinstall it"
                )
        elif metadata is not None:
            release = int(metadata)
        elif revised is not None:
            release = int(revised)
        else:
            raise ConfigurationError(
                f"cannot tell the IDC release of {self._index_path}: no version_metadata_index."
                "parquet next to it and no series_revised_idc_version column"
            )
        if revised is not None and int(revised) > release:
            raise ConfigurationError(
                f"{self._index_path} records revisions in IDC release {revised}, newer than the "
                f"release {release} it claims"
            )
        return release

    # -- collections -------------------------------------------------------------------

    @property
    def collection_ids(self) -> tuple[str, ...]:
        """Every collection_id of the release, sorted."""
        return tuple(sorted(self._collection_id_map().values()))

    def collection_id(self, name: str) -> str | None:
        """The collection_id a name means ('QIN-PET-Phantom' -> 'qin_pet_phantom'), or None."""
        return self._collection_id_map().get(normalize_collection_id(name))

    def _collection_id_map(self) -> dict[str, str]:
        if self._collection_ids is None:
            rows = self._conn.execute('SELECT DISTINCT collection_id FROM "index"').fetchall()
            self._collection_ids = {
                normalize_collection_id(str(row[0])): str(row[0])
                for row in rows
                if row[0] is not None
            }
        return self._collection_ids

    def suggest_collections(self, name: str, limit: int = 3) -> list[str]:
        """Collection ids of this release closest to a name the release does not know."""
        return difflib.get_close_matches(
            normalize_collection_id(name), self.collection_ids, n=limit, cutoff=0.6
        )

    def present(self, column: str, values: Iterable[str]) -> set[str]:
        """Which of ``values`` the current release's ``index`` has in ``column``
        (crdc_series_uuid or SeriesInstanceUID): what decides why a series leaves."""
        if column not in ("crdc_series_uuid", "SeriesInstanceUID"):
            raise ValueError(f"not a column to look series up by: {column}")
        cursor = self._conn.cursor()
        try:
            load_table(cursor, "probe", ("value",), ((value,) for value in values))
            rows = cursor.execute(
                f'SELECT DISTINCT s.{column} FROM "index" AS s '
                f"WHERE s.{column} IN (SELECT value FROM probe)"
            ).fetchall()
        finally:
            cursor.close()
        return {str(row[0]) for row in rows}

    # -- resolving -----------------------------------------------------------------------

    def resolve(
        self,
        selection: Selection,
        layout_columns: Sequence[str] = (),
        batch_size: int = 10_000,
    ) -> Resolution:
        """Look every part of the selection up; the series themselves stream from ``batches()``.

        Raises SelectionError for failing SQL, ConfigurationError for a layout column the index
        lacks. Names the release does not know are listed in ``Resolution.unknown``.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        layout = tuple(dict.fromkeys(layout_columns))
        for column in layout:
            if column not in self.index_columns:
                close = difflib.get_close_matches(column, self.index_columns, n=3)
                hint = f" (did you mean {', '.join(close)}?)" if close else ""
                raise ConfigurationError(f"layout column {column!r} is not a column of index{hint}")
        cursor = self._conn.cursor()
        try:
            resolution = Resolver(self, cursor, selection, layout, batch_size).run()
        except BaseException:
            cursor.close()
            raise
        self._resolutions.append(resolution)
        return resolution

    def close(self) -> None:
        for resolution in self._resolutions:
            resolution.close()
        self._resolutions.clear()
        self._conn.close()

    def __enter__(self) -> Catalog:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
