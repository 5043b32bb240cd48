"""What to cite for the mirror: the ``source_DOI``s of the series it holds, per license, and
their references formatted by DOI content negotiation, as idc-index's
``citations_from_selection`` does (same Accept types, IDC's own publication appended),
without loading ``IDCClient`` (~5 s, pandas) for a list the state already has.

Grouping and rendering are pure; :func:`resolve` is the one I/O edge (HTTP to doi.org)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from idc_sync import __version__

if TYPE_CHECKING:
    import aiohttp

# (license_short_name, source_DOI, series), as the queue lists them: ordered by license.
CitedRow = tuple[str | None, str | None, int]

DOI_RESOLVER = "https://doi.org/"
# idc-index appends the main IDC publication (Fedorov et al., RadioGraphics 2023).
IDC_PUBLICATION_DOI = "10.1148/rg.230180"
IDC_PUBLICATION_HEADING = "Imaging Data Commons"

# --format name -> the IDCClient constant holding its Accept type; "doi" formats nothing.
_IDC_INDEX_FORMATS = {
    "apa": "CITATION_FORMAT_APA",
    "bibtex": "CITATION_FORMAT_BIBTEX",
    "csl-json": "CITATION_FORMAT_JSON",
    "turtle": "CITATION_FORMAT_TURTLE",
}
FORMATS = ("doi", *_IDC_INDEX_FORMATS)
# How each text format writes a line its readers ignore (license headings, unformatted DOIs).
_COMMENT = {"apa": "", "bibtex": "% ", "turtle": "# "}


def accept_type(citation_format: str) -> str:
    """The Accept type idc-index sends for ``citation_format`` (e.g. ``application/x-bibtex``)."""
    # Imported here: idc_index loads pandas (~0.7 s), which only formatting needs.
    from idc_index.index import IDCClient

    return str(getattr(IDCClient, _IDC_INDEX_FORMATS[citation_format]))


def dois_to_format(rows: Iterable[CitedRow]) -> list[str]:
    """Each recorded DOI once, in listing order, then IDC's publication; none if no DOI."""
    dois = list(dict.fromkeys(doi for _license, doi, _series in rows if doi))
    return [*dois, IDC_PUBLICATION_DOI] if dois else []


def doi_url(doi: str, resolver: str = DOI_RESOLVER) -> str:
    return resolver.rstrip("/") + "/" + quote(doi, safe="/")


@dataclass(frozen=True)
class Resolution:
    """What the resolver made of each DOI: its formatted reference, or why there is none."""

    citations: Mapping[str, str]
    failures: Mapping[str, str]
    reached: bool  # the resolver answered at least once (any HTTP status)

    @property
    def offline(self) -> bool:
        """Nothing formatted because the resolver could not be reached at all."""
        return bool(self.failures) and not self.reached

    @property
    def partial(self) -> bool:
        """The resolver answered, yet some DOIs are not formatted."""
        return bool(self.failures) and self.reached


def check_body(body: str, citation_format: str) -> str | None:
    """Why a 200 answer is not a usable reference, or None if it is."""
    if not body.strip():
        return "empty answer"
    if citation_format == "csl-json":
        try:
            item = json.loads(body)
        except ValueError:
            return "answer is not JSON"
        if not isinstance(item, dict):
            return "answer is not a CSL JSON item"
    return None


async def resolve(
    dois: Sequence[str],
    citation_format: str,
    resolver: str = DOI_RESOLVER,
    *,
    concurrency: int = 8,
    request_seconds: float = 30.0,
) -> Resolution:
    """Ask the DOI resolver for each DOI in ``citation_format`` (content negotiation,
    redirects followed). After a connection failure the remaining DOIs are not tried,
    so an offline machine answers at once instead of timing out per DOI."""
    import aiohttp  # only this command talks to doi.org: other commands skip the import

    accept = accept_type(citation_format)
    citations: dict[str, str] = {}
    failures: dict[str, str] = {}
    reached = False
    lost: str | None = None
    slots = asyncio.Semaphore(concurrency)

    async def one(http: aiohttp.ClientSession, doi: str) -> None:
        nonlocal reached, lost
        async with slots:
            if lost is not None:
                failures[doi] = f"not tried after: {lost}"
                return
            try:
                async with http.get(doi_url(doi, resolver), headers={"Accept": accept}) as answer:
                    reached = True
                    raw = await answer.read()
                    status, charset = answer.status, answer.charset or "utf-8"
            except (aiohttp.ClientConnectionError, TimeoutError) as error:
                lost = lost or _describe(error, request_seconds)
                failures[doi] = _describe(error, request_seconds)
                return
            except aiohttp.ClientError as error:
                failures[doi] = _describe(error, request_seconds)
                return
        try:
            body = raw.decode(charset, errors="replace")
        except LookupError:  # a charset Python does not know
            body = raw.decode("utf-8", errors="replace")
        problem = f"HTTP {status}" if status != 200 else check_body(body, citation_format)
        if problem is None:
            citations[doi] = body.strip()
        else:
            failures[doi] = problem

    async with aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=request_seconds, connect=min(request_seconds, 10.0)),
        headers={"User-Agent": f"idc-sync/{__version__}"},
        # unlike the buckets, doi.org may well need the site's HTTP(S)_PROXY
        trust_env=True,
    ) as http:
        await asyncio.gather(*(one(http, doi) for doi in dois))
    in_order = {doi: failures[doi] for doi in dois if doi in failures}
    return Resolution(citations, in_order, reached)


def _describe(error: BaseException, seconds: float) -> str:
    if isinstance(error, TimeoutError):
        return f"no answer within {seconds:g} s"
    return str(error) or type(error).__name__


# -- rendering (pure) ------------------------------------------------------------------


def _groups(rows: Iterable[CitedRow]) -> list[tuple[str | None, list[str]]]:
    """(license_short_name, its DOIs) in listing order; rows come ordered by license."""
    groups: list[tuple[str | None, list[str]]] = []
    for license_name, doi, _series in rows:
        if not groups or groups[-1][0] != license_name:
            groups.append((license_name, []))
        if doi and doi not in groups[-1][1]:
            groups[-1][1].append(doi)
    return groups


def render_text(rows: Sequence[CitedRow], citation_format: str, resolution: Resolution) -> str:
    """The references as one document: for ``csl-json`` a JSON array of CSL items (the
    unformatted DOIs left out); otherwise blocks per license, each heading and each DOI
    that was not formatted written as a line the format's readers skip."""
    if citation_format == "csl-json":
        items = [json.loads(resolution.citations[doi]) for doi in dois_to_format(rows)
                 if doi in resolution.citations]  # fmt: skip
        return json.dumps(items, indent=2, ensure_ascii=False)
    comment = _COMMENT[citation_format]
    blocks: list[str] = []
    groups = [*_groups(rows), (IDC_PUBLICATION_HEADING, [IDC_PUBLICATION_DOI])]
    for heading, dois in groups:
        blocks.append(f"{comment}{heading or '(no license recorded)'}")
        for doi in dois:
            citation = resolution.citations.get(doi)
            blocks.append(citation or f"{comment}not formatted: {doi_url(doi)}")
    return "\n\n".join(blocks)


def render_json(
    rows: Sequence[CitedRow], citation_format: str, resolution: Resolution
) -> list[dict[str, Any]]:
    """The listing's rows with a ``citation`` (null where not formatted; a CSL item for
    ``csl-json``), then IDC's publication as a row with ``series`` null."""
    listed: list[tuple[str | None, str | None, int | None]] = [*rows]
    listed.append((None, IDC_PUBLICATION_DOI, None))
    out: list[dict[str, Any]] = []
    for license_name, doi, series in listed:
        citation: Any = resolution.citations.get(doi) if doi else None
        if citation is not None and citation_format == "csl-json":
            citation = json.loads(citation)
        out.append({"license_short_name": license_name, "source_DOI": doi, "series": series,
                    "citation": citation})  # fmt: skip
    return out


def failure_message(resolution: Resolution, resolver: str) -> str:
    """What stderr says when some DOIs were not formatted, naming each one."""
    count = len(resolution.failures)
    if resolution.offline:
        why = next(iter(resolution.failures.values()))
        dois = "\n".join(f"  {doi}" for doi in resolution.failures)
        return (
            f"citations not formatted: formatting needs network access to doi.org, and the "
            f"resolver {resolver} could not be reached ({why}); the DOIs are listed "
            f"instead. {count} DOIs not formatted:\n{dois}"
        )
    missing = "\n".join(f"  {doi}: {why}" for doi, why in resolution.failures.items())
    total = count + len(resolution.citations)
    return f"{count} of {total} DOIs not formatted:\n{missing}"
