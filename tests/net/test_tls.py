"""TLS as operators expect it, against an HTTPS S3 test server whose certificate a CA of
the test's own signed: trusted through ``ca_bundle`` and through SSL_CERT_FILE (a real
``idc-sync sync`` process on uvloop, exit code and summary line), and an untrusted
certificate stopping the run once with the host and the reason, never retried per series."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from idc_sync.core.errors import TlsError
from idc_sync.net.blocking import open_response
from idc_sync.net.options import NetOptions
from tests.support import dataset
from tests.support.mirror import assert_mirrored, run, settings_for
from tests.support.s3server import S3TestServer
from tests.support.tls import LocalCA

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
def ca(tmp_path: Path) -> LocalCA:
    return LocalCA.make(tmp_path)


@pytest.fixture(scope="module")
def rows() -> list[dataset.Row]:
    return dataset.selection("qin_pet_phantom_small")[:3]


def sync_cli(
    tmp_path: Path, endpoint: str, rows: list[dataset.Row], **env: str
) -> subprocess.CompletedProcess[str]:
    series = [arg for row in rows for arg in ("--series", str(row["crdc_series_uuid"]))]
    return subprocess.run(
        [sys.executable, "-m", "idc_sync", "sync", "--destination", str(tmp_path / "mirror"),
         "--endpoint", endpoint, "--no-progress", *series],
        capture_output=True, text=True, check=False, timeout=80,
        env={**os.environ, "IDC_SYNC_MAX_ATTEMPTS": "6", "COLUMNS": "400", **env},
    )  # fmt: skip


def test_a_sync_over_tls_trusts_the_ca_bundle(
    tmp_path: Path, ca: LocalCA, rows: list[dataset.Row]
) -> None:
    with S3TestServer(tls=ca.server) as server:
        uploaded = dataset.populate(server, rows)
        report = run(settings_for(tmp_path, server.endpoint, rows, ca_bundle=ca.pem))
    assert report.ok
    assert_mirrored(tmp_path / "mirror", rows, uploaded)


def test_a_sync_process_over_tls_trusts_ssl_cert_file(
    tmp_path: Path, ca: LocalCA, rows: list[dataset.Row]
) -> None:
    with S3TestServer(tls=ca.server) as server:
        uploaded = dataset.populate(server, rows)
        synced = sync_cli(tmp_path, server.endpoint, rows, SSL_CERT_FILE=str(ca.pem))
    assert synced.returncode == 0, synced.stdout + synced.stderr
    assert "mirror complete: every selected file is verified" in synced.stdout
    assert_mirrored(tmp_path / "mirror", rows, uploaded)


def test_an_untrusted_certificate_stops_the_run_once_with_the_host_and_reason(
    tmp_path: Path, ca: LocalCA, rows: list[dataset.Row]
) -> None:
    with S3TestServer(tls=ca.server) as server:
        dataset.populate(server, rows)
        synced = sync_cli(tmp_path, server.endpoint, rows)  # the system store only
        handshakes = server.accepted
    output = synced.stdout + synced.stderr
    assert synced.returncode == 1, output
    assert "Traceback" not in output
    stopped = [line for line in synced.stderr.splitlines() if "stopped early:" in line]
    assert len(stopped) == 1, output
    assert "certificate of 127.0.0.1 is not trusted" in stopped[0]
    assert "unable to get local issuer certificate" in stopped[0]  # the reason, from OpenSSL
    assert "ca_bundle" in stopped[0]
    # at most one handshake per series in flight, never max_attempts per series
    assert handshakes <= len(rows)
    assert server.requests() == []


def test_the_range_threads_refuse_an_untrusted_certificate_too(ca: LocalCA) -> None:
    with S3TestServer(tls=ca.server) as server:
        server.put("idc-open-data", "a/b.dcm", b"x" * 100)
        url = f"{server.endpoint}/idc-open-data/a/b.dcm"
        with pytest.raises(TlsError, match="not trusted"):
            open_response(NetOptions(), "GET", url, {"Range": "bytes=0-9"}, limit=10)
        trusted = open_response(NetOptions(ca_bundle=ca.pem), "GET", url, {}, limit=100)
        assert trusted.status == 200
        trusted.close()


def test_a_server_that_does_not_speak_tls_is_a_tls_error(s3_server: S3TestServer) -> None:
    url = s3_server.endpoint.replace("http://", "https://") + "/idc-open-data/a/b.dcm"
    with pytest.raises(TlsError, match="handshake"):
        open_response(NetOptions(), "GET", url, {}, limit=10)


@pytest.mark.parametrize("content", [None, "not a certificate"])
def test_a_ca_bundle_that_cannot_be_used_is_a_config_error_before_any_request(
    tmp_path: Path, rows: list[dataset.Row], content: str | None, s3_server: S3TestServer
) -> None:
    from idc_sync.core.errors import ConfigurationError

    bundle = tmp_path / "bundle.pem"
    if content is not None:
        bundle.write_text(content)
    settings = settings_for(tmp_path, s3_server.endpoint, rows, ca_bundle=bundle)
    with pytest.raises(ConfigurationError, match=f"ca_bundle {bundle}: cannot be used"):
        run(settings)
    assert s3_server.requests() == []
