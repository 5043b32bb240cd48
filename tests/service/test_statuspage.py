"""The status page at ``/``: rendered from /status with every value escaped, and in a real
headless Chromium against a real daemon it shows the numbers /status gives (files, bytes,
release, each collection, the quarantined file and its error) and reloads itself."""

from __future__ import annotations

import asyncio
import threading
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from idc_sync.service.httpapi import HttpServer
from idc_sync.service.statuspage import duration_text, render, size_text
from tests.support import dataset
from tests.support.browser import Page, dump_dom, keep_loading
from tests.support.daemon import Running, daemon_settings, make_daemon, wait_for
from tests.support.s3server import S3TestServer

NOW = 1_796_000_000.0


def _status(**changes: Any) -> dict[str, Any]:
    overall = {"series_total": 3, "series_complete": 2, "series_failed": 0, "series_pending": 1,
               "files_expected": 1200, "files_done": 1000, "files_failed": 1,
               "files_quarantined": 2, "files_pending": 197, "bytes_expected": 3_000_000_000,
               "bytes_done": 1_500_000_000, "bytes_pending": 1_500_000_000}  # fmt: skip
    status: dict[str, Any] = {
        "pid": 42, "state_dir": "/var/lib/idc-sync", "phase": "mirroring", "ready": True,
        "started_at": NOW - 7200, "idc_release": 25, "latest_release": None, "shard": None,
        "last_plan": {"finished_at": NOW - 7000}, "next_plan_in_seconds": 3600.0,
        "overall": overall,
        "collections": [{"collection_id": "qin_pet_phantom", **overall}],
        "rate_bytes_per_second": 12_500_000.0, "max_bytes_per_second": 0,
        "eta_seconds": 120.0, "last_complete_at": None, "filesystems": [],
        "recent_errors": [], "problems": [],
    }  # fmt: skip
    status.update(changes)
    return status


def test_the_page_shows_progress_release_rate_and_eta() -> None:
    page = Page(render(_status(), now=NOW))
    assert page.by_id["phase"] == "mirroring"
    assert page.by_id["idc-release"] == "v25"
    assert page.by_id["files"] == "1,000 of 1,200"
    assert page.by_id["bytes"].startswith("1.5 GB of 3.0 GB")
    assert page.by_id["failed"] == "1 / 2"
    assert page.by_id["rate"] == "12.5 MB/s over the last minute"
    assert page.by_id["eta"] == "2 min"
    assert page.collections["qin_pet_phantom"]["files"] == "1,000 / 1,200"
    assert page.collections["qin_pet_phantom"]["progress"] == "50.0%"
    assert page.title == "idc-sync: mirroring, 50.0% of v25"


def test_every_value_from_the_index_config_and_network_is_escaped() -> None:
    hostile = '<script>alert("x")</script>&amp;'
    markup = render(
        _status(
            phase='idle"><img src=x onerror=alert(1)>',
            state_dir=hostile,
            collections=[{**_status()["overall"], "collection_id": hostile}],
            recent_errors=[
                {
                    "time": NOW,
                    "level": "error",
                    "message": f"GET {hostile}",
                    "series": hostile,
                    "object": hostile,
                }
            ],
            problems=[
                {
                    "collection_id": hostile,
                    "crdc_series_uuid": hostile,
                    "key": hostile,
                    "state": "failed",
                    "reason": hostile,
                }
            ],
            filesystems=[{"role": "mirror", "path": hostile, "avail_bytes": 1, "size_bytes": 2}],
        ),
        now=NOW,
    )
    assert "<script" not in markup
    assert "<img" not in markup
    page = Page(markup)
    assert list(page.collections) == [hostile]  # shown as written, not interpreted
    assert page.by_id["phase"] == 'idle"><img src=x onerror=alert(1)>'
    assert page.tables["errors"][1][-1] == f"GET {hostile}"
    assert page.tables["problems"][1][-1] == hostile
    assert page.by_id["disk-mirror"].endswith(f"at {hostile}")


def test_what_is_not_known_yet_reads_as_such_not_as_zero() -> None:
    starting = _status(phase="planning", ready=False, idc_release=None, last_plan=None,
                       collections=[], eta_seconds=None, rate_bytes_per_second=0.0)  # fmt: skip
    page = Page(render(starting, now=NOW))
    assert page.by_id["idc-release"] == "unknown"
    assert page.by_id["latest-release"] == "not known yet"
    assert page.by_id["eta"] == "unknown"
    assert page.by_id["last-complete"] == "never"
    assert "collections" not in page.tables
    assert "(not ready)" in render(starting, now=NOW)


def test_a_newer_release_is_pointed_out_and_the_current_one_is_not() -> None:
    assert Page(render(_status(latest_release=26), now=NOW)).by_id["latest-release"] == (
        "v26: newer than the mirror"
    )
    assert Page(render(_status(latest_release=25), now=NOW)).by_id["latest-release"] == "v25"


def test_progress_says_100_percent_only_when_all_is_done() -> None:
    almost = {**_status()["overall"], "bytes_expected": 10_000, "bytes_done": 9_999}
    assert Page(render(_status(overall=almost), now=NOW)).title.endswith("99.9% of v25")
    done = {**almost, "bytes_done": 10_000}
    assert Page(render(_status(overall=done), now=NOW)).title.endswith("100% of v25")


def test_a_complete_mirror_has_nothing_left_and_says_when_it_was_complete() -> None:
    overall = {**_status()["overall"], "files_done": 1200, "bytes_done": 3_000_000_000,
               "files_failed": 0, "files_quarantined": 0, "files_pending": 0,
               "bytes_pending": 0}  # fmt: skip
    page = Page(render(_status(overall=overall, eta_seconds=None, last_complete_at=NOW - 90),
                       now=NOW))  # fmt: skip
    assert page.by_id["eta"] == "nothing left"
    assert page.by_id["last-complete"].endswith("(1 min 30 s ago)")


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0 s"), (45, "45 s"), (725, "12 min 5 s"), (3600, "1 h"), (11_520, "3 h 12 min"),
     (183_600, "2 d 3 h"), (86_460, "1 d"), (None, "unknown")],
)  # fmt: skip
def test_duration_text(seconds: float | None, text: str) -> None:
    assert duration_text(seconds) == text


@pytest.mark.parametrize(
    ("count", "text"),
    [(0, "0 B"), (999, "999 B"), (1000, "1.0 kB"), (15_500_000, "15.5 MB"),
     (99.9e12, "99.9 TB"), (2e15, "2,000.0 TB")],
)  # fmt: skip
def test_size_text(count: float, text: str) -> None:
    assert size_text(count) == text


# -- in a real browser -------------------------------------------------------------------


@pytest.mark.slow
def test_in_a_browser_the_page_shows_the_numbers_of_status(
    tmp_path: Path, s3_server: S3TestServer
) -> None:
    phantom, two = dataset.selection("qin_pet_phantom_small")[:2], dataset.selection("two")
    rows = phantom + two
    uploaded = dataset.populate(s3_server, rows)
    bad_key = sorted(key for _, key in uploaded if key.startswith(phantom[0]["crdc_series_uuid"]))[
        3
    ]
    s3_server.faults.add("flip", keys=[bad_key], on=["GET"])  # never right: quarantined
    settings = daemon_settings(tmp_path, s3_server.endpoint, rows, max_integrity_attempts=2)
    daemon = make_daemon(settings)
    with Running(daemon) as running:
        seen: dict[str, Any] = {}

        def settled() -> bool:
            nonlocal seen
            seen = running.status()
            o = seen["overall"]
            finished = o["files_done"] + o["files_quarantined"] == len(uploaded)
            return bool(seen["phase"] == "idle" and finished)

        wait_for(settled, 60, lambda: str(seen)[:2000])
        running.call(daemon.metrics.set_latest_release, seen["idc_release"] + 1)
        wait_for(lambda: running.status()["latest_release"] is not None, 10)
        status = running.status()
        url = running.url("/")
        with urllib.request.urlopen(url, timeout=10) as reply:
            content_type = reply.headers["Content-Type"]
            policy = reply.headers["Content-Security-Policy"]
        page = Page(dump_dom(url))
        assert running.stop() == 0

    assert content_type == "text/html; charset=utf-8"
    assert "default-src 'none'" in policy
    o = status["overall"]
    assert o["files_quarantined"] == 1
    assert page.by_id["phase"] == "idle"
    assert page.by_id["idc-release"] == f"v{status['idc_release']}"
    assert page.by_id["latest-release"] == f"v{status['idc_release'] + 1}: newer than the mirror"
    assert page.by_id["files"] == f"{o['files_done']:,} of {o['files_expected']:,}"
    assert page.by_id["series"] == f"{o['series_complete']:,} of {o['series_total']:,}"
    assert page.by_id["bytes"].startswith(
        f"{size_text(o['bytes_done'])} of {size_text(o['bytes_expected'])}"
    )
    assert page.by_id["failed"] == f"{o['files_failed']} / {o['files_quarantined']}"
    assert page.by_id["last-complete"] == "never"
    assert set(page.collections) == {c["collection_id"] for c in status["collections"]}
    assert len(page.collections) == 2
    for c in status["collections"]:
        row = page.collections[c["collection_id"]]
        assert row["series"] == f"{c['series_complete']:,} / {c['series_total']:,}"
        assert row["files"] == f"{c['files_done']:,} / {c['files_expected']:,}"
        assert row["bytes"] == f"{size_text(c['bytes_done'])} / {size_text(c['bytes_expected'])}"
        assert row["quarantined"] == str(c["files_quarantined"])
        assert row["failed"] == str(c["files_failed"])
    assert page.collections["qin_pet_phantom"]["quarantined"] == "1"
    # the quarantined file is named among the problems, and its log line among the errors
    assert any(bad_key in cells for cells in page.tables["problems"][1:])
    errors = page.tables["errors"][1:]
    assert errors
    assert any(bad_key in cells for cells in errors)


class _CountingSource:
    """Stands in for the daemon behind the HTTP server: counts the page's loads."""

    def __init__(self) -> None:
        self.loads = 0
        self._lock = threading.Lock()

    def healthy(self) -> bool:
        return True

    def ready(self) -> bool:
        return True

    async def status(self) -> dict[str, Any]:
        with self._lock:
            self.loads += 1
        return _status()

    async def metrics_text(self) -> bytes:
        return b""


@pytest.mark.slow
def test_in_a_browser_the_page_reloads_itself() -> None:
    source = _CountingSource()
    started = threading.Event()
    stop: asyncio.Event | None = None
    address: tuple[str, int] = ("", 0)

    async def serve() -> None:
        nonlocal stop, address
        stop = asyncio.Event()
        server = HttpServer(source)
        address = await server.start("127.0.0.1:0")
        started.set()
        try:
            await stop.wait()
        finally:
            await server.close()

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),))
    thread.start()
    try:
        assert started.wait(10)
        keep_loading(f"http://127.0.0.1:{address[1]}/", lambda: source.loads >= 3, timeout=60)
    finally:
        assert stop is not None
        loop.call_soon_threadsafe(stop.set)
        thread.join(10)
        loop.close()
    assert source.loads >= 3
