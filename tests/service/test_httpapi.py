"""The daemon's HTTP API over real HTTP on 127.0.0.1, during and after a real sync against
S3TestServer: /healthz, /readyz, /status (JSON) and /metrics (Prometheus text), and the
CLI commands that read it (`status`, `health`)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import idc_index_data
import pytest
from prometheus_client.parser import text_string_to_metric_families

from idc_sync import __version__
from idc_sync.core.errors import ConfigurationError
from idc_sync.service.httpapi import HttpServer, parse_listen, url_of
from tests.support import dataset
from tests.support.daemon import Running, daemon_settings, make_daemon
from tests.support.mirror import assert_mirrored
from tests.support.s3server import S3TestServer

IDC_SYNC = Path(sys.executable).parent / "idc-sync"


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a Prometheus exposition, keyed by name and sorted labels."""
    found: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def test_status_and_metrics_describe_a_real_sync(tmp_path: Path, s3_server: S3TestServer) -> None:
    rows = dataset.selection("qin_pet_phantom_small")[:2] + dataset.selection("two")
    uploaded = dataset.populate(s3_server, rows)
    total = sum(len(data) for data in uploaded.values())
    settings = daemon_settings(tmp_path, s3_server.endpoint, rows)
    with Running(make_daemon(settings)) as running:
        status = running.wait_mirrored(len(uploaded))
        health = running.get("/healthz")
        ready = running.get("/readyz")
        code, body = running.get("/metrics")
        metrics = body.decode()
        assert running.stop() == 0
    assert health == (200, b'{"healthy": true}')
    assert ready == (200, b'{"ready": true}')
    assert_mirrored(settings.mirror_root, rows, uploaded)

    # /status: what is done, per collection and overall, and which release
    assert status["state_dir"] == str(settings.state_path)
    assert status["idc_release"] == int(idc_index_data.__version__.split(".")[0])
    assert status["last_plan"]["series"] == len(rows)
    assert status["last_plan"]["files"] == len(uploaded)
    overall = status["overall"]
    assert overall["files_done"] == overall["files_expected"] == len(uploaded)
    assert overall["bytes_done"] == overall["bytes_expected"] == total
    assert overall["files_pending"] == overall["bytes_pending"] == 0
    assert overall["series_complete"] == len(rows)
    by_collection = {c["collection_id"]: c for c in status["collections"]}
    assert set(by_collection) == {str(r["collection_id"]) for r in rows}
    phantom = by_collection["qin_pet_phantom"]
    assert phantom["files_done"] == sum(int(r["instanceCount"]) for r in rows[:2])
    assert status["rate_bytes_per_second"] > 0
    assert status["problems"] == []

    # /metrics: the same numbers, as Prometheus sees them
    assert code == 200
    found = samples(metrics)
    assert found[("idc_sync_fetched_files_total", ())] == len(uploaded)
    assert found[("idc_sync_fetched_bytes_total", ())] == total
    assert found[
        ("idc_sync_request_duration_seconds_count", (("kind", "get"), ("outcome", "ok")))
    ] == len(uploaded)
    assert found[
        ("idc_sync_request_duration_seconds_count", (("kind", "list"), ("outcome", "ok")))
    ] == len(rows)
    assert found[("idc_sync_requests_in_flight", (("kind", "get"),))] == 0
    assert found[("idc_sync_errors_total", (("class", "retryable"),))] == 0
    assert found[("idc_sync_selected_files", (("state", "done"),))] == len(uploaded)
    assert found[("idc_sync_selected_files", (("state", "pending"),))] == 0
    assert found[("idc_sync_selected_bytes", (("state", "done"),))] == total
    assert found[("idc_sync_selected_series", (("state", "complete"),))] == len(rows)
    assert found[("idc_sync_selected_series", (("state", "pending"),))] == 0
    assert found[("idc_sync_ready", ())] == 1
    assert found[("idc_sync_phase", (("phase", "idle"),))] == 1
    assert found[("idc_sync_phase", (("phase", "mirroring"),))] == 0
    assert found[("idc_sync_idc_release", ())] == status["idc_release"]
    release = str(status["idc_release"])
    assert found[("idc_sync_build_info", (("idc_release", release), ("version", __version__)))] == 1
    # no package index was asked: the newest release is unknown, 0 to Prometheus
    assert status["latest_release"] is None
    assert found[("idc_sync_latest_idc_release", ())] == 0
    # everything is verified: the daemon saw the mirror complete, just now
    assert status["last_complete_at"] is not None
    assert abs(status["last_complete_at"] - time.time()) < 60
    assert found[("idc_sync_last_complete_timestamp_seconds", ())] >= status["last_complete_at"]
    # the mirror's file system, as statvfs sees it (mirror and state share it here)
    usage = shutil.disk_usage(settings.mirror_root)
    mirror = (("path", str(settings.mirror_root)), ("role", "mirror"))
    assert found[("idc_sync_filesystem_size_bytes", mirror)] == usage.total
    assert abs(found[("idc_sync_filesystem_avail_bytes", mirror)] - usage.free) < 2**30
    assert [fs["role"] for fs in status["filesystems"]] == ["mirror"]
    # the process collector, on our own registry
    assert found[("process_resident_memory_bytes", ())] > 0
    assert found[("process_open_fds", ())] > 0
    assert found[("process_cpu_seconds_total", ())] > 0


def test_metrics_count_errors_by_class_and_retries(tmp_path: Path, s3_server: S3TestServer) -> None:
    rows = dataset.selection("two")
    uploaded = dataset.populate(s3_server, rows)
    keys = sorted(key for _, key in uploaded)
    s3_server.faults.add("status_500", keys=[keys[0]], on=["GET"], times=2)
    s3_server.faults.add("flip", keys=[keys[1]], on=["GET"], times=1)
    settings = daemon_settings(tmp_path, s3_server.endpoint, rows)
    with Running(make_daemon(settings)) as running:
        running.wait_mirrored(len(uploaded))
        found = samples(running.get("/metrics")[1].decode())
        assert running.stop() == 0
    assert found[("idc_sync_errors_total", (("class", "retryable"),))] == 2
    assert found[("idc_sync_errors_total", (("class", "integrity"),))] == 1
    assert found[("idc_sync_retries_total", (("class", "retryable"),))] == 2
    assert found[("idc_sync_retries_total", (("class", "integrity"),))] == 1
    assert found[("idc_sync_fetched_files_total", ())] == len(uploaded)
    # the failed attempts were requests too: 2 answered 500, 1 sent flipped bytes
    gets = sum(
        value
        for (name, labels), value in found.items()
        if name == "idc_sync_request_duration_seconds_count" and ("kind", "get") in labels
    )
    assert gets == len(uploaded) + 3


class _Source:
    def __init__(self, healthy: bool, ready: bool) -> None:
        self._healthy, self._ready = healthy, ready

    def healthy(self) -> bool:
        return self._healthy

    def ready(self) -> bool:
        return self._ready

    async def status(self) -> dict[str, Any]:
        return {"phase": "planning"}

    async def metrics_text(self) -> bytes:
        return b"# nothing\n"


def _fetch(url: str) -> tuple[int, bytes, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as reply:
            return reply.status, reply.read(), reply.headers["Content-Type"]
    except urllib.error.HTTPError as error:
        return error.code, error.read(), error.headers["Content-Type"]


def test_not_ready_and_unhealthy_answer_503() -> None:
    async def main() -> list[tuple[int, bytes, str]]:
        server = HttpServer(_Source(healthy=False, ready=False))
        host, port = await server.start("127.0.0.1:0")
        assert host == "127.0.0.1"
        try:
            paths = ("/healthz", "/readyz", "/status", "/metrics", "/nothing", "/")
            return [
                await asyncio.to_thread(_fetch, f"http://127.0.0.1:{port}{path}") for path in paths
            ]
        finally:
            await server.close()

    healthz, readyz, status, metrics, missing, page = asyncio.run(main())
    assert healthz[:2] == (503, b'{"healthy": false}')
    assert readyz[:2] == (503, b'{"ready": false}')
    assert status[0] == 200
    assert json.loads(status[1]) == {"phase": "planning"}
    assert metrics[0] == 200
    assert metrics[2].startswith("text/plain; version=")
    assert missing[0] == 404
    # the page renders even from the little a daemon knows while it starts
    assert page[0] == 200
    assert page[2] == "text/html; charset=utf-8"
    assert b"planning" in page[1]


def test_a_taken_port_is_a_configuration_error() -> None:
    async def main() -> None:
        first = HttpServer(_Source(True, True))
        _, port = await first.start("127.0.0.1:0")
        try:
            with pytest.raises(ConfigurationError, match=f"127.0.0.1:{port}: cannot listen"):
                await HttpServer(_Source(True, True)).start(f"127.0.0.1:{port}")
        finally:
            await first.close()

    asyncio.run(main())


@pytest.mark.parametrize(
    ("listen", "expected"),
    [
        ("127.0.0.1:9760", ("127.0.0.1", 9760)),
        ("[::1]:80", ("::1", 80)),
        ("0.0.0.0:1", ("0.0.0.0", 1)),
    ],
)
def test_parse_listen(listen: str, expected: tuple[str, int]) -> None:
    assert parse_listen(listen) == expected


def test_clients_reach_a_wildcard_bind_on_loopback() -> None:
    assert url_of("0.0.0.0:9760", "/healthz") == "http://127.0.0.1:9760/healthz"
    assert url_of("[::]:9760", "/x") == "http://[::1]:9760/x"


@pytest.mark.parametrize("listen", ["9760", "localhost", ":9760", "host:99999", "h:p"])
def test_bad_listen_is_refused(listen: str) -> None:
    with pytest.raises(ConfigurationError):
        parse_listen(listen)


@pytest.mark.slow
def test_status_command_reads_the_running_daemon_and_health_passes(
    tmp_path: Path, s3_server: S3TestServer
) -> None:
    rows = dataset.selection("two")
    uploaded = dataset.populate(s3_server, rows)
    settings = daemon_settings(tmp_path, s3_server.endpoint, rows)
    env = {k: v for k, v in os.environ.items() if not k.startswith("IDC_SYNC_")}
    with Running(make_daemon(settings)) as running:
        running.wait_mirrored(len(uploaded))
        host, port = running.daemon.http_address or ("", 0)
        env["IDC_SYNC_HTTP__LISTEN"] = f"{host}:{port}"

        def cli(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run([str(IDC_SYNC), *args], capture_output=True, text=True,
                                  timeout=60, check=False, env=env)  # fmt: skip

        live = cli("status", "--json", "--destination", str(settings.mirror_root))
        other = cli("status", "--json", "--state-dir", str(tmp_path / "elsewhere"),
                    "--destination", str(tmp_path / "elsewhere"))  # fmt: skip
        health = cli("health")
        assert running.stop() == 0
    assert live.returncode == 0, live.stderr
    report = json.loads(live.stdout)
    assert report["daemon"]["pid"] == os.getpid()
    assert report["daemon"]["phase"] == "idle"
    assert report["collections"][0]["files_done"] == len(uploaded)
    # a daemon serving another state directory is not asked: the state is read (and absent)
    assert other.returncode == 3, other.stdout + other.stderr
    assert health.returncode == 0, health.stderr
    assert "healthy" in health.stdout


def test_health_without_a_daemon_fails(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("IDC_SYNC_")}
    result = subprocess.run([str(IDC_SYNC), "health", "--listen", "127.0.0.1:9", "--timeout", "2"],
                            capture_output=True, text=True, timeout=60, check=False,
                            env=env)  # fmt: skip
    assert result.returncode == 1
    assert "no answer from http://127.0.0.1:9/healthz" in result.stderr
