"""The life of a series and of an object in the queue, as one table of allowed moves,
and the verdict that decides whether a series is complete. Pure: no I/O."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import TypeVar

from idc_sync.core.errors import IllegalMove

_S = TypeVar("_S", bound=StrEnum)


class SeriesState(StrEnum):
    QUEUED = "queued"  # selected, waiting for a worker
    LEASED = "leased"  # a worker holds it until lease_expires
    COMPLETE = "complete"  # every expected file verified, counts and bytes match the index
    INCOMPLETE = "incomplete"  # listed and worked, but something is missing (see last_error)
    FAILED = "failed"  # the series could not even be listed
    # leaving the mirror: the journal (object.retired_path) says where each file goes; a
    # run killed here finishes the moves, or brings the files back if selected again
    RETIRING = "retiring"
    RETIRED = "retired"  # left the selection or the release; its files moved out or kept


class ObjectState(StrEnum):
    PENDING = "pending"  # listed, not yet verified on disk
    DONE = "done"  # fetched or re-verified, fsynced, renamed into place
    FAILED = "failed"  # transient failures used up this run's retry budget
    QUARANTINED = "quarantined"  # never matched its checksum; needs an operator
    REFUSED = "refused"  # unsafe key or colliding path; never written
    RETIRED = "retired"  # its series was retired; the file left the live tree (or was kept)


_LEAVE = frozenset({SeriesState.RETIRING, SeriesState.RETIRED})

SERIES_TRANSITIONS: Mapping[SeriesState, frozenset[SeriesState]] = {
    # an expired lease is taken over by another worker: leased -> leased
    SeriesState.LEASED: frozenset(
        {
            SeriesState.LEASED,
            SeriesState.COMPLETE,
            SeriesState.INCOMPLETE,
            SeriesState.FAILED,
            SeriesState.QUEUED,
        }
    ),
    # complete -> queued: an operator's verify found damage, or the mirror moved
    SeriesState.COMPLETE: frozenset({SeriesState.QUEUED}) | _LEAVE,
    SeriesState.INCOMPLETE: frozenset({SeriesState.QUEUED}) | _LEAVE,
    SeriesState.FAILED: frozenset({SeriesState.QUEUED}) | _LEAVE,
    SeriesState.QUEUED: frozenset({SeriesState.LEASED}) | _LEAVE,
    # finished, or selected again before the moves were done
    SeriesState.RETIRING: frozenset({SeriesState.RETIRED, SeriesState.QUEUED}),
    SeriesState.RETIRED: frozenset({SeriesState.QUEUED}),  # selected again
}

# An object of a retired series is retired whatever it was: only done ones have a file.
_RETIRE = frozenset({ObjectState.RETIRED})

OBJECT_TRANSITIONS: Mapping[ObjectState, frozenset[ObjectState]] = {
    ObjectState.PENDING: frozenset(
        {ObjectState.DONE, ObjectState.FAILED, ObjectState.QUARANTINED, ObjectState.REFUSED}
    )
    | _RETIRE,
    ObjectState.FAILED: frozenset(
        {ObjectState.PENDING, ObjectState.DONE, ObjectState.FAILED, ObjectState.QUARANTINED}
    )
    | _RETIRE,
    ObjectState.QUARANTINED: frozenset({ObjectState.PENDING}) | _RETIRE,
    ObjectState.REFUSED: frozenset({ObjectState.PENDING}) | _RETIRE,
    ObjectState.DONE: frozenset({ObjectState.PENDING}) | _RETIRE,  # or found damaged
    ObjectState.RETIRED: frozenset({ObjectState.PENDING}),  # listed again: restore or fetch
}

# The states a row may be created in.
SERIES_INITIAL: frozenset[SeriesState] = frozenset({SeriesState.QUEUED})
OBJECT_INITIAL: frozenset[ObjectState] = frozenset({ObjectState.PENDING, ObjectState.REFUSED})


def require_move(table: Mapping[_S, frozenset[_S]], old: _S, new: _S) -> _S:
    """``new`` when ``old -> new`` is in ``table``; IllegalMove otherwise."""
    if not can_move(table, old, new):
        raise IllegalMove(f"{type(old).__name__} {old.value} -> {new.value} is not allowed")
    return new


def edges(table: Mapping[_S, frozenset[_S]]) -> list[tuple[_S, _S]]:
    """Every allowed move, sorted: what the state package turns into guards."""
    return sorted((old, new) for old, targets in table.items() for new in targets)


def can_move(table: Mapping[_S, frozenset[_S]], old: _S, new: _S) -> bool:
    return new in table.get(old, frozenset())


@dataclass(frozen=True, slots=True)
class SeriesExpectation:
    """What the IDC index promises for a series (None where the index does not say)."""

    instance_count: int | None
    series_size_bytes: int | None
    instances: frozenset[str] | None = None


@dataclass(frozen=True, slots=True)
class SeriesVerdict:
    state: SeriesState
    reason: str | None


def series_verdict(
    expected: SeriesExpectation,
    files_done: int,
    bytes_done: int,
    listed: int,
    unfinished: Mapping[str, int],
    instances_missing_from_listing: int = 0,
) -> SeriesVerdict:
    """Complete only when the verified files match the index exactly; otherwise say what
    differs. ``unfinished`` counts objects by non-done state."""
    problems: list[str] = []
    wanted = len(expected.instances) if expected.instances is not None else expected.instance_count
    if unfinished:
        problems.append(
            ", ".join(f"{count} {state}" for state, count in sorted(unfinished.items()))
        )
    if wanted is None and listed == 0 and files_done == 0:
        # no count to compare with, but no IDC series is empty: this is not "complete"
        problems.append("the listing found no objects")
    if instances_missing_from_listing:
        problems.append(f"{instances_missing_from_listing} selected instances not in the bucket")
    if wanted is not None and files_done != wanted:
        problems.append(f"{files_done} of {wanted} files verified")
        if listed != wanted and expected.instances is None:
            problems.append(f"listing has {listed} objects, index says {wanted}")
    if (
        expected.instances is None
        and expected.series_size_bytes is not None
        and bytes_done != expected.series_size_bytes
    ):
        difference = expected.series_size_bytes - bytes_done
        problems.append(
            f"{bytes_done} of {expected.series_size_bytes} bytes verified "
            f"({'short' if difference > 0 else 'over'} by {abs(difference)})"
        )
    if problems:
        return SeriesVerdict(SeriesState.INCOMPLETE, "; ".join(problems))
    return SeriesVerdict(SeriesState.COMPLETE, None)
