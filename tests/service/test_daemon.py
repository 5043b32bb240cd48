"""`idc-sync serve`: the daemon plans, mirrors, replans on schedule and on SIGHUP (a broken
config is reported and the old one kept), drains on SIGTERM within its deadline, exits at
once on a second signal, and holds the state directory against a second daemon. Real
S3TestServer, real SQLite, real files; signals against a real `idc-sync serve` process."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import sqlite3
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from idc_sync.config import Settings
from idc_sync.core.errors import ConfigurationError, StateError
from idc_sync.core.logs import JsonFormatter, concerns
from idc_sync.service.sdnotify import Notifier
from idc_sync.state.store import STATE_DB
from tests.support import dataset
from tests.support.daemon import IDC_SYNC, Running, daemon_settings, make_daemon, wait_for
from tests.support.mirror import assert_mirrored, run
from tests.support.s3server import S3TestServer


def object_states(settings: Settings) -> dict[str, int]:
    with sqlite3.connect(settings.state_path / STATE_DB) as db:
        return dict(db.execute("SELECT state, COUNT(*) FROM object GROUP BY state").fetchall())


def series_states(settings: Settings) -> dict[str, int]:
    with sqlite3.connect(settings.state_path / STATE_DB) as db:
        rows = db.execute("SELECT state, COUNT(*) FROM series WHERE selected GROUP BY state")
        return dict(rows.fetchall())


# -- serving ---------------------------------------------------------------------------


def test_serve_mirrors_the_selection_then_idles_and_stops_with_exit_0(
    tmp_path: Path, s3_server: S3TestServer
) -> None:
    rows = dataset.selection("two") + dataset.selection("single_instance")
    uploaded = dataset.populate(s3_server, rows)
    settings = daemon_settings(tmp_path, s3_server.endpoint, rows)
    with Running(make_daemon(settings)) as running:
        status = running.wait_mirrored(len(uploaded))
        assert status["ready"] is True
        s3_server.clear_requests()
        time.sleep(0.5)
        assert s3_server.requests() == [], "an idle daemon keeps asking the buckets"
        assert running.stop() == 0
    assert_mirrored(settings.mirror_root, rows, uploaded)
    assert series_states(settings) == {"complete": len(rows)}


def test_a_second_daemon_on_the_same_state_names_the_holder_and_fails(
    tmp_path: Path, s3_server: S3TestServer
) -> None:
    rows = dataset.selection("two")
    uploaded = dataset.populate(s3_server, rows)
    settings = daemon_settings(tmp_path, s3_server.endpoint, rows)
    with Running(make_daemon(settings)) as running:
        running.wait_mirrored(len(uploaded))
        with pytest.raises(StateError, match=rf"in use by idc-sync pid {os.getpid()} on "):
            asyncio.run(make_daemon(settings).run())
        # the real command: exit code 3 and the holder in the message
        env = {k: v for k, v in os.environ.items() if not k.startswith("IDC_SYNC_")}
        result = subprocess.run(
            [str(IDC_SYNC), "serve", "--destination", str(settings.mirror_root),
             "--series", str(rows[0]["crdc_series_uuid"]), "--endpoint", s3_server.endpoint],
            capture_output=True, text=True, timeout=60, check=False, env=env,
        )  # fmt: skip
        assert result.returncode == 3, result.stderr
        assert f"idc-sync pid {os.getpid()} on {socket.gethostname()}" in result.stderr
        assert running.status()["ready"], "the first daemon was disturbed"


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2])
def test_drain_lets_in_flight_files_finish_claims_nothing_new_and_exits_0(
    tmp_path: Path, s3_server: S3TestServer, workers: int
) -> None:
    rows = dataset.selection("qin_pet_phantom_small")[:1]  # 81 files
    uploaded = dataset.populate(s3_server, rows)
    s3_server.faults.add("latency", seconds=1.0, on=["GET"])
    # four objects in flight in whichever event loop (this process, or a worker process)
    # leases the one series
    settings = daemon_settings(
        tmp_path, s3_server.endpoint, rows, concurrency=4 * workers,
        series_concurrency=workers, workers=workers,
    )  # fmt: skip
    daemon = make_daemon(settings)
    in_flight = daemon.metrics.in_flight.labels("get")
    with Running(daemon) as running:
        wait_for(lambda: in_flight._value.get() == 4, 30)
        stopped_at = time.monotonic()
        running.call(daemon.request_stop, "SIGTERM")
        assert running.stop(signal_it=False) == 0
        took = time.monotonic() - stopped_at
    assert took < 5, f"drain took {took:.1f} s for 1 s requests"
    gets = [r for r in s3_server.requests() if r.kind == "GET"]
    states = object_states(settings)
    # the four requests in flight finished and were recorded; nothing new was started
    assert states.get("done", 0) == len(gets) >= 4
    assert states.get("done", 0) < len(uploaded)
    assert series_states(settings) == {"queued": 1}, "an interrupted series stays queued"
    s3_server.faults.clear()
    assert run(settings).ok  # and the next run finishes the job
    assert_mirrored(settings.mirror_root, rows, uploaded)


def test_drain_deadline_cancels_what_is_still_running(
    tmp_path: Path, s3_server: S3TestServer
) -> None:
    rows = dataset.selection("two")
    uploaded = dataset.populate(s3_server, rows)
    s3_server.faults.add("latency", seconds=60, on=["GET"])
    settings = daemon_settings(tmp_path, s3_server.endpoint, rows, drain_seconds=0.5)
    daemon = make_daemon(settings)
    in_flight = daemon.metrics.in_flight.labels("get")
    with Running(daemon) as running:
        wait_for(lambda: in_flight._value.get() > 0, 30)
        stopped_at = time.monotonic()
        assert running.stop() == 0
        took = time.monotonic() - stopped_at
    assert 0.4 < took < 5, took
    assert object_states(settings).get("done", 0) == 0
    assert not list(settings.mirror_root.rglob("*.dcm")), "a cancelled file reached its name"
    s3_server.faults.clear()
    assert run(settings).ok  # the lease of the cancelled series does not block the next run
    assert_mirrored(settings.mirror_root, rows, uploaded)


def test_a_second_stop_signal_exits_at_once(tmp_path: Path, s3_server: S3TestServer) -> None:
    rows = dataset.selection("two")
    dataset.populate(s3_server, rows)
    s3_server.faults.add("latency", seconds=60, on=["GET"])
    settings = daemon_settings(tmp_path, s3_server.endpoint, rows, drain_seconds=1.5)
    exits: list[int] = []
    daemon = make_daemon(settings, hard_exit=exits.append)
    in_flight = daemon.metrics.in_flight.labels("get")
    with Running(daemon) as running:
        wait_for(lambda: in_flight._value.get() > 0, 30)
        running.call(daemon.request_stop, "SIGTERM")
        running.call(daemon.request_stop, "SIGTERM")
        wait_for(lambda: exits == [130], 2)
        assert running.alive, "the first signal alone drains: it still waits for the GET"
        assert running.stop(signal_it=False) == 0  # (here hard_exit only took note)


def test_sighup_reloads_the_config_and_mirrors_what_it_adds(
    tmp_path: Path, s3_server: S3TestServer
) -> None:
    first, added = dataset.selection("two"), dataset.selection("single_instance")
    uploaded = dataset.populate(s3_server, first + added)
    settings = daemon_settings(tmp_path, s3_server.endpoint, first)
    configs: list[Settings | Exception] = []

    def reload() -> Settings:
        config = configs.pop(0)
        if isinstance(config, Exception):
            raise config
        return config

    daemon = make_daemon(settings, reload=reload)
    with Running(daemon) as running:
        running.wait_mirrored(sum(1 for _, k in uploaded if k.startswith(
            str(first[0]["crdc_series_uuid"]))))  # fmt: skip
        # a broken config: reported, the old one kept (and replanned), the daemon serves on
        configs.append(ConfigurationError("config error in /etc/x.toml: concurrency: bad"))
        running.call(daemon.request_reload)
        wait_for(lambda: not configs and running.status()["phase"] == "idle", 20)
        status = running.status()
        assert status["ready"]
        assert status["last_plan"]["series"] == len(first)
        assert any("reload failed" in e["message"] and "concurrency: bad" in e["message"]
                   for e in status["recent_errors"]), status["recent_errors"]  # fmt: skip
        # a good one: replanned, and the added series is mirrored
        configs.append(daemon_settings(tmp_path, s3_server.endpoint, first + added))
        running.call(daemon.request_reload)
        status = running.wait_mirrored(len(uploaded))
        assert status["last_plan"]["series"] == len(first + added)
        assert_mirrored(settings.mirror_root, first + added, uploaded)
        # and one that drops a series and prunes: it is retired after the next round
        configs.append(
            daemon_settings(tmp_path, s3_server.endpoint, added, prune=True, allow_retire=True)
        )
        running.call(daemon.request_reload)
        kept = {
            k: v for k, v in uploaded.items() if k[1].startswith(str(added[0]["crdc_series_uuid"]))
        }

        def mirrored_files() -> int:  # retired files move under the state directory
            try:
                found = list(settings.mirror_root.rglob("*.dcm"))
            except FileNotFoundError:  # a directory emptied by the retirement vanished
                return -1
            return sum(1 for path in found if ".idc-sync" not in path.parts)

        wait_for(lambda: mirrored_files() == len(kept), 20)
        assert running.stop() == 0
    assert_mirrored(settings.mirror_root, added, kept)
    assert settings.provenance_path.exists()


def test_scheduled_replan_retries_what_failed(tmp_path: Path, s3_server: S3TestServer) -> None:
    """A 404 fails a file for this round; the next scheduled plan re-queues its series and
    the file, put on the server meanwhile, is fetched."""
    rows = dataset.selection("two")
    uploaded = dataset.populate(s3_server, rows)
    (bucket, key), data = next(iter(uploaded.items()))
    s3_server.delete(bucket, key)
    s3_server.faults.add("list_extra", on=["LIST"], extra_keys=[key])  # still listed
    settings = daemon_settings(tmp_path, s3_server.endpoint, rows, replan_interval=1.5)
    with Running(make_daemon(settings)) as running:
        wait_for(lambda: running.status()["overall"]["files_failed"] == 1, 20)
        status = running.status()
        assert any(p["key"] == key for p in status["problems"]), status["problems"]
        assert any(e["object"] == key for e in status["recent_errors"]), status["recent_errors"]
        s3_server.faults.clear()
        s3_server.put(bucket, key, data)
        running.wait_mirrored(len(uploaded), timeout=30)
        assert running.stop() == 0
    assert_mirrored(settings.mirror_root, rows, uploaded)


def test_systemd_hears_ready_after_the_plan_watchdog_pings_and_stopping(
    tmp_path: Path, s3_server: S3TestServer
) -> None:
    rows = dataset.selection("two")
    uploaded = dataset.populate(s3_server, rows)
    settings = daemon_settings(tmp_path, s3_server.endpoint, rows)
    path = str(tmp_path / "notify")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(path)
    listener.settimeout(0.2)
    messages: list[list[str]] = []
    done = threading.Event()

    def read() -> None:  # keep up: a unix datagram queue holds only ~10 messages
        while not done.is_set():
            try:
                messages.append(listener.recv(4096).decode().split("\n"))
            except TimeoutError:
                continue

    reader = threading.Thread(target=read)
    reader.start()
    try:
        daemon = make_daemon(settings, notifier=Notifier(path, watchdog_usec=200_000),
                             report_interval=0.2)  # fmt: skip
        with Running(daemon) as running:
            running.wait_mirrored(len(uploaded))
            time.sleep(0.5)
            assert running.stop() == 0
        time.sleep(0.3)
    finally:
        done.set()
        reader.join()
        listener.close()
    firsts = [m[0] for m in messages]
    assert firsts.count("READY=1") == 1
    assert firsts.count("WATCHDOG=1") >= 4  # every 0.1 s for a second or more
    assert "STOPPING=1" in firsts
    assert "READY=1" not in firsts[firsts.index("STOPPING=1") :]
    ready = messages[firsts.index("READY=1")]
    assert ready[1].startswith("STATUS=")
    statuses = [line for m in messages for line in m if line.startswith("STATUS=")]
    assert any(f"{len(uploaded)}/{len(uploaded)} files" in s for s in statuses), statuses
    assert firsts.index("READY=1") > firsts.index("STATUS=planning the selection")


# -- the real command, real signals -----------------------------------------------------


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def serve_process(tmp_path: Path, s3_server: S3TestServer) -> Iterator[dict[str, Any]]:
    rows = dataset.selection("two")
    uploaded = dataset.populate(s3_server, rows)
    port = _free_port()
    config = tmp_path / "config.toml"
    config.write_text(
        f'destination = "{tmp_path / "mirror"}"\nlog_format = "json"\n'
        "release_check_interval = 0\n"  # no package index outside 127.0.0.1
        f"series = {json.dumps([str(r['crdc_series_uuid']) for r in rows])}\n"
        f'[endpoints]\naws = "{s3_server.endpoint}"\n[http]\nlisten = "127.0.0.1:{port}"\n'
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("IDC_SYNC_")}
    process = subprocess.Popen(
        [str(IDC_SYNC), "serve", "--config", str(config)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path,
    )  # fmt: skip
    try:
        yield {"process": process, "port": port, "config": config, "files": len(uploaded),
               "env": env, "settings": tmp_path}  # fmt: skip
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=30)


def _get(port: int, path: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())
    except OSError:
        return 0, {}


@pytest.mark.slow
def test_serve_command_reloads_on_sighup_drains_on_sigterm_and_logs_json(
    serve_process: dict[str, Any],
) -> None:
    process, port, config = serve_process["process"], serve_process["port"], serve_process["config"]

    def mirrored() -> bool:
        assert process.poll() is None, process.communicate()
        code, body = _get(port, "/status")
        return code == 200 and body["phase"] == "idle" and (
            body["overall"]["files_done"] == serve_process["files"])  # fmt: skip

    wait_for(mirrored, 60)
    assert _get(port, "/readyz")[0] == 200
    health = subprocess.run([str(IDC_SYNC), "health", "--listen", f"127.0.0.1:{port}"],
                            capture_output=True, text=True, timeout=60, check=False,
                            env=serve_process["env"])  # fmt: skip
    assert health.returncode == 0, health.stderr

    good = config.read_text()
    config.write_text(good + "bogus_key = 1\n")
    process.send_signal(signal.SIGHUP)

    def reload_reported() -> bool:
        errors = _get(port, "/status")[1].get("recent_errors", [])
        return any("reload failed" in e["message"] for e in errors)

    wait_for(reload_reported, 20)
    assert _get(port, "/readyz")[0] == 200, "a broken config on SIGHUP stopped the daemon"

    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 0, stderr
    lines = [json.loads(line) for line in stderr.splitlines()]  # every line is JSON
    messages = [line["message"] for line in lines]
    assert any("SIGTERM: draining" in m for m in messages), messages
    assert any("bogus_key: unknown key" in m for m in messages), messages
    assert all({"time", "level", "logger", "message"} <= set(line) for line in lines)
    health = subprocess.run([str(IDC_SYNC), "health", "--listen", f"127.0.0.1:{port}"],
                            capture_output=True, text=True, timeout=60, check=False,
                            env=serve_process["env"])  # fmt: skip
    assert health.returncode == 1, "health passes with no daemon running"


# -- JSON logs ---------------------------------------------------------------------------

SERIES = "4b026528-a8e9-4c57-ab35-d27857ad766d"
KEY = f"{SERIES}/0a1b2c3d-0000-4000-8000-000000000001.dcm"


def _record(message: str, *args: object, **extra: object) -> logging.LogRecord:
    record = logging.LogRecord(
        "idc_sync.run.mirror", logging.ERROR, __file__, 1, message, args, None
    )
    for name, value in extra.items():
        setattr(record, name, value)
    return record


def test_json_log_line_carries_series_and_object_passed_with_extra() -> None:
    line = json.loads(JsonFormatter().format(_record("gone", series=SERIES, object=KEY,
                                                     attempts=3)))  # fmt: skip
    assert line["series"] == SERIES
    assert line["object"] == KEY
    assert line["attempts"] == 3
    assert line["level"] == "error"
    assert line["message"] == "gone"
    assert line["time"].endswith("Z")


def test_json_log_line_finds_series_and_object_in_the_arguments() -> None:
    line = json.loads(JsonFormatter().format(_record("%s failed: %s", KEY, "HTTP 404")))
    assert (line["series"], line["object"]) == (SERIES, KEY)
    assert line["message"] == f"{KEY} failed: HTTP 404"
    series_only = _record("series %s (%s): %s", SERIES, "rider_pilot", "bad")
    assert concerns(series_only) == (SERIES, None)
    assert concerns(_record("planned %s series", 44)) == (None, None)
