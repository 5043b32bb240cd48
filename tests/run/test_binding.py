"""A state bound to its mirror (run/binding.py), on real directories and a real state: a new
state records its destination and writes the marker; another destination, a missing
marker while files are recorded, or another mirror's marker is refused by name."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from idc_sync.core.errors import DestinationError
from idc_sync.disk.storage import temp_path_for
from idc_sync.run.binding import MARKER, bind, read_marker, write_marker
from idc_sync.state.meta import DESTINATION, MIRROR_ID
from idc_sync.state.store import State


def _bind(state_db: Path, destination: Path, *, write: bool = True) -> dict[str, str | None]:
    async def main() -> dict[str, str | None]:
        async with await State.open(state_db) as state:
            await bind(state, destination, write=write)
            return {k: await state.meta.get(k) for k in (DESTINATION, MIRROR_ID)}

    return asyncio.run(main())


def test_a_new_state_is_bound_and_the_marker_written(tmp_path: Path) -> None:
    meta = _bind(tmp_path / "state.sqlite", tmp_path / "mirror")
    assert meta[DESTINATION] == str(tmp_path / "mirror")
    assert read_marker(tmp_path / "mirror") == meta[MIRROR_ID]
    body = json.loads((tmp_path / "mirror" / MARKER).read_text())
    assert body["state"] == str(tmp_path / "state.sqlite")
    # the same place again: nothing to say
    assert _bind(tmp_path / "state.sqlite", tmp_path / "mirror") == meta


def test_another_destination_is_refused_and_a_dry_run_writes_nothing(tmp_path: Path) -> None:
    _bind(tmp_path / "state.sqlite", tmp_path / "one")
    with pytest.raises(DestinationError, match="--adopt-destination"):
        _bind(tmp_path / "state.sqlite", tmp_path / "two")
    with pytest.raises(DestinationError):
        _bind(tmp_path / "state.sqlite", tmp_path / "two", write=False)
    assert not (tmp_path / "two").exists()


def test_another_mirrors_marker_is_refused(tmp_path: Path) -> None:
    _bind(tmp_path / "a.sqlite", tmp_path / "one")
    _bind(tmp_path / "b.sqlite", tmp_path / "two")
    (tmp_path / "two" / MARKER).write_text((tmp_path / "one" / MARKER).read_text())
    with pytest.raises(DestinationError, match="marker of another idc-sync mirror"):
        _bind(tmp_path / "b.sqlite", tmp_path / "two")


def test_the_marker_written_again_leaves_no_temp_file_of_a_killed_write(tmp_path: Path) -> None:
    destination = tmp_path / "mirror"
    destination.mkdir()
    left = temp_path_for(destination / MARKER)  # a write killed before its rename
    left.write_text('{"mirror_id": "half')
    write_marker(destination, "0123", tmp_path / "state")
    assert read_marker(destination) == "0123"
    assert [p.name for p in destination.iterdir()] == [MARKER]
