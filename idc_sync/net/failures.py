"""The one place where foreign exceptions of the network (ssl, sockets, the resolver,
httptools) become errors of our tree (core/errors.py), by the stage they struck in, the way
httpx's ``map_exceptions`` does: past the HTTP edge nothing needs to know them."""

from __future__ import annotations

import contextlib
import os
import socket
import ssl
from collections.abc import Iterator
from typing import Literal

import httptools

from idc_sync.core.errors import (
    IdcSyncError,
    ProtocolError,
    ProxyError,
    RetryableError,
    StalledError,
    TlsError,
)
from idc_sync.net.options import Proxy

# connect: TCP to the server; proxy: TCP to the proxy and its CONNECT answer; tls: the
# handshake with the server; exchange: the request and its answer.
Stage = Literal["connect", "proxy", "tls", "exchange"]


def _reason(error: BaseException) -> str:
    if isinstance(error, ssl.SSLCertVerificationError):
        return str(error.verify_message or error.reason or error)
    if isinstance(error, ssl.SSLError):
        return str(error.reason or error)
    if isinstance(error, TimeoutError):
        return "timed out"
    if isinstance(error, socket.gaierror) and error.strerror:
        return error.strerror
    if isinstance(error, OSError) and error.errno:
        # asyncio words a refused connection "Connect call failed (...)": say what failed
        return os.strerror(error.errno)
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__


def translate(
    error: BaseException, stage: Stage, host: str, port: int, proxy: Proxy | None = None
) -> IdcSyncError:
    """Our error for ``error``, raised while ``stage`` of a request to host:port ran."""
    if isinstance(error, IdcSyncError):
        return error
    reason = _reason(error)
    where = f"{host}:{port}"
    via = f" through proxy {proxy.url}" if proxy is not None else ""
    if stage == "proxy":
        assert proxy is not None
        return ProxyError(f"proxy {proxy.url} (for {where}): cannot connect: {reason}")
    if stage == "tls":
        if isinstance(error, ssl.SSLCertVerificationError):
            return TlsError(
                f"TLS: the certificate of {host} is not trusted: {reason} (a private or "
                "TLS-inspecting CA goes in ca_bundle or SSL_CERT_FILE)"
            )
        if isinstance(error, ssl.SSLError) and not isinstance(error, ssl.SSLEOFError):
            return TlsError(f"TLS handshake with {where}{via} failed: {reason}")
        # the peer hung up or took too long mid-handshake: load, not configuration
        return RetryableError(f"TLS handshake with {where}{via}: {reason}")
    if isinstance(error, httptools.HttpParserError):
        return ProtocolError(f"malformed HTTP response from {where}: {error}")
    if stage == "connect":
        if isinstance(error, socket.gaierror):
            return RetryableError(f"cannot resolve {host}: {reason}")
        if isinstance(error, TimeoutError):
            return RetryableError(f"connecting to {where} {reason}")
        return RetryableError(f"cannot connect to {where}: {reason}")
    if isinstance(error, TimeoutError):
        return StalledError(f"no data from {where}{via}: {reason}")
    return RetryableError(f"connection to {where}{via} failed: {reason}")


@contextlib.contextmanager
def mapped(stage: Stage, host: str, port: int, proxy: Proxy | None = None) -> Iterator[None]:
    """Raise our error in place of a foreign one raised inside the block."""
    try:
        yield
    except IdcSyncError:
        raise
    except (OSError, httptools.HttpParserError) as error:  # ssl.SSLError is an OSError
        raise translate(error, stage, host, port, proxy) from error
