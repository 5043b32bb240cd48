"""Retirement: series the current plan no longer selects (removed from the IDC release,
revised into a new crdc_series_uuid, excluded by a changed policy, or dropped from the
selection) leave the live tree. "move" (the default) keeps their files under
``retired_dir/v<release>/``, "keep" leaves them where they are, "delete" removes them.
A series whose SeriesInstanceUID has a selected version that is not yet complete is left
alone: a good copy is never retired before its replacement is verified."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from idc_sync.core.logs import about
from idc_sync.core.model import SeriesRow
from idc_sync.state.queue import Queue

log = logging.getLogger(__name__)

RetiredPolicy = Literal["move", "keep", "delete"]


@dataclass(slots=True)
class RetireSummary:
    series_retired: int = 0
    files_moved: int = 0
    files_deleted: int = 0
    files_kept: int = 0
    files_missing: int = 0
    series_deferred: int = 0  # their replacement is not verified yet


def retired_location(retired_dir: Path, row: SeriesRow, path: Path) -> Path:
    """Where a retired file goes: one folder per IDC release, the mirror-relative path kept."""
    try:
        relative = path.relative_to(row.root)
    except ValueError:
        relative = Path(row.crdc_series_uuid) / path.name
    return retired_dir / f"v{row.idc_version}" / relative


def _move(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        source.rename(target)
    except OSError:
        # another file system (state_dir elsewhere): copy, fsync, then remove the original
        shutil.copy2(source, target)
        with target.open("rb") as handle:
            os.fsync(handle.fileno())
        source.unlink()


def _prune_empty_parents(directory: Path, root: Path) -> None:
    """Remove directories the retirement left empty, up to (not including) the root."""
    while directory != root and root in directory.parents:
        try:
            directory.rmdir()
        except OSError:
            return  # not empty (or already gone): stop climbing
        directory = directory.parent


def _apply(
    policy: RetiredPolicy, row: SeriesRow, files: list[tuple[str, Path]], retired_dir: Path
) -> tuple[RetireSummary, str]:
    summary = RetireSummary()
    directories: set[Path] = set()
    for _key, path in files:
        if not path.is_file() or path.is_symlink():
            summary.files_missing += 1
            continue
        if policy == "keep":
            summary.files_kept += 1
            continue
        if policy == "delete":
            path.unlink()
            summary.files_deleted += 1
        else:
            _move(path, retired_location(retired_dir, row, path))
            summary.files_moved += 1
        directories.add(path.parent)
    for directory in directories:
        _prune_empty_parents(directory, row.root)
    where = {
        "move": f"moved to {retired_dir / f'v{row.idc_version}'}",
        "keep": "kept in place",
        "delete": "deleted",
    }[policy]
    return summary, f"retired (IDC release v{row.idc_version}): {len(files)} files {where}"


async def retire_unselected(
    queue: Queue, policy: RetiredPolicy, retired_dir: Path
) -> RetireSummary:
    """Retire every series the last plan did not select, as ``policy`` says."""
    total = RetireSummary()
    after = ""
    while page := await queue.series_to_retire(after):
        after = page[-1].crdc_series_uuid
        for row in page:
            if await queue.replacement_pending(row.SeriesInstanceUID):
                total.series_deferred += 1
                log.info(
                    "series %s (%s): kept until its new version is verified",
                    row.crdc_series_uuid,
                    row.SeriesInstanceUID,
                    extra=about(row.crdc_series_uuid, collection=row.collection_id),
                )
                continue
            files = await queue.done_paths(row.crdc_series_uuid)
            done, note = await asyncio.to_thread(_apply, policy, row, files, retired_dir)
            await queue.mark_retired(row.crdc_series_uuid, note)
            log.info(
                "series %s: %s",
                row.crdc_series_uuid,
                note,
                extra=about(row.crdc_series_uuid, collection=row.collection_id),
            )
            total.series_retired += 1
            total.files_moved += done.files_moved
            total.files_deleted += done.files_deleted
            total.files_kept += done.files_kept
            total.files_missing += done.files_missing
    return total
