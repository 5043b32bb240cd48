"""Retirement: the series that leave the mirror (IDC removed or revised them, or a pruning
run no longer selects them) leave the live tree. "move" (the default) keeps their files
under ``retired_dir/v<release>/`` with their mirror-relative paths, "keep" leaves them where
they are, "delete" removes them. A series whose SeriesInstanceUID has a selected version
that is not yet complete is left alone: a good copy is never retired before its replacement
is verified.

Crash-safe by a journal (state/retirement.py): every file's destination is recorded and the
series marked retiring before anything moves; moves are fsynced before the series is marked
retired. A run killed in between finishes the moves; a series selected again meanwhile has
its files restored from wherever they are."""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from idc_sync.core.lifecycle import SeriesState
from idc_sync.core.logs import about
from idc_sync.core.model import RetiringFile, SeriesRow
from idc_sync.disk.storage import (
    fsync_directory,
    local_error,
    remove_stale_temps,
    temp_path_for,
)
from idc_sync.state.store import State

log = logging.getLogger(__name__)

RetiredPolicy = Literal["move", "keep", "delete"]


@dataclass(slots=True)
class RetireSummary:
    series_retired: int = 0
    files_moved: int = 0
    files_deleted: int = 0
    files_kept: int = 0
    files_missing: int = 0
    bytes_retired: int = 0  # of the files moved, deleted or kept
    series_deferred: int = 0  # their replacement is not verified yet

    def add(self, other: RetireSummary) -> None:
        for name in self.__dataclass_fields__:
            setattr(self, name, getattr(self, name) + getattr(other, name))


def retired_location(retired_dir: Path, row: SeriesRow, path: Path) -> Path:
    """Where a retired file goes: one folder per IDC release, the mirror-relative path kept."""
    try:
        relative = path.relative_to(row.root)
    except ValueError:
        relative = Path(row.crdc_series_uuid) / path.name
    return retired_dir / f"v{row.idc_version}" / relative


def _regular_file(path: Path) -> bool:
    return path.is_file() and not path.is_symlink()


def move_file(source: Path, target: Path) -> None:
    """Move ``source`` to ``target`` (replacing it), fsyncing the data when it has to be
    copied to another file system. Blocking; the caller fsyncs the directories."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        source.replace(target)
        return
    except OSError as error:
        if error.errno != errno.EXDEV:
            raise
    # another file system: copy to a temp name beside the target, fsync, rename, then remove
    # the original (a crash in between leaves both, and the journal moves it again; apply()
    # first removes a temp copy a crash left)
    temp = temp_path_for(target)
    try:
        shutil.copyfile(source, temp)
        with temp.open("rb") as handle:
            os.fsync(handle.fileno())
        temp.replace(target)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    fsync_directory(target.parent)
    source.unlink()


def _prune_empty_parents(directory: Path, root: Path) -> None:
    """Remove directories the retirement left empty, up to (not including) the root."""
    while directory != root and root in directory.parents:
        try:
            directory.rmdir()
        except OSError:
            return  # not empty (or already gone): stop climbing
        directory = directory.parent


def apply(
    policy: RetiredPolicy, row: SeriesRow, files: list[RetiringFile]
) -> tuple[RetireSummary, list[str]]:
    """Carry out one series' journalled retirement on disk. Returns the counts and the keys
    with nothing to restore from (missing, deleted or kept). Blocking."""
    summary = RetireSummary()
    gone: list[str] = []
    touched: set[Path] = set()
    try:
        # a retirement killed while copying to another file system left a temp copy there
        remove_stale_temps(*(item.retired_path for item in files if item.retired_path))
        for item in files:
            if policy == "keep" and item.retired_path is None:
                gone.append(item.key)
                if _regular_file(item.path):
                    summary.files_kept += 1
                    summary.bytes_retired += item.size
                else:
                    summary.files_missing += 1
                continue
            if item.retired_path is not None:
                if _regular_file(item.path):
                    move_file(item.path, item.retired_path)
                    touched |= {item.path.parent, item.retired_path.parent}
                elif not _regular_file(item.retired_path):
                    summary.files_missing += 1
                    gone.append(item.key)
                    continue
                summary.files_moved += 1
                summary.bytes_retired += item.size
                continue
            gone.append(item.key)
            if _regular_file(item.path):
                item.path.unlink()
                touched.add(item.path.parent)
                summary.files_deleted += 1
                summary.bytes_retired += item.size
            else:
                summary.files_missing += 1
        for directory in touched:
            if directory.exists():
                fsync_directory(directory)
    except OSError as error:
        raise local_error(error, "cannot retire files of series", row.directory) from error
    for directory in {item.path.parent for item in files}:
        _prune_empty_parents(directory, row.root)
    return summary, gone


def _note(policy: RetiredPolicy, row: SeriesRow, files: int, retired_dir: Path) -> str:
    where = {
        "move": f"moved to {retired_dir / f'v{row.idc_version}'}",
        "keep": "kept in place",
        "delete": "deleted",
    }[policy]
    return f"retired (IDC release v{row.idc_version}): {files} files {where}"


async def retire_leaving(
    state: State, policy: RetiredPolicy, retired_dir: Path, *, prune: bool
) -> RetireSummary:
    """Retire every series that leaves now (see Retirement.series_to_retire), as ``policy``
    says, finishing any retirement a killed run left half done."""
    total = RetireSummary()
    after = ""
    while page := await state.retirement.series_to_retire(prune=prune, after=after):
        after = page[-1].crdc_series_uuid
        for row in page:
            done = await _retire_one(state, policy, retired_dir, row)
            total.add(done)
    return total


async def _retire_one(
    state: State, policy: RetiredPolicy, retired_dir: Path, row: SeriesRow
) -> RetireSummary:
    concerning = about(row.crdc_series_uuid, collection=row.collection_id)
    resuming = row.state is SeriesState.RETIRING
    if not resuming and await state.retirement.replacement_pending(row.SeriesInstanceUID):
        log.info(
            "series %s (%s): kept until its new version is verified",
            row.crdc_series_uuid, row.SeriesInstanceUID, extra=concerning,
        )  # fmt: skip
        return RetireSummary(series_deferred=1)
    files = await state.retirement.files(row.crdc_series_uuid)
    if not resuming:
        # the journal first: where every file goes, before any of them moves
        moves = (
            [(f.key, retired_location(retired_dir, row, f.path)) for f in files]
            if policy == "move"
            else []
        )
        await state.retirement.begin(row.crdc_series_uuid, moves)
        files = await state.retirement.files(row.crdc_series_uuid)
    done, gone = await asyncio.to_thread(apply, policy, row, files)
    note = _note(policy, row, len(files), retired_dir)
    await state.retirement.finish(row.crdc_series_uuid, note, gone)
    log.info("series %s: %s", row.crdc_series_uuid, note, extra=concerning)
    done.series_retired = 1
    return done
