"""The small pieces every DuckDB statement of the catalog is built with: quoting (DDL takes
no parameters), the shape of an empty result, and the private file selection values travel
through into temporary tables."""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from idc_sync.core.manifest import CANONICAL_UUID

# What a value may hold to travel through the tab-separated file of Resolver._load; no
# identifier IDC has holds anything else, so a value that does is simply unknown.
TRANSPORTABLE = re.compile(r"[^\x00-\x1f\x7f]+")

EMPTY_RESULT = (
    "SELECT CAST(NULL AS VARCHAR) AS crdc_series_uuid, CAST(NULL AS VARCHAR) AS SeriesInstanceUID, "
    "CAST(NULL AS VARCHAR) AS collection_id, CAST(NULL AS VARCHAR) AS aws_bucket, "
    "CAST(NULL AS VARCHAR) AS license_short_name, CAST(NULL AS VARCHAR) AS source_DOI, "
    "CAST(NULL AS BIGINT) AS instance_count, CAST(NULL AS BIGINT) AS series_size_bytes, "
    "CAST(NULL AS BIGINT) AS idc_version, CAST(NULL AS VARCHAR[]) AS instances"
)


def sql_literal(text: str) -> str:
    # DDL (CREATE VIEW) takes no prepared parameters, so file paths are quoted by hand.
    return "'" + text.replace("'", "''") + "'"


def sql_identifier(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def as_uuid(value: str) -> str | None:
    lowered = value.strip().lower()
    return lowered if CANONICAL_UUID.fullmatch(lowered) else None


def load_table(
    cursor: Any, table: str, columns: tuple[str, ...], rows: Iterable[tuple[str, ...]]
) -> None:
    """Create temporary ``table`` from ``rows`` of text; rows with a control character (no
    identifier IDC has holds one) are left out.

    Values travel through a private tab-separated file, never through SQL text, and not as
    query parameters either: binding any Python parameter makes the duckdb module import
    pandas, numpy and pyarrow (0.5 s, ~90 MB of resident memory for the daemon's life).
    """
    descriptor, name = tempfile.mkstemp(prefix="idc-sync-selection-", suffix=".tsv")
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8", newline="\n") as file:
            for row in rows:
                if all(TRANSPORTABLE.fullmatch(value) for value in row):
                    file.write("\t".join(row) + "\n")
        types = ", ".join(f"{sql_literal(column)}: 'VARCHAR'" for column in columns)
        cursor.execute(
            f"CREATE OR REPLACE TEMP TABLE {table} AS SELECT DISTINCT * FROM read_csv("
            f"{sql_literal(name)}, header = false, delim = '\t', quote = '', escape = '', "
            f"auto_detect = false, columns = {{{types}}})"
        )
    finally:
        Path(name).unlink(missing_ok=True)
