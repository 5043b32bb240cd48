"""The operator's repair tools behind ``idc-sync verify`` and ``idc-sync retry-failed``:
re-hash verified files against the checksum recorded when they were fetched, and put
damaged, quarantined or failed objects back in the queue for the next sync."""

from __future__ import annotations

import asyncio
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from idc_sync.config import Settings
from idc_sync.core.hashing import StreamHasher, hash_file
from idc_sync.core.model import DoneObject, RetryCounts
from idc_sync.core.verify import (
    COMMON_PART_SIZES,
    FASTEST_FIRST,
    Expected,
    Published,
    expectation_from_listing,
    guess_part_size,
    hashers_needed,
    multipart_part_size_valid,
    verdict,
)
from idc_sync.run.binding import bind
from idc_sync.run.jobs import license_roots
from idc_sync.state.lock import StateLock
from idc_sync.state.repairs import Repairs
from idc_sync.state.store import STATE_DB, State

PAGE = 1000
# Files hashed at once: hashing releases the GIL, and a few readers keep a disk array busy
# without starving a sync that may start right after.
HASHING_THREADS = 4

Problem = Literal["missing", "modified", "corrupt"]
# "unconfirmed": a multipart ETag whose part size we cannot reproduce locally; the next
# sync re-verifies it with the part size the server states (a HEAD, no GET if intact).
Checked = Literal["ok", "size-only", "unconfirmed"]


@dataclass(frozen=True, slots=True)
class Finding:
    """A verified file whose local copy is no longer what was verified."""

    key: str
    path: str
    problem: Problem
    detail: str


@dataclass(slots=True)
class VerifyReport:
    checked: int = 0
    ok: int = 0
    size_only: int = 0  # nothing stronger than the size was ever known
    unconfirmed: int = 0  # queued for the next sync to re-verify against the server
    findings: list[Finding] = field(default_factory=list)
    requeued: int = 0

    @property
    def all_good(self) -> bool:
        return not self.findings

    def count(self, problem: Problem) -> int:
        return sum(1 for finding in self.findings if finding.problem == problem)


def _multipart_part_sizes(size: int, parts: int) -> list[int]:
    """Part sizes that give ``parts`` parts for ``size`` bytes, most likely first."""
    candidates = [p for p in COMMON_PART_SIZES if multipart_part_size_valid(size, parts, p)]
    guess = guess_part_size(size, parts)
    if guess is not None and guess not in candidates:
        candidates.append(guess)
    return candidates


def _hash_against(
    obj: DoneObject, expected: Expected, published: Published | None
) -> Checked | Finding:
    hasher = hashers_needed(expected, published, None)
    result = verdict(expected, hash_file(obj.path, hasher), published)
    if not result.ok:
        return Finding(obj.key, str(obj.path), "corrupt", result.reason or "checksum mismatch")
    return "size-only" if result.kind == "size-only" else "ok"


def check_file(obj: DoneObject) -> Checked | Finding:
    """Re-read one file and compare it with what was recorded when it was verified.
    Blocking: run it in a worker thread."""
    path = str(obj.path)
    try:
        info = os.lstat(obj.path)
    except (FileNotFoundError, NotADirectoryError):
        return Finding(obj.key, path, "missing", "no file at the recorded path")
    if not stat.S_ISREG(info.st_mode):
        return Finding(obj.key, path, "missing", "the recorded path is not a regular file")
    if info.st_size != obj.size:
        return Finding(obj.key, path, "modified", f"{info.st_size} bytes, verified {obj.size}")
    checksum = obj.checksum or ""
    if obj.checksum_kind == "md5":
        return _hash_against(obj, Expected(obj.size, checksum, checksum, None), None)
    if obj.checksum_kind == "crc32c" or obj.checksum_kind in FASTEST_FIRST:
        # a checksum the server published (x-goog-hash, x-amz-checksum-*): the file is held
        # to it alone, as when it was fetched
        published = Published(**{f"{obj.checksum_kind}_b64": checksum}, header="recorded")
        return _hash_against(obj, Expected(obj.size, checksum, None, None), published)
    if obj.checksum_kind == "multipart-md5":
        return _check_multipart(obj.path, expectation_from_listing(checksum, obj.size))
    return "size-only"


def _check_multipart(path: Path, expected: Expected) -> Checked:
    """The part size behind a multipart ETag is not recorded: a file that matches with a
    plausible part size is intact; one that matches with none is damaged or was uploaded
    with an unusual part size, which only the server can tell (HEAD ?partNumber=1)."""
    if expected.multipart_parts is None:
        return "size-only"
    for part_size in _multipart_part_sizes(expected.size, expected.multipart_parts):
        result = verdict(expected, hash_file(path, StreamHasher(md5=False, part_size=part_size)))
        if result.ok and result.kind == "multipart-md5":
            return "ok"
    return "unconfirmed"


async def verify_objects(repairs: Repairs, sample: int | None = None) -> VerifyReport:
    """Check every done object (or ``sample`` of them at random); damaged ones go back to
    pending and their series back to queued, so the next sync fetches them again."""
    report = VerifyReport()
    limiter = asyncio.Semaphore(HASHING_THREADS)

    async def check(obj: DoneObject) -> Checked | Finding:
        async with limiter:
            return await asyncio.to_thread(check_file, obj)

    async def check_page(page: list[DoneObject]) -> None:
        outcomes = await asyncio.gather(*(check(obj) for obj in page))
        requeue: dict[str, list[str]] = {}
        for obj, outcome in zip(page, outcomes, strict=True):
            report.checked += 1
            if isinstance(outcome, Finding):
                report.findings.append(outcome)
                requeue.setdefault(f"verify found the file {outcome.problem}", []).append(obj.key)
            elif outcome == "unconfirmed":
                report.unconfirmed += 1
                reason = "verify could not confirm the multipart ETag locally; re-verify"
                requeue.setdefault(reason, []).append(obj.key)
            elif outcome == "size-only":
                report.size_only += 1
            else:
                report.ok += 1
        for reason, keys in requeue.items():
            report.requeued += await repairs.mark_for_refetch(keys, reason)

    if sample is not None:
        await check_page(await repairs.sample_done(sample))
        return report
    after = ""
    while page := await repairs.objects_done(after, PAGE):
        # The page's keys are read before any is moved back to pending, so paging by key
        # is not disturbed by our own updates.
        after = page[-1].key
        await check_page(page)
    return report


async def verify(settings: Settings, sample: int | None = None) -> VerifyReport:
    """The ``verify`` job: holds the state lock so no sync moves files meanwhile. The
    state is opened first, so a wrong --destination creates nothing."""
    async with await State.open(settings.state_path / STATE_DB, create=False) as state:
        await bind(state, settings.mirror_root, other_roots=license_roots(settings), write=False)
        with StateLock(settings.state_path):
            return await verify_objects(state.repairs, sample)


async def retry_failed(settings: Settings) -> RetryCounts:
    """The ``retry-failed`` job: quarantined and failed objects back to pending."""
    async with await State.open(settings.state_path / STATE_DB, create=False) as state:
        with StateLock(settings.state_path):
            return await state.repairs.retry_failed()
