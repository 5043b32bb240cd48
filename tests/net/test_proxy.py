"""Proxies: the choice of proxy per URL from the environment and the ``proxy`` key, and real
syncs through tinyproxy on 127.0.0.1 (plain HTTP as absolute-form requests, HTTPS as
CONNECT tunnels), whose log proves that every request went through it; NO_PROXY honoured;
a proxy that is down or refuses stops the run with the proxy named and the server untouched."""

from __future__ import annotations

import asyncio
import base64
import random
from pathlib import Path

import pytest

from idc_sync.core.errors import ConfigurationError
from idc_sync.engines.native import NativeEngine
from idc_sync.engines.s5cmd import s5cmd_environment
from idc_sync.net.blocking import open_response
from idc_sync.net.options import NetOptions
from idc_sync.net.wire import LowSpeed
from tests.support import dataset
from tests.support.mirror import assert_mirrored, run, settings_for
from tests.support.s3server import S3TestServer
from tests.support.tinyproxy import Tinyproxy, free_port
from tests.support.tls import LocalCA

pytestmark = pytest.mark.timeout(60)

# -- which proxy, from where ------------------------------------------------------------


@pytest.mark.parametrize(
    ("environment", "scheme", "expected"),
    [
        ({"HTTPS_PROXY": "http://p:3128"}, "https", "http://p:3128"),
        ({"https_proxy": "p:3129"}, "https", "http://p:3129"),
        ({"HTTPS_PROXY": "http://p:3128"}, "http", None),
        ({"HTTP_PROXY": "http://q:8080"}, "http", "http://q:8080"),
        ({"ALL_PROXY": "http://a:1"}, "https", "http://a:1"),
        ({"all_proxy": "http://a:1", "HTTPS_PROXY": "http://p:2"}, "https", "http://p:2"),
        ({"HTTPS_PROXY": "http://p:3128", "NO_PROXY": "s3.amazonaws.com"}, "https", None),
        ({"HTTPS_PROXY": "http://p:3128", "no_proxy": ".amazonaws.com"}, "https", None),
        ({"HTTPS_PROXY": "http://p:3128", "NO_PROXY": "*"}, "https", None),
        ({"HTTPS_PROXY": "http://p:3128", "NO_PROXY": "example.org"}, "https", "http://p:3128"),
        ({}, "https", None),
    ],
)
def test_the_proxy_variables_have_their_usual_meaning(
    monkeypatch: pytest.MonkeyPatch, environment: dict[str, str], scheme: str, expected: str
) -> None:
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    proxy = NetOptions().proxy_for(scheme, "s3.amazonaws.com")
    assert (proxy.url if proxy else None) == expected


def test_the_proxy_key_overrides_the_environment_and_empty_means_none(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://env:1")
    configured = NetOptions(proxy="http://user:p%40ss@conf:3128").proxy_for("https", "h")
    assert configured is not None
    assert configured.url == "http://conf:3128"  # never the credentials
    assert configured.authorization == "Basic " + base64.b64encode(b"user:p@ss").decode()
    assert NetOptions(proxy="").proxy_for("https", "h") is None
    monkeypatch.setenv("NO_PROXY", "h")
    assert NetOptions(proxy="http://conf:3128").proxy_for("https", "h") is None


@pytest.mark.parametrize("value", ["socks5://p:1080", "https://p:443", "http://:3128"])
def test_a_proxy_we_cannot_use_is_a_configuration_error_naming_it(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("ALL_PROXY", value)
    with pytest.raises(ConfigurationError, match="ALL_PROXY"):
        NetOptions().check("https://s3.amazonaws.com")


def test_s5cmd_gets_the_effective_proxy_and_ca_bundle(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALL_PROXY", "http://all:1")  # Go does not read ALL_PROXY
    env = s5cmd_environment(
        {"NO_PROXY": "x", "PATH": "/bin"}, NetOptions(ca_bundle=Path("/ca.pem")), "https://s3"
    )
    assert env["HTTPS_PROXY"] == env["HTTP_PROXY"] == "http://all:1"
    assert env["NO_PROXY"] == "x"
    assert env["AWS_CA_BUNDLE"] == "/ca.pem"
    none = s5cmd_environment({"HTTPS_PROXY": "http://p:1"}, NetOptions(proxy=""), "https://s3")
    assert "HTTPS_PROXY" not in none
    assert "https_proxy" not in none


# -- real syncs through tinyproxy -------------------------------------------------------


@pytest.fixture(scope="module")
def rows() -> list[dataset.Row]:
    return dataset.selection("qin_pet_phantom_small")[:2]


def test_a_plain_http_sync_sends_every_request_through_the_proxy(
    s3_server: S3TestServer, tmp_path: Path, rows: list[dataset.Row],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    uploaded = dataset.populate(s3_server, rows)
    with Tinyproxy(tmp_path / "proxy") as proxy:
        monkeypatch.setenv("http_proxy", proxy.url)
        report = run(settings_for(tmp_path, s3_server.endpoint, rows))
        logged = proxy.requests()
    assert report.ok
    assert_mirrored(tmp_path / "mirror", rows, uploaded)
    served = s3_server.requests()
    assert len(served) >= len(uploaded) + len(rows)  # a LIST per series, a GET per file
    # every request the server answered was one tinyproxy carried, in absolute form
    assert len(logged) == len(served)
    assert all(m == "GET" and t.startswith(s3_server.endpoint + "/") for m, t in logged)


def test_an_https_sync_tunnels_every_connection_through_connect(
    tmp_path: Path, rows: list[dataset.Row], monkeypatch: pytest.MonkeyPatch
) -> None:
    ca = LocalCA.make(tmp_path)
    with S3TestServer(tls=ca.server) as server, Tinyproxy(tmp_path / "proxy") as proxy:
        uploaded = dataset.populate(server, rows)
        monkeypatch.setenv("HTTPS_PROXY", proxy.url)
        report = run(settings_for(tmp_path, server.endpoint, rows, ca_bundle=ca.pem))
        tunnels = proxy.requests("CONNECT")
        accepted, port = server.accepted, server.port
        assert not proxy.requests("GET")
    assert report.ok
    assert_mirrored(tmp_path / "mirror", rows, uploaded)
    assert server.requests()
    # each connection the server accepted is a tunnel tinyproxy opened: none went direct
    assert len(tunnels) == accepted
    assert all(target == f"127.0.0.1:{port}" for _, target in tunnels)


def test_large_objects_and_heads_go_through_the_tunnel_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The range threads' blocking face and the HEAD of part 1 take the same way out."""
    ca = LocalCA.make(tmp_path)
    key = "0a1b2c3d-0000-4000-8000-000000000001/1f2e3d4c-0000-4000-8000-000000000002.dcm"
    data = random.Random(3).randbytes(3 * (1 << 20) + 5)
    with S3TestServer(tls=ca.server) as server, Tinyproxy(tmp_path / "proxy") as proxy:
        server.put("idc-open-data", key, data, part_size=1 << 20)
        monkeypatch.setenv("HTTPS_PROXY", proxy.url)
        options = NetOptions(ca_bundle=ca.pem, low_speed=LowSpeed(0, 10))

        async def go() -> int:
            engine = NativeEngine(
                server.endpoint, concurrency=4, network=options, small_object=1 << 20,
                range_bytes=1 << 20,
            )  # fmt: skip
            async with engine:
                return await engine.part_size("idc-open-data", key)

        assert asyncio.run(go()) == 1 << 20
        response = open_response(options, "GET", f"{server.endpoint}/idc-open-data/{key}",
                                 {"Range": "bytes=0-9"}, limit=10)  # fmt: skip
        buffer = memoryview(bytearray(10))
        assert response.status == 206
        assert response.readinto(buffer) == 10
        assert bytes(buffer) == data[:10]
        response.close()
        assert len(proxy.requests("CONNECT")) == server.accepted == 2


def test_no_proxy_sends_nothing_through_the_proxy(
    s3_server: S3TestServer, tmp_path: Path, rows: list[dataset.Row],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    uploaded = dataset.populate(s3_server, rows)
    with Tinyproxy(tmp_path / "proxy") as proxy:
        monkeypatch.setenv("HTTP_PROXY", proxy.url)
        monkeypatch.setenv("NO_PROXY", "localhost,127.0.0.1")
        report = run(settings_for(tmp_path, s3_server.endpoint, rows))
        assert proxy.requests() == []
    assert report.ok
    assert_mirrored(tmp_path / "mirror", rows, uploaded)


def test_a_proxy_that_is_down_stops_the_run_and_nothing_goes_around_it(
    s3_server: S3TestServer, tmp_path: Path, rows: list[dataset.Row],
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    dataset.populate(s3_server, rows)
    down = f"http://127.0.0.1:{free_port()}"
    report = run(settings_for(tmp_path, s3_server.endpoint, rows, proxy=down))
    assert not report.ok
    assert report.round.summary.stopped is not None
    assert f"proxy {down}" in report.round.summary.stopped
    assert "Connection refused" in report.round.summary.stopped
    assert s3_server.requests() == []
    assert s3_server.accepted == 0
    # reported once for the run, not once per series
    assert len([r for r in caplog.records if "stopping:" in r.getMessage()]) == 1


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_a_proxy_that_refuses_stops_the_run_naming_the_proxy(
    tmp_path: Path, rows: list[dataset.Row], scheme: str
) -> None:
    ca = LocalCA.make(tmp_path)
    # CONNECT only to port 443, and plain requests from nobody we are
    rules = ("ConnectPort 443",) if scheme == "https" else ("Allow 10.0.0.1",)
    tls = ca.server if scheme == "https" else None
    with S3TestServer(tls=tls) as server, Tinyproxy(tmp_path / "proxy", rules) as proxy:
        dataset.populate(server, rows)
        settings = settings_for(tmp_path, server.endpoint, rows, proxy=proxy.url, ca_bundle=ca.pem)
        report = run(settings)
        assert server.accepted == 0
    assert report.round.summary.stopped is not None
    assert f"proxy {proxy.url}" in report.round.summary.stopped
    assert "refuses" in report.round.summary.stopped
    assert "HTTP 403" in report.round.summary.stopped
