"""Plain data shared between the pure core and the edges: what a selected series is,
what a listing says about an object. No I/O here."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from idc_sync.core.lifecycle import ObjectState, SeriesState

Source = Literal["aws", "gcs"]

# The bucket column of the IDC index is authoritative; each AWS bucket has one GCS twin.
AWS_TO_GCS_BUCKET: Mapping[str, str] = {
    "idc-open-data": "idc-open-data",
    "idc-open-data-cr": "idc-open-cr",
    "idc-open-data-two": "idc-open-idc1",
}


@dataclass(frozen=True, slots=True)
class SeriesRecord:
    """One selected series as the installed IDC release describes it.

    ``instance_count`` and ``series_size_bytes`` are None only for series resolved from
    ``prior_versions_index`` (earlier releases), which does not carry an instance count.
    ``instances`` is None for a whole series, or the set of crdc_instance_uuids when a
    manifest named single instances.
    """

    crdc_series_uuid: str
    SeriesInstanceUID: str
    collection_id: str
    aws_bucket: str
    license_short_name: str | None
    source_DOI: str | None
    instance_count: int | None
    series_size_bytes: int | None
    idc_version: int
    layout_values: Mapping[str, object] = field(default_factory=dict)
    instances: frozenset[str] | None = None


@dataclass(frozen=True, slots=True)
class UnknownSelection:
    """A selection entry the installed release does not have: reported, never dropped silently.

    ``removed_after`` is the last IDC release that had it, when ``prior_versions_index`` knows
    it (removed from IDC, not a typo); ``suggestions`` are the closest names the release has;
    ``given``: this run named the value itself, so a typo here stops the run; False for an
    entry only the mirror's own selection holds and for a value a selection query returned."""

    kind: Literal[
        "collection",
        "series",
        "crdc_series_uuid",
        "crdc_instance_uuid",
        "patient",
        "study",
        "identifier",
    ]
    value: str
    origin: str  # "--collection", "config.toml", "manifest.txt:12", ...
    removed_after: int | None = None
    suggestions: tuple[str, ...] = ()
    given: bool = True

    def describe(self) -> str:
        """'unknown collection 'prostat_3t' (--collection); did you mean 'prostate_3t'?'"""
        what = UNKNOWN_KIND_NAMES[self.kind]
        if self.removed_after is not None:
            text = (
                f"{what} {self.value!r} ({self.origin}) was removed from IDC after release "
                f"v{self.removed_after}"
            )
        elif self.kind == "identifier":
            text = (
                f"{self.value!r} ({self.origin}) is no collection_id, PatientID, "
                "StudyInstanceUID, SeriesInstanceUID or crdc_series_uuid of IDC"
            )
        else:
            text = f"unknown {what} {self.value!r} ({self.origin})"
        if self.suggestions:
            quoted = [repr(s) for s in self.suggestions]
            last = quoted.pop()
            text += f"; did you mean {', '.join(quoted) + ' or ' if quoted else ''}{last}?"
        return text


UNKNOWN_KIND_NAMES: Mapping[str, str] = {
    "collection": "collection",
    "series": "SeriesInstanceUID",
    "crdc_series_uuid": "crdc_series_uuid",
    "crdc_instance_uuid": "crdc_instance_uuid",
    "patient": "PatientID",
    "study": "StudyInstanceUID",
    "identifier": "identifier",
}


@dataclass(frozen=True, slots=True)
class ManifestEntry:
    """One line of a manifest: a whole series prefix or a single instance."""

    bucket: str
    crdc_series_uuid: str
    crdc_instance_uuid: str | None
    origin: str  # "path:line"


@dataclass(frozen=True, slots=True)
class ListedObject:
    """One object as ListObjectsV2 reported it."""

    key: str
    size: int
    etag: str  # without quotes
    # A full-object checksum S3 stores for it (ListObjectsV2 ChecksumAlgorithm with
    # ChecksumType FULL_OBJECT): "CRC64NVME", "CRC32C", "CRC32" or "SHA256"; None if none.
    checksum_algorithm: str | None = None


# -- what the queue holds ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SeriesPlacement:
    """A selected series and where its files go."""

    record: SeriesRecord
    root: Path
    rel_dir: str


@dataclass(frozen=True, slots=True)
class SeriesRow:
    """A series as the queue holds it."""

    crdc_series_uuid: str
    SeriesInstanceUID: str
    collection_id: str
    aws_bucket: str
    license_short_name: str | None
    source_DOI: str | None
    instance_count: int | None
    series_size_bytes: int | None
    idc_version: int
    root: Path
    rel_dir: str
    instances: frozenset[str] | None
    state: SeriesState
    attempts: int
    last_error: str | None

    @property
    def directory(self) -> Path:
        return self.root / self.rel_dir


@dataclass(frozen=True, slots=True)
class ObjectRow:
    """An object found by listing a series, and what we know of its local copy."""

    key: str
    crdc_series_uuid: str
    size: int
    etag: str
    path: Path
    state: ObjectState = ObjectState.PENDING
    attempts: int = 0
    last_error: str | None = None
    # where retirement put this object's file (a series selected again restores from here)
    retired_path: Path | None = None


@dataclass(frozen=True, slots=True)
class ObjectResult:
    """The outcome of one object, written with others in one transaction. ``state`` None:
    the attempt changed no state (the run stopped under it); only attempts and reason."""

    key: str
    state: ObjectState | None
    attempts: int
    last_error: str | None = None
    checksum_kind: str | None = None
    checksum: str | None = None


@dataclass(frozen=True, slots=True)
class SeriesTally:
    files_done: int
    bytes_done: int
    listed: int
    by_state: dict[ObjectState, int]


@dataclass(frozen=True, slots=True)
class CollectionStatus:
    collection_id: str
    series_total: int
    series_complete: int
    files_expected: int
    files_done: int
    bytes_expected: int
    bytes_done: int
    files_failed: int
    files_quarantined: int
    series_failed: int


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing that is not verified, and why."""

    collection_id: str
    crdc_series_uuid: str
    key: str | None
    state: str
    reason: str | None


@dataclass(frozen=True, slots=True)
class DoneObject:
    """An object recorded as verified, with the checksum it was verified against."""

    key: str
    crdc_series_uuid: str
    size: int
    etag: str
    path: Path
    checksum_kind: str | None
    checksum: str | None


@dataclass(frozen=True, slots=True)
class RetryCounts:
    """What ``retry-failed`` put back in the queue."""

    objects_quarantined: int
    objects_failed: int
    series: int


@dataclass(frozen=True, slots=True)
class RetiringFile:
    """A verified file of a series that leaves the mirror, and where the retirement journal
    says it goes (None: not journalled yet, or nothing to move it to)."""

    key: str
    path: Path
    retired_path: Path | None
    size: int
