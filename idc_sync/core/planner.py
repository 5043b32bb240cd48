"""Planning: decide for each selected series whether it is mirrored and where its files go.
Pure: series records and settings in, placements out."""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from idc_sync.core.layout import render_series_dir
from idc_sync.core.model import SeriesPlacement, SeriesRecord
from idc_sync.core.policy import LicensePolicy


@dataclass(frozen=True, slots=True)
class Layout:
    """How series map to directories: the template, the index columns it may use, roots."""

    template: str
    known_columns: Collection[str]
    default_root: Path
    policy: LicensePolicy


@dataclass(slots=True)
class PlanTally:
    """Running totals of a plan, kept while streaming so memory stays flat."""

    series: int = 0
    files: int = 0
    bytes: int = 0
    excluded_series: int = 0
    excluded_bytes: int = 0
    excluded_by_license: dict[str, int] = field(default_factory=dict)


def place(record: SeriesRecord, layout: Layout) -> SeriesPlacement | str:
    """Where ``record`` goes, or the reason it is excluded."""
    decision = layout.policy.decide(record.license_short_name, layout.default_root)
    if not decision.admitted:
        return decision.reason or f"license {record.license_short_name!r} is excluded"
    rel_dir = render_series_dir(layout.template, record.layout_values, layout.known_columns)
    return SeriesPlacement(record=record, root=decision.root, rel_dir=rel_dir.as_posix())


def place_batch(
    records: Iterable[SeriesRecord], layout: Layout, tally: PlanTally
) -> list[SeriesPlacement]:
    placements: list[SeriesPlacement] = []
    for record in records:
        placed = place(record, layout)
        if isinstance(placed, str):
            tally.excluded_series += 1
            tally.excluded_bytes += record.series_size_bytes or 0
            name = record.license_short_name or "(no license)"
            tally.excluded_by_license[name] = tally.excluded_by_license.get(name, 0) + 1
            continue
        tally.series += 1
        tally.files += (
            len(record.instances) if record.instances is not None else record.instance_count or 0
        )
        tally.bytes += record.series_size_bytes or 0
        placements.append(placed)
    return placements
