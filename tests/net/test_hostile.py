"""Servers that misbehave, one case each, against both faces of the client (the event loop's
and the range threads'), the engine and a whole sync: a body trickling at 1 byte/s, a
listing that never ends, a 64 MB header, a close-delimited body, a gzip body, redirects.
Every case ends in seconds with an error that names the problem, and in bounded memory
(tracemalloc's peak over the hostile exchange)."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import threading
import time
import tracemalloc
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from idc_sync.core.errors import (
    ListingTooLong,
    PermanentError,
    ProtocolError,
    RetryableError,
    StalledError,
)
from idc_sync.core.verify import expectation_from_listing
from idc_sync.engines.base import FetchJob
from idc_sync.engines.native import NativeEngine
from idc_sync.net.blocking import open_response
from idc_sync.net.http import HttpClient
from idc_sync.net.options import NetOptions
from idc_sync.net.wire import LowSpeed, redirect_target
from tests.support import dataset
from tests.support.mirror import run, settings_for, state_rows
from tests.support.s3server import S3TestServer
from tests.support.scripted import ScriptedServer, Step, ThreadedScriptedServer, ok

pytestmark = pytest.mark.timeout(60)

# a second at under 1,000 bytes/s is a stall
QUICK = NetOptions(connect_timeout=2, low_speed=LowSpeed(1000, 1.0))
MIB = 1 << 20


def peak_memory(block: Callable[[], object]) -> int:
    """Peak bytes Python allocated while ``block`` ran."""
    tracemalloc.start()
    try:
        block()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def with_client(test: Callable[[HttpClient, ScriptedServer], Awaitable[None]],
                script: Callable[[bytes, int], list[Step]]) -> None:  # fmt: skip
    async def go() -> None:
        async with HttpClient(QUICK) as client, ScriptedServer(script) as server:
            await test(client, server)

    asyncio.run(go())


def trickle(head: bytes, body: bytes, every: float = 1.0) -> list[Step]:
    return [head, *(step for byte in body for step in (every, bytes([byte])))]


# -- stalls -------------------------------------------------------------------------------


def test_a_body_trickling_at_one_byte_a_second_is_abandoned_as_stalled() -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n"

    async def test(client: HttpClient, server: ScriptedServer) -> None:
        started = time.monotonic()
        with pytest.raises(StalledError, match="under the low-speed limit of 1000 bytes/s"):
            await client.get(f"{server.url}/b/k", {}, 100)
        assert time.monotonic() - started < 3

    with_client(test, lambda r, n: trickle(head, b"x" * 100))


def test_a_stall_on_a_reused_connection_is_caught_within_two_windows() -> None:
    # the low-speed timer belongs to the connection: the third request on it stalls
    # after two quick ones and must still fail in about one window of the rule
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n"

    def script(request: bytes, number: int) -> list[Step]:
        return [ok(b"y" * 10)] if number < 3 else trickle(head, b"x" * 100)

    async def test(client: HttpClient, server: ScriptedServer) -> None:
        for _ in range(2):
            assert (await client.get(f"{server.url}/b/k", {}, 100)).body == b"y" * 10
        started = time.monotonic()
        with pytest.raises(StalledError):
            await client.get(f"{server.url}/b/k", {}, 100)
        assert 0.9 < time.monotonic() - started < 2.5
        assert server.connections == 1

    with_client(test, script)


def test_quick_requests_back_to_back_on_one_connection_never_trip_the_rule() -> None:
    # each answer takes 0.4 s and sends 10 bytes: a window judged across two requests
    # (bytes counted from the second's start only) would call the second one stalled
    def script(request: bytes, number: int) -> list[Step]:
        return [0.4, ok(b"z" * 10)]

    async def test(client: HttpClient, server: ScriptedServer) -> None:
        for _ in range(6):  # 2.4 s: past two windows of the rule
            assert (await client.get(f"{server.url}/b/k", {}, 100)).body == b"z" * 10
        assert server.connections == 1

    with_client(test, script)


def test_a_head_whose_answer_trickles_is_stalled() -> None:
    head = b"HTTP/1.1 206 Partial Content\r\nContent-Length: 5242880\r\n\r\n"

    async def test(client: HttpClient, server: ScriptedServer) -> None:
        with pytest.raises(StalledError):
            await client.head(f"{server.url}/b/k?partNumber=1", {})

    with_client(test, lambda r, n: trickle(b"", head, every=0.5))


def test_a_range_trickling_on_a_range_thread_is_stalled() -> None:
    head = (
        b"HTTP/1.1 206 Partial Content\r\nContent-Length: 100\r\n"
        b"Content-Range: bytes 0-99/100\r\n\r\n"
    )
    with ThreadedScriptedServer(lambda r, n: trickle(head, b"y" * 100, every=0.3)) as server:
        response = open_response(QUICK, "GET", f"{server.url}/b/k", {}, limit=100)
        buffer = memoryview(bytearray(100))
        started = time.monotonic()

        def read_all() -> None:
            while response.readinto(buffer):
                pass

        with pytest.raises(StalledError, match=r"bytes from 127\.0\.0\.1"):
            read_all()
        response.close()
        assert time.monotonic() - started < 4


def test_a_trickled_object_in_a_sync_is_logged_as_stalled_and_fetched_again(
    s3_server: S3TestServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rows = dataset.selection("single_instance")
    uploaded = dataset.populate(s3_server, rows)
    ((_bucket, key),) = uploaded
    s3_server.faults.add("trickle", keys=[key], on=["GET"], times=1, seconds=1.0)
    settings = settings_for(
        tmp_path, s3_server.endpoint, rows, low_speed_bytes_per_second=1000,
        low_speed_seconds=1.0,
    )  # fmt: skip
    caplog.set_level(logging.INFO)
    report = run(settings)
    assert report.ok
    stalled = [r.getMessage() for r in caplog.records if "stalled" in r.getMessage()]
    assert len(stalled) == 1
    assert stalled[0].startswith(f"{key}: stalled")
    assert stalled[0].endswith("retrying")
    assert s3_server.count("GET", key) == 2


# -- listings that never end ---------------------------------------------------------------


def test_an_endless_listing_fails_its_series_by_name(
    s3_server: S3TestServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rows = dataset.selection("qin_pet_phantom_small")[:1]
    dataset.populate(s3_server, rows)
    series = str(rows[0]["crdc_series_uuid"])
    s3_server.faults.add("endless_list")
    report = run(settings_for(tmp_path, s3_server.endpoint, rows, max_attempts=1))
    assert not report.ok
    assert report.round.summary.series_failed == 1
    # 81 instances: at most 91 keys, so the second page of 81 is already too many
    assert s3_server.count("LIST") == 2
    (reason,) = state_rows(settings_for(tmp_path, s3_server.endpoint, rows),
                           "SELECT last_error FROM series")[0]  # fmt: skip
    assert "listing goes on past 162 keys in 2 pages; the index counts 81 instances" in reason
    (logged,) = [r.getMessage() for r in caplog.records if "goes on past" in r.getMessage()]
    assert logged.startswith(f"series {series} (qin_pet_phantom): ")


def test_an_endless_listing_of_a_series_of_unknown_size_stops_at_its_page_bound(
    s3_server: S3TestServer,
) -> None:
    series = "5e1d7c2a-0000-4000-8000-00000000abcd"
    s3_server.put("idc-open-data", f"{series}/a.dcm", b"a")
    s3_server.faults.add("endless_list")

    async def go() -> None:
        async with NativeEngine(s3_server.endpoint, concurrency=4, network=QUICK) as engine:
            with pytest.raises(ListingTooLong, match="counts unknown instances"):
                await engine.list_series("idc-open-data", series, None)

    peak = peak_memory(lambda: asyncio.run(go()))
    assert s3_server.count("LIST") == 410  # 10 + 2 * 200,000 / 1,000
    assert peak < 16 * MIB


# -- bounded headers -----------------------------------------------------------------------


def endless_header(request: bytes, number: int) -> Iterator[Step]:
    """A 64 MB header value, sent until the client hangs up."""
    yield b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nX-Huge: "
    for _ in range(1024):
        yield b"a" * (64 << 10)


def many_headers(request: bytes, number: int) -> Iterator[Step]:
    """20 MB of ordinary-looking header lines."""
    yield b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n"
    for index in range(20 * 1024):
        yield f"X-Header-{index}: {'b' * 1000}\r\n".encode()


@pytest.mark.parametrize("script", [endless_header, many_headers], ids=["64MB-value", "20MB-lines"])
def test_a_header_block_over_64_kib_is_refused_in_bounded_memory(
    script: Callable[[bytes, int], Iterator[Step]],
) -> None:
    def event_loop_face() -> None:
        async def test(client: HttpClient, server: ScriptedServer) -> None:
            with pytest.raises(ProtocolError, match="header block larger than 64 KiB"):
                await client.get(f"{server.url}/b/k", {}, 1)

        with_client(test, script)  # type: ignore[arg-type]

    assert peak_memory(event_loop_face) < 4 * MIB
    with ThreadedScriptedServer(script) as server:

        def range_face() -> None:
            with pytest.raises(ProtocolError, match="header block larger than 64 KiB"):
                open_response(QUICK, "GET", f"{server.url}/b/k", {}, limit=1)

        assert peak_memory(range_face) < 4 * MIB


# -- HTTP done right -----------------------------------------------------------------------


def http10(body: bytes) -> list[Step]:
    return [b"HTTP/1.0 200 OK\r\nContent-Type: application/dicom\r\n\r\n" + body, None]


def test_a_close_delimited_body_is_received_and_verified(tmp_path: Path) -> None:
    data = bytes(range(256)) * 1000
    md5 = hashlib.md5(data).hexdigest()

    async def test(client: HttpClient, server: ScriptedServer) -> None:
        assert bytes((await client.get(f"{server.url}/b/k", {}, len(data))).body) == data
        engine = NativeEngine(server.url, concurrency=2, pin_etag=False, network=QUICK)
        async with engine:
            final = tmp_path / "instance.dcm"
            job = FetchJob("idc-open-data", "s/i.dcm", expectation_from_listing(md5, len(data)),
                           final)  # fmt: skip
            verdict = await engine.fetch(job, lambda n: None)
        assert verdict.ok
        assert verdict.kind == "md5"
        assert final.read_bytes() == data

    with_client(test, lambda r, n: http10(data))
    with ThreadedScriptedServer(lambda r, n: http10(data)) as server:
        response = open_response(QUICK, "GET", f"{server.url}/b/k", {}, limit=len(data))
        buffer, got = memoryview(bytearray(len(data) + 10)), 0
        while count := response.readinto(buffer[got:]):
            got += count
        response.close()
        assert bytes(buffer[:got]) == data


def gzip_answer(request: bytes, number: int) -> list[Step]:
    assert b"\r\nAccept-Encoding: identity\r\n" in request
    return [ok(b"\x1f\x8b" + b"z" * 30, "Content-Encoding: gzip")]


def test_an_encoded_body_is_refused_by_the_name_of_its_encoding() -> None:
    async def test(client: HttpClient, server: ScriptedServer) -> None:
        with pytest.raises(PermanentError, match="Content-Encoding: gzip"):
            await client.get(f"{server.url}/b/k", {}, 32)

    with_client(test, gzip_answer)
    with ThreadedScriptedServer(gzip_answer) as server, pytest.raises(PermanentError, match="gzip"):
        open_response(QUICK, "GET", f"{server.url}/b/k", {}, limit=32)


def redirects(request: bytes, number: int) -> list[Step]:
    path = request.split(b" ")[1]
    if path.endswith(b"/old"):
        return [b"HTTP/1.1 307 Temporary Redirect\r\nLocation: /b/new\r\nContent-Length: 0\r\n\r\n"]
    if path.endswith(b"/moved"):
        return [b"HTTP/1.1 301 Moved Permanently\r\nLocation: http://elsewhere.example/b/k\r\n"
                b"Content-Length: 0\r\n\r\n"]  # fmt: skip
    if path.endswith(b"/nowhere"):
        return [b"HTTP/1.1 307 Temporary Redirect\r\nContent-Length: 0\r\n\r\n"]
    if path.endswith(b"/loop"):
        return [
            b"HTTP/1.1 307 Temporary Redirect\r\nLocation: /b/loop\r\nContent-Length: 0\r\n\r\n"
        ]
    return [ok(b"the new place")]


def test_a_307_is_followed_other_redirects_are_reported_with_their_location() -> None:
    async def test(client: HttpClient, server: ScriptedServer) -> None:
        assert bytes((await client.get(f"{server.url}/b/old", {}, 100)).body) == b"the new place"
        with pytest.raises(ProtocolError, match="more than 3 redirects"):
            await client.get(f"{server.url}/b/loop", {}, 100)
        engine = NativeEngine(server.url, concurrency=2, pin_etag=False, network=QUICK)
        async with engine:
            for key, error, message in [
                ("moved", PermanentError, "HTTP 301 to http://elsewhere.example/b/k"),
                ("nowhere", RetryableError, "HTTP 307 without a Location"),
            ]:
                expected = expectation_from_listing("0" * 32, 13)
                job = FetchJob("idc-open-data", key, expected, Path("/nonexistent/x"))
                with pytest.raises(error, match=message):
                    await engine.fetch(job, lambda n: None)

    with_client(test, redirects)
    with ThreadedScriptedServer(redirects) as server:
        response = open_response(QUICK, "GET", f"{server.url}/b/old", {}, limit=100)
        assert response.status == 200
        response.close()


def test_a_redirect_from_https_to_http_is_never_followed() -> None:
    with pytest.raises(PermanentError, match="from https to http"):
        redirect_target(307, "http://s3.example/b/k", "https://s3.amazonaws.com/b/k", 0)
    assert redirect_target(307, "/b/k2", "https://s3.amazonaws.com/b/k", 0) == (
        "https://s3.amazonaws.com/b/k2"
    )
    assert redirect_target(302, "/b/k2", "https://s3.amazonaws.com/b/k", 0) is None


def test_the_scripted_server_thread_is_gone_after_use() -> None:
    before = threading.active_count()
    with ThreadedScriptedServer(lambda r, n: [ok(b"")]):
        pass
    assert threading.active_count() == before
