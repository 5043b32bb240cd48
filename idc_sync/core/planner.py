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


# -- series that leave the mirror ----------------------------------------------------------

# Why a series the plan did not select leaves: IDC removed it, IDC revised it into a new
# crdc_series_uuid, or it is still in IDC but no longer selected (retired only on --prune).
REMOVED, REVISED, UNSELECTED = "removed", "revised", "unselected"
RETIRED_BY_IDC = frozenset({REMOVED, REVISED})


def leaving_reason(uuid_in_release: bool, uid_in_release: bool) -> str:
    """Why an unselected series leaves, from what the current release still has of it."""
    if uuid_in_release:
        return UNSELECTED
    return REVISED if uid_in_release else REMOVED


@dataclass(frozen=True, slots=True)
class Leaving:
    """What the series that leave for one reason hold."""

    series: int
    files: int
    bytes: int


def retiring(leaving: dict[str, Leaving], *, prune: bool) -> dict[str, Leaving]:
    """The part of ``leaving`` this run retires: IDC's removals and revisions always, the
    series that left the selection only when it prunes."""
    return {
        reason: held
        for reason, held in leaving.items()
        if reason in RETIRED_BY_IDC or (prune and reason == UNSELECTED)
    }


def retire_guard(
    leaving: dict[str, Leaving],
    verified_files: int,
    *,
    prune: bool,
    policy: str,
    max_fraction: float,
) -> str | None:
    """Why this plan must not go ahead without ``--allow-retire``, or None.

    A plan may not retire more than ``max_fraction`` of the mirror's verified files because
    they left the selection, or for any reason when retired files are deleted. Retirement
    that IDC's own releases cause under "move" or "keep" loses nothing and is not held back."""
    counted = {
        reason: held
        for reason, held in retiring(leaving, prune=prune).items()
        if reason == UNSELECTED or policy == "delete"
    }
    files = sum(held.files for held in counted.values())
    if not files or verified_files <= 0 or files <= max_fraction * verified_files:
        return None
    why = ", ".join(
        f"{held.series:,} series {_REASON_WORDS[reason]}"
        for reason, held in sorted(counted.items())
    )
    verb = "delete" if policy == "delete" else "retire"
    return (
        f"this plan would {verb} {files:,} of the mirror's {verified_files:,} verified files "
        f"({files / verified_files:.0%}; {why}), more than max_retire_fraction "
        f"{max_fraction:.0%}; nothing was moved. Check the selection, or give --allow-retire "
        "(allow_retire = true) to go ahead"
    )


_REASON_WORDS = {
    REMOVED: "removed from IDC",
    REVISED: "revised by IDC",
    UNSELECTED: "no longer selected",
}
