"""The TLS client context of bucket traffic: the system trust store (which OpenSSL lets
SSL_CERT_FILE and SSL_CERT_DIR replace), or only the CAs of ``ca_bundle`` (a TLS-inspecting
proxy's local CA, a private S3 server's). Made once per process and bundle: loading the
system store costs milliseconds, and one context serves every connection and thread."""

from __future__ import annotations

import functools
import ssl
from pathlib import Path

from idc_sync.core.errors import ConfigurationError


@functools.lru_cache(maxsize=4)
def client_context(ca_bundle: Path | None) -> ssl.SSLContext:
    if ca_bundle is None:
        return ssl.create_default_context()
    try:
        return ssl.create_default_context(cafile=str(ca_bundle))
    except (OSError, ssl.SSLError) as error:
        reason = getattr(error, "strerror", None) or getattr(error, "reason", None) or error
        raise ConfigurationError(f"ca_bundle {ca_bundle}: cannot be used: {reason}") from None
