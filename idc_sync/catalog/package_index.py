"""What a package index offers of idc-index-data: its project page in the Simple repository
API, as JSON (PEP 691) or as HTML (PEP 503, the fallback every index speaks), read into the
wheels it lists, and the newest release among them. Pure: bytes in, values out; the request
is run/follow.py's.

A page is untrusted input. Every entry that is not a usable wheel is left out rather than
trusted: a name that is not idc-index-data, a version that is not a final release (no
pre-releases, no local versions), a URL that is not http(s), no SHA-256 to check the
download against, a yanked file. A page that is not one of the two forms is an error.
idc-index-data numbers itself ``<IDC release>.<data fix>.<code fix>``, so the first number
of a version is the IDC release it describes."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from html.parser import HTMLParser
from typing import Any
from urllib.parse import urldefrag, urljoin, urlsplit

from idc_sync.core.errors import ReleaseCheckError

PROJECT = "idc-index-data"
# JSON first; the HTML forms for indexes that have no JSON (devpi, a directory on a web
# server). PEP 691 names the media types.
JSON_TYPES = ("application/vnd.pypi.simple.v1+json", "application/vnd.pypi.simple.latest+json")
HTML_TYPES = ("application/vnd.pypi.simple.v1+html", "application/vnd.pypi.simple.latest+html",
              "text/html")  # fmt: skip
ACCEPT = (
    "application/vnd.pypi.simple.v1+json, application/vnd.pypi.simple.v1+html;q=0.2, "
    "text/html;q=0.01"
)
# The project page of idc-index-data lists a few dozen files (~10 KB as JSON on PyPI);
# anything this large is not that page.
MAX_PAGE_BYTES = 4 << 20

_SHA256 = re.compile(r"[0-9a-f]{64}")
# A final release: numbers only (PEP 440 release segment), each of a sane length
_FINAL = re.compile(r"(?:0|[1-9][0-9]{0,8})(?:\.(?:0|[1-9][0-9]{0,8})){0,5}")


def version_key(version: str) -> tuple[int, ...] | None:
    """The order of a final release version ("26.0.1" -> (26, 0, 1)); None for anything
    else (pre-releases, dev and local versions, which a mirror does not follow)."""
    if not _FINAL.fullmatch(version):
        return None
    numbers = [int(part) for part in version.split(".")]
    while len(numbers) > 1 and numbers[-1] == 0:
        numbers.pop()  # 26.0 == 26.0.0
    return tuple(numbers)


def release_of(version: str) -> int | None:
    """The IDC release an idc-index-data version describes, or None when it is not a
    version idc-index-data numbers that way."""
    key = version_key(version)
    return None if key is None else key[0]


@dataclass(frozen=True, slots=True)
class ReleaseFile:
    """One wheel of idc-index-data the index offers."""

    version: str
    filename: str
    url: str  # absolute, without the fragment
    sha256: str  # lower-case hex
    size: int | None = None  # announced by the index (PEP 700), when it does

    @property
    def release(self) -> int:
        key = version_key(self.version)
        assert key is not None, "only final releases are made into ReleaseFiles"
        return key[0]

    @property
    def key(self) -> tuple[int, ...]:
        key = version_key(self.version)
        assert key is not None
        return key


def project_url(index_url: str) -> str:
    """The project page of idc-index-data on the index at ``index_url`` (…/simple/)."""
    return index_url.rstrip("/") + f"/{PROJECT}/"


def _normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def wheel_version(filename: str) -> str | None:
    """The version of an idc-index-data wheel named ``filename`` (PEP 427), or None when
    it is not one."""
    if not filename.endswith(".whl") or "/" in filename or "\\" in filename:
        return None
    parts = filename[: -len(".whl")].split("-")
    if len(parts) not in (5, 6) or _normalized(parts[0]) != PROJECT:
        return None
    return parts[1] if version_key(parts[1]) is not None else None


def _release_file(
    filename: Any, href: Any, sha256: Any, yanked: Any, size: Any, page_url: str
) -> ReleaseFile | None:
    if not isinstance(filename, str) or not isinstance(href, str) or yanked not in (None, False):
        return None
    version = wheel_version(filename)
    if version is None:
        return None
    url, fragment = urldefrag(urljoin(page_url, href.strip()))
    if sha256 is None and fragment.startswith("sha256="):
        sha256 = fragment[len("sha256=") :]
    if not isinstance(sha256, str) or not _SHA256.fullmatch(sha256.lower()):
        return None
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    announced = size if isinstance(size, int) and not isinstance(size, bool) and size >= 0 else None
    return ReleaseFile(version, filename, url, sha256.lower(), announced)


def _media_type(content_type: str) -> str:
    return content_type.split(";", 1)[0].strip().lower()


def parse_page(body: bytes, content_type: str, page_url: str) -> list[ReleaseFile]:
    """The usable wheels a project page lists. ReleaseCheckError("index") for a page that
    is neither form or too large to be this page."""
    if len(body) > MAX_PAGE_BYTES:
        raise ReleaseCheckError("index", f"{page_url}: a page over {MAX_PAGE_BYTES} bytes")
    media = _media_type(content_type)
    if media in JSON_TYPES or media == "application/json":
        return list(_from_json(body, page_url))
    if media in HTML_TYPES:
        return list(_from_html(body, page_url))
    raise ReleaseCheckError(
        "index", f"{page_url}: not a Simple repository API page (Content-Type {media or 'none'})"
    )


def _from_json(body: bytes, page_url: str) -> Iterator[ReleaseFile]:
    try:
        page = json.loads(body)
    except (UnicodeDecodeError, ValueError) as error:
        raise ReleaseCheckError("index", f"{page_url}: unreadable JSON: {error}") from None
    if not isinstance(page, dict) or not isinstance(page.get("files"), list):
        raise ReleaseCheckError("index", f"{page_url}: JSON without a list of files")
    meta = page.get("meta")
    api = meta.get("api-version") if isinstance(meta, dict) else None
    if not isinstance(api, str) or api.split(".", 1)[0] != "1":
        # PEP 691: a client stops at a major version it does not know
        raise ReleaseCheckError("index", f"{page_url}: Simple API version {api!r}, not 1.x")
    for entry in page["files"]:
        if not isinstance(entry, dict):
            continue
        hashes = entry.get("hashes")
        sha256 = hashes.get("sha256") if isinstance(hashes, dict) else None
        found = _release_file(
            entry.get("filename"), entry.get("url"), sha256,
            entry.get("yanked", False) or None, entry.get("size"), page_url,
        )  # fmt: skip
        if found is not None:
            yield found


class _Anchors(HTMLParser):
    """The <a> elements of a page: (href, text, yanked), and the API version it declares."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.anchors: list[tuple[str | None, str, bool]] = []
        self.api_version: str | None = None
        self._open: tuple[str | None, bool] | None = None
        self._text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found: Mapping[str, str | None] = dict(attrs)
        if tag == "a":
            self._open = (found.get("href"), "data-yanked" in found)
            self._text = []
        elif tag == "meta" and found.get("name") == "pypi:repository-version":
            self.api_version = found.get("content")

    def handle_data(self, data: str) -> None:
        if self._open is not None and sum(map(len, self._text)) < 1024:
            self._text.append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag == "a" and self._open is not None:
            href, yanked = self._open
            self.anchors.append((href, "".join(self._text).strip(), yanked))
            self._open = None


def _from_html(body: bytes, page_url: str) -> Iterator[ReleaseFile]:
    parser = _Anchors()
    try:
        parser.feed(body.decode("utf-8"))
        parser.close()
    except UnicodeDecodeError as error:
        raise ReleaseCheckError("index", f"{page_url}: HTML that is not UTF-8: {error}") from None
    api = parser.api_version
    if api is not None and api.split(".", 1)[0] != "1":
        raise ReleaseCheckError("index", f"{page_url}: Simple API version {api!r}, not 1.x")
    for href, text, yanked in parser.anchors:
        # the URL fragment carries the hash (#sha256=...)
        found = _release_file(text, href, None, True if yanked else None, None, page_url)
        if found is not None:
            yield found


def newest(files: Iterable[ReleaseFile]) -> ReleaseFile | None:
    """The wheel of the newest release offered (of several wheels of it, the first by
    name: they carry the same data)."""
    best: ReleaseFile | None = None
    for candidate in files:
        if best is None or (candidate.key, best.filename) > (best.key, candidate.filename):
            best = candidate
    return best
