"""`idc-sync citations` over a real mirror (a sync against the local S3 test server): the
DOI list per license, references formatted through a local resolver on 127.0.0.1 that
answers DOI content negotiation as doi.org does, and the DOI list when none can be
reached."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote

import pytest
from idc_index.index import IDCClient

from idc_sync.cli.citations import IDC_PUBLICATION_DOI, Resolution, dois_to_format, render_text
from idc_sync.config import Settings
from tests.support import dataset
from tests.support.mirror import run, settings_for
from tests.support.s3server import S3TestServer

ACCEPT = {
    "apa": IDCClient.CITATION_FORMAT_APA,
    "bibtex": IDCClient.CITATION_FORMAT_BIBTEX,
    "csl-json": IDCClient.CITATION_FORMAT_JSON,
    "turtle": IDCClient.CITATION_FORMAT_TURTLE,
}


@dataclass
class Mirror:
    settings: Settings
    rows: list[dict[str, Any]]

    def all_dois(self) -> list[str]:
        return sorted({str(row["source_DOI"]) for row in self.rows})

    def dois_by_license(self) -> dict[str, set[str]]:
        by_license: dict[str, set[str]] = {}
        for row in self.rows:
            by_license.setdefault(row["license_short_name"], set()).add(row["source_DOI"])
        return by_license


@pytest.fixture(scope="module")
def mirror(tmp_path_factory: pytest.TempPathFactory) -> Mirror:
    """One CC BY series (idc-open-data-two) and one CC BY-NC series (idc-open-data-cr),
    really synced."""
    rows = dataset.selection("two") + dataset.selection("cr_nc")
    assert len({row["license_short_name"] for row in rows}) == 2
    server = S3TestServer("s3")
    with server:
        dataset.populate(server, rows)
        settings = settings_for(tmp_path_factory.mktemp("citations"), server.endpoint, rows)
        assert run(settings).ok
    assert not server.errors
    return Mirror(settings, rows)


@dataclass
class DoiResolver:
    """Answers like doi.org: ``/<doi>`` redirects to ``/crosscite/<doi>``, which answers
    in the format the Accept header asks for (406 for others, 404 for ``refused``)."""

    url: str = ""
    received: list[tuple[str, str]] = field(default_factory=list)  # (path, Accept)
    refused: set[str] = field(default_factory=set)


def _reference(doi: str, accept: str) -> tuple[str, str] | None:
    """(content type, body) of a made-up reference for ``doi`` in the ``accept`` format."""
    if accept == ACCEPT["bibtex"]:
        return "application/x-bibtex", f"@misc{{{doi},\n  doi = {{{doi}}},\n  title = {{T}}\n}}"
    if accept == ACCEPT["csl-json"]:
        item = {"type": "dataset", "DOI": doi, "title": f"Dataset {doi}"}
        return "application/vnd.citationstyles.csl+json", json.dumps(item)
    if accept == ACCEPT["apa"]:
        return "text/x-bibliography; charset=utf-8", f"Author, A. (2020). Dataset {doi} [Data set]."
    if accept == ACCEPT["turtle"]:
        return "text/turtle", f"<https://doi.org/{doi}> a <http://schema.org/Dataset> ."
    return None


@pytest.fixture
def resolver() -> Iterator[DoiResolver]:
    state = DoiResolver()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            accept = self.headers.get("Accept", "")
            state.received.append((self.path, accept))
            if not self.path.startswith("/crosscite/"):
                self._answer(302, "text/plain", "", location="/crosscite" + self.path)
                return
            doi = unquote(self.path.removeprefix("/crosscite/"))
            reference = _reference(doi, accept)
            if doi in state.refused:
                self._answer(404, "text/plain", "DOI not found")
            elif reference is None:
                self._answer(406, "text/plain", "not acceptable")
            else:
                self._answer(200, *reference)

        def _answer(self, status: int, content_type: str, body: str, location: str = "") -> None:
            data = body.encode()
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            if location:
                self.send_header("Location", location)
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_address[1]}/"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def closed_port_url() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}/"


def citations_cli(mirror: Mirror, *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "idc_sync", "citations", "--destination",
               str(mirror.settings.mirror_root), *args]  # fmt: skip
    env = {**os.environ, "COLUMNS": "200", "NO_PROXY": "127.0.0.1", "no_proxy": "127.0.0.1"}
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)


@pytest.mark.slow
def test_doi_list_per_license_of_a_real_mirror(mirror: Mirror) -> None:
    text = citations_cli(mirror)
    listed = citations_cli(mirror, "--json")

    assert text.returncode == 0, text.stderr
    assert listed.returncode == 0, listed.stderr
    by_license: dict[str, set[str]] = {}
    for row in json.loads(listed.stdout):
        by_license.setdefault(row["license_short_name"], set()).add(row["source_DOI"])
        assert row["series"] == 1
    assert by_license == mirror.dois_by_license()
    # the text lists each license once, its DOIs as links right under it
    lines = text.stdout.splitlines()
    for license_name, dois in mirror.dois_by_license().items():
        at = lines.index(license_name)
        assert {line.split()[0] for line in lines[at + 1 : at + 1 + len(dois)]} == {
            f"https://doi.org/{doi}" for doi in dois
        }


@pytest.mark.slow
def test_bibtex_formatted_by_doi_content_negotiation(mirror: Mirror, resolver: DoiResolver) -> None:
    done = citations_cli(mirror, "--format", "bibtex", "--doi-resolver", resolver.url)

    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    expected = [*mirror.all_dois(), IDC_PUBLICATION_DOI]
    # every DOI asked once at the resolver, once more where it redirected, always BibTeX
    assert sorted(path for path, _ in resolver.received) == sorted(
        [f"/{doi}" for doi in expected] + [f"/crosscite/{doi}" for doi in expected]
    )
    assert {accept for _, accept in resolver.received} == {"application/x-bibtex"}
    # one section per license under a BibTeX comment heading, IDC's publication last
    sections = re.findall(r"^% ([^\n]+)\n\n(.*?)(?=^% |\Z)", done.stdout, re.MULTILINE | re.DOTALL)
    by_license = mirror.dois_by_license()
    assert [heading for heading, _ in sections] == [*sorted(by_license), "Imaging Data Commons"]
    for heading, entries in sections:
        dois = by_license.get(heading, {IDC_PUBLICATION_DOI})
        assert sorted(re.findall(r"@misc\{([^,]+),\n  doi = \{\1\}", entries)) == sorted(dois)


@pytest.mark.slow
@pytest.mark.parametrize("citation_format", ["apa", "csl-json", "turtle"])
def test_each_format_sends_idc_index_accept_type(
    mirror: Mirror, resolver: DoiResolver, citation_format: str
) -> None:
    done = citations_cli(
        mirror, "--format", citation_format, "--json", "--doi-resolver", resolver.url
    )

    assert done.returncode == 0, done.stderr
    assert {accept for _, accept in resolver.received} == {ACCEPT[citation_format]}
    rows = json.loads(done.stdout)
    assert rows[-1]["source_DOI"] == IDC_PUBLICATION_DOI
    assert rows[-1]["series"] is None
    for row in rows:
        _content_type, body = _reference(row["source_DOI"], ACCEPT[citation_format]) or ("", "")
        want = json.loads(body) if citation_format == "csl-json" else body
        assert row["citation"] == want


@pytest.mark.slow
def test_unreachable_resolver_lists_dois_and_says_why_exit_0(mirror: Mirror) -> None:
    url = closed_port_url()
    started = time.monotonic()
    done = citations_cli(mirror, "--format", "bibtex", "--doi-resolver", url)
    elapsed = time.monotonic() - started

    assert done.returncode == 0, done.stderr
    assert done.stdout == citations_cli(mirror).stdout  # the DOI list, as without --format
    message = " ".join(done.stderr.split())
    assert "formatting needs network access to doi.org" in message
    assert f"{url} could not be reached (Cannot connect to host" in message
    not_formatted = done.stderr.split("not formatted:")[-1].split()
    assert sorted(not_formatted) == sorted([*mirror.all_dois(), IDC_PUBLICATION_DOI])
    assert elapsed < 30  # refused at once, not a timeout per DOI


@pytest.mark.slow
def test_dois_the_resolver_refuses_are_named_and_exit_1(
    mirror: Mirror, resolver: DoiResolver
) -> None:
    dois = mirror.all_dois()
    refused = dois[0]
    resolver.refused.add(refused)

    done = citations_cli(mirror, "--format", "bibtex", "--doi-resolver", resolver.url)

    assert done.returncode == 1
    assert f"% not formatted: https://doi.org/{refused}" in done.stdout
    assert f"@misc{{{refused}," not in done.stdout
    assert f"@misc{{{IDC_PUBLICATION_DOI}," in done.stdout
    message = " ".join(done.stderr.split())
    assert f"{refused}: HTTP 404" in message
    assert f"1 of {len(dois) + 1} DOIs not formatted" in message


def test_a_doi_shared_by_two_licenses_is_formatted_once_and_shown_under_both() -> None:
    rows = [("CC BY 4.0", "10.1/a", 2), ("CC BY 4.0", "10.1/b", 1), ("CC BY-NC 4.0", "10.1/a", 3)]
    resolution = Resolution({"10.1/a": "A", "10.1/b": "B", IDC_PUBLICATION_DOI: "IDC"}, {}, True)

    assert dois_to_format(rows) == ["10.1/a", "10.1/b", IDC_PUBLICATION_DOI]
    assert dois_to_format([("CC BY 4.0", None, 1)]) == []
    assert render_text(rows, "apa", resolution).split("\n\n") == [
        "CC BY 4.0", "A", "B", "CC BY-NC 4.0", "A", "Imaging Data Commons", "IDC",
    ]  # fmt: skip
