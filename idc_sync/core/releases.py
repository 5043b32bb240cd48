"""The difference between the mirror and what the installed IDC release selects, per
collection: series added, revised (same SeriesInstanceUID, new crdc_series_uuid), retired,
and unchanged. Pure bookkeeping; sync.plan feeds it rows from the catalog and the queue."""

from __future__ import annotations

from dataclasses import dataclass, field

from idc_sync.core.lifecycle import SeriesState
from idc_sync.core.model import SeriesRecord, SeriesRow


@dataclass(slots=True)
class CollectionDifference:
    added_series: int = 0
    added_bytes: int = 0
    revised_series: int = 0
    revised_bytes: int = 0
    retired_series: int = 0
    retired_bytes: int = 0
    unchanged_series: int = 0
    unfinished_series: int = 0  # known, not complete yet: finished by the next sync


@dataclass(slots=True)
class PlanDifference:
    collections: dict[str, CollectionDifference] = field(default_factory=dict)

    def _of(self, collection_id: str) -> CollectionDifference:
        return self.collections.setdefault(collection_id, CollectionDifference())

    def selected(self, record: SeriesRecord, known: SeriesRow | None, uid_held: bool) -> None:
        """Account for one selected series: ``known`` is the queue's row for the same
        crdc_series_uuid, ``uid_held`` whether the mirror holds another version of it."""
        diff = self._of(record.collection_id)
        size = record.series_size_bytes or 0
        if known is None or known.state in (SeriesState.RETIRED, SeriesState.RETIRING):
            if uid_held:
                diff.revised_series += 1
                diff.revised_bytes += size
            else:
                diff.added_series += 1
                diff.added_bytes += size
        elif known.state is SeriesState.COMPLETE:
            diff.unchanged_series += 1
        else:
            diff.unfinished_series += 1

    def retired(self, collection_id: str, bytes_held: int) -> None:
        diff = self._of(collection_id)
        diff.retired_series += 1
        diff.retired_bytes += bytes_held

    @property
    def total(self) -> CollectionDifference:
        total = CollectionDifference()
        for diff in self.collections.values():
            for name in total.__dataclass_fields__:
                setattr(total, name, getattr(total, name) + getattr(diff, name))
        return total
