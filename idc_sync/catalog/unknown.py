"""What a selection names that the installed release does not have, and what to say about it:
removed from IDC (``prior_versions_index`` knows it, and up to which release), or unknown,
with the closest names the release has: collection ids by spelling, UIDs and uuids by the
longest shared prefix (a mistyped or cut-short UID sorts next to the real one)."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from idc_sync.core.manifest import CANONICAL_UUID
from idc_sync.core.model import UnknownSelection
from idc_sync.core.selection import Selection, manifest_key, normalize_collection_id

if TYPE_CHECKING:
    from idc_sync.catalog.index import Catalog

Loader = Callable[[str, tuple[str, ...], Iterable[tuple[str, ...]]], None]

# Suggestions are looked up for this many unknown entries at most: a bad manifest of 10,000
# lines must not cost 10,000 scans.
SUGGEST_AT_MOST = 10
_UID = re.compile(r"[0-9.]+")

# The index column a kind of entry names, for removed-from-IDC checks and suggestions.
_COLUMN = {
    "series": "SeriesInstanceUID",
    "patient": "PatientID",
    "study": "StudyInstanceUID",
    "crdc_series_uuid": "crdc_series_uuid",
}


def _shared_prefix(first: str, second: str) -> int:
    count = 0
    for a, b in zip(first, second, strict=False):
        if a != b:
            break
        count += 1
    return count


class UnknownFinder:
    """Collects the entries of one resolution the release lacks and describes them."""

    def __init__(self, catalog: Catalog, cursor: Any, selection: Selection, load: Loader) -> None:
        self._catalog = catalog
        self._cursor = cursor
        self._selection = selection
        self._load = load
        self._found: list[UnknownSelection] = []

    def add(self, unknown: UnknownSelection) -> None:
        self._found.append(unknown)

    def collection(self, name: str) -> None:
        self._found.append(self._entry("collection", name))

    def _entry(self, kind: Any, value: str, origin: str | None = None) -> UnknownSelection:
        part = "series" if kind == "crdc_series_uuid" else kind
        return UnknownSelection(
            kind, value, origin or self._selection.origin(part, value),
            given=self._selection.given(part, value),
        )  # fmt: skip

    # -- finding ------------------------------------------------------------------------

    def report(self, *, has_sql: bool) -> list[UnknownSelection]:
        """Every unknown entry, described (removed from IDC, or closest names)."""
        self._series_values()
        self._column_values("patient", "PatientID", "sel_patient", self._selection.patient_ids)
        self._column_values(
            "study", "StudyInstanceUID", "sel_study", self._selection.study_instance_uids
        )
        if has_sql:
            self._sql_answers()
        found = [self._removed(unknown) for unknown in self._found]
        return self._suggest(found)

    def _known(self, sql: str) -> set[str]:
        return {str(row[0]) for row in self._cursor.execute(sql).fetchall()}

    def _series_values(self) -> None:
        selection = self._selection
        if not (selection.series or selection.manifest_entries):
            return
        known_uuids = self._known(
            "SELECT crdc_series_uuid FROM matched UNION SELECT crdc_series_uuid FROM sel_prior_uuid"
        )
        known_uids = self._known("SELECT SeriesInstanceUID FROM matched")
        for value in selection.series:
            lowered = value.strip().lower()
            if CANONICAL_UUID.fullmatch(lowered):
                if lowered not in known_uuids:
                    self._found.append(self._entry("crdc_series_uuid", value))
            elif value.strip() not in known_uids:
                self._found.append(self._entry("series", value))
        for entry in selection.manifest_entries:
            if entry.crdc_series_uuid not in known_uuids:
                # Without an instance-level index only the series can be found missing.
                unknown = UnknownSelection(
                    "crdc_series_uuid", entry.crdc_series_uuid, entry.origin,
                    given=selection.given(*manifest_key(entry)),
                )  # fmt: skip
                self._found.append(unknown)

    def _column_values(self, kind: str, column: str, table: str, values: Sequence[str]) -> None:
        if not values:
            return
        known = self._known(
            f'SELECT DISTINCT s."{column}" FROM "index" AS s '
            f'WHERE s."{column}" IN (SELECT "{column}" FROM {table})'
        )
        for value in values:
            if value not in known:
                self._found.append(self._entry(kind, value))

    def _sql_answers(self) -> None:
        """Values a query returned that the release lacks: reported, but not fatal (nobody
        typed them); a NULL (say from an outer join) selects nothing, and says so."""
        origin = self._selection.origins.get("sql", "--sql")
        rows = self._cursor.execute(
            """
            SELECT DISTINCT id, kind FROM sql_match
            WHERE crdc_series_uuid IS NULL
              AND (id IS NULL OR id NOT IN (SELECT crdc_series_uuid FROM sel_prior_uuid))
            ORDER BY id NULLS FIRST, kind
            """
        ).fetchall()
        for value, kind in rows:
            text = "NULL" if value is None else str(value)
            self._found.append(UnknownSelection(kind, text, origin, given=False))

    # -- describing ---------------------------------------------------------------------

    def _removed(self, unknown: UnknownSelection) -> UnknownSelection:
        """The last release that had the entry, when prior_versions_index knows it."""
        if unknown.kind == "collection":
            last = self._prior_collections().get(normalize_collection_id(unknown.value))
            return replace(unknown, removed_after=last) if last is not None else unknown
        columns = (
            ["PatientID", "StudyInstanceUID", "SeriesInstanceUID"]
            if unknown.kind == "identifier"
            else [_COLUMN[unknown.kind]]
            if unknown.kind in ("series", "patient", "study")
            else []
        )
        if unknown.kind == "identifier":
            last = self._prior_collections().get(normalize_collection_id(unknown.value))
            if last is not None:
                return replace(unknown, removed_after=last)
        for column in columns:
            self._load("sel_probe", ("value",), [(unknown.value.strip(),)])
            row = self._cursor.execute(
                f'SELECT max(max_idc_version) FROM prior_versions_index WHERE "{column}" IN '
                "(SELECT value FROM sel_probe)"
            ).fetchone()
            if row is not None and row[0] is not None:
                return replace(unknown, removed_after=int(row[0]))
        return unknown

    def _prior_collections(self) -> dict[str, int]:
        if not hasattr(self, "_prior"):
            rows = self._cursor.execute(
                "SELECT collection_id, max(max_idc_version) FROM prior_versions_index "
                "WHERE collection_id IS NOT NULL GROUP BY collection_id"
            ).fetchall()
            self._prior = {normalize_collection_id(str(c)): int(v) for c, v in rows}
        return self._prior

    def _suggest(self, found: list[UnknownSelection]) -> list[UnknownSelection]:
        """Closest names for the first SUGGEST_AT_MOST unknown entries a run gave itself."""
        wanted = [index for index, u in enumerate(found) if u.given and u.removed_after is None][
            :SUGGEST_AT_MOST
        ]
        for index in wanted:
            unknown = found[index]
            names: list[str] = []
            if unknown.kind in ("collection", "identifier"):
                names += self._catalog.suggest_collections(unknown.value)
            if unknown.kind == "identifier":
                value = unknown.value.strip()
                columns = (
                    ["SeriesInstanceUID", "StudyInstanceUID"] if _UID.fullmatch(value)
                    else ["PatientID"]
                )  # fmt: skip
                for column in columns:
                    names += self._neighbours(column, value)
            elif unknown.kind in _COLUMN:
                names += self._neighbours(_COLUMN[unknown.kind], unknown.value.strip())
            if names:
                found[index] = replace(unknown, suggestions=tuple(dict.fromkeys(names))[:3])
        return found

    def _neighbours(self, column: str, value: str) -> list[str]:
        """Values of ``column`` that sort next to ``value`` and share most of its beginning."""
        if not value:
            return []
        self._load("sel_probe", ("value",), [(value,)])
        row = self._cursor.execute(
            f"""
            SELECT max(s.v) FILTER (WHERE s.v < p.value), min(s.v) FILTER (WHERE s.v > p.value)
            FROM sel_probe AS p, (SELECT "{column}" AS v FROM "index") AS s
            """
        ).fetchone()
        needed = max(6, len(value) // 2)
        return [
            str(candidate)
            for candidate in (row or ())
            if candidate is not None and _shared_prefix(str(candidate), value) >= needed
        ]
