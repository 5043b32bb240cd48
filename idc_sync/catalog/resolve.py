"""Resolving a selection against the installed release: its values are loaded into temporary
tables of a DuckDB cursor of their own, identifiers are recognised as what they name, and one
query yields each selected series once, streamed in batches.

Every scan of ``index`` decodes a million rows (the parquet file is one row group), so named
series (series values, manifest entries, a cohort-sized SQL answer) are matched once, by row
number, into ``matched``, which holds their whole records; only collections, patients, studies and
large SQL answers are read from the index again, once for the counts and once per stream."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import duckdb

from idc_sync.catalog.resolution import Resolution
from idc_sync.catalog.sql import (
    EMPTY_RESULT,
    TRANSPORTABLE,
    as_uuid,
    load_table,
    sql_identifier,
    sql_literal,
)
from idc_sync.catalog.unknown import UnknownFinder
from idc_sync.core.errors import SelectionError
from idc_sync.core.model import UnknownSelection
from idc_sync.core.selection import Selection

if TYPE_CHECKING:
    from idc_sync.catalog.index import Catalog

# SQL answers up to this many current series are held in full rows, like named series.
_SQL_NAMED_LIMIT = 50_000


class Resolver:
    """One resolve() call: loads the selection into temporary tables of its own cursor, reports
    what the release lacks, and builds the query that yields each selected series once."""

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
        self._unknown = UnknownFinder(catalog, cursor, selection, self._load)
        self._recognised: list[tuple[str, str, str]] = []
        self._has_sql = False
        self._sql_scanned = True  # the SQL answer is found by scanning the index

    def run(self) -> Resolution:
        selection = self._selection
        collections, series, patients, studies = self._recognise(selection.identifiers)
        collections = [*selection.collections, *collections]
        whole_uuids, series_uids = self._series_values([*selection.series, *series])
        instance_pairs: list[tuple[str, str]] = []
        for entry in selection.manifest_entries:
            if entry.crdc_instance_uuid is None:
                whole_uuids.append(entry.crdc_series_uuid)
            else:
                instance_pairs.append((entry.crdc_series_uuid, entry.crdc_instance_uuid))
        self._load(
            "sel_collection", ("collection_id",), ((c,) for c in self._collections(collections))
        )
        self._load(
            "sel_patient", ("PatientID",), ((p,) for p in [*selection.patient_ids, *patients])
        )
        self._load(
            "sel_study", ("StudyInstanceUID",),
            ((s,) for s in [*selection.study_instance_uids, *studies]),
        )  # fmt: skip
        self._load("sel_whole_uuid", ("crdc_series_uuid",), ((u,) for u in whole_uuids))
        self._load("sel_uid", ("SeriesInstanceUID",), ((u,) for u in series_uids))
        self._load("sel_instance", ("crdc_series_uuid", "crdc_instance_uuid"), instance_pairs)
        self._load_sql(selection.sql)
        self._match()
        unknown = self._unknown.report(has_sql=self._has_sql)
        self._select_prior_versions()
        return Resolution(
            self._cursor, self._query(), self._layout, self._batch_size, unknown,
            self._recognised,
        )  # fmt: skip

    # -- recognising identifiers --------------------------------------------------------

    def _recognise(
        self, identifiers: Sequence[str]
    ) -> tuple[list[str], list[str], list[str], list[str]]:
        """What each identifier names, as `idc download` decides: a collection_id, a
        crdc_series_uuid, or a PatientID, StudyInstanceUID or SeriesInstanceUID of the index
        (all that match). Returns (collections, series, patients, studies)."""
        collections: list[str] = []
        series: list[str] = []
        patients: list[str] = []
        studies: list[str] = []
        rest: list[str] = []
        origin = self._selection.origins.get("identifier", "argument")
        for value in identifiers:
            if self._catalog.collection_id(value) is not None:
                collections.append(value)
                self._recognised.append(("collection", value, origin))
            elif as_uuid(value) is not None:
                series.append(value)
                self._recognised.append(("series", value, origin))
            elif TRANSPORTABLE.fullmatch(value):
                rest.append(value)
            else:
                self._unknown.add(UnknownSelection("identifier", value, origin))
        if not rest:
            return collections, series, patients, studies
        self._load("sel_identifier", ("value",), ((value,) for value in rest))
        rows = self._cursor.execute(
            """
            SELECT i.value,
                EXISTS (SELECT 1 FROM "index" AS s WHERE s.PatientID = i.value),
                EXISTS (SELECT 1 FROM "index" AS s WHERE s.StudyInstanceUID = i.value),
                EXISTS (SELECT 1 FROM "index" AS s WHERE s.SeriesInstanceUID = i.value)
            FROM sel_identifier AS i ORDER BY i.value
            """
        ).fetchall()
        found = {str(row[0]): (bool(row[1]), bool(row[2]), bool(row[3])) for row in rows}
        for value in rest:
            patient, study, uid = found.get(value, (False, False, False))
            for matched, bucket, part in (
                (patient, patients, "patient"), (study, studies, "study"), (uid, series, "series")
            ):  # fmt: skip
                if matched:
                    bucket.append(value)
                    self._recognised.append((part, value, origin))
            if not (patient or study or uid):
                self._unknown.add(UnknownSelection("identifier", value, origin))
        return collections, series, patients, studies

    # -- loading the selection ----------------------------------------------------------

    def _collections(self, names: Sequence[str]) -> list[str]:
        selected: list[str] = []
        for name in names:
            collection_id = self._catalog.collection_id(name)
            if collection_id is None:
                self._unknown.collection(name)
            else:
                selected.append(collection_id)
        return selected

    def _series_values(self, values: Sequence[str]) -> tuple[list[str], list[str]]:
        uuids: list[str] = []
        uids: list[str] = []
        for value in values:
            uuid = as_uuid(value)
            if uuid is not None:
                uuids.append(uuid)
            elif TRANSPORTABLE.fullmatch(value.strip()):
                uids.append(value.strip())
        return uuids, uids

    def _load(self, table: str, columns: tuple[str, ...], rows: Iterable[tuple[str, ...]]) -> None:
        load_table(self._cursor, table, columns, rows)

    def _load_sql(self, statements: Sequence[str]) -> None:
        """Run each of the user's queries once, matched against ``index`` into
        ``sql_match(id, crdc_series_uuid, kind)``, so counts and batches see the same answer
        even when a query samples or orders at random."""
        self._cursor.execute(
            "CREATE OR REPLACE TEMP TABLE sql_match "
            "(id VARCHAR, crdc_series_uuid VARCHAR, kind VARCHAR)"
        )
        for sql in statements:
            self._load_one_sql(sql)
        self._has_sql = bool(statements)
        if not statements:
            return
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

    def _load_one_sql(self, sql: str) -> None:
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
                INSERT INTO sql_match
                SELECT DISTINCT u.id, s.crdc_series_uuid, {sql_literal(kind)}
                FROM (SELECT CAST({sql_identifier(column)} AS VARCHAR) AS id
                      FROM {subquery}) AS u
                LEFT JOIN "index" AS s ON s.{key} = u.id
                """
            )
        except duckdb.Error as exc:
            raise SelectionError(f"selection SQL failed: {exc}") from None

    # -- matching -----------------------------------------------------------------------

    def _whole_by_scan(self, row: str) -> str:
        """A row of the index is wanted whole through a collection, a patient or a study."""
        return (
            f"{row}.collection_id IN (SELECT collection_id FROM sel_collection) "
            f"OR {row}.PatientID IN (SELECT PatientID FROM sel_patient) "
            f"OR {row}.StudyInstanceUID IN (SELECT StudyInstanceUID FROM sel_study)"
        )

    def _match(self) -> None:
        """Find the series named by series values and manifest entries (``matched``), uuids only
        prior_versions_index knows (``sel_prior_uuid``), and series wanted only in part, with
        their instances (``partial``): a series also selected whole is not partial."""
        # matched carries whole output rows: a selection of named series needs no other scan.
        layout = "".join(
            f", s.{sql_identifier(column)} AS layout_{number}"
            for number, column in enumerate(self._layout)
        )
        named = self._match_rows()
        self._cursor.execute(
            f"""
            CREATE OR REPLACE TEMP TABLE matched AS
            SELECT {self._current_columns()}{layout}, s.PatientID, s.StudyInstanceUID,
                (s.crdc_series_uuid IN (SELECT crdc_series_uuid FROM sel_whole_uuid)
                 OR s.SeriesInstanceUID IN (SELECT SeriesInstanceUID FROM sel_uid)
                 OR {self._whole_by_scan("s")}) AS whole
            FROM (
                SELECT r.crdc_series_uuid, x.* EXCLUDE (crdc_series_uuid, file_row_number)
                FROM {self._catalog.numbered_index} AS x
                JOIN (SELECT DISTINCT * FROM matched_row) AS r ON x.file_row_number = r.row_number
                WHERE {"true" if named else "false"}
            ) AS s
            """
        )
        self._cursor.execute(
            """
            CREATE OR REPLACE TEMP TABLE sel_prior_uuid AS
            SELECT DISTINCT crdc_series_uuid FROM prior_versions_index
            WHERE crdc_series_uuid IN (
                    SELECT crdc_series_uuid FROM sel_whole_uuid
                    UNION ALL SELECT crdc_series_uuid FROM sel_instance
                    UNION ALL SELECT id FROM sql_match
                    WHERE kind = 'crdc_series_uuid' AND crdc_series_uuid IS NULL
                        AND id IS NOT NULL)
              AND crdc_series_uuid NOT IN (SELECT crdc_series_uuid FROM matched)
            """
        )
        self._cursor.execute(
            """
            CREATE OR REPLACE TEMP TABLE partial AS
            SELECT i.crdc_series_uuid,
                list(i.crdc_instance_uuid ORDER BY i.crdc_instance_uuid) AS instances
            FROM sel_instance AS i
            WHERE i.crdc_series_uuid NOT IN (SELECT crdc_series_uuid FROM sel_whole_uuid)
              AND i.crdc_series_uuid NOT IN (SELECT crdc_series_uuid FROM matched WHERE whole)
              AND i.crdc_series_uuid NOT IN (
                SELECT crdc_series_uuid FROM sql_match WHERE crdc_series_uuid IS NOT NULL
                UNION ALL SELECT id FROM sql_match WHERE id IS NOT NULL)
            GROUP BY i.crdc_series_uuid
            """
        )

    def _match_rows(self) -> bool:
        """The row numbers (and uuids) of the index rows named series are (``matched_row``),
        found by one column at a time; ``_match`` then reads the other columns of those rows.

        Why two steps: one scan filtering on an OR of ``IN (subquery)`` over two columns, as
        this was, decodes every projected column of all 1,044,191 rows, while a filter on one
        column decodes the others only where a row matches, and a join on the row number
        stops at the highest one. 4 named series, 3 runs each (2 cores, DuckDB 1.5): rows at
        140,891-888,598 0.31-0.33 s in one step, 0.20-0.21 s in two (0.07 s to find them,
        0.10 s to read their records); 4 neighbouring rows near 300,000 0.37-0.50 s against
        0.17-0.19 s. Returns whether any row matched.
        """
        numbered = self._catalog.numbered_index
        self._cursor.execute(
            "CREATE OR REPLACE TEMP TABLE matched_row (row_number BIGINT, crdc_series_uuid VARCHAR)"
        )
        if self._has_rows("sel_whole_uuid", "sel_instance"):
            self._cursor.execute(
                f"""
                INSERT INTO matched_row
                SELECT s.file_row_number, s.crdc_series_uuid FROM {numbered} AS s
                WHERE s.crdc_series_uuid IN (
                    SELECT crdc_series_uuid FROM sel_whole_uuid
                    UNION ALL SELECT crdc_series_uuid FROM sel_instance)
                """
            )
        if self._has_rows("sel_uid"):
            self._cursor.execute(
                f"""
                INSERT INTO matched_row
                SELECT s.file_row_number, s.crdc_series_uuid FROM {numbered} AS s
                WHERE s.SeriesInstanceUID IN (SELECT SeriesInstanceUID FROM sel_uid)
                """
            )
        return self._has_rows("matched_row")

    def _select_prior_versions(self) -> None:
        """Materialize the records of earlier versions (``prior_selected``): few, and their
        license lookups scan the index twice, which counts and batches need not repeat."""
        layout = "".join(
            f", p.{sql_identifier(column)} AS layout_{number}"
            if column in self._catalog.prior_columns
            else f", NULL AS layout_{number}"
            for number, column in enumerate(self._layout)
        )
        if not self._has_rows("sel_prior_uuid"):
            self._cursor.execute(
                "CREATE OR REPLACE TEMP TABLE prior_selected AS "
                + EMPTY_RESULT
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

    def _query(self) -> str:
        """One row per selected series: current rows by collection, patient, study, name or
        SQL answer, then earlier versions of uuids the current release lacks."""
        parts: list[str] = []
        # Series found by scanning the index. (No NULL may reach these IN lists:
        # NOT (x IN (..., NULL)) is NULL, never true.)
        scanned = [
            predicate
            for predicate, present in (
                (
                    "{row}.collection_id IN (SELECT collection_id FROM sel_collection)",
                    self._has_rows("sel_collection"),
                ),
                (
                    "{row}.PatientID IN (SELECT PatientID FROM sel_patient)",
                    self._has_rows("sel_patient"),
                ),
                (
                    "{row}.StudyInstanceUID IN (SELECT StudyInstanceUID FROM sel_study)",
                    self._has_rows("sel_study"),
                ),
                (
                    "{row}.crdc_series_uuid IN "
                    "(SELECT crdc_series_uuid FROM sql_match WHERE crdc_series_uuid IS NOT NULL)",
                    self._has_sql and self._sql_scanned,
                ),
            )
            if present
        ]
        if scanned:
            # Always whole series: a scan never leaves rows in `partial`.
            layout = "".join(f", s.{sql_identifier(column)}" for column in self._layout)
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
                f"NOT coalesce({predicate.format(row='m')}, false)" for predicate in scanned
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
            parts.append(EMPTY_RESULT + "".join(", NULL" for _ in self._layout) + " LIMIT 0")
        return "\nUNION ALL\n".join(parts)
