"""`serve` follows IDC releases by itself: it checks a package index on 127.0.0.1 at start, on
SIGHUP and every release_check_interval; a newer release is reported in /status and the
metrics; with follow_releases it is fetched and mirrored (new series fetched, revised and
removed ones retired once their replacements are verified). A failed check is counted and
logged, and the mirror carries on with its release."""

from __future__ import annotations

import re
import socket
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from idc_sync.catalog import sources
from idc_sync.config import Settings
from idc_sync.state.store import STATE_DB
from tests.support import dataset, wheels
from tests.support.daemon import Running, daemon_settings, make_daemon, wait_for
from tests.support.package_index import PAGE, PackageIndex, publish_release
from tests.support.s3server import S3TestServer

pytestmark = pytest.mark.timeout(120)


Releases = tuple[wheels.FakeRelease, wheels.FakeRelease, dict[str, wheels.Row]]


@pytest.fixture(scope="module")
def releases() -> tuple[wheels.FakeRelease, wheels.FakeRelease, dict[str, wheels.Row]]:
    return wheels.two_releases()


@pytest.fixture
def world(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, s3_server: S3TestServer, releases: Releases
) -> Iterator[tuple[PackageIndex, S3TestServer]]:
    """idc-index-data 25.0.0 (the fake) installed, every series of both releases in the
    bucket, and a package index that offers 25.0.0."""
    first, _, roles = releases
    monkeypatch.syspath_prepend(str(wheels.unpack_into(tmp_path / "site", first)))
    for row in roles.values():
        s3_server.put_many(str(row["aws_bucket"]), dataset.series_objects(row))
    with PackageIndex() as index:
        publish_release(index, first)
        yield index, s3_server


def watching(
    tmp_path: Path, world: tuple[PackageIndex, S3TestServer], **overrides: Any
) -> Settings:
    index, server = world
    values: dict[str, Any] = {"series": [], "collections": [wheels.COLLECTION],
                              "index_url": index.url, "follow_releases": True,
                              "release_check_interval": 86400.0}  # fmt: skip
    values.update(overrides)
    return daemon_settings(tmp_path, server.endpoint, [], **values)


def series(settings: Settings) -> dict[str, tuple[str, float]]:
    with sqlite3.connect(settings.state_path / STATE_DB) as db:
        rows = db.execute("SELECT crdc_series_uuid, state, updated_at FROM series")
        return {uuid: (state, updated) for uuid, state, updated in rows}


def failures(running: Running) -> dict[str, float]:
    text = running.get("/metrics")[1].decode()
    found = re.findall(r'idc_sync_release_check_failures_total\{reason="(\w+)"\} (\S+)', text)
    return {reason: float(count) for reason, count in found}


def last_check(running: Running) -> float:
    text = running.get("/metrics")[1].decode()
    (found,) = re.findall(r"^idc_sync_last_release_check_timestamp_seconds (\S+)$", text, re.M)
    return float(found)


def page_requests(index: PackageIndex) -> int:
    return sum(path == PAGE for path, _ in index.behaviour.requests)


def test_serve_follows_a_new_release_on_sighup_and_retires_what_it_replaces(
    tmp_path: Path, world: tuple[PackageIndex, S3TestServer], releases: Releases
) -> None:
    first, second, roles = releases
    index, _ = world
    settings = watching(tmp_path, world)
    uuid = {role: str(row["crdc_series_uuid"]) for role, row in roles.items()}
    started = time.time()
    with Running(make_daemon(settings)) as running:
        status = running.wait_mirrored(4)
        wait_for(lambda: running.status()["latest_release"] == 25, 20)
        assert status["idc_release"] == 25
        assert page_requests(index) == 1  # the check at start
        wait_for(lambda: last_check(running) >= started, 20)
        first_check = last_check(running)

        publish_release(index, second)
        running.call(running.daemon.request_reload)

        def followed() -> bool:
            seen = running.status()
            return seen["idc_release"] == 26 and seen["phase"] == "idle" and (
                series(settings)[uuid["removed"]][0] == "retired")  # fmt: skip

        wait_for(followed, 60, lambda: str(running.status()))
        status = running.status()
        assert status["latest_release"] == 26
        assert status["overall"]["files_done"] == 4
        assert failures(running) == dict.fromkeys(failures(running), 0.0)
        assert last_check(running) > first_check  # the release followed on SIGHUP
    states = series(settings)
    for role in ("kept", "also_kept", "revised_new", "added"):
        assert states[uuid[role]][0] == "complete", role
    for role in ("revised", "removed"):
        assert states[uuid[role]][0] == "retired", role
    # the old version left only after its replacement was verified
    assert states[uuid["revised"]][1] >= states[uuid["revised_new"]][1]
    assert len(list((settings.retired_path / "v25").rglob("*.dcm"))) == 2
    assert [s.version for s in sources.followed(settings.state_path)] == ["26.0.0"]
    assert first.uuids != second.uuids


def _unreachable_url() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{probe.getsockname()[1]}/simple/"


@pytest.mark.parametrize("failure", ["index", "hash", "size", "wheel"])
def test_a_failed_check_is_counted_and_logged_and_the_mirror_stays_on_its_release(
    tmp_path: Path, world: tuple[PackageIndex, S3TestServer], releases: Releases, failure: str,
) -> None:  # fmt: skip
    index, _ = world
    _, second, _ = releases
    overrides: dict[str, Any] = {}
    if failure == "index":
        overrides["index_url"] = _unreachable_url()
    elif failure == "hash":
        publish_release(index, second, sha256="f" * 64)
    elif failure == "size":
        publish_release(index, second, size=10**12)
    else:
        index.publish(wheels.wheel_name("26.0.0"), b"not a zip at all")
    settings = watching(tmp_path, world, **overrides)
    with Running(make_daemon(settings)) as running:
        running.wait_mirrored(4)
        wait_for(lambda: failures(running).get(failure) == 1.0, 20, lambda: str(failures(running)))
        status = running.status()
        assert status["idc_release"] == 25
        assert status["ready"] is True
        # a newer release that could not be fetched is still reported
        assert status["latest_release"] == (None if failure == "index" else 26)
        assert any("newer IDC release failed" in e["message"] and f"({failure})" in e["message"]
                   for e in status["recent_errors"])  # fmt: skip
        assert {k: v for k, v in failures(running).items() if k != failure} == dict.fromkeys(
            {"index", "download", "hash", "size", "wheel"} - {failure}, 0.0)  # fmt: skip
        assert last_check(running) == 0  # never succeeded: IdcSyncReleaseChecksFailing
    assert sources.followed(settings.state_path) == []
    catalogs = settings.state_path / sources.CATALOGS_DIR
    assert not catalogs.exists() or not list(catalogs.iterdir())


def test_the_index_is_checked_every_release_check_interval(
    tmp_path: Path, world: tuple[PackageIndex, S3TestServer]
) -> None:
    index, _ = world
    settings = watching(tmp_path, world, release_check_interval=0.2)
    with Running(make_daemon(settings)) as running:
        running.wait_mirrored(4)
        wait_for(lambda: page_requests(index) >= 3, 20)


def test_release_check_interval_0_never_asks_the_index(
    tmp_path: Path, world: tuple[PackageIndex, S3TestServer]
) -> None:
    index, _ = world
    settings = watching(tmp_path, world, release_check_interval=0)
    with Running(make_daemon(settings)) as running:
        running.wait_mirrored(4)
        running.call(running.daemon.request_reload)
        wait_for(lambda: running.status()["phase"] == "idle", 20)
        assert running.status()["latest_release"] is None
    assert page_requests(index) == 0
