"""What a mirror is asked to hold: collections, series, patients, studies, SQL over the index,
manifest lines and identifiers to be recognised (``idc-sync sync rider_pilot``), each value
with where it came from. A mirror keeps every selection it was given (the state's
``selection`` table) and each run adds its own; only ``--prune`` replaces them. Pure."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Literal

from idc_sync.core.model import ManifestEntry

# A selection's parts, as the state's `selection` table names them.
Part = Literal[
    "collection", "series", "patient", "study", "sql", "crdc_series_uuid", "crdc_instance_uuid"
]

# The flag or key each part is given with, for messages ("unknown collection 'x' (--collection)").
PART_FLAGS: Mapping[str, str] = {
    "collection": "--collection",
    "series": "--series",
    "patient": "--patient-id",
    "study": "--study-instance-uid",
    "sql": "--sql",
    "identifier": "argument",
}


def normalize_collection_id(name: str) -> str:
    """The collection_id spelling of a collection name: 'QIN-PET-Phantom' -> 'qin_pet_phantom'."""
    return re.sub(r"[\s\-]+", "_", name.strip().lower())


def split_values(values: Iterable[str]) -> tuple[str, ...]:
    """Comma-separated values, as `idc download` takes them: 'a,b' and 'a', 'b' alike;
    blanks dropped, order kept, repeats once."""
    parts = (part.strip() for value in values for part in value.split(","))
    return tuple(dict.fromkeys(part for part in parts if part))


@dataclass(frozen=True)
class Selection:
    """What one run asks for, plus what the mirror already holds (``stored``); every part is
    optional and the parts are unioned.

    ``origins`` names where this run's values of each part came from ("--collection",
    "IDC_SYNC_COLLECTIONS", "config.toml"); ``stored`` maps (part, value) of the values that
    come only from the mirror's own selection to where they were first given. Manifest
    entries carry their own origin.
    """

    collections: tuple[str, ...] = ()
    series: tuple[str, ...] = ()  # SeriesInstanceUID or crdc_series_uuid, mixed
    patient_ids: tuple[str, ...] = ()
    study_instance_uids: tuple[str, ...] = ()
    # SELECTs over table `index` (idc-index SQL dialect), each returning a SeriesInstanceUID
    # or crdc_series_uuid column
    sql: tuple[str, ...] = ()
    manifest_entries: tuple[ManifestEntry, ...] = ()
    # values to recognise as a collection_id, PatientID, StudyInstanceUID, SeriesInstanceUID
    # or crdc_series_uuid, as `idc download` does with its argument
    identifiers: tuple[str, ...] = ()
    origins: Mapping[str, str] = field(default_factory=dict)
    stored: Mapping[tuple[str, str], str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if isinstance(self.sql, str):  # one statement, as most callers have it
            object.__setattr__(self, "sql", (self.sql,))
        elif self.sql is None:
            object.__setattr__(self, "sql", ())

    def is_empty(self) -> bool:
        return not (
            self.collections or self.series or self.patient_ids or self.study_instance_uids
            or self.sql or self.manifest_entries or self.identifiers
        )  # fmt: skip

    def origin(self, part: str, value: str) -> str:
        """Where a value came from: this run's flag, key or variable, else the mirror's own
        selection."""
        if (part, value) in self.stored:
            return f"the mirror's selection, from {self.stored[(part, value)]}"
        return self.origins.get(part, PART_FLAGS.get(part, part))

    def given(self, part: str, value: str) -> bool:
        """Whether this run named the value itself (not only the mirror's selection)."""
        return (part, value) not in self.stored

    def entries(self) -> list[tuple[Part, str, str]]:
        """(part, value, origin) of this run's values, as the state's selection table keeps
        them. Identifiers are left out: they are stored as what they were recognised as."""
        rows: list[tuple[Part, str, str]] = []
        for part, values in (
            ("collection", self.collections), ("series", self.series),
            ("patient", self.patient_ids), ("study", self.study_instance_uids),
            ("sql", self.sql),
        ):  # fmt: skip
            rows.extend(
                (part, value, self.origin(part, value))  # type: ignore[misc]
                for value in values
                if self.given(part, value)
            )
        for entry in self.manifest_entries:
            part, value = manifest_key(entry)
            if self.given(part, value):
                rows.append((part, value, entry.origin))
        return rows


def manifest_key(entry: ManifestEntry) -> tuple[Part, str]:
    """The (part, value) a manifest line is kept under in the mirror's selection."""
    if entry.crdc_instance_uuid is None:
        return "crdc_series_uuid", entry.crdc_series_uuid
    return "crdc_instance_uuid", f"{entry.crdc_series_uuid}/{entry.crdc_instance_uuid}"


def stored_selection(rows: Iterable[tuple[str, str, str]]) -> Selection:
    """The mirror's own selection from the state's (part, value, origin) rows."""
    parts: dict[str, list[str]] = {}
    manifest: list[ManifestEntry] = []
    stored: dict[tuple[str, str], str] = {}
    for part, value, origin in rows:
        stored[(part, value)] = origin
        if part == "crdc_series_uuid":
            manifest.append(ManifestEntry("", value, None, origin))
        elif part == "crdc_instance_uuid":
            series, _, instance = value.partition("/")
            manifest.append(ManifestEntry("", series, instance, origin))
        else:
            parts.setdefault(part, []).append(value)
    return Selection(
        collections=tuple(parts.get("collection", ())),
        series=tuple(parts.get("series", ())),
        patient_ids=tuple(parts.get("patient", ())),
        study_instance_uids=tuple(parts.get("study", ())),
        sql=tuple(parts.get("sql", ())),
        manifest_entries=tuple(manifest),
        stored=stored,
    )


def names_nothing_new(given: Selection, stored: Iterable[tuple[str, str, str]]) -> bool:
    """Whether every value this run names is already in the mirror's selection (the state's
    (part, value, origin) rows). Identifiers count as new: what each one is recognised as
    is known only once the index is read."""
    if given.identifiers:
        return False
    held = {(part, value) for part, value, _origin in stored}
    return all((part, value) in held for part, value, _origin in given.entries())


def merged(given: Selection, held: Selection) -> Selection:
    """This run's selection together with the mirror's own (``held``): what a plan resolves
    when the run does not prune. Values this run names itself count as given."""

    def union(first: tuple[str, ...], second: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(dict.fromkeys((*first, *second)))

    named: set[tuple[str, str]] = {(part, value) for part, value, _origin in given.entries()}
    named |= {("identifier", value) for value in given.identifiers}
    seen = {manifest_key(entry) for entry in given.manifest_entries}
    manifest = given.manifest_entries + tuple(
        entry for entry in held.manifest_entries if manifest_key(entry) not in seen
    )
    return replace(
        given,
        collections=union(given.collections, held.collections),
        series=union(given.series, held.series),
        patient_ids=union(given.patient_ids, held.patient_ids),
        study_instance_uids=union(given.study_instance_uids, held.study_instance_uids),
        sql=union(given.sql, held.sql),
        manifest_entries=manifest,
        stored={key: origin for key, origin in held.stored.items() if key not in named},
    )
