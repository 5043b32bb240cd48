"""An IDC release as DuckDB views over idc-index-data's parquet files: tables ``index`` and
``prior_versions_index`` (and the other tables its catalog bundles), the IDC release they
describe, and the collection ids they know. Which files those are, catalog/sources.py says:
the installed idc-index-data as it is on disk now, a followed release's catalog directory,
or index files given by hand."""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import duckdb

from idc_sync.catalog import sources
from idc_sync.catalog.package_index import release_of
from idc_sync.catalog.resolution import Resolution
from idc_sync.catalog.resolve import Resolver
from idc_sync.catalog.sources import CatalogSource
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


class Catalog:
    """An IDC release, queryable as tables ``index`` and ``prior_versions_index``.

    ``source``: the catalog to open; by default the installed idc-index-data, read afresh.
    ``index_path`` / ``prior_versions_path`` open index files given by hand instead (a
    missing one is taken from the installed package).

    ``release``: for a catalog of idc-index-data (installed or followed), the major number
    of its version (the package numbers itself ``<IDC release>.<data fix>.<code fix>``, e.g.
    25.0.5), which must equal the last ``idc_version`` of its ``version_metadata_index``
    table when it ships one: a mismatch means a broken installation (or a half-finished
    upgrade) and raises ConfigurationError. For index files given by hand: the last
    ``idc_version`` of a ``version_metadata_index.parquet`` next to the index, else the
    highest ``series_revised_idc_version`` (a lower bound). In every case the release must
    not be older than a revision the index itself records.

    One DuckDB in-memory database; each resolution gets its own cursor (DuckDB connection), so
    a Resolution can stream its batches while another selection is resolved.
    """

    release: int
    index_columns: tuple[str, ...]
    prior_columns: tuple[str, ...]

    def __init__(
        self,
        index_path: Path | None = None,
        prior_versions_path: Path | None = None,
        *,
        source: CatalogSource | None = None,
    ) -> None:
        if source is None:
            if index_path is None and prior_versions_path is None:
                source = sources.installed()
            else:
                fallback = (
                    sources.installed().tables if None in (index_path, prior_versions_path) else {}
                )
                source = sources.index_files(
                    index_path or fallback["index"],
                    prior_versions_path or fallback["prior_versions_index"],
                )
        self.source = source
        for table in ("index", "prior_versions_index"):
            path = source.tables.get(table)
            if path is None:
                raise ConfigurationError(f"{source.describe()} has no {table} table")
            if not path.is_file():
                raise ConfigurationError(f"IDC index file {path} does not exist")
        self._index_path = source.tables["index"]
        self._conn = duckdb.connect(":memory:")
        self._resolutions: list[Resolution] = []
        try:
            # Rows stream out in any order; keeping insertion order would buffer them.
            self._conn.execute("SET preserve_insertion_order = false")
            # One thread: DuckDB splits a parquet scan by row group, and idc-index-data ships
            # each table as one, so a second thread finds nothing to scan; it only takes CPU
            # from what runs beside the plan (a spare worker process importing, the fetches).
            # 4 named series with a spare starting, 2 cores: resolve 0.22-0.28 s against
            # 0.49-0.53 s with 2 threads; with no spare, nlst (592,600 series), SQL answers
            # and patients resolve in the same time either way, within this machine's noise.
            self._conn.execute("SET threads = 1")
            self._create_views()
            self.index_columns = self._columns("index")
            self.prior_columns = self._columns("prior_versions_index")
            self._require_columns("index", self.index_columns, _INDEX_REQUIRED)
            self._require_columns("prior_versions_index", self.prior_columns, _PRIOR_REQUIRED)
            for column in self.index_columns:
                if column.lower() == "file_row_number":  # DuckDB's names ignore case
                    raise ConfigurationError(
                        f"{self._index_path} has a column named {column}, the name DuckDB "
                        "gives the row numbers idc-sync looks series up by; rename it"
                    )
            self.release = self._derive_release()
        except duckdb.Error as exc:
            self._conn.close()
            raise ConfigurationError(f"cannot read the IDC index files: {exc}") from exc
        except BaseException:
            self._conn.close()
            raise
        self._collection_ids: dict[str, str] | None = None

    @property
    def version(self) -> str | None:
        """The idc-index-data version of the catalog (None for index files given by hand)."""
        return self.source.version

    @property
    def numbered_index(self) -> str:
        """The ``index`` table with its rows numbered (``file_row_number``), as SQL: how
        catalog/resolve.py reads the records of rows it has found by one column."""
        return f"read_parquet({sql_literal(str(self._index_path))}, file_row_number = true)"

    def _create_views(self) -> None:
        # idc-index users query the other tables the package bundles (collections_index,
        # analysis_results_index, ...) by name in the same SQL.
        for name, path in self.source.tables.items():
            self._conn.execute(
                f"CREATE VIEW {sql_identifier(name)} AS "
                f"SELECT * FROM read_parquet({sql_literal(str(path))})"
            )

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

    def _derive_release(self) -> int:
        revised = (
            self._scalar('SELECT max(series_revised_idc_version) FROM "index"')
            if ("series_revised_idc_version" in self.index_columns)
            else None
        )
        metadata: int | None = None
        if "version_metadata_index" in self.source.tables:
            metadata = self._scalar("SELECT max(idc_version) FROM version_metadata_index")
        version = self.source.version
        if version is not None:
            release = release_of(version)
            if release is None:
                raise ConfigurationError(
                    f"cannot read an IDC release from idc-index-data {version!r}"
                )
            if metadata is not None and metadata != release:
                fix = "reinstall it" if self.source.origin == sources.INSTALLED else (
                    f"remove {self.source.location}")  # fmt: skip
                raise ConfigurationError(
                    f"idc-index-data {version} says IDC release {release} but its "
                    f"version_metadata_index ends at release {metadata}: {fix}"
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
