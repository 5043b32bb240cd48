"""Shared pytest fixtures: the project's S3/GCS test server (one per test) and a moto server
with the public IDC buckets (one per session, started only when a test asks for it)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.moto import MotoServer
from tests.support.s3server import S3TestServer


@pytest.fixture(scope="session")
def moto_server() -> Iterator[MotoServer]:
    """moto_server in a subprocess, buckets idc-open-data, idc-open-data-cr and
    idc-open-data-two readable anonymously. Shared by the session: use keys of your own, or
    call ``reset()``."""
    with MotoServer() as server:
        yield server


@pytest.fixture(scope="session")
def moto_endpoint(moto_server: MotoServer) -> str:
    """``http://127.0.0.1:PORT`` of :func:`moto_server`; upload with ``moto_put``."""
    return moto_server.endpoint


def _serve(flavour: str) -> Iterator[S3TestServer]:
    server = S3TestServer("gcs" if flavour == "gcs" else "s3")
    with server:
        yield server
    assert not server.errors, f"S3TestServer raised: {server.errors!r}"


@pytest.fixture
def s3_server() -> Iterator[S3TestServer]:
    """A fresh S3-flavoured S3TestServer, empty, without faults."""
    yield from _serve("s3")


@pytest.fixture
def gcs_server() -> Iterator[S3TestServer]:
    """A fresh GCS-flavoured S3TestServer (x-goog-hash as one header line by default)."""
    yield from _serve("gcs")


_PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY", "REQUEST_METHOD")


@pytest.fixture(autouse=True)
def _no_proxy_of_the_developer(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests choose their proxies themselves: none from the machine's environment (and so
    none for the subprocesses they start)."""
    for name in _PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)


@pytest.fixture(autouse=True)
def _no_package_index(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests talk to 127.0.0.1 only: a daemon asks no package index (PyPI by default) for
    new IDC releases unless the test sets release_check_interval and an index of its own."""
    monkeypatch.setenv("IDC_SYNC_RELEASE_CHECK_INTERVAL", "0")
