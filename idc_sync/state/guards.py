"""The life cycle as the state database's law: triggers generated from core/lifecycle.py's
tables abort any write that creates a row in a state it may not start in, or moves a row
along an edge the table does not list (a move onto the same state included, unless the table
lists it). Created as TEMP triggers on every connection, so they always match the tables of
the running code and need no migration when a table changes."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from enum import StrEnum
from typing import TypeVar

from idc_sync.core.lifecycle import (
    OBJECT_INITIAL,
    OBJECT_TRANSITIONS,
    SERIES_INITIAL,
    SERIES_TRANSITIONS,
    edges,
)

_S = TypeVar("_S", bound=StrEnum)

# The messages the triggers abort with; state/database.py turns them into IllegalMove.
ILLEGAL_MOVE = "illegal state change"
ILLEGAL_START = "illegal initial state"


def _quoted(values: Iterable[str]) -> str:
    return ", ".join(f"'{value}'" for value in sorted(values))


def _guards(
    table: str, transitions: Mapping[_S, frozenset[_S]], initial: frozenset[_S]
) -> list[str]:
    moves = _quoted(f"{old.value}>{new.value}" for old, new in edges(transitions))
    return [
        f"CREATE TEMP TRIGGER IF NOT EXISTS guard_{table}_move BEFORE UPDATE OF state "
        f"ON main.{table} WHEN OLD.state || '>' || NEW.state NOT IN ({moves}) "
        f"BEGIN SELECT RAISE(ABORT, '{ILLEGAL_MOVE} of {table}'); END",
        f"CREATE TEMP TRIGGER IF NOT EXISTS guard_{table}_start BEFORE INSERT ON main.{table} "
        f"WHEN NEW.state NOT IN ({_quoted(s.value for s in initial)}) "
        f"BEGIN SELECT RAISE(ABORT, '{ILLEGAL_START} of {table}'); END",
    ]


def guard_statements() -> list[str]:
    """The CREATE TEMP TRIGGER statements for series and object rows."""
    return [
        *_guards("series", SERIES_TRANSITIONS, SERIES_INITIAL),
        *_guards("object", OBJECT_TRANSITIONS, OBJECT_INITIAL),
    ]
