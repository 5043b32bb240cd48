"""Tests of idc_sync.core.lifecycle: the tables of allowed moves for series and objects, and the
verdict that calls a series complete only when it matches the IDC index exactly."""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import TypeVar

import pytest

from idc_sync.core.errors import IllegalMove
from idc_sync.core.lifecycle import (
    OBJECT_TRANSITIONS,
    SERIES_TRANSITIONS,
    ObjectState,
    SeriesExpectation,
    SeriesState,
    can_move,
    edges,
    require_move,
    series_verdict,
)

# qin_pet_phantom series d98abc9a-0ddd-44a3-8646-df10344c49d7: 81 files, 4.761722 MB
QIN = SeriesExpectation(instance_count=81, series_size_bytes=4_761_722)

S = TypeVar("S", bound=StrEnum)


def reachable(table: Mapping[S, frozenset[S]], start: S) -> set[S]:
    seen, frontier = {start}, [start]
    while frontier:
        for following in table.get(frontier.pop(), frozenset()):
            if following not in seen:
                seen.add(following)
                frontier.append(following)
    return seen


# -- transition tables ------------------------------------------------------------------


def test_every_state_has_a_row_in_its_table() -> None:
    assert set(SERIES_TRANSITIONS) == set(SeriesState)
    assert set(OBJECT_TRANSITIONS) == set(ObjectState)


def test_every_series_state_is_reachable_from_queued_and_leads_back_to_it() -> None:
    assert reachable(SERIES_TRANSITIONS, SeriesState.QUEUED) == set(SeriesState)
    for state in set(SeriesState) - {SeriesState.QUEUED}:
        assert SeriesState.QUEUED in reachable(SERIES_TRANSITIONS, state)


def test_every_object_state_is_reachable_from_pending_and_leads_back_to_it() -> None:
    assert reachable(OBJECT_TRANSITIONS, ObjectState.PENDING) == set(ObjectState)
    for state in set(ObjectState) - {ObjectState.PENDING}:
        assert ObjectState.PENDING in reachable(OBJECT_TRANSITIONS, state)


def test_a_series_is_judged_only_by_the_worker_that_leased_it() -> None:
    judged = {SeriesState.COMPLETE, SeriesState.INCOMPLETE, SeriesState.FAILED}
    for state in judged:
        assert not can_move(SERIES_TRANSITIONS, SeriesState.QUEUED, state)
        assert can_move(SERIES_TRANSITIONS, SeriesState.LEASED, state)
        # a judged series goes back to the queue before it is worked again, or leaves
        assert SERIES_TRANSITIONS[state] == frozenset(
            {SeriesState.QUEUED, SeriesState.RETIRING, SeriesState.RETIRED}
        )
    # a crashed worker's expired lease is taken over directly
    assert can_move(SERIES_TRANSITIONS, SeriesState.LEASED, SeriesState.LEASED)


def test_a_verified_object_is_never_quarantined_or_refused_directly() -> None:
    assert OBJECT_TRANSITIONS[ObjectState.DONE] == frozenset(
        {ObjectState.PENDING, ObjectState.RETIRED}
    )
    for state in (ObjectState.QUARANTINED, ObjectState.REFUSED, ObjectState.FAILED):
        assert not can_move(OBJECT_TRANSITIONS, ObjectState.DONE, state)


def test_quarantined_and_refused_objects_leave_only_by_an_operator_reset() -> None:
    for state in (ObjectState.QUARANTINED, ObjectState.REFUSED):
        # or with their series, when it leaves the mirror
        assert OBJECT_TRANSITIONS[state] == frozenset({ObjectState.PENDING, ObjectState.RETIRED})
    # a refused key (unsafe name, colliding path) is decided by the listing, not a fetch
    assert not can_move(OBJECT_TRANSITIONS, ObjectState.FAILED, ObjectState.REFUSED)


@pytest.mark.parametrize(
    ("old", "new"),
    [
        # requeue_unfinished: every selected, unfinished series gets another go
        (SeriesState.LEASED, SeriesState.QUEUED),
        (SeriesState.INCOMPLETE, SeriesState.QUEUED),
        (SeriesState.FAILED, SeriesState.QUEUED),
    ],
)
def test_the_queues_requeue_moves_series_along_the_table(
    old: SeriesState, new: SeriesState
) -> None:
    assert can_move(SERIES_TRANSITIONS, old, new)


def test_the_queues_retry_moves_objects_along_the_table() -> None:
    assert can_move(OBJECT_TRANSITIONS, ObjectState.FAILED, ObjectState.PENDING)
    assert can_move(OBJECT_TRANSITIONS, ObjectState.FAILED, ObjectState.DONE)
    assert not can_move(OBJECT_TRANSITIONS, ObjectState.PENDING, ObjectState.PENDING)


# -- series verdict ---------------------------------------------------------------------


def test_exact_count_and_bytes_is_complete() -> None:
    verdict = series_verdict(QIN, files_done=81, bytes_done=4_761_722, listed=81, unfinished={})
    assert verdict.state is SeriesState.COMPLETE
    assert verdict.reason is None


def test_one_file_short_is_incomplete_and_says_by_how_much() -> None:
    verdict = series_verdict(QIN, 80, 4_761_722 - 58_786, 81, {"pending": 1})
    assert verdict.state is SeriesState.INCOMPLETE
    assert verdict.reason is not None
    assert "1 pending" in verdict.reason
    assert "80 of 81 files verified" in verdict.reason
    assert "short by 58786" in verdict.reason
    assert "listing has" not in verdict.reason  # the bucket had all 81


def test_right_count_wrong_bytes_is_incomplete() -> None:
    verdict = series_verdict(QIN, 81, 4_761_724, 81, {})
    assert verdict.state is SeriesState.INCOMPLETE
    assert verdict.reason == "4761724 of 4761722 bytes verified (over by 2)"


def test_right_bytes_wrong_count_is_incomplete() -> None:
    verdict = series_verdict(QIN, 82, 4_761_722, 82, {})
    assert verdict.state is SeriesState.INCOMPLETE
    assert verdict.reason is not None
    assert "82 of 81 files verified" in verdict.reason
    assert "listing has 82 objects, index says 81" in verdict.reason


def test_a_short_listing_is_reported_as_such() -> None:
    verdict = series_verdict(QIN, 79, 4_761_722 - 2 * 58_786, 79, {})
    assert verdict.state is SeriesState.INCOMPLETE
    assert verdict.reason is not None
    assert "listing has 79 objects, index says 81" in verdict.reason


def test_unfinished_objects_alone_make_a_series_incomplete() -> None:
    # counts and bytes can agree by accident (an extra object listed); states still count
    verdict = series_verdict(QIN, 81, 4_761_722, 83, {"quarantined": 1, "failed": 1})
    assert verdict.state is SeriesState.INCOMPLETE
    assert verdict.reason == "1 failed, 1 quarantined"


def test_instance_subset_is_judged_by_its_instances_not_the_whole_series() -> None:
    subset = SeriesExpectation(
        instance_count=81,
        series_size_bytes=4_761_722,
        instances=frozenset(
            {"1b4bd5c4-5c0e-4f6a-8a36-0f9f8c7a0b01", "6a9f0c1e-2d3b-4c5d-8e7f-9a0b1c2d3e4f"}
        ),
    )
    complete = series_verdict(subset, files_done=2, bytes_done=117_572, listed=2, unfinished={})
    assert complete.state is SeriesState.COMPLETE
    short = series_verdict(subset, 1, 58_786, 1, {}, instances_missing_from_listing=1)
    assert short.state is SeriesState.INCOMPLETE
    assert short.reason is not None
    assert "1 selected instances not in the bucket" in short.reason
    assert "1 of 2 files verified" in short.reason
    assert "bytes" not in short.reason  # the index has no byte count for a subset


def test_without_expectations_only_unfinished_objects_count() -> None:
    # a series known only from prior_versions_index: no instance count, no size
    unknown = SeriesExpectation(instance_count=None, series_size_bytes=None)
    assert series_verdict(unknown, 12, 5_000_000, 12, {}).state is SeriesState.COMPLETE
    failed = series_verdict(unknown, 11, 4_500_000, 12, {"failed": 1})
    assert failed.state is SeriesState.INCOMPLETE
    assert failed.reason == "1 failed"


def test_without_expectations_an_empty_listing_is_not_complete() -> None:
    unknown = SeriesExpectation(instance_count=None, series_size_bytes=None)
    verdict = series_verdict(unknown, 0, 0, 0, {})
    assert verdict.state is SeriesState.INCOMPLETE
    assert verdict.reason is not None
    assert "no objects" in verdict.reason


def test_only_a_count_is_checked_when_the_size_is_unknown() -> None:
    count_only = SeriesExpectation(instance_count=81, series_size_bytes=None)
    assert series_verdict(count_only, 81, 1, 81, {}).state is SeriesState.COMPLETE
    assert series_verdict(count_only, 80, 1, 80, {}).state is SeriesState.INCOMPLETE


def test_a_retiring_series_either_finishes_or_is_selected_again() -> None:
    assert SERIES_TRANSITIONS[SeriesState.RETIRING] == frozenset(
        {SeriesState.RETIRED, SeriesState.QUEUED}
    )
    # nobody works on a series that is leaving
    assert not can_move(SERIES_TRANSITIONS, SeriesState.RETIRING, SeriesState.LEASED)
    # a retired object comes back only through a listing (then it is restored or fetched)
    assert OBJECT_TRANSITIONS[ObjectState.RETIRED] == frozenset({ObjectState.PENDING})


def test_require_move_names_the_forbidden_edge() -> None:
    assert require_move(OBJECT_TRANSITIONS, ObjectState.PENDING, ObjectState.DONE) is (
        ObjectState.DONE
    )
    with pytest.raises(IllegalMove, match="done -> refused"):
        require_move(OBJECT_TRANSITIONS, ObjectState.DONE, ObjectState.REFUSED)
    with pytest.raises(IllegalMove, match="pending -> pending"):
        require_move(OBJECT_TRANSITIONS, ObjectState.PENDING, ObjectState.PENDING)
    assert (SeriesState.LEASED, SeriesState.LEASED) in edges(SERIES_TRANSITIONS)
