"""Resolve a selection (collections, series, SQL, manifest entries) against the installed IDC
release into SeriesRecords, streamed from DuckDB over the idc-index-data parquet files."""

from __future__ import annotations

import difflib
import os
import re
import tempfile
import weakref
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import duckdb
import idc_index_data

from idc_sync.core.errors import ConfigurationError, SelectionError
from idc_sync.core.manifest import CANONICAL_UUID
from idc_sync.core.model import ManifestEntry, SeriesRecord, UnknownSelection

# Origins of selection parts that do not carry their own (manifest entries do).
COLLECTIONS_ORIGIN = "collections"
SERIES_ORIGIN = "series"
SQL_ORIGIN = "sql"

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


@dataclass(frozen=True)
class Selection:
    """What the user asked to mirror; every part is optional and the parts are unioned."""

    collections: tuple[str, ...] = ()
    series: tuple[str, ...] = ()  # SeriesInstanceUID or crdc_series_uuid, mixed
    # One SELECT over table `index` (idc-index SQL dialect) returning a SeriesInstanceUID or
    # crdc_series_uuid column.
    sql: str | None = None
    manifest_entries: tuple[ManifestEntry, ...] = ()

    def is_empty(self) -> bool:
        return not (self.collections or self.series or self.manifest_entries) and self.sql is None


def normalize_collection_id(name: str) -> str:
    """The collection_id spelling of a collection name: 'QIN-PET-Phantom' -> 'qin_pet_phantom'."""
    return re.sub(r"[\s\-]+", "_", name.strip().lower())


def _sql_literal(text: str) -> str:
    # DDL (CREATE VIEW) takes no prepared parameters, so file paths are quoted by hand.
    return "'" + text.replace("'", "''") + "'"


def _sql_identifier(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


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
        self._resolutions: weakref.WeakSet[Resolution] = weakref.WeakSet()
        try:
            # Rows stream out in any order; keeping insertion order would buffer them.
            self._conn.execute("SET preserve_insertion_order = false")
            installed = self._same_file(installed_index)
            self._create_views(installed=installed)
            self.index_columns = self._columns("index")
            self._prior_columns = self._columns("prior_versions_index")
            self._require_columns("index", self.index_columns, _INDEX_REQUIRED)
            self._require_columns("prior_versions_index", self._prior_columns, _PRIOR_REQUIRED)
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
                f"CREATE VIEW {_sql_identifier(name)} AS "
                f"SELECT * FROM read_parquet({_sql_literal(str(path))})"
            )
        self._tables = tables

    def _columns(self, table: str) -> tuple[str, ...]:
        cursor = self._conn.execute(f"SELECT * FROM {_sql_identifier(table)} LIMIT 0")
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

    @property
    def collection_ids(self) -> tuple[str, ...]:
        """Every collection_id of the release, sorted."""
        return tuple(sorted(self._collection_id_map().values()))

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
            resolution = _Resolver(self, cursor, selection, layout, batch_size).run()
        except BaseException:
            cursor.close()
            raise
        self._resolutions.add(resolution)
        return resolution

    def close(self) -> None:
        for resolution in list(self._resolutions):
            resolution.close()
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


class Resolution:
    """A resolved selection: what is unknown, how big it is, and its series as a stream.

    ``total_instances`` counts the named instances of a series selected by instance, and
    ``total_bytes`` leaves out such series and series known only from prior_versions_index,
    whose sizes are not exact. Batches come in no particular order.
    """

    def __init__(
        self,
        cursor: Any,
        query: str,
        layout_columns: tuple[str, ...],
        batch_size: int,
        unknown: list[UnknownSelection],
    ) -> None:
        self._cursor = cursor
        self._query = query
        self._layout_columns = layout_columns
        self._batch_size = batch_size
        self._streaming = False
        self.unknown = unknown
        row = cursor.execute(
            f"""
            SELECT
                count(*),
                coalesce(sum(CASE WHEN instances IS NULL THEN instance_count
                                  ELSE len(instances) END), 0),
                coalesce(sum(CASE WHEN instances IS NULL THEN series_size_bytes END), 0)
            FROM ({query}) AS selected
            """
        ).fetchone()
        self.series_count = int(row[0])
        self.total_instances = int(row[1])
        self.total_bytes = int(row[2])

    def batches(self) -> Iterator[list[SeriesRecord]]:
        """Every selected series exactly once, at most ``batch_size`` per list.

        Each call starts the stream over; one stream at a time per Resolution.
        """
        if self._streaming:
            raise RuntimeError("a stream of this Resolution is open; finish or close it first")
        self._streaming = True
        try:
            result = self._cursor.execute(self._query)
            while rows := result.fetchmany(self._batch_size):
                yield [self._record(row) for row in rows]
        finally:
            self._streaming = False

    def _record(self, row: tuple[Any, ...]) -> SeriesRecord:
        instances = row[9]
        return SeriesRecord(
            crdc_series_uuid=row[0],
            SeriesInstanceUID=row[1],
            collection_id=row[2],
            aws_bucket=row[3],
            license_short_name=row[4],
            source_DOI=row[5],
            instance_count=row[6],
            series_size_bytes=row[7],
            idc_version=row[8],
            layout_values=dict(zip(self._layout_columns, row[10:], strict=True)),
            instances=None if instances is None else frozenset(instances),
        )

    def close(self) -> None:
        self._cursor.close()

    def __enter__(self) -> Resolution:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


class _Resolver:
    """One resolve() call: loads the selection into temporary tables of its own cursor, reports
    what the release lacks, and builds the query that yields each selected series once.

    Every scan of ``index`` decodes a million rows (the parquet file is one row group), so
    named series (series values, manifest entries, a cohort-sized SQL answer) are matched in
    one scan into ``matched``, which holds their whole records; only collections and large SQL
    answers are read from the index again, once for the counts and once per stream.
    """

    def __init__(
        self,
        catalog: Catalog,
        cursor: Any,
        selection: Selection,
        layout: tuple[str, ...],
        batch_size: int,
    ) -> None:
        self._catalog = catalog
        self._cursor = cursor
        self._selection = selection
        self._layout = layout
        self._batch_size = batch_size
        self._unknown: list[UnknownSelection] = []
        self._sql_kind: _SqlKind | None = None
        self._sql_scanned = True  # the SQL answer is found by scanning the index

    def run(self) -> Resolution:
        whole_uuids, series_uids = self._series_values()
        instance_pairs: list[tuple[str, str]] = []
        for entry in self._selection.manifest_entries:
            if entry.crdc_instance_uuid is None:
                whole_uuids.append(entry.crdc_series_uuid)
            else:
                instance_pairs.append((entry.crdc_series_uuid, entry.crdc_instance_uuid))
        self._load("sel_collection", ("collection_id",), ((c,) for c in self._collections()))
        self._load("sel_whole_uuid", ("crdc_series_uuid",), ((u,) for u in whole_uuids))
        self._load("sel_uid", ("SeriesInstanceUID",), ((u,) for u in series_uids))
        self._load("sel_instance", ("crdc_series_uuid", "crdc_instance_uuid"), instance_pairs)
        if self._selection.sql is not None:
            self._load_sql(self._selection.sql)
        self._match()
        self._report_unknown()
        self._select_prior_versions()
        return Resolution(
            self._cursor, self._query(), self._layout, self._batch_size, self._unknown
        )

    def _collections(self) -> list[str]:
        known = self._catalog._collection_id_map()
        selected: list[str] = []
        for name in self._selection.collections:
            collection_id = known.get(normalize_collection_id(name))
            if collection_id is None:
                self._unknown.append(UnknownSelection("collection", name, COLLECTIONS_ORIGIN))
            else:
                selected.append(collection_id)
        return selected

    def _series_values(self) -> tuple[list[str], list[str]]:
        uuids: list[str] = []
        uids: list[str] = []
        for value in self._selection.series:
            uuid = _as_uuid(value)
            if uuid is not None:
                uuids.append(uuid)
            elif _TRANSPORTABLE.fullmatch(value.strip()):
                uids.append(value.strip())
        return uuids, uids

    def _load(self, table: str, columns: tuple[str, ...], rows: Iterable[tuple[str, ...]]) -> None:
        """Create temporary ``table`` from ``rows`` of text without control characters.

        Values travel through a private tab-separated file, never through SQL text, and not as
        query parameters either: binding any Python parameter makes the duckdb module import
        pandas, numpy and pyarrow (0.5 s, ~90 MB of resident memory for the daemon's life).
        """
        descriptor, name = tempfile.mkstemp(prefix="idc-sync-selection-", suffix=".tsv")
        try:
            with os.fdopen(descriptor, "w", encoding="utf-8", newline="\n") as file:
                for row in rows:
                    file.write("\t".join(row) + "\n")
            types = ", ".join(f"{_sql_literal(column)}: 'VARCHAR'" for column in columns)
            self._cursor.execute(
                f"CREATE OR REPLACE TEMP TABLE {table} AS SELECT DISTINCT * FROM read_csv("
                f"{_sql_literal(name)}, header = false, delim = '\t', quote = '', escape = '', "
                f"auto_detect = false, columns = {{{types}}})"
            )
        finally:
            Path(name).unlink(missing_ok=True)

    def _load_sql(self, sql: str) -> None:
        """Run the user's query once, matched against ``index`` into ``sql_match(id,
        crdc_series_uuid)``, so counts and batches see the same answer even when the query
        samples or orders at random."""
        try:
            statements = duckdb.extract_statements(sql)
        except duckdb.Error as exc:
            raise SelectionError(f"selection SQL does not parse: {exc}") from None
        if len(statements) != 1:
            raise SelectionError(
                f"selection SQL must be exactly one SELECT statement, got {len(statements)}"
            )
        if statements[0].type != duckdb.StatementType.SELECT:
            raise SelectionError(
                f"selection SQL must be a SELECT statement, got {statements[0].type.name}"
            )
        # A newline before ')' keeps a trailing '-- comment' from swallowing it.
        subquery = "(\n" + str(statements[0].query).strip().rstrip(";") + "\n) AS user_selection"
        try:
            description = self._cursor.execute(f"SELECT * FROM {subquery} LIMIT 0").description
        except duckdb.Error as exc:
            raise SelectionError(f"selection SQL failed: {exc}") from None
        names = {str(column[0]).lower(): str(column[0]) for column in description or ()}
        # crdc_series_uuid first: it also reaches earlier versions of a series.
        kind: _SqlKind
        if "crdc_series_uuid" in names:
            kind, column = "crdc_series_uuid", names["crdc_series_uuid"]
        elif "seriesinstanceuid" in names:
            kind, column = "series", names["seriesinstanceuid"]
        else:
            found = ", ".join(names.values()) or "none"
            raise SelectionError(
                "selection SQL must return a SeriesInstanceUID or crdc_series_uuid column; "
                f"it returns {found}"
            )
        key = "crdc_series_uuid" if kind == "crdc_series_uuid" else "SeriesInstanceUID"
        try:
            self._cursor.execute(
                f"""
                CREATE OR REPLACE TEMP TABLE sql_match AS
                SELECT u.id, s.crdc_series_uuid
                FROM (SELECT CAST({_sql_identifier(column)} AS VARCHAR) AS id
                      FROM {subquery}) AS u
                LEFT JOIN "index" AS s ON s.{key} = u.id
                """
            )
        except duckdb.Error as exc:
            raise SelectionError(f"selection SQL failed: {exc}") from None
        self._sql_kind = kind
        found = self._cursor.execute(
            "SELECT count(*) FROM sql_match WHERE crdc_series_uuid IS NOT NULL"
        ).fetchone()
        if found is not None and found[0] <= _SQL_NAMED_LIMIT:
            # A cohort-sized answer joins the named series, which `matched` holds in full, so
            # counts and batches need not scan the index again.
            self._cursor.execute(
                """
                INSERT INTO sel_whole_uuid
                SELECT crdc_series_uuid FROM sql_match WHERE crdc_series_uuid IS NOT NULL
                EXCEPT SELECT crdc_series_uuid FROM sel_whole_uuid
                """
            )
            self._sql_scanned = False

    def _match(self) -> None:
        """Find the series named by series values and manifest entries (``matched``), uuids only
        prior_versions_index knows (``sel_prior_uuid``), and series wanted only in part, with
        their instances (``partial``): a series also selected whole is not partial."""
        # matched carries whole output rows: a selection of named series needs no other scan.
        layout = "".join(
            f", s.{_sql_identifier(column)} AS layout_{number}"
            for number, column in enumerate(self._layout)
        )
        named = self._has_rows("sel_whole_uuid", "sel_instance", "sel_uid")
        self._cursor.execute(
            f"""
            CREATE OR REPLACE TEMP TABLE matched AS
            SELECT {self._current_columns()}{layout},
                (s.crdc_series_uuid IN (SELECT crdc_series_uuid FROM sel_whole_uuid)
                 OR s.SeriesInstanceUID IN (SELECT SeriesInstanceUID FROM sel_uid)
                 OR s.collection_id IN (SELECT collection_id FROM sel_collection)) AS whole
            FROM "index" AS s
            WHERE {"true" if named else "false"} AND (
                s.crdc_series_uuid IN (SELECT crdc_series_uuid FROM sel_whole_uuid)
                OR s.crdc_series_uuid IN (SELECT crdc_series_uuid FROM sel_instance)
                OR s.SeriesInstanceUID IN (SELECT SeriesInstanceUID FROM sel_uid))
            """
        )
        sql_prior_candidates = (
            "UNION ALL SELECT id FROM sql_match WHERE crdc_series_uuid IS NULL AND id IS NOT NULL"
            if self._sql_kind == "crdc_series_uuid"
            else ""
        )
        self._cursor.execute(
            f"""
            CREATE OR REPLACE TEMP TABLE sel_prior_uuid AS
            SELECT DISTINCT crdc_series_uuid FROM prior_versions_index
            WHERE crdc_series_uuid IN (
                    SELECT crdc_series_uuid FROM sel_whole_uuid
                    UNION ALL SELECT crdc_series_uuid FROM sel_instance
                    {sql_prior_candidates})
              AND crdc_series_uuid NOT IN (SELECT crdc_series_uuid FROM matched)
            """
        )
        if not self._has_rows("sel_instance"):
            self._cursor.execute(
                "CREATE OR REPLACE TEMP TABLE partial "
                "(crdc_series_uuid VARCHAR, instances VARCHAR[])"
            )
            return
        sql_whole = (
            """
            AND i.crdc_series_uuid NOT IN (
                SELECT crdc_series_uuid FROM sql_match WHERE crdc_series_uuid IS NOT NULL
                UNION ALL SELECT id FROM sql_match WHERE id IS NOT NULL)
            """
            if self._sql_kind is not None
            else ""
        )
        self._cursor.execute(
            f"""
            CREATE OR REPLACE TEMP TABLE partial AS
            SELECT i.crdc_series_uuid,
                list(i.crdc_instance_uuid ORDER BY i.crdc_instance_uuid) AS instances
            FROM sel_instance AS i
            WHERE i.crdc_series_uuid NOT IN (SELECT crdc_series_uuid FROM sel_whole_uuid)
              AND i.crdc_series_uuid NOT IN (SELECT crdc_series_uuid FROM matched WHERE whole)
              {sql_whole}
            GROUP BY i.crdc_series_uuid
            """
        )

    def _select_prior_versions(self) -> None:
        """Materialize the records of earlier versions (``prior_selected``): few, and their
        license lookups scan the index twice, which counts and batches need not repeat."""
        layout = "".join(
            f", p.{_sql_identifier(column)} AS layout_{number}"
            if column in self._catalog._prior_columns
            else f", NULL AS layout_{number}"
            for number, column in enumerate(self._layout)
        )
        if not self._has_rows("sel_prior_uuid"):
            self._cursor.execute(
                "CREATE OR REPLACE TEMP TABLE prior_selected AS "
                + _EMPTY_RESULT
                + "".join(f", NULL AS layout_{number}" for number in range(len(self._layout)))
                + " LIMIT 0"
            )
            return
        self._cursor.execute(
            f"""
            CREATE OR REPLACE TEMP TABLE prior_selected AS
            SELECT p.crdc_series_uuid, p.SeriesInstanceUID, p.collection_id, p.aws_bucket,
                coalesce(c.license_short_name, l.license_short_name) AS license_short_name,
                c.source_DOI, CAST(NULL AS BIGINT) AS instance_count,
                -- prior_versions_index sizes are rounded to 10 kB: no exact byte count
                CAST(NULL AS BIGINT) AS series_size_bytes,
                p.max_idc_version AS idc_version,
                i.instances
                {layout}
            FROM (
                -- one row per uuid and GCS bucket it lived in: the latest is the one to fetch
                SELECT * FROM prior_versions_index
                WHERE crdc_series_uuid IN (SELECT crdc_series_uuid FROM sel_prior_uuid)
                QUALIFY row_number() OVER (
                    PARTITION BY crdc_series_uuid
                    ORDER BY max_idc_version DESC, min_idc_version DESC) = 1
            ) AS p
            LEFT JOIN (
                SELECT SeriesInstanceUID,
                    any_value(license_short_name) AS license_short_name,
                    any_value(source_DOI) AS source_DOI
                FROM "index"
                WHERE SeriesInstanceUID IN (
                    SELECT SeriesInstanceUID FROM prior_versions_index
                    WHERE crdc_series_uuid IN (SELECT crdc_series_uuid FROM sel_prior_uuid))
                GROUP BY SeriesInstanceUID
            ) AS c ON c.SeriesInstanceUID = p.SeriesInstanceUID
            LEFT JOIN (
                -- the license a collection's series mostly carry; ties go alphabetically
                SELECT collection_id,
                    first(license_short_name ORDER BY series DESC, license_short_name)
                        AS license_short_name
                FROM (
                    SELECT collection_id, license_short_name, count(*) AS series
                    FROM "index"
                    WHERE license_short_name IS NOT NULL AND collection_id IN (
                        SELECT collection_id FROM prior_versions_index
                        WHERE crdc_series_uuid IN (SELECT crdc_series_uuid FROM sel_prior_uuid))
                    GROUP BY collection_id, license_short_name
                )
                GROUP BY collection_id
            ) AS l ON l.collection_id = p.collection_id
            LEFT JOIN partial AS i ON i.crdc_series_uuid = p.crdc_series_uuid
            """
        )

    def _current_columns(self) -> str:
        """The record columns of a row ``s`` of the current index."""
        return f"""
            s.crdc_series_uuid, s.SeriesInstanceUID, s.collection_id, s.aws_bucket,
            s.license_short_name, s.source_DOI, s.instanceCount AS instance_count,
            CAST(round(s.series_size_MB * 1e6) AS BIGINT) AS series_size_bytes,
            CAST({int(self._catalog.release)} AS BIGINT) AS idc_version
        """

    def _has_rows(self, *tables: str) -> bool:
        return any(
            self._cursor.execute(f"SELECT 1 FROM {table} LIMIT 1").fetchone() is not None
            for table in tables
        )

    def _known(self, sql: str) -> set[str]:
        return {str(row[0]) for row in self._cursor.execute(sql).fetchall()}

    def _report_unknown(self) -> None:
        selection = self._selection
        if selection.series or selection.manifest_entries:
            known_uuids = self._known(
                "SELECT crdc_series_uuid FROM matched "
                "UNION SELECT crdc_series_uuid FROM sel_prior_uuid"
            )
            known_uids = self._known("SELECT SeriesInstanceUID FROM matched")
            for value in selection.series:
                uuid = _as_uuid(value)
                if uuid is not None:
                    if uuid not in known_uuids:
                        self._unknown.append(
                            UnknownSelection("crdc_series_uuid", value, SERIES_ORIGIN)
                        )
                elif value.strip() not in known_uids:
                    self._unknown.append(UnknownSelection("series", value, SERIES_ORIGIN))
            for entry in selection.manifest_entries:
                if entry.crdc_series_uuid not in known_uuids:
                    # Without an instance-level index only the series can be found missing.
                    self._unknown.append(
                        UnknownSelection("crdc_series_uuid", entry.crdc_series_uuid, entry.origin)
                    )
        if self._sql_kind is not None:
            rows = self._cursor.execute(
                """
                SELECT DISTINCT id FROM sql_match
                WHERE crdc_series_uuid IS NULL
                  AND (id IS NULL OR id NOT IN (SELECT crdc_series_uuid FROM sel_prior_uuid))
                ORDER BY id NULLS FIRST
                """
            ).fetchall()
            for (value,) in rows:
                # A NULL id (say from an outer join) selects nothing: say so, do not drop it.
                self._unknown.append(
                    UnknownSelection(
                        self._sql_kind, "NULL" if value is None else str(value), SQL_ORIGIN
                    )
                )

    def _query(self) -> str:
        """One row per selected series: current rows by collection, name or SQL answer, then
        earlier versions of uuids the current release lacks."""
        parts: list[str] = []
        # Series selected through a collection or the SQL answer: found by scanning the index.
        # (No NULL may reach these IN lists: NOT (x IN (..., NULL)) is NULL, never true.)
        scanned = [
            predicate
            for predicate, present in (
                (
                    "{row}.collection_id IN (SELECT collection_id FROM sel_collection)",
                    self._has_rows("sel_collection"),
                ),
                (
                    "{row}.crdc_series_uuid IN "
                    "(SELECT crdc_series_uuid FROM sql_match WHERE crdc_series_uuid IS NOT NULL)",
                    self._sql_kind is not None and self._sql_scanned,
                ),
            )
            if present
        ]
        if scanned:
            # Always whole series: a collection or SQL answer never leaves rows in `partial`.
            layout = "".join(f", s.{_sql_identifier(column)}" for column in self._layout)
            parts.append(
                f"""
                SELECT {self._current_columns()}, CAST(NULL AS VARCHAR[]) AS instances {layout}
                FROM "index" AS s
                WHERE {" OR ".join(predicate.format(row="s") for predicate in scanned)}
                """
            )
        if self._has_rows("matched"):
            layout = "".join(f", m.layout_{number}" for number in range(len(self._layout)))
            not_scanned = " AND ".join(
                f"NOT ({predicate.format(row='m')})" for predicate in scanned
            )
            parts.append(
                f"""
                SELECT m.crdc_series_uuid, m.SeriesInstanceUID, m.collection_id, m.aws_bucket,
                    m.license_short_name, m.source_DOI, m.instance_count, m.series_size_bytes,
                    m.idc_version, p.instances {layout}
                FROM matched AS m
                LEFT JOIN partial AS p ON p.crdc_series_uuid = m.crdc_series_uuid
                WHERE {not_scanned or "true"}
                """
            )
        if self._has_rows("prior_selected"):
            layout = "".join(f", layout_{number}" for number in range(len(self._layout)))
            parts.append(
                "SELECT crdc_series_uuid, SeriesInstanceUID, collection_id, aws_bucket, "
                "license_short_name, source_DOI, instance_count, series_size_bytes, idc_version, "
                f"instances{layout} FROM prior_selected"
            )
        if not parts:
            parts.append(_EMPTY_RESULT + "".join(", NULL" for _ in self._layout) + " LIMIT 0")
        return "\nUNION ALL\n".join(parts)


_SqlKind = Literal["crdc_series_uuid", "series"]

# SQL answers up to this many current series are held in full rows, like named series.
_SQL_NAMED_LIMIT = 50_000

# What a value may hold to travel through the tab-separated file of _Resolver._load; no
# SeriesInstanceUID or uuid holds anything else, so a value that does is simply unknown.
_TRANSPORTABLE = re.compile(r"[^\x00-\x1f\x7f]+")

_EMPTY_RESULT = (
    "SELECT CAST(NULL AS VARCHAR) AS crdc_series_uuid, CAST(NULL AS VARCHAR) AS SeriesInstanceUID, "
    "CAST(NULL AS VARCHAR) AS collection_id, CAST(NULL AS VARCHAR) AS aws_bucket, "
    "CAST(NULL AS VARCHAR) AS license_short_name, CAST(NULL AS VARCHAR) AS source_DOI, "
    "CAST(NULL AS BIGINT) AS instance_count, CAST(NULL AS BIGINT) AS series_size_bytes, "
    "CAST(NULL AS BIGINT) AS idc_version, CAST(NULL AS VARCHAR[]) AS instances"
)


def _as_uuid(value: str) -> str | None:
    lowered = value.strip().lower()
    return lowered if CANONICAL_UUID.fullmatch(lowered) else None
