"""The running totals behind /status: kept by SQLite triggers in the same transaction as
every write to the queue, they must equal a full recount (``status_by_collection``) after
syncs with failures, operator retries, replans that retire series, restarts, and when a
state database made before they existed is opened. Real server, real SQLite, real files."""

from __future__ import annotations

import asyncio
import sqlite3
from dataclasses import asdict
from pathlib import Path
from typing import Any

from idc_sync.config import Settings
from idc_sync.core.model import CollectionStatus
from idc_sync.state.store import STATE_DB, State
from tests.support import dataset
from tests.support.daemon import Running, daemon_settings, make_daemon, wait_for
from tests.support.mirror import Row, run, settings_for
from tests.support.s3server import S3TestServer


async def _both(db: Path) -> tuple[list[CollectionStatus], list[CollectionStatus]]:
    async with await State.open(db, create=False) as state:
        return await state.reports.collection_totals(), await state.reports.status_by_collection()


def assert_totals_exact(settings: Settings) -> list[CollectionStatus]:
    """The running totals equal a full recount; returns them."""
    totals, recount = asyncio.run(_both(settings.state_path / STATE_DB))
    assert totals == recount
    return totals


def _faulty(s3_server: S3TestServer, rows: list[Row]) -> dict[str, str]:
    """Upload ``rows`` and arrange one quarantined, one failed, one missing and one refused
    object in the first series; returns the keys by what happens to them."""
    uploaded = dataset.populate(s3_server, rows)
    first = str(rows[0]["crdc_series_uuid"])
    keys = sorted(key for _, key in uploaded if key.startswith(first))
    chosen = {"quarantined": keys[1], "failed": keys[2], "missing": keys[3]}
    s3_server.faults.add("flip", keys=[chosen["quarantined"]], on=["GET"])
    s3_server.faults.add("status_500", keys=[chosen["failed"]], on=["GET"])
    s3_server.delete(str(rows[0]["aws_bucket"]), chosen["missing"])
    chosen["refused"] = f"{first}/notes.txt"
    s3_server.faults.add(
        "list_extra", extra_keys=[chosen["refused"]], on=["LIST"], key_prefix=first
    )
    return chosen


def test_totals_equal_a_recount_after_failures_retries_replans_and_restarts(
    tmp_path: Path, s3_server: S3TestServer
) -> None:
    small = dataset.selection("qin_pet_phantom_small")[:2]
    two, nc, single = (
        dataset.selection("two"),
        dataset.selection("cr_nc"),
        dataset.selection("single_instance"),
    )
    rows = small + two + nc
    chosen = _faulty(s3_server, rows)
    dataset.populate(s3_server, single)
    failing = {"max_attempts": 2, "max_integrity_attempts": 2}
    settings = settings_for(tmp_path, s3_server.endpoint, rows, **failing)

    assert not run(settings).ok
    totals = assert_totals_exact(settings)
    overall = {name: sum(getattr(c, name) for c in totals) for name in asdict(totals[0])
               if name != "collection_id"}  # fmt: skip
    assert overall["files_quarantined"] == 1
    assert overall["files_failed"] == 2  # the 500s and the refused key
    assert overall["series_total"] == len(rows)
    assert overall["series_complete"] == len(rows) - 1

    async def operator(db: Path) -> None:
        async with await State.open(db) as state:
            await state.repairs.retry_failed()
            recount = await state.reports.status_by_collection()
            assert await state.reports.collection_totals() == recount
            done = await state.repairs.objects_done(limit=3)
            await state.repairs.mark_for_refetch([d.key for d in done], "damaged on disk")

    asyncio.run(operator(settings.state_path / STATE_DB))
    assert_totals_exact(settings)

    # replan: one series leaves (retired), one arrives; the faults are gone
    s3_server.faults.clear()
    s3_server.put(str(rows[0]["aws_bucket"]), chosen["missing"], b"\0" * 10)
    replanned = settings_for(
        tmp_path, s3_server.endpoint, small + nc + single, **failing, prune=True,
        allow_retire=True,
    )  # fmt: skip
    run(replanned)
    totals = assert_totals_exact(replanned)
    assert {c.collection_id for c in totals} == {
        str(r["collection_id"]) for r in small + nc + single
    }
    with sqlite3.connect(replanned.state_path / STATE_DB) as db:
        retired = db.execute("SELECT COUNT(*) FROM series WHERE state = 'retired'").fetchone()
    assert retired == (1,)

    # the original selection again: the retired series is selected and fetched anew
    run(settings)
    assert_totals_exact(settings)


def test_state_made_before_the_totals_is_counted_once_when_opened(
    tmp_path: Path, s3_server: S3TestServer
) -> None:
    rows = dataset.selection("two") + dataset.selection("cr_nc")
    _faulty(s3_server, rows)
    settings = settings_for(tmp_path, s3_server.endpoint, rows, max_attempts=2,
                            max_integrity_attempts=2)  # fmt: skip
    run(settings)
    expected = assert_totals_exact(settings)
    # the state as idc-sync made it before schema version 2: no totals, nothing of version 3
    # or later
    with sqlite3.connect(settings.state_path / STATE_DB) as db:
        for kind, name in db.execute(
            "SELECT type, name FROM sqlite_master WHERE name LIKE 'totals_%' "
            "OR name IN ('collection_totals', 'series_object_totals', 'object_problems', "
            "'meta', 'selection')"
        ).fetchall():
            db.execute(f"DROP {kind.upper()} {name}")
        db.execute("ALTER TABLE series DROP COLUMN leaving")
        db.execute("ALTER TABLE object DROP COLUMN retired_path")
        db.execute("ALTER TABLE series DROP COLUMN catalog")
        db.execute("PRAGMA user_version = 1")

    assert assert_totals_exact(settings) == expected  # seeded by one full count
    s3_server.faults.clear()
    run(settings)  # and kept from then on
    assert sum(c.series_complete for c in assert_totals_exact(settings)) == len(rows) - 1


def _collections(status: dict[str, Any]) -> list[dict[str, Any]]:
    fields = set(CollectionStatus.__dataclass_fields__)
    return [{k: v for k, v in c.items() if k in fields} for c in status["collections"]]


def test_daemon_status_equals_a_recount_after_a_round_with_failures_and_a_replan(
    tmp_path: Path, s3_server: S3TestServer
) -> None:
    first = dataset.selection("two") + dataset.selection("cr_nc")
    later = dataset.selection("cr_nc") + dataset.selection("single_instance")
    _faulty(s3_server, first)
    dataset.populate(s3_server, later)
    settings = daemon_settings(tmp_path, s3_server.endpoint, first, max_attempts=2,
                               max_integrity_attempts=2)  # fmt: skip
    # the reloaded config caps bandwidth (far above what the test needs): /status says so
    reloaded = daemon_settings(tmp_path, s3_server.endpoint, later, max_attempts=2,
                               max_bytes_per_second=500_000_000, prune=True,
                               allow_retire=True)  # fmt: skip
    daemon = make_daemon(settings, reload=lambda: reloaded)

    with Running(daemon) as running:
        status: dict[str, Any] = {}

        def idle_after(plan: float | None) -> bool:
            nonlocal status
            assert running.alive, running.error
            status = running.status()
            finished = (status["last_plan"] or {}).get("finished_at")
            return status["phase"] == "idle" and finished is not None and finished != plan

        wait_for(lambda: idle_after(None), 60, lambda: str(status)[:2000])
        recount = [asdict(c) for c in assert_totals_exact(settings)]
        assert _collections(status) == recount
        assert status["overall"]["files_quarantined"] == 1
        assert any(p["key"] for p in status["problems"])
        assert status["max_bytes_per_second"] == 0

        before = status["last_plan"]["finished_at"]
        running.call(daemon.request_reload)
        wait_for(lambda: idle_after(before), 60, lambda: str(status)[:2000])
        recount = [asdict(c) for c in assert_totals_exact(reloaded)]
        assert _collections(status) == recount
        assert status["overall"]["series_total"] == len(later)
        assert status["max_bytes_per_second"] == 500_000_000
        assert running.stop() == 0
