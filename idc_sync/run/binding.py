"""A state is bound to the mirror it describes: the state records the mirror's absolute
destination and an id, and a marker file at the destination holds the same id. A run given
another destination, or one whose destination is missing its marker while the state says
files are there (a disk not mounted, a mirror moved away), stops with exit code 2 naming
both, instead of fetching everything again into the wrong place. ``--adopt-destination``
takes a moved mirror explicitly: every path is rewritten and every file hashed where it is
now; nothing that matches is fetched again."""

from __future__ import annotations

import json
import logging
import os
import uuid
from pathlib import Path

from idc_sync.core.errors import DestinationError
from idc_sync.disk.storage import (
    fsync_directory,
    local_error,
    remove_stale_temps,
    temp_path_for,
)
from idc_sync.state.meta import DESTINATION, MIRROR_ID
from idc_sync.state.store import State

log = logging.getLogger(__name__)

MARKER = ".idc-sync-mirror"


def _absolute(path: Path) -> Path:
    # like the settings' paths: against the working directory, symlinks kept
    return Path(os.path.abspath(path))  # noqa: PTH100


def read_marker(destination: Path) -> str | None:
    """The mirror id the marker at ``destination`` holds, None when there is none."""
    try:
        data = json.loads((destination / MARKER).read_text(encoding="utf-8"))
    except (FileNotFoundError, NotADirectoryError):
        return None
    except (OSError, ValueError) as error:
        raise DestinationError(f"cannot read {destination / MARKER}: {error}") from None
    value = data.get("mirror_id") if isinstance(data, dict) else None
    return str(value) if value else None


def write_marker(destination: Path, mirror_id: str, state: Path) -> None:
    """Write the marker crash-safely (temp file, fsync, rename, fsync the directory)."""
    target = destination / MARKER
    body = json.dumps({"mirror_id": mirror_id, "state": str(state)}, indent=1) + "\n"
    try:
        destination.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(target)
        temp = temp_path_for(target)
        with temp.open("w", encoding="utf-8") as handle:
            handle.write(body)
            handle.flush()
            os.fsync(handle.fileno())
        temp.replace(target)
        fsync_directory(destination)
    except OSError as error:
        raise local_error(error, "cannot write", target) from error


async def bind(
    state: State,
    destination: Path,
    *,
    other_roots: frozenset[Path] = frozenset(),
    adopt: bool = False,
    write: bool = True,
) -> None:
    """Check that ``destination`` is the mirror ``state`` describes (see the module
    docstring); with ``write``, record the binding of a new (or older) state. A dry run
    passes ``write=False`` and changes nothing. ``other_roots``: the license policy's
    separate roots, where series may live too."""
    recorded = await state.meta.get(DESTINATION)
    mirror_id = await state.meta.get(MIRROR_ID)
    marker = read_marker(destination)
    if recorded is None or mirror_id is None:
        await _bind_first(state, destination, other_roots, marker, write=write)
        return
    if Path(recorded) != destination:
        if not adopt:
            raise DestinationError(
                f"the state {state.path} describes the mirror at {recorded}, not {destination}. "
                f"If the mirror moved there, run again with --adopt-destination (its files are "
                f"verified where they are now, nothing that matches is fetched again); "
                f"otherwise give --destination {recorded}"
            )
        if marker is not None and marker != mirror_id:
            raise DestinationError(
                f"{destination} holds the marker of another idc-sync mirror; the state "
                f"{state.path} describes the mirror that was at {recorded}"
            )
        if not write:
            return
        checked = await state.repairs.move_destination(
            Path(recorded), destination, f"the mirror moved from {recorded}; verifying"
        )
        await state.meta.set(DESTINATION, str(destination))
        write_marker(destination, mirror_id, state.path)
        log.warning(
            "the mirror moved from %s to %s: %d verified files will be checked where they are",
            recorded, destination, checked,
        )  # fmt: skip
        return
    if marker == mirror_id:
        return
    if marker is not None:
        raise DestinationError(
            f"{destination} holds the marker of another idc-sync mirror, not the one the state "
            f"{state.path} describes"
        )
    if await state.reports.verified_files() > 0:
        raise DestinationError(
            f"{destination} has no {MARKER} file, but the state {state.path} records verified "
            f"files there: is the disk mounted? Was the mirror moved (then give its new place "
            f"with --destination and --adopt-destination)?"
        )
    if write:
        write_marker(destination, mirror_id, state.path)


async def _bind_first(
    state: State,
    destination: Path,
    other_roots: frozenset[Path],
    marker: str | None,
    *,
    write: bool,
) -> None:
    """A state without a recorded destination: new, or made by an idc-sync before binding.
    An older state is bound to ``destination`` only when its series live there (an older
    idc-sync stored a relative destination as written: it is made absolute here)."""
    roots = [root for root, _count in await state.meta.series_roots()]
    relative = [root for root in roots if not root.is_absolute()]
    absolute = {_absolute(root) for root in roots}
    if absolute - {destination} - other_roots:
        shown = sorted(str(root) for root in absolute - other_roots)
        raise DestinationError(
            f"the state {state.path} holds series under {', '.join(shown)}, not under "
            f"{destination}: give --destination {shown[0]}"
        )
    if not write:
        return
    for root in relative:
        await state.repairs.move_destination(root, _absolute(root), "made absolute")
    mirror_id = marker or str(uuid.uuid4())
    await state.meta.set(MIRROR_ID, mirror_id)
    await state.meta.set(DESTINATION, str(destination))
    write_marker(destination, mirror_id, state.path)
