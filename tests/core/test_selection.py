"""The selection a run resolves: comma-separated values, where each value came from, and
how this run's selection adds to the mirror's own (or, pruning, replaces it). Pure."""

from __future__ import annotations

import pytest

from idc_sync.core.errors import SelectionError
from idc_sync.core.model import ManifestEntry
from idc_sync.core.selection import (
    Selection,
    merged,
    names_nothing_new,
    split_values,
    stored_selection,
)
from idc_sync.run.plan import compose

UUID = "d98abc9a-0ddd-44a3-8646-df10344c49d7"
INSTANCE = "0a1b2c3d-0000-4000-8000-000000000001"


def test_values_split_on_commas_as_idc_download_takes_them() -> None:
    assert split_values(["a,b", " c ", "b", ",,", "d,"]) == ("a", "b", "c", "d")


def test_a_value_of_this_run_names_its_flag_and_a_held_one_the_mirror() -> None:
    held = stored_selection([
        ("collection", "rider_pilot", "--collection"),
        ("crdc_instance_uuid", f"{UUID}/{INSTANCE}", "cohort.txt:3"),
    ])  # fmt: skip
    given = Selection(collections=("qin_pet_phantom",), origins={"collection": "config.toml"})
    both = merged(given, held)
    assert both.collections == ("qin_pet_phantom", "rider_pilot")
    assert both.origin("collection", "qin_pet_phantom") == "config.toml"
    assert both.origin("collection", "rider_pilot") == "the mirror's selection, from --collection"
    assert not both.given("collection", "rider_pilot")
    assert both.manifest_entries == (ManifestEntry("", UUID, INSTANCE, "cohort.txt:3"),)
    # only this run's own values are kept again
    assert both.entries() == [("collection", "qin_pet_phantom", "config.toml")]


def test_a_value_given_again_counts_as_given() -> None:
    held = stored_selection([("series", UUID, "--series")])
    both = merged(Selection(series=(UUID,)), held)
    assert both.series == (UUID,)
    assert both.given("series", UUID)
    assert both.entries() == [("series", UUID, "--series")]


def test_a_run_names_nothing_new_only_with_values_the_mirror_holds_and_no_identifier() -> None:
    held = [
        ("collection", "rider_pilot", "--collection"),
        ("crdc_instance_uuid", f"{UUID}/{INSTANCE}", "cohort.txt:3"),
    ]
    assert names_nothing_new(Selection(), held)
    assert names_nothing_new(Selection(collections=("rider_pilot",)), held)
    manifest = (ManifestEntry("", UUID, INSTANCE, "other.txt:1"),)
    assert names_nothing_new(Selection(manifest_entries=manifest), held)
    assert not names_nothing_new(Selection(collections=("rider_pilot", "lidc_idri")), held)
    assert not names_nothing_new(Selection(series=(UUID,)), held)
    # what an identifier names is known only from the index
    assert not names_nothing_new(Selection(identifiers=("rider_pilot",)), held)


def test_a_pruning_run_resolves_only_its_own_selection_and_must_have_one() -> None:
    held = [("collection", "rider_pilot", "--collection")]
    given = Selection(series=(UUID,))
    assert compose(given, held, prune=True) is given
    assert compose(given, held, prune=False).collections == ("rider_pilot",)
    with pytest.raises(SelectionError, match="would retire the whole mirror"):
        compose(Selection(), held, prune=True)
    with pytest.raises(SelectionError, match="nothing is selected"):
        compose(Selection(), [], prune=False)
    # no selection given: the mirror's own is synced again
    assert compose(Selection(), held, prune=False).collections == ("rider_pilot",)
