"""The event-loop face of the HTTP client (idc_sync/net/http.py) against real sockets on
127.0.0.1: the project's S3 test server for ordinary answers, and a scripted raw server for
the answers a well-kept server never gives (chunked bodies, stalls, truncation, garbage,
closed keep-alives)."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Awaitable, Callable, Iterator

import pytest

from idc_sync.core.errors import BodyTooLarge, RetryableError
from idc_sync.net.buffers import BUFFER_STEP, BufferPool
from idc_sync.net.http import HttpClient
from idc_sync.net.options import NetOptions
from idc_sync.net.wire import LowSpeed
from tests.support.s3server import S3TestServer
from tests.support.scripted import ScriptedServer, ok

OPTIONS = NetOptions(connect_timeout=2, low_speed=LowSpeed(0, 1), user_agent="idc-sync-test")


def run(test: Callable[[HttpClient], Awaitable[None]], options: NetOptions = OPTIONS) -> None:
    """Run one test body on a fresh event loop with a fresh client."""

    async def go() -> None:
        async with HttpClient(options) as g:
            await test(g)

    asyncio.run(go())


def test_bodies_of_every_size_arrive_whole_over_kept_alive_connections(
    s3_server: S3TestServer,
) -> None:
    async def body(getter: HttpClient) -> None:
        # sizes around the 64 KiB first read, where the body switches to direct reads
        sizes = [0, 1, 65_000, 65_536, 65_537, 200_000, 3_000_001]
        blobs = {f"s/{n}.dcm": bytes((i * 7 + n) % 251 for i in range(n)) for n in sizes}
        s3_server.put_many("idc-open-data", blobs)
        for key, data in blobs.items():
            response = await getter.get(f"{s3_server.endpoint}/idc-open-data/{key}", {}, len(data))
            assert response.status == 200
            assert hashlib.md5(response.body).hexdigest() == hashlib.md5(data).hexdigest()
            assert response.header("etag") == f'"{hashlib.md5(data).hexdigest()}"'
        # sent as asked, anonymously
        gets = [r for r in s3_server.requests() if r.method == "GET"]
        assert len(gets) == len(sizes)
        assert all(r.headers["user-agent"] == ["idc-sync-test"] for r in gets)
        assert not any(r.has_authorization for r in gets)

    run(body)


def test_sequential_requests_share_one_connection() -> None:
    async def body(getter: HttpClient) -> None:
        async with ScriptedServer(lambda request, n: [ok(b"x" * n)]) as server:
            for n in range(1, 6):
                response = await getter.get(f"{server.url}/b/k{n}", {"If-Match": '"e"'}, 10)
                assert response.body == b"x" * n
            assert server.connections == 1
            assert b'If-Match: "e"' in server.requests[0]
            assert server.requests[0].startswith(b"GET /b/k1 HTTP/1.1\r\nHost: 127.0.0.1:")

    run(body)


def test_connection_close_is_honoured() -> None:
    async def body(getter: HttpClient) -> None:
        async with ScriptedServer(lambda r, n: [ok(b"abc", "Connection: close"), None]) as server:
            for _ in range(3):
                assert (await getter.get(f"{server.url}/b/k", {}, 3)).body == b"abc"
            assert server.connections == 3

    run(body)


def test_a_kept_alive_connection_the_server_dropped_is_replaced_silently() -> None:
    async def body(getter: HttpClient) -> None:
        # the server answers, then closes the idle connection without saying so
        async with ScriptedServer(lambda r, n: [ok(b"abc"), 0.05, None]) as server:
            assert (await getter.get(f"{server.url}/b/1", {}, 3)).body == b"abc"
            await asyncio.sleep(0.2)
            assert (await getter.get(f"{server.url}/b/2", {}, 3)).body == b"abc"
            assert server.connections == 2

    run(body)


def test_a_request_the_reused_connection_loses_unanswered_is_sent_again() -> None:
    async def body(getter: HttpClient) -> None:
        # the second request meets a keep-alive connection the server is just closing
        answers: dict[int, list[bytes | float | None]] = {1: [ok(b"abc")], 2: [None]}
        async with ScriptedServer(lambda r, n: answers.get(n, [ok(b"def")])) as server:
            assert (await getter.get(f"{server.url}/b/1", {}, 3)).body == b"abc"
            assert (await getter.get(f"{server.url}/b/2", {}, 3)).body == b"def"
            assert server.connections == 2
            assert len(server.requests) == 3

    run(body)


def test_chunked_body_is_decoded() -> None:
    async def body(getter: HttpClient) -> None:
        chunked = (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
        )
        async with ScriptedServer(lambda r, n: [chunked[:30], 0.01, chunked[30:]]) as server:
            response = await getter.get(f"{server.url}/b/k", {}, 11)
            assert bytes(response.body) == b"hello world"
            # and the connection stays usable
            assert bytes((await getter.get(f"{server.url}/b/k", {}, 11)).body) == b"hello world"
            assert server.connections == 1

    run(body)


def test_announced_body_over_the_limit_is_refused_before_it_is_read() -> None:
    async def body(getter: HttpClient) -> None:
        head = b"HTTP/1.1 200 OK\r\nContent-Length: 1000000000\r\n\r\n"
        async with ScriptedServer(lambda r, n: [head, b"x" * 1000, 5.0]) as server:
            with pytest.raises(BodyTooLarge) as raised:
                await asyncio.wait_for(getter.get(f"{server.url}/b/k", {}, 100), 2)
            assert raised.value.announced == 1_000_000_000

    run(body)


def test_chunked_body_growing_past_the_limit_is_refused() -> None:
    async def body(getter: HttpClient) -> None:
        body = (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            + b"64\r\n"
            + b"y" * 100
            + b"\r\n"
        )
        async with ScriptedServer(lambda r, n: [body, 5.0]) as server:
            with pytest.raises(BodyTooLarge) as raised:
                await asyncio.wait_for(getter.get(f"{server.url}/b/k", {}, 50), 2)
            assert raised.value.announced is None

    run(body)


def test_error_answers_carry_their_xml_even_for_tiny_objects() -> None:
    async def body(getter: HttpClient) -> None:
        xml = b"<?xml version='1.0'?><Error><Code>SlowDown</Code>" + b" " * 500 + b"</Error>"
        reply = b"HTTP/1.1 503 Slow Down\r\nContent-Length: %d\r\n\r\n" % len(xml) + xml
        async with ScriptedServer(lambda r, n: [reply]) as server:
            response = await getter.get(f"{server.url}/b/k", {}, 10)
            assert response.status == 503
            assert b"<Code>SlowDown</Code>" in response.body

    run(body)


@pytest.mark.parametrize(
    ("steps", "message"),
    [
        ([b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", None], "connection closed"),
        ([b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", 3.0], "stalled"),
        ([b"SMTP ready\r\n\r\n"], "malformed HTTP response"),
        ([None], "connection closed"),
    ],
    ids=["truncated", "stalled", "garbage", "closed-at-once"],
)
def test_transport_failures_are_retryable_and_the_connection_is_dropped(
    steps: list[bytes | float | None], message: str
) -> None:
    async def body(getter: HttpClient) -> None:
        answers: Iterator[list[bytes | float | None]] = iter([steps, [ok(b"0123456789")]])
        async with ScriptedServer(lambda r, n: next(answers)) as server:
            with pytest.raises(RetryableError, match=message):
                await asyncio.wait_for(getter.get(f"{server.url}/b/k", {}, 10), 5)
            # the next request does not inherit the broken connection
            assert (await getter.get(f"{server.url}/b/k", {}, 10)).body == b"0123456789"
            assert server.connections == 2

    run(body)


def test_a_cancelled_request_does_not_leave_its_connection_for_the_next() -> None:
    async def body(getter: HttpClient) -> None:
        def script(request: bytes, n: int) -> list[bytes | float | None]:
            if n == 1:
                return [b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nold", 0.5, b"old"]
            return [ok(b"new")]

        async with ScriptedServer(script) as server:
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(getter.get(f"{server.url}/b/k", {}, 6), 0.2)
            assert bytes((await getter.get(f"{server.url}/b/k", {}, 6)).body) == b"new"
            assert server.connections == 2

    run(body)


def test_unreachable_server_is_retryable() -> None:
    async def body(getter: HttpClient) -> None:
        server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        server.close()
        await server.wait_closed()
        with pytest.raises(RetryableError, match="cannot connect"):
            await getter.get(f"http://127.0.0.1:{port}/b/k", {}, 10)

    run(body)


def test_borrowed_bodies_reuse_a_buffer_and_never_show_an_earlier_body() -> None:
    """A borrowed body lives in a pooled buffer rounded up to BUFFER_STEP; handed back, the
    next body of that size class lands in the same buffer, and reads exactly its own bytes
    whether it arrived with the headers or straight into the buffer."""
    first, second = b"a" * 100_000, b"b" * 70_000  # one size class; second spans one read
    small = b"c" * 1_000  # arrives with the headers
    answers = [first, second, small]

    async def body(getter: HttpClient) -> None:
        async with ScriptedServer(lambda request, n: [ok(answers[n - 1])]) as server:
            one = await getter.get(f"{server.url}/b/1", {}, len(first), borrow=True)
            assert isinstance(one.body, memoryview)
            assert one.body == first
            buffer = one.body.obj
            assert isinstance(buffer, bytearray)
            assert len(buffer) == 2 * BUFFER_STEP
            getter.give_back(one.body)
            two = await getter.get(f"{server.url}/b/2", {}, len(second), borrow=True)
            assert isinstance(two.body, memoryview)
            assert two.body.obj is buffer  # reused, not allocated again
            assert bytes(two.body) == second
            three = await getter.get(f"{server.url}/b/3", {}, len(small), borrow=True)
            assert isinstance(three.body, memoryview)
            assert bytes(three.body) == small
            assert three.body.obj is not buffer  # the first buffer is still lent out
            assert server.connections == 1

    run(body)


def test_unborrowed_bodies_are_their_own_and_give_back_ignores_them() -> None:
    async def body(getter: HttpClient) -> None:
        async with ScriptedServer(lambda request, n: [ok(b"z" * BUFFER_STEP)]) as server:
            one = await getter.get(f"{server.url}/b/1", {}, BUFFER_STEP)
            assert isinstance(one.body, bytearray)
            getter.give_back(one.body)
            two = await getter.get(f"{server.url}/b/2", {}, BUFFER_STEP, borrow=True)
            assert isinstance(two.body, memoryview)
            assert two.body.obj is not one.body
            assert one.body == b"z" * BUFFER_STEP

    run(body)


def test_buffer_pool_rounds_up_and_keeps_at_most_its_budget() -> None:
    pool = BufferPool(max_bytes=3 * BUFFER_STEP)
    assert len(pool.take(0)) == BUFFER_STEP
    assert len(pool.take(BUFFER_STEP + 1)) == 2 * BUFFER_STEP
    a, b = pool.take(BUFFER_STEP), pool.take(2 * BUFFER_STEP)
    pool.give(a)
    pool.give(b)
    assert pool.idle_bytes == 3 * BUFFER_STEP
    pool.give(bytearray(BUFFER_STEP))  # over budget: dropped
    pool.give(bytearray(100))  # not a pool size: dropped
    assert pool.idle_bytes == 3 * BUFFER_STEP
    assert pool.take(2 * BUFFER_STEP) is b
    assert pool.take(BUFFER_STEP) is a
    assert pool.idle_bytes == 0
    assert pool.take(BUFFER_STEP) is not a
