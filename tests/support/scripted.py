"""A raw TCP server on 127.0.0.1 whose answers are scripted per request, for the answers a
well-kept S3 server never gives (stalls, trickles, huge headers, close-delimited bodies,
encodings, redirects, garbage). Runs on the test's event loop, or on a thread of its own
(``ThreadedScriptedServer``) for a whole sync that runs its own loop."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterable

# (request head, request number from 1) -> steps: bytes to send, a float to sleep, None to
# close the connection.
Step = bytes | float | None
Script = Callable[[bytes, int], Iterable[Step]]


class ScriptedServer:
    """Answers each request with what ``script(request, number)`` returns. Counts
    connections and requests."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.connections = 0
        self.requests: list[bytes] = []
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> ScriptedServer:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                try:
                    request = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
                    return
                self.requests.append(request)
                for step in self.script(request, len(self.requests)):
                    if step is None:
                        return
                    if isinstance(step, float):
                        await asyncio.sleep(step)
                    else:
                        writer.write(step)
                        await writer.drain()
        except ConnectionError:
            return
        finally:
            writer.close()


class ThreadedScriptedServer:
    """A ScriptedServer on an event loop of its own thread, as a context manager."""

    def __init__(self, script: Script) -> None:
        self.server = ScriptedServer(script)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="scripted-server")

    def __enter__(self) -> ScriptedServer:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.server.__aenter__(), self._loop).result(5)
        return self.server

    def __exit__(self, *exc: object) -> None:
        async def stop() -> None:
            await self.server.__aexit__()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()


def ok(body: bytes, *extra: str) -> bytes:
    """A 200 answer with a Content-Length and ``extra`` header lines."""
    head = ["HTTP/1.1 200 OK", f"Content-Length: {len(body)}", *extra]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body
