"""The CLI asking a running daemon over its loopback HTTP API: ``status`` reads its
``/status`` when it serves the same state directory, ``health`` its ``/healthz``."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

from idc_sync.config import Settings
from idc_sync.core.model import CollectionStatus, Problem


def _url(listen: str, path: str) -> str:
    from idc_sync.service.httpapi import url_of  # aiohttp.web: only when a daemon is asked

    return url_of(listen, path)


def daemon_status(settings: Settings) -> dict[str, Any] | None:
    """The /status of a daemon serving this state directory, or None when none answers."""
    if not settings.http.listen:
        return None
    url = _url(settings.http.listen, "/status")  # always http://host:port
    try:
        with urllib.request.urlopen(url, timeout=2) as reply:  # noqa: S310
            body = json.load(reply)
    except (OSError, ValueError):
        return None
    if not isinstance(body, dict) or body.get("state_dir") != str(settings.state_path):
        return None  # some other daemon (or something else) on that port
    return body


def from_daemon(body: dict[str, Any]) -> tuple[list[CollectionStatus], list[Problem]]:
    names = CollectionStatus.__dataclass_fields__
    collections = [CollectionStatus(**{k: c[k] for k in names}) for c in body["collections"]]
    found = [Problem(**p) for p in body["problems"]]
    return collections, found


def healthz(listen: str, timeout: float) -> tuple[bool, str]:
    """(healthy, what to print) for the daemon listening on ``listen``."""
    url = _url(listen, "/healthz")
    try:
        with urllib.request.urlopen(url, timeout=timeout) as reply:  # noqa: S310 - http only
            healthy = reply.status == 200
    except urllib.error.HTTPError as error:
        return False, f"unhealthy: {url} answered {error.code}"
    except OSError as error:
        return False, f"unhealthy: no answer from {url}: {error}"
    return healthy, "healthy" if healthy else "unhealthy"
