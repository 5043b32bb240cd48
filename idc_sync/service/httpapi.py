"""The daemon's HTTP face (aiohttp.web): ``/`` (the status page, HTML), ``/healthz`` (the
event loop answers and the daemon has not failed), ``/readyz`` (state open and first plan
done), ``/status`` (JSON progress) and ``/metrics`` (Prometheus text). Bound to 127.0.0.1
by default: it tells anyone who can reach it what the mirror holds, and there is nothing to
authenticate with."""

from __future__ import annotations

import json
import logging
from typing import Any, Protocol

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from idc_sync.core.errors import ConfigurationError
from idc_sync.service.statuspage import render

log = logging.getLogger(__name__)


class StatusSource(Protocol):
    """What the HTTP API asks the daemon."""

    def healthy(self) -> bool: ...

    def ready(self) -> bool: ...

    async def status(self) -> dict[str, Any]: ...

    async def metrics_text(self) -> bytes:
        """The exposition, its gauges refreshed from the state first."""


def parse_listen(listen: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port`` for IPv6) as (host, port)."""
    host, sep, port = listen.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ConfigurationError(
            f"http.listen must be host:port (e.g. 127.0.0.1:9760) or empty, got {listen!r}"
        )
    return host.removeprefix("[").removesuffix("]"), int(port)


def client_host(host: str) -> str:
    """Where a local client connects to reach a server bound to ``host``."""
    return {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)  # noqa: S104


def url_of(listen: str, path: str) -> str:
    host, port = parse_listen(listen)
    host = client_host(host)
    return f"http://[{host}]:{port}{path}" if ":" in host else f"http://{host}:{port}{path}"


def build_app(source: StatusSource) -> web.Application:
    async def healthz(request: web.Request) -> web.Response:
        ok = source.healthy()
        return web.json_response({"healthy": ok}, status=200 if ok else 503)

    async def readyz(request: web.Request) -> web.Response:
        ok = source.ready()
        return web.json_response({"ready": ok}, status=200 if ok else 503)

    async def status(request: web.Request) -> web.Response:
        body = await source.status()
        return web.json_response(body, dumps=lambda value: json.dumps(value, indent=1))

    async def page(request: web.Request) -> web.Response:
        response = web.Response(text=render(await source.status()), content_type="text/html",
                                charset="utf-8")  # fmt: skip
        # every value is escaped already; the policy is a second line should one slip through
        response.headers["Content-Security-Policy"] = (
            "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'"
        )
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Cache-Control"] = "no-store"
        return response

    async def metrics(request: web.Request) -> web.Response:
        response = web.Response(body=await source.metrics_text())
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return response

    app = web.Application()
    app.router.add_get("/", page)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/status", status)
    app.router.add_get("/metrics", metrics)
    return app


class HttpServer:
    """The API served on one address until ``close()``."""

    def __init__(self, source: StatusSource) -> None:
        # no access log: a scrape every 15 s would drown the lines that matter
        self._runner = web.AppRunner(build_app(source), access_log=None)
        self.address: tuple[str, int] | None = None

    async def start(self, listen: str) -> tuple[str, int]:
        host, port = parse_listen(listen)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port, reuse_address=True)
        try:
            await site.start()
        except OSError as error:
            await self._runner.cleanup()
            raise ConfigurationError(f"http.listen {listen}: cannot listen: {error}") from None
        bound = self._runner.addresses[0]
        self.address = (str(bound[0]), int(bound[1]))
        log.info("status and metrics on http://%s:%d/", *self.address)
        return self.address

    async def close(self) -> None:
        await self._runner.cleanup()
