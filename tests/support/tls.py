"""TLS for the tests: a CA made by the test (trustme), a server certificate for 127.0.0.1
and localhost signed by it, and the CA's PEM file for ``ca_bundle`` or SSL_CERT_FILE."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

import trustme


@dataclass(frozen=True)
class LocalCA:
    ca: trustme.CA
    pem: Path  # the CA certificate, for ca_bundle / SSL_CERT_FILE
    server: ssl.SSLContext  # a server context with a certificate for 127.0.0.1

    @classmethod
    def make(cls, directory: Path) -> LocalCA:
        ca = trustme.CA()
        pem = directory / "test-ca.pem"
        ca.cert_pem.write_to_path(str(pem))
        server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert("127.0.0.1", "localhost").configure_cert(server)
        return cls(ca, pem, server)
