"""Helpers for tests of the daemon: a Daemon running on its own event loop in a thread,
settings that listen on a free port, and polling with a deadline."""

from __future__ import annotations

import asyncio
import json
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from idc_sync.config import Settings
from idc_sync.service.daemon import Daemon
from idc_sync.service.sdnotify import Notifier
from tests.support.mirror import Row, settings_for

IDC_SYNC = Path(sys.executable).parent / "idc-sync"


def daemon_settings(
    tmp_path: Path, endpoint: str, rows: Sequence[Row], **overrides: Any
) -> Settings:
    values: dict[str, Any] = {"http": {"listen": "127.0.0.1:0"}, "drain_seconds": 10.0}
    values.update(overrides)
    return settings_for(tmp_path, endpoint, rows, **values)


class Running:
    """A Daemon on its own event loop in a thread (signals need the main thread, so tests
    drive it through request_stop / request_reload, called on its loop)."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.loop: asyncio.AbstractEventLoop | None = None
        self.code: int | None = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="daemon")
        self._started = threading.Event()

    def _run(self) -> None:
        async def main() -> int:
            self.loop = asyncio.get_running_loop()
            self._started.set()
            return await self.daemon.run()

        try:
            self.code = asyncio.run(main())
        except BaseException as error:
            self.error = error
        finally:
            self._started.set()

    def __enter__(self) -> Running:
        self._thread.start()
        self._started.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._thread.is_alive():
            self.stop()

    def call(self, function: Callable[..., None], *args: Any) -> None:
        assert self.loop is not None
        self.loop.call_soon_threadsafe(function, *args)

    def stop(self, timeout: float = 30, *, signal_it: bool = True) -> int | None:
        """Stop (unless the test already did) and wait for the exit code."""
        if signal_it and self._thread.is_alive():
            self.call(self.daemon.request_stop, "test stop")
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the daemon did not stop"
        if self.error is not None:
            raise self.error
        return self.code

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def url(self, path: str) -> str:
        wait_for(lambda: self.daemon.http_address is not None or not self.alive, 20)
        assert self.daemon.http_address is not None, self.error
        host, port = self.daemon.http_address
        return f"http://{host}:{port}{path}"

    def get(self, path: str) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(self.url(path), timeout=10) as reply:
                return reply.status, reply.read()
        except urllib.error.HTTPError as error:
            return error.code, error.read()

    def status(self) -> dict[str, Any]:
        code, body = self.get("/status")
        assert code == 200, body
        status: dict[str, Any] = json.loads(body)
        return status

    def wait_mirrored(self, files: int, timeout: float = 60) -> dict[str, Any]:
        """Until /status says ``files`` are done and the daemon idles."""
        seen: dict[str, Any] = {}

        def done() -> bool:
            nonlocal seen
            assert self.alive, self.error
            seen = self.status()
            return bool(seen["phase"] == "idle" and seen["overall"]["files_done"] == files)

        wait_for(done, timeout, lambda: f"last status: {json.dumps(seen)[:2000]}")
        return seen


def wait_for(
    condition: Callable[[], bool], timeout: float, message: Callable[[], str] = lambda: ""
) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s. {message()}")
        time.sleep(0.05)


def _no_hard_exit(code: int) -> None:
    raise AssertionError(f"the daemon wanted to exit at once with {code}")


def make_daemon(settings: Settings, **kwargs: Any) -> Daemon:
    kwargs.setdefault("notifier", Notifier(None))
    kwargs.setdefault("hard_exit", _no_hard_exit)  # never os._exit the test process
    kwargs.setdefault("status_ttl", 0.0)
    return Daemon(settings, **kwargs)
