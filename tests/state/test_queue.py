"""Tests of the state package against real SQLite files: opening and refusing state files,
idempotent planning, leases, listings, results and the numbers status reports."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import sqlite3
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from idc_sync.core.errors import StateError
from idc_sync.core.lifecycle import ObjectState, SeriesState
from idc_sync.core.model import ObjectResult, ObjectRow, SeriesPlacement, SeriesRecord
from idc_sync.run.recorder import Recorder
from idc_sync.state.database import SCHEMA_VERSION
from idc_sync.state.store import State
from tests.support.dataset import real_series, series_size_bytes

ROOT = Path("/srv/idc")
RELEASE = 25  # IDC release of the rows below (idc-index-data 25.0.5)

# Real rows of the IDC index (qin_pet_phantom, CC BY 3.0, idc-open-data; one CC BY-NC 4.0
# series of midrc_ricord_1a in idc-open-data-cr).
QIN_UI_81 = SeriesRecord(
    crdc_series_uuid="d98abc9a-0ddd-44a3-8646-df10344c49d7",
    SeriesInstanceUID="1.2.826.0.1.3417726.3.140464.20131001150949437",
    collection_id="qin_pet_phantom",
    aws_bucket="idc-open-data",
    license_short_name="CC BY 3.0",
    source_DOI="10.7937/k9/tcia.2015.zpukhckb",
    instance_count=81,
    series_size_bytes=4_761_722,  # series_size_MB 4.761722
    idc_version=RELEASE,
)
QIN_UW_47 = SeriesRecord(
    crdc_series_uuid="25ed1798-73aa-4794-8237-9294eb061a7a",
    SeriesInstanceUID="1.2.840.113619.2.25.4.1263093.1399752854.328",
    collection_id="qin_pet_phantom",
    aws_bucket="idc-open-data",
    license_short_name="CC BY 3.0",
    source_DOI="10.7937/k9/tcia.2015.zpukhckb",
    instance_count=47,
    series_size_bytes=6_431_312,
    idc_version=RELEASE,
)
QIN_UI_81_B = SeriesRecord(
    crdc_series_uuid="26c920ca-68e7-483b-944c-c828b723be2b",
    SeriesInstanceUID="1.2.826.0.1.3417726.3.342456.20131001124909109",
    collection_id="qin_pet_phantom",
    aws_bucket="idc-open-data",
    license_short_name="CC BY 3.0",
    source_DOI="10.7937/k9/tcia.2015.zpukhckb",
    instance_count=81,
    series_size_bytes=4_762_858,
    idc_version=RELEASE,
)
RICORD_NC = SeriesRecord(
    crdc_series_uuid="f1ddb2d8-be1f-42f6-886e-aae6c28b7a7a",
    SeriesInstanceUID="1.2.826.0.1.3680043.10.474.419639.124425916395023519732300401216",
    collection_id="midrc_ricord_1a",
    aws_bucket="idc-open-data-cr",
    license_short_name="CC BY-NC 4.0",
    source_DOI="10.7937/vtw4-x588",
    instance_count=2,
    series_size_bytes=772_880,
    idc_version=RELEASE,
)


def placement(record: SeriesRecord) -> SeriesPlacement:
    return SeriesPlacement(
        record=record,
        root=ROOT,
        rel_dir=f"{record.collection_id}/{record.SeriesInstanceUID}",
    )


def objects_of(record: SeriesRecord, count: int, size: int = 58_786) -> list[ObjectRow]:
    """``count`` objects keyed like the bucket: <crdc_series_uuid>/<crdc_instance_uuid>.dcm."""
    series = uuid.UUID(record.crdc_series_uuid)
    rows = []
    for number in range(count):
        instance = str(uuid.uuid5(series, str(number)))
        rows.append(
            ObjectRow(
                key=f"{record.crdc_series_uuid}/{instance}.dcm",
                crdc_series_uuid=record.crdc_series_uuid,
                size=size,
                etag=f"{number:032x}",
                path=ROOT / record.collection_id / record.SeriesInstanceUID / f"{instance}.dcm",
            )
        )
    return rows


def query(db: Path, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Read the state file with the standard library, independently of the Queue."""
    with contextlib.closing(sqlite3.connect(db)) as connection:
        return connection.execute(sql, params).fetchall()


def series_states(db: Path) -> dict[str, str]:
    return dict(query(db, "SELECT crdc_series_uuid, state FROM series"))


def object_states(db: Path) -> dict[str, str]:
    return dict(query(db, "SELECT key, state FROM object"))


def with_queue(db: Path, scenario: Callable[[State], Awaitable[None]]) -> None:
    async def main() -> None:
        async with await State.open(db) as state:
            await scenario(state)

    asyncio.run(main())


async def enqueue(state: State, placements: list[SeriesPlacement]) -> int:
    """One plan selecting exactly ``placements``: how many series were new."""
    async with state.plans.writing() as plan:
        added = await plan.enqueue(placements)
        await plan.requeue_reselected()
    return added


@pytest.fixture(scope="module")
def qin_records() -> list[SeriesRecord]:
    """Every series of qin_pet_phantom, from the installed IDC index."""
    return [
        SeriesRecord(
            crdc_series_uuid=row["crdc_series_uuid"],
            SeriesInstanceUID=row["SeriesInstanceUID"],
            collection_id=row["collection_id"],
            aws_bucket=row["aws_bucket"],
            license_short_name=row["license_short_name"],
            source_DOI=row["source_DOI"],
            instance_count=int(row["instanceCount"]),
            series_size_bytes=series_size_bytes(row),
            idc_version=RELEASE,
        )
        for row in real_series("qin_pet_phantom", limit=100)
    ]


# -- opening --------------------------------------------------------------------------


def test_open_creates_a_wal_database_with_the_schema_version(tmp_path: Path) -> None:
    db = tmp_path / "state.sqlite"

    async def nothing(state: State) -> None:
        assert state.path == db

    with_queue(db, nothing)
    assert query(db, "PRAGMA user_version") == [(SCHEMA_VERSION,)]
    assert query(db, "PRAGMA journal_mode") == [("wal",)]
    assert {name for (name,) in query(db, "SELECT name FROM sqlite_master")} >= {
        "series",
        "object",
    }


def test_reopening_keeps_what_was_enqueued(tmp_path: Path) -> None:
    db = tmp_path / "state.sqlite"

    async def first(state: State) -> None:
        assert await enqueue(state, [placement(QIN_UI_81)]) == 1

    async def second(state: State) -> None:
        assert await state.reports.count_selected() == 1
        [row] = await state.queue.claim_series("worker", 10, 60)
        assert row.crdc_series_uuid == QIN_UI_81.crdc_series_uuid
        assert row.instance_count == 81
        assert row.series_size_bytes == 4_761_722
        assert row.directory == ROOT / "qin_pet_phantom" / QIN_UI_81.SeriesInstanceUID

    with_queue(db, first)

    async def reopen() -> None:
        async with await State.open(db, create=False) as queue:
            await second(queue)

    asyncio.run(reopen())


def test_newer_schema_version_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "state.sqlite"
    with contextlib.closing(sqlite3.connect(db)) as connection:
        connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(StateError, match="newer") as caught:
        asyncio.run(State.open(db))
    assert str(db) in str(caught.value)
    assert f"version {SCHEMA_VERSION + 1}" in str(caught.value)
    # nothing was created in the newer file
    assert query(db, "SELECT name FROM sqlite_master") == []


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(os.urandom(4096), id="4KB-random-bytes"),
        pytest.param(b"destination = '/srv/idc'\n" * 40, id="text-file"),
    ],
)
def test_a_file_that_is_not_sqlite_is_refused_by_name_and_left_alone(
    tmp_path: Path, content: bytes
) -> None:
    db = tmp_path / "state.sqlite"
    db.write_bytes(content)
    with pytest.raises(StateError) as caught:
        asyncio.run(State.open(db))
    assert str(db) in str(caught.value)
    assert db.read_bytes() == content


def test_open_without_create_refuses_a_missing_file_and_creates_nothing(tmp_path: Path) -> None:
    db = tmp_path / "state.sqlite"
    with pytest.raises(StateError) as caught:
        asyncio.run(State.open(db, create=False))
    assert str(db) in str(caught.value)
    assert list(tmp_path.iterdir()) == []


def test_open_without_create_refuses_a_foreign_sqlite_database(tmp_path: Path) -> None:
    db = tmp_path / "other.sqlite"
    with contextlib.closing(sqlite3.connect(db)) as connection:
        connection.execute("CREATE TABLE patients (id TEXT)")
    with pytest.raises(StateError, match="not an idc-sync state database"):
        asyncio.run(State.open(db, create=False))
    assert [name for (name,) in query(db, "SELECT name FROM sqlite_master")] == ["patients"]


# -- planning -------------------------------------------------------------------------


def test_enqueueing_the_same_selection_twice_adds_nothing_and_keeps_states(
    tmp_path: Path,
) -> None:
    db = tmp_path / "state.sqlite"
    selection = [placement(QIN_UI_81), placement(QIN_UW_47), placement(RICORD_NC)]

    async def scenario(state: State) -> None:
        assert await enqueue(state, selection) == 3
        [leased] = await state.queue.claim_series("worker", 1, 60)
        tally = await state.queue.tally(leased.crdc_series_uuid)
        await state.queue.finish_series(leased.crdc_series_uuid, SeriesState.COMPLETE, tally, None)
        assert len(await state.queue.claim_series("worker", 1, 60)) == 1
        before = query(db, "SELECT * FROM series ORDER BY crdc_series_uuid")

        assert await enqueue(state, selection) == 0
        assert query(db, "SELECT * FROM series ORDER BY crdc_series_uuid") == before

    with_queue(db, scenario)
    assert sorted(series_states(db).values()) == ["complete", "leased", "queued"]


def test_a_new_plan_selects_only_what_it_enqueues(tmp_path: Path) -> None:
    db = tmp_path / "state.sqlite"

    async def scenario(state: State) -> None:
        await enqueue(state, [placement(QIN_UI_81), placement(QIN_UW_47), placement(RICORD_NC)])
        assert await state.reports.count_selected() == 3
        assert await enqueue(state, [placement(QIN_UW_47)]) == 0
        assert await state.reports.count_selected() == 1
        claimed = await state.queue.claim_series("worker", 10, 60)
        assert [row.crdc_series_uuid for row in claimed] == [QIN_UW_47.crdc_series_uuid]
        totals = await state.reports.status_by_collection()
        assert [c.collection_id for c in totals] == ["qin_pet_phantom"]

    with_queue(db, scenario)
    selected = dict(query(db, "SELECT crdc_series_uuid, selected FROM series"))
    assert selected == {
        QIN_UI_81.crdc_series_uuid: 0,
        QIN_UW_47.crdc_series_uuid: 1,
        RICORD_NC.crdc_series_uuid: 0,
    }


def test_enqueue_records_a_manifest_instance_subset(tmp_path: Path) -> None:
    db = tmp_path / "state.sqlite"
    instances = frozenset(o.key.split("/")[1][:-4] for o in objects_of(QIN_UI_81, 2))
    subset = dataclasses.replace(QIN_UI_81, instances=instances)

    async def scenario(state: State) -> None:
        await enqueue(state, [placement(QIN_UI_81)])
        # the same series, later named instance by instance in a manifest
        assert await enqueue(state, [placement(subset)]) == 0
        [row] = await state.queue.claim_series("worker", 1, 60)
        assert row.instances == instances

    with_queue(db, scenario)


# -- leases ---------------------------------------------------------------------------


def test_claim_leases_at_most_limit_and_never_the_same_series_twice(tmp_path: Path) -> None:
    db = tmp_path / "state.sqlite"

    async def scenario(state: State) -> None:
        await enqueue(state, [placement(QIN_UI_81), placement(QIN_UW_47), placement(RICORD_NC)])
        assert await state.queue.claim_series("a", 0, 60, now=1000.0) == []
        first = await state.queue.claim_series("a", 2, 60, now=1000.0)
        second = await state.queue.claim_series("b", 2, 60, now=1001.0)
        third = await state.queue.claim_series("c", 2, 60, now=1002.0)
        assert len(first) == 2
        assert len(second) == 1
        assert third == []
        uuids = [row.crdc_series_uuid for row in first + second]
        assert sorted(uuids) == sorted(
            r.crdc_series_uuid for r in (QIN_UI_81, QIN_UW_47, RICORD_NC)
        )
        assert all(row.state == "leased" and row.attempts == 1 for row in first + second)

    with_queue(db, scenario)
    owners = query(db, "SELECT lease_owner, lease_expires FROM series ORDER BY lease_owner")
    assert owners == [("a", 1060.0), ("a", 1060.0), ("b", 1061.0)]


def test_an_expired_lease_is_taken_over_and_a_valid_one_is_not(tmp_path: Path) -> None:
    db = tmp_path / "state.sqlite"

    async def scenario(state: State) -> None:
        await enqueue(state, [placement(QIN_UI_81)])
        [held] = await state.queue.claim_series("crashed", 5, 60, now=1000.0)
        assert await state.queue.claim_series("other", 5, 60, now=1059.0) == []
        [taken] = await state.queue.claim_series("other", 5, 60, now=1061.0)
        assert taken.crdc_series_uuid == held.crdc_series_uuid
        assert taken.attempts == 2

    with_queue(db, scenario)
    assert query(db, "SELECT lease_owner, lease_expires FROM series") == [("other", 1121.0)]


def test_concurrent_claims_from_two_owners_never_overlap(
    tmp_path: Path, qin_records: list[SeriesRecord]
) -> None:
    db = tmp_path / "state.sqlite"
    assert len(qin_records) == 44

    async def drain(state: State, owner: str, started: asyncio.Barrier) -> list[str]:
        claimed = [row.crdc_series_uuid for row in await state.queue.claim_series(owner, 2, 600)]
        # both owners hold work before either goes on, so the claims below really race
        await started.wait()
        while batch := await state.queue.claim_series(owner, 2, 600):
            claimed.extend(row.crdc_series_uuid for row in batch)
            await asyncio.sleep(0.002)
        return claimed

    async def scenario() -> tuple[list[str], list[str], list[str], list[str]]:
        async with await State.open(db) as shared:
            await enqueue(shared, [placement(record) for record in qin_records])
            # two owners on one connection, as the workers of one process are
            started = asyncio.Barrier(2)
            one, two = await asyncio.gather(
                drain(shared, "w1", started), drain(shared, "w2", started)
            )
            await enqueue(shared, [placement(record) for record in qin_records])
            await shared.queue.requeue_unfinished()
        # two connections on one file, as two processes would be
        async with await State.open(db) as first, await State.open(db) as second:
            started = asyncio.Barrier(2)
            three, four = await asyncio.gather(
                drain(first, "p1", started), drain(second, "p2", started)
            )
        return one, two, three, four

    one, two, three, four = asyncio.run(scenario())
    everything = {record.crdc_series_uuid for record in qin_records}
    for a, b in ((one, two), (three, four)):
        assert a
        assert b
        assert not set(a) & set(b)
        assert len(a) + len(b) == 44
        assert set(a) | set(b) == everything


# -- objects --------------------------------------------------------------------------


def test_record_listing_inserts_pending_objects_and_is_idempotent(tmp_path: Path) -> None:
    db = tmp_path / "state.sqlite"
    listing = objects_of(QIN_UI_81, 3)

    async def scenario(state: State) -> None:
        await enqueue(state, [placement(QIN_UI_81)])
        assert await state.queue.record_listing(listing) == []
        await state.queue.record_results(
            [ObjectResult(listing[0].key, ObjectState.DONE, 1, None, "md5", "x")]
        )
        assert await state.queue.record_listing(listing) == []
        fetch = await state.queue.objects_to_fetch(QIN_UI_81.crdc_series_uuid)
        assert [o.key for o in fetch] == sorted(o.key for o in listing[1:])
        assert fetch[0].path == next(o.path for o in listing if o.key == fetch[0].key)

    with_queue(db, scenario)
    assert object_states(db) == {
        listing[0].key: "done",
        listing[1].key: "pending",
        listing[2].key: "pending",
    }


def test_a_listing_of_new_and_known_keys_inserts_the_new_and_keeps_the_known(
    tmp_path: Path,
) -> None:
    """The one-statement insert of a first listing takes the new keys; the known one (done,
    and listed now with another ETag) and the one whose path a new key takes go the long
    way, as a listing of known keys always does."""
    db = tmp_path / "state.sqlite"
    done, new, clash = objects_of(QIN_UI_81, 3)
    clash = dataclasses.replace(clash, path=new.path)

    async def scenario(state: State) -> None:
        await enqueue(state, [placement(QIN_UI_81)])
        assert await state.queue.record_listing([done]) == []
        await state.queue.record_results([ObjectResult(done.key, ObjectState.DONE, 1)])
        relisted = dataclasses.replace(done, etag="f" * 32)
        assert await state.queue.record_listing([relisted, new, clash]) == [(clash, new.key)]

    with_queue(db, scenario)
    assert query(db, "SELECT key, state, etag, path FROM object ORDER BY key") == sorted([
        (done.key, "done", done.etag, str(done.path)),
        (new.key, "pending", new.etag, str(new.path)),
    ])  # fmt: skip


def test_a_relisting_updates_the_etag_of_unfinished_objects_only(tmp_path: Path) -> None:
    db = tmp_path / "state.sqlite"
    done, pending = objects_of(QIN_UI_81, 2)

    async def scenario(state: State) -> None:
        await enqueue(state, [placement(QIN_UI_81)])
        await state.queue.record_listing([done, pending])
        await state.queue.record_results([ObjectResult(done.key, ObjectState.DONE, 1)])
        changed = [dataclasses.replace(o, etag="f" * 32, size=60_000) for o in (done, pending)]
        assert await state.queue.record_listing(changed) == []

    with_queue(db, scenario)
    assert dict(query(db, "SELECT key, etag || ' ' || size FROM object")) == {
        done.key: f"{0:032x} 58786",
        pending.key: f"{'f' * 32} 60000",
    }


def test_two_keys_with_one_local_path_report_a_collision_and_write_only_the_first(
    tmp_path: Path,
) -> None:
    db = tmp_path / "state.sqlite"
    first, other, third = objects_of(QIN_UI_81, 3)
    clash = dataclasses.replace(other, path=first.path)
    clash_later = dataclasses.replace(third, path=first.path)

    async def scenario(state: State) -> None:
        await enqueue(state, [placement(QIN_UI_81)])
        collisions = await state.queue.record_listing([first, clash])
        assert collisions == [(clash, first.key)]
        # a later listing colliding with a stored object is caught the same way
        assert await state.queue.record_listing([clash_later]) == [(clash_later, first.key)]

    with_queue(db, scenario)
    assert query(db, "SELECT key, path FROM object") == [(first.key, str(first.path))]


def test_record_results_writes_a_batch(tmp_path: Path) -> None:
    db = tmp_path / "state.sqlite"
    a, b, c, d = objects_of(QIN_UI_81, 4)

    async def scenario(state: State) -> None:
        await enqueue(state, [placement(QIN_UI_81)])
        await state.queue.record_listing([a, b, c, d])
        await state.queue.record_results([])
        await state.queue.record_results(
            [
                ObjectResult(a.key, ObjectState.DONE, 1, None, "md5", a.etag),
                ObjectResult(b.key, ObjectState.FAILED, 6, "503 SlowDown"),
                ObjectResult(c.key, ObjectState.QUARANTINED, 3, "md5 mismatch"),
            ]
        )

    with_queue(db, scenario)
    rows = {
        key: rest
        for key, *rest in query(
            db,
            "SELECT key, state, attempts, last_error, checksum_kind, checksum, "
            "fetched_at IS NOT NULL FROM object",
        )
    }
    assert rows == {
        a.key: ["done", 1, None, "md5", a.etag, 1],
        b.key: ["failed", 6, "503 SlowDown", None, None, 0],
        c.key: ["quarantined", 3, "md5 mismatch", None, None, 0],
        d.key: ["pending", 0, None, None, None, 0],
    }


def test_record_results_takes_a_keys_last_outcome_and_writes_notes(tmp_path: Path) -> None:
    """A batch goes as one statement per kind: a key twice in it ends as its last outcome
    (as one statement per row left it), and a note changes only attempts and reason."""
    db = tmp_path / "state.sqlite"
    a, b = objects_of(QIN_UI_81, 2)

    async def scenario(state: State) -> None:
        await enqueue(state, [placement(QIN_UI_81)])
        await state.queue.record_listing([a, b])
        await state.queue.record_results(
            [
                ObjectResult(a.key, ObjectState.FAILED, 1, "timeout"),
                ObjectResult(a.key, ObjectState.DONE, 2, None, "crc64nvme", "AAAAAAAAAAA="),
                ObjectResult(b.key, None, 4, "stopped: disk full"),
            ]
        )

    with_queue(db, scenario)
    assert query(
        db, "SELECT key, state, attempts, last_error, checksum_kind FROM object ORDER BY key"
    ) == sorted(
        [
            (a.key, "done", 2, None, "crc64nvme"),
            (b.key, "pending", 4, "stopped: disk full", None),
        ]
    )


def test_a_recorder_cancelled_while_it_writes_does_not_write_the_batch_twice(
    tmp_path: Path,
) -> None:
    """The batch's transaction runs its course on the state's thread; the final flush after
    the cancellation must not record "done" again (the guards refuse done -> done)."""
    db = tmp_path / "state.sqlite"
    listing = objects_of(QIN_UI_81, 200)

    async def scenario(state: State) -> None:
        await enqueue(state, [placement(QIN_UI_81)])
        await state.queue.record_listing(listing)
        for cancel_after in range(0, 12):  # cancel at every moment of the write
            batch = listing[cancel_after * 16 : (cancel_after + 1) * 16]
            recorder = Recorder(state.queue)
            for obj in batch:
                recorder.add(ObjectResult(obj.key, ObjectState.DONE, 1, None, "md5", obj.etag))
            flushing = asyncio.create_task(recorder.flush())
            for _ in range(cancel_after):
                await asyncio.sleep(0)
            flushing.cancel()
            await asyncio.gather(flushing, return_exceptions=True)
            await recorder.flush()  # what Mirror.run does after cancelling its recorder

    with_queue(db, scenario)
    assert query(db, "SELECT count(*) FROM object WHERE state = 'done'") == [(12 * 16,)]


def test_tally_counts_states_and_done_bytes_and_leaves_refused_out_of_the_listing(
    tmp_path: Path,
) -> None:
    db = tmp_path / "state.sqlite"
    listing = objects_of(QIN_UI_81, 5, size=58_786)

    async def scenario(state: State) -> None:
        await enqueue(state, [placement(QIN_UI_81)])
        await state.queue.record_listing(listing[:4])
        await state.queue.refuse_object(listing[4], "local path already belongs to another key")
        await state.queue.record_results(
            [
                ObjectResult(listing[0].key, ObjectState.DONE, 1),
                ObjectResult(listing[1].key, ObjectState.DONE, 2),
                ObjectResult(listing[2].key, ObjectState.FAILED, 6, "timeout"),
            ]
        )
        tally = await state.queue.tally(QIN_UI_81.crdc_series_uuid)
        assert tally.files_done == 2
        assert tally.bytes_done == 2 * 58_786
        assert tally.listed == 4
        assert tally.by_state == {"done": 2, "failed": 1, "pending": 1, "refused": 1}
        empty = await state.queue.tally(QIN_UW_47.crdc_series_uuid)
        assert (empty.files_done, empty.bytes_done, empty.listed, empty.by_state) == (0, 0, 0, {})

    with_queue(db, scenario)


def test_finish_series_records_the_verdict_and_releases_the_lease(tmp_path: Path) -> None:
    db = tmp_path / "state.sqlite"
    listing = objects_of(QIN_UI_81, 2)

    async def scenario(state: State) -> None:
        await enqueue(state, [placement(QIN_UI_81)])
        await state.queue.claim_series("worker", 1, 60, now=1000.0)
        await state.queue.record_listing(listing)
        await state.queue.record_results([ObjectResult(listing[0].key, ObjectState.DONE, 1)])
        tally = await state.queue.tally(QIN_UI_81.crdc_series_uuid)
        await state.queue.finish_series(
            QIN_UI_81.crdc_series_uuid, SeriesState.INCOMPLETE, tally, "1 of 81 files verified"
        )
        # a finished series is not claimed again, however late it is
        assert await state.queue.claim_series("other", 1, 60, now=10**10) == []

    with_queue(db, scenario)
    assert query(
        db,
        "SELECT state, last_error, files_done, bytes_done, lease_owner, lease_expires FROM series",
    ) == [("incomplete", "1 of 81 files verified", 1, 58_786, None, None)]


def test_requeue_unfinished_retries_failures_but_leaves_quarantined_and_refused(
    tmp_path: Path, qin_records: list[SeriesRecord]
) -> None:
    db = tmp_path / "state.sqlite"
    incomplete, failed, leased, complete, dropped = qin_records[:5]
    work = objects_of(incomplete, 5)
    dropped_objects = objects_of(dropped, 1)

    async def finish(state: State, record: SeriesRecord, verdict: SeriesState) -> None:
        tally = await state.queue.tally(record.crdc_series_uuid)
        await state.queue.finish_series(record.crdc_series_uuid, verdict, tally, f"was {verdict}")

    async def scenario(state: State) -> None:
        await enqueue(
            state, [placement(r) for r in (incomplete, failed, leased, complete, dropped)]
        )
        assert len(await state.queue.claim_series("worker", 5, 600)) == 5
        await state.queue.record_listing(work + dropped_objects)
        await state.queue.record_results(
            [
                ObjectResult(work[0].key, ObjectState.DONE, 1),
                ObjectResult(work[1].key, ObjectState.FAILED, 6, "timeout"),
                ObjectResult(work[2].key, ObjectState.QUARANTINED, 3, "md5 mismatch"),
                ObjectResult(dropped_objects[0].key, ObjectState.FAILED, 6, "timeout"),
            ]
        )
        await state.queue.refuse_object(work[3], "key is not <uuid>.dcm")
        await finish(state, incomplete, SeriesState.INCOMPLETE)
        await finish(state, failed, SeriesState.FAILED)
        await finish(state, complete, SeriesState.COMPLETE)
        await finish(state, dropped, SeriesState.INCOMPLETE)
        # the next plan no longer selects `dropped`
        await enqueue(state, [placement(r) for r in (incomplete, failed, leased, complete)])
        await state.queue.requeue_unfinished()

    with_queue(db, scenario)
    assert series_states(db) == {
        incomplete.crdc_series_uuid: "queued",
        failed.crdc_series_uuid: "queued",
        leased.crdc_series_uuid: "queued",
        complete.crdc_series_uuid: "complete",
        dropped.crdc_series_uuid: "incomplete",
    }
    assert query(db, "SELECT COUNT(*) FROM series WHERE lease_owner IS NOT NULL") == [(0,)]
    assert object_states(db) == {
        work[0].key: "done",
        work[1].key: "pending",
        work[2].key: "quarantined",
        work[3].key: "refused",
        work[4].key: "pending",
        dropped_objects[0].key: "failed",
    }


# -- reporting ------------------------------------------------------------------------


def test_status_by_collection_and_problems_report_the_right_numbers(tmp_path: Path) -> None:
    db = tmp_path / "state.sqlite"
    qin_a = objects_of(QIN_UI_81, 3, size=58_786)
    qin_b = objects_of(QIN_UW_47, 2, size=136_836)
    nc = objects_of(RICORD_NC, 2, size=386_440)

    async def scenario(state: State) -> None:
        await enqueue(state, [placement(QIN_UI_81), placement(QIN_UW_47), placement(RICORD_NC)])
        await state.queue.claim_series("worker", 3, 600)
        await state.queue.record_listing(qin_a + qin_b + nc)
        await state.queue.record_results(
            [ObjectResult(o.key, ObjectState.DONE, 1) for o in qin_a[:2] + qin_b[:1] + nc]
            + [ObjectResult(qin_b[1].key, ObjectState.QUARANTINED, 3, "md5 mismatch")]
        )
        await state.queue.refuse_object(qin_a[2], "local path already belongs to another key")
        for record, verdict, reason in (
            (QIN_UI_81, SeriesState.INCOMPLETE, "2 of 81 files verified"),
            (QIN_UW_47, SeriesState.INCOMPLETE, "1 quarantined"),
            (RICORD_NC, SeriesState.COMPLETE, None),
        ):
            tally = await state.queue.tally(record.crdc_series_uuid)
            await state.queue.finish_series(record.crdc_series_uuid, verdict, tally, reason)

        midrc, qin = await state.reports.status_by_collection()
        assert dataclasses.astuple(midrc) == (
            "midrc_ricord_1a", 1, 1, 2, 2, 772_880, 772_880, 0, 0, 0,
        )  # fmt: skip
        assert qin.collection_id == "qin_pet_phantom"
        assert (qin.series_total, qin.series_complete, qin.series_failed) == (2, 0, 0)
        assert (qin.files_expected, qin.files_done) == (81 + 47, 2 + 1)
        assert (qin.bytes_expected, qin.bytes_done) == (4_761_722 + 6_431_312, 2 * 58_786 + 136_836)
        assert (qin.files_failed, qin.files_quarantined) == (1, 1)

        problems = {
            (p.crdc_series_uuid, p.key, p.state, p.reason) for p in await state.reports.problems()
        }
        assert problems == {
            (QIN_UI_81.crdc_series_uuid, qin_a[2].key, "refused",
             "local path already belongs to another key"),
            (QIN_UW_47.crdc_series_uuid, qin_b[1].key, "quarantined", "md5 mismatch"),
            (QIN_UI_81.crdc_series_uuid, None, "incomplete", "2 of 81 files verified"),
            (QIN_UW_47.crdc_series_uuid, None, "incomplete", "1 quarantined"),
        }  # fmt: skip
        assert len(await state.reports.problems(limit=2)) == 2
        assert await state.plans.done_of(
            [QIN_UI_81.crdc_series_uuid, RICORD_NC.crdc_series_uuid]
        ) == (
            2 + 2,
            2 * 58_786 + 772_880,
        )

    with_queue(db, scenario)
