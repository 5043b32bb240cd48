"""Tests of idc_sync.core.planner over real rows of the installed IDC index: where each series
goes, which ones the license policy keeps out, and the plan's running totals."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from idc_sync.core.errors import ConfigurationError
from idc_sync.core.layout import DEFAULT_TEMPLATE
from idc_sync.core.model import SeriesPlacement, SeriesRecord
from idc_sync.core.planner import Layout, PlanTally, place, place_batch
from idc_sync.core.policy import LicensePolicy
from tests.support.dataset import real_series, series_size_bytes

ROOT = Path("/srv/idc")
NC_ROOT = Path("/srv/idc-nc")
NO_NC = LicensePolicy(exclude=("CC BY-NC*",))
NC_APART = LicensePolicy(destinations=(("CC BY-NC*", NC_ROOT),))


def record(row: Mapping[str, Any]) -> SeriesRecord:
    """A series as the catalog hands it to the planner, from one row of the index."""
    return SeriesRecord(
        crdc_series_uuid=row["crdc_series_uuid"],
        SeriesInstanceUID=row["SeriesInstanceUID"],
        collection_id=row["collection_id"],
        aws_bucket=row["aws_bucket"],
        license_short_name=row["license_short_name"],
        source_DOI=row["source_DOI"],
        instance_count=int(row["instanceCount"]),
        series_size_bytes=series_size_bytes(row),
        idc_version=25,
        layout_values=dict(row),
    )


@pytest.fixture(scope="module")
def qin() -> list[SeriesRecord]:
    """The whole qin_pet_phantom collection (CC BY 3.0): 44 series, 2,816 files, 246.3 MB."""
    return [record(row) for row in real_series("qin_pet_phantom", limit=100)]


# Two CC BY-NC rows of the index: license alone does not decide the bucket.
NC_ROWS: list[dict[str, Any]] = [
    {
        "crdc_series_uuid": "f1ddb2d8-be1f-42f6-886e-aae6c28b7a7a",
        "SeriesInstanceUID": "1.2.826.0.1.3680043.10.474.419639.124425916395023519732300401216",
        "StudyInstanceUID": "1.2.826.0.1.3680043.10.474.419639.308001698749343203220476450477",
        "PatientID": "MIDRC-RICORD-1A-419639-000421",
        "Modality": "CT",
        "collection_id": "midrc_ricord_1a",
        "aws_bucket": "idc-open-data-cr",
        "license_short_name": "CC BY-NC 4.0",
        "source_DOI": "10.7937/vtw4-x588",
        "instanceCount": 2,
        "series_size_MB": 0.77288,
    },
    {
        "crdc_series_uuid": "a41dff25-998a-4210-8793-72183879b1d3",
        "SeriesInstanceUID": "1.2.840.113704.1.111.5160.1186592380.67",
        "StudyInstanceUID": "1.2.840.113704.1.111.3420.1186591229.6",
        "PatientID": "NoduleLayout_1",
        "Modality": "CT",
        "collection_id": "phantom_fda",
        "aws_bucket": "idc-open-data",
        "license_short_name": "CC BY-NC 3.0",
        "source_DOI": "10.7937/k9/tcia.2015.orbjkmux",
        "instanceCount": 36,
        "series_size_MB": 19.261864,
    },
]


@pytest.fixture(scope="module")
def nc() -> list[SeriesRecord]:
    return [record(row) for row in NC_ROWS]


@pytest.fixture(scope="module")
def columns(qin: list[SeriesRecord]) -> frozenset[str]:
    """Every column of the index table, as the catalog reports them."""
    return frozenset(qin[0].layout_values)


def layout(
    columns: frozenset[str], policy: LicensePolicy, template: str = DEFAULT_TEMPLATE
) -> Layout:
    return Layout(template=template, known_columns=columns, default_root=ROOT, policy=policy)


def test_the_real_rows_are_the_ones_these_tests_rely_on(
    qin: list[SeriesRecord], nc: list[SeriesRecord]
) -> None:
    assert len(qin) == 44
    assert {r.license_short_name for r in qin} == {"CC BY 3.0"}
    assert [r.aws_bucket for r in nc] == ["idc-open-data-cr", "idc-open-data"]
    assert all(r.license_short_name and r.license_short_name.startswith("CC BY-NC") for r in nc)


def test_an_admitted_series_goes_under_the_idc_index_layout(
    qin: list[SeriesRecord], columns: frozenset[str]
) -> None:
    [series] = [r for r in qin if r.crdc_series_uuid == "d98abc9a-0ddd-44a3-8646-df10344c49d7"]
    placed = place(series, layout(columns, NO_NC))
    assert isinstance(placed, SeriesPlacement)
    assert placed.record is series
    assert placed.root == ROOT
    assert placed.rel_dir == (
        "qin_pet_phantom/QIN-PET-Phantom-UI-01/"
        "1.3.12.2.1107.5.1.4.1001.30000013072312595670300000021/"
        "PT_1.2.826.0.1.3417726.3.140464.20131001150949437"
    )


def test_an_excluded_series_gets_a_reason_naming_license_and_pattern(
    nc: list[SeriesRecord], columns: frozenset[str]
) -> None:
    for series in nc:
        placed = place(series, layout(columns, NO_NC))
        assert isinstance(placed, str)
        assert repr(series.license_short_name) in placed
        assert "'CC BY-NC*'" in placed


def test_destinations_put_nc_series_under_their_own_root_in_the_same_layout(
    qin: list[SeriesRecord], nc: list[SeriesRecord], columns: frozenset[str]
) -> None:
    plan = layout(columns, NC_APART)
    for series in nc:
        placed = place(series, plan)
        assert isinstance(placed, SeriesPlacement)
        assert placed.root == NC_ROOT
        assert placed.rel_dir.startswith(f"{series.collection_id}/")
        assert placed.rel_dir.endswith(f"_{series.SeriesInstanceUID}")
    assert all(
        isinstance(p := place(series, plan), SeriesPlacement) and p.root == ROOT for series in qin
    )


def test_place_batch_keeps_admitted_series_in_order_and_tallies_both_sides(
    qin: list[SeriesRecord], nc: list[SeriesRecord], columns: frozenset[str]
) -> None:
    records = [nc[0], *qin[:20], nc[1], *qin[20:]]
    tally = PlanTally()
    placements = place_batch(records, layout(columns, NO_NC), tally)

    assert [p.record for p in placements] == qin
    # qin_pet_phantom as the IDC index describes it (idc-index-data 25.0.5)
    assert (tally.series, tally.files, tally.bytes) == (44, 2816, 246_305_000)
    assert tally.excluded_series == 2
    assert tally.excluded_bytes == sum(r.series_size_bytes or 0 for r in nc)
    assert sum(tally.excluded_by_license.values()) == 2
    assert set(tally.excluded_by_license) == {r.license_short_name for r in nc}


def test_a_tally_accumulates_over_batches(
    qin: list[SeriesRecord], nc: list[SeriesRecord], columns: frozenset[str]
) -> None:
    plan = layout(columns, NO_NC)
    streamed = PlanTally()
    for start in range(0, len(qin), 10):
        place_batch(qin[start : start + 10], plan, streamed)
    place_batch(nc, plan, streamed)
    at_once = PlanTally()
    place_batch([*qin, *nc], plan, at_once)
    assert streamed == at_once
    assert streamed.series == 44


def test_an_instance_subset_counts_its_instances_not_the_whole_series(
    qin: list[SeriesRecord], columns: frozenset[str]
) -> None:
    subset = dataclasses.replace(
        qin[0],
        instances=frozenset(
            {"1b4bd5c4-5c0e-4f6a-8a36-0f9f8c7a0b01", "6a9f0c1e-2d3b-4c5d-8e7f-9a0b1c2d3e4f"}
        ),
    )
    tally = PlanTally()
    [placed] = place_batch([subset], layout(columns, NO_NC), tally)
    assert placed.record.instances == subset.instances
    assert tally.files == 2


def test_a_series_without_license_is_excluded_by_an_include_list(
    qin: list[SeriesRecord], columns: frozenset[str]
) -> None:
    # series resolved from prior_versions_index carry no license or counts
    earlier = dataclasses.replace(
        qin[0], license_short_name=None, instance_count=None, series_size_bytes=None
    )
    tally = PlanTally()
    only_cc_by = LicensePolicy(include=("CC BY*",))
    assert place_batch([earlier], layout(columns, only_cc_by), tally) == []
    assert tally.excluded_by_license == {"(no license)": 1}
    assert (tally.excluded_series, tally.excluded_bytes) == (1, 0)
    admitted = PlanTally()
    assert len(place_batch([earlier], layout(columns, NO_NC), admitted)) == 1
    assert (admitted.series, admitted.files, admitted.bytes) == (1, 0, 0)


def test_a_template_naming_an_unknown_column_is_a_configuration_error(
    qin: list[SeriesRecord], columns: frozenset[str]
) -> None:
    with pytest.raises(ConfigurationError, match="PatientName"):
        place(qin[0], layout(columns, NO_NC, "%collection_id/%PatientName"))


def test_a_flat_template_puts_every_series_in_the_root(
    qin: list[SeriesRecord], columns: frozenset[str]
) -> None:
    placed = place(qin[0], layout(columns, NO_NC, ""))
    assert isinstance(placed, SeriesPlacement)
    assert placed.rel_dir == "."


# -- series that leave, and the guard on mass retirement --------------------------------


def test_why_a_series_leaves_follows_what_the_release_still_has() -> None:
    from idc_sync.core.planner import REMOVED, REVISED, UNSELECTED, leaving_reason

    assert leaving_reason(uuid_in_release=True, uid_in_release=True) == UNSELECTED
    assert leaving_reason(uuid_in_release=False, uid_in_release=True) == REVISED
    assert leaving_reason(uuid_in_release=False, uid_in_release=False) == REMOVED


def test_idc_retires_by_itself_and_a_selection_only_when_pruning() -> None:
    from idc_sync.core.planner import Leaving, retiring

    leaving = {"removed": Leaving(1, 3, 30), "unselected": Leaving(2, 20, 200)}
    assert retiring(leaving, prune=False) == {"removed": Leaving(1, 3, 30)}
    assert retiring(leaving, prune=True) == leaving


@pytest.mark.parametrize(
    ("policy", "prune", "leaving", "refused"),
    [
        # 30 of 100 files left the selection: over 25%, refused when pruning
        ("move", True, {"unselected": (3, 30)}, True),
        ("move", False, {"unselected": (3, 30)}, False),  # nothing retires without --prune
        ("move", True, {"unselected": (2, 25)}, False),  # exactly the limit is allowed
        # IDC's own removals and revisions lose nothing under "move" and "keep"
        ("move", True, {"removed": (5, 60), "revised": (1, 10)}, False),
        ("keep", False, {"removed": (5, 60)}, False),
        # but with "delete", every reason counts
        ("delete", False, {"removed": (5, 60)}, True),
        ("delete", True, {"revised": (1, 10), "unselected": (1, 10)}, False),
    ],
)
def test_the_guard_holds_back_mass_retirement(
    policy: str, prune: bool, leaving: dict[str, tuple[int, int]], refused: bool
) -> None:
    from idc_sync.core.planner import Leaving, retire_guard

    held = {reason: Leaving(series, files, files * 1000) for reason, (series, files) in
            leaving.items()}  # fmt: skip
    message = retire_guard(held, 100, prune=prune, policy=policy, max_fraction=0.25)
    assert (message is not None) == refused
    if message is not None:
        assert "of the mirror's 100 verified files" in message
        assert "--allow-retire" in message
