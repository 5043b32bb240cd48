"""How bucket traffic reaches the buckets: one value holding the proxy, TLS, timeout and
low-speed settings that both faces of the HTTP client obey, and the choice of proxy for a
URL. The proxy variables (HTTP_PROXY, HTTPS_PROXY, ALL_PROXY, NO_PROXY, and their lower-case
forms) are read by the standard library's ``urllib.request``, with their usual meaning."""

from __future__ import annotations

import base64
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit

from idc_sync import __version__
from idc_sync.core.errors import ConfigurationError
from idc_sync.net.wire import MAX_HEADER_BYTES, LowSpeed

USER_AGENT = f"idc-sync/{__version__}"


@dataclass(frozen=True, slots=True)
class Proxy:
    """A forward proxy: HTTPS goes through it as a CONNECT tunnel, plain HTTP as
    absolute-form requests. ``url`` is for messages (never with its credentials)."""

    url: str
    host: str
    port: int
    authorization: str | None = None  # "Basic ...", from user:password in the proxy URL


def parse_proxy(value: str, origin: str) -> Proxy:
    """A proxy URL (``http://host:port``, ``host:port``, credentials allowed); ``origin``
    says where it came from, for the error."""
    text = value.strip()
    if "://" not in text:
        text = "http://" + text
    try:
        parts = urlsplit(text)
        port = parts.port or 80
    except ValueError as error:
        raise ConfigurationError(f"{origin}: unusable proxy {value!r}: {error}") from None
    if parts.scheme != "http":
        raise ConfigurationError(
            f"{origin}: proxy {value!r}: only http:// proxies are supported "
            "(HTTPS is tunnelled through them with CONNECT)"
        )
    if not parts.hostname:
        raise ConfigurationError(f"{origin}: proxy {value!r} has no host")
    authorization = None
    if parts.username is not None:
        secret = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
        authorization = "Basic " + base64.b64encode(secret.encode()).decode("ascii")
    netloc = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
    return Proxy(f"http://{netloc}:{port}", parts.hostname, port, authorization)


@dataclass(frozen=True, slots=True)
class NetOptions:
    """Every setting of the way out. ``proxy``: None reads the environment, "" means no
    proxy at all, anything else is the proxy for both schemes (NO_PROXY still applies).
    ``ca_bundle``: trust only these CAs (a TLS-inspecting proxy's) instead of the system
    store, which also honours SSL_CERT_FILE and SSL_CERT_DIR."""

    proxy: str | None = None
    ca_bundle: Path | None = None
    connect_timeout: float = 30.0
    low_speed: LowSpeed = field(default_factory=LowSpeed)
    max_header_bytes: int = MAX_HEADER_BYTES
    user_agent: str = USER_AGENT

    def proxy_for(self, scheme: str, host: str) -> Proxy | None:
        """The proxy a request to ``scheme://host`` goes through, or None for direct."""
        proxies = urllib.request.getproxies_environment()
        if self.proxy is not None:
            chosen, origin = self.proxy, "proxy (config)"
        else:
            chosen = proxies.get(scheme) or proxies.get("all") or ""
            origin = f"{scheme.upper()}_PROXY" if proxies.get(scheme) else "ALL_PROXY"
        if not chosen.strip():
            return None
        # not in typeshed, but documented and in urllib.request since Python 3.3
        if urllib.request.proxy_bypass_environment(host, proxies):  # type: ignore[attr-defined]
            return None  # NO_PROXY names the host
        return parse_proxy(chosen, origin)

    def check(self, *urls: str) -> None:
        """Raise ConfigurationError now for a proxy that could never be used for ``urls``,
        rather than once per request later."""
        for url in urls:
            parts = urlsplit(url)
            self.proxy_for(parts.scheme, parts.hostname or "")
