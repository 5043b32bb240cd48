"""The workers (run/mirror.py) against a fake engine: real SQLite, real files, no network.
The engine is the one seam the mirror talks through, so this is where the mirror's own
decisions are pinned down: what it records for each outcome, when it retries, when it
stops the whole run, and how it judges a series."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import random
import sqlite3
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from idc_sync.core.errors import (
    IntegrityError,
    LocalStorageError,
    RetryableError,
    TlsError,
)
from idc_sync.core.hashing import StreamHasher
from idc_sync.core.lifecycle import ObjectState, SeriesState
from idc_sync.core.model import ListedObject, SeriesPlacement, SeriesRecord
from idc_sync.core.retry import RetryPolicy
from idc_sync.core.verify import Verdict, hashers_needed
from idc_sync.disk.storage import TempFile
from idc_sync.engines.base import FetchJob, ProgressCallback
from idc_sync.engines.settle import settle
from idc_sync.run.mirror import Mirror, MirrorOptions
from idc_sync.run.objects import RunSummary
from idc_sync.state.store import State

SERIES = "d98abc9a-0ddd-44a3-8646-df10344c49d7"
FAST = RetryPolicy(max_retryable=2, max_integrity=1, base_delay=0.0, max_delay=0.0)


def _objects(count: int) -> dict[str, bytes]:
    base = uuid.UUID(SERIES)
    return {
        f"{SERIES}/{uuid.uuid5(base, str(n))}.dcm": f"DICOM {n} ".encode() * (100 + n)
        for n in range(count)
    }


# What the engine does for one key on its n-th attempt (None: serve the right bytes).
Behaviour = Callable[[str, int], Exception | bytes | None]


class FakeEngine:
    """Serves ``objects`` from memory and places them through the real settle step."""

    def __init__(self, objects: dict[str, bytes], behaviour: Behaviour | None = None) -> None:
        self.objects = objects
        self.behaviour = behaviour or (lambda key, attempt: None)
        self.attempts: Counter[str] = Counter()

    async def list_series(
        self, bucket: str, crdc_series_uuid: str, instance_count: int | None
    ) -> list[ListedObject]:
        return [
            ListedObject(key, len(data), hashlib.md5(data).hexdigest())
            for key, data in sorted(self.objects.items())
        ]

    async def part_size(self, bucket: str, key: str) -> int:
        raise AssertionError("no multipart objects here")

    async def fetch(self, job: FetchJob, on_bytes: ProgressCallback) -> Verdict:
        self.attempts[job.key] += 1
        outcome = self.behaviour(job.key, self.attempts[job.key])
        if isinstance(outcome, Exception):
            raise outcome
        data = outcome if outcome is not None else self.objects[job.key]
        hasher: StreamHasher = hashers_needed(job.expected, None, None)
        hasher.update(data)
        temp = TempFile(job.final)
        temp.write_at(data, 0)
        on_bytes(len(data))
        return settle(temp, job, hasher.digests(), None)


def _record(objects: dict[str, bytes]) -> SeriesRecord:
    return SeriesRecord(
        crdc_series_uuid=SERIES, SeriesInstanceUID="1.2.3", collection_id="qin_pet_phantom",
        aws_bucket="idc-open-data", license_short_name="CC BY 3.0", source_DOI=None,
        instance_count=len(objects), series_size_bytes=sum(map(len, objects.values())),
        idc_version=25,
    )  # fmt: skip


def _run(tmp_path: Path, engine: FakeEngine) -> RunSummary:
    async def main() -> RunSummary:
        state = await State.open(tmp_path / "state.sqlite")
        async with state.plans.writing() as plan:
            await plan.enqueue([SeriesPlacement(_record(engine.objects), tmp_path / "m", "s")])
        options = MirrorOptions(concurrency=4, series_concurrency=2, retry=FAST)
        summary = await Mirror(state.queue, engine, options, rng=random.Random(1)).run()
        await state.close()
        return summary

    return asyncio.run(main())


def _states(tmp_path: Path) -> tuple[dict[str, int], str]:
    """(objects by state, the series' state), read from the state file."""
    with contextlib.closing(sqlite3.connect(tmp_path / "state.sqlite")) as db:
        objects = dict(db.execute("SELECT state, COUNT(*) FROM object GROUP BY state"))
        [(series,)] = db.execute("SELECT state FROM series").fetchall()
    return objects, series


def test_every_object_placed_makes_the_series_complete(tmp_path: Path) -> None:
    objects = _objects(5)
    summary = _run(tmp_path, FakeEngine(objects))
    assert (summary.files_fetched, summary.series_complete, summary.stopped) == (5, 1, None)
    for key, data in objects.items():
        assert (tmp_path / "m" / "s" / key.split("/")[1]).read_bytes() == data
    assert _states(tmp_path) == ({"done": 5}, "complete")


def test_transient_failures_are_retried_and_a_wrong_body_quarantined(tmp_path: Path) -> None:
    objects = _objects(3)
    flaky, wrong, _ = sorted(objects)

    def behaviour(key: str, attempt: int) -> Exception | bytes | None:
        if key == flaky and attempt <= 2:
            return RetryableError("503 SlowDown")
        if key == wrong:
            return b"x" * len(objects[wrong])  # right size, wrong bytes, every time
        return None

    engine = FakeEngine(objects, behaviour)
    summary = _run(tmp_path, engine)
    assert engine.attempts[flaky] == 3  # two retries, then placed
    assert engine.attempts[wrong] == 2  # max_integrity=1: one retry, then quarantined
    assert summary.series_incomplete == 1
    assert not (tmp_path / "m" / "s" / wrong.split("/")[1]).exists()
    assert _states(tmp_path) == ({"done": 2, "quarantined": 1}, "incomplete")


def test_a_local_disk_failure_stops_the_run_and_leaves_the_series_queued(tmp_path: Path) -> None:
    objects = _objects(8)
    first = sorted(objects)[0]

    def behaviour(key: str, attempt: int) -> Exception | None:
        return (
            LocalStorageError("cannot write /m/x: No space left on device")
            if key == first
            else None
        )

    engine = FakeEngine(objects, behaviour)
    summary = _run(tmp_path, engine)
    assert summary.stopped == "cannot write /m/x: No space left on device"
    assert engine.attempts[first] == 1  # never retried
    by_state, series = _states(tmp_path)
    assert set(by_state) <= {"pending", "done"}
    assert series == SeriesState.QUEUED  # not judged: picked up by the next run


def test_an_untrusted_certificate_stops_the_run_once_not_per_object(tmp_path: Path) -> None:
    objects = _objects(6)

    def behaviour(key: str, attempt: int) -> Exception:
        return TlsError("TLS with s3.amazonaws.com: certificate verify failed")

    engine = FakeEngine(objects, behaviour)
    summary = _run(tmp_path, engine)
    assert summary.stopped is not None
    assert "certificate verify failed" in summary.stopped
    assert max(engine.attempts.values()) == 1
    by_state, _ = _states(tmp_path)
    assert set(by_state) == {str(ObjectState.PENDING)}


def test_an_object_that_changed_size_is_an_integrity_failure_and_nothing_is_placed(
    tmp_path: Path,
) -> None:
    objects = _objects(2)
    short = sorted(objects)[0]

    def behaviour(key: str, attempt: int) -> Exception | None:
        return IntegrityError("server sends 10 bytes, listing said 1000") if key == short else None

    _run(tmp_path, FakeEngine(objects, behaviour))
    assert not (tmp_path / "m" / "s" / short.split("/")[1]).exists()
    assert _states(tmp_path)[0] == {"done": 1, "quarantined": 1}
