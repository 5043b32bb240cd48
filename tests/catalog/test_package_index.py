"""Reading idc-index-data's project page of a package index (Simple repository API): JSON per
PEP 691, HTML per PEP 503, the newest final release, and every hostile entry left out."""

from __future__ import annotations

import json
from typing import Any

import pytest

from idc_sync.catalog.package_index import (
    MAX_PAGE_BYTES,
    newest,
    parse_page,
    project_url,
    release_of,
    version_key,
    wheel_version,
)
from idc_sync.core.errors import ReleaseCheckError

PAGE = "https://pypi.example.org/simple/idc-index-data/"
JSON = "application/vnd.pypi.simple.v1+json"
HASH = "ab" * 32


def json_page(*files: dict[str, Any], api: str = "1.1") -> bytes:
    return json.dumps({"meta": {"api-version": api}, "name": "idc-index-data",
                       "files": list(files)}).encode()  # fmt: skip


def entry(filename: str, url: str | None = None, **more: Any) -> dict[str, Any]:
    return {"filename": filename, "url": url or f"https://files.example.org/{filename}",
            "hashes": {"sha256": HASH}, **more}  # fmt: skip


def test_versions_order_by_number_and_only_final_releases_count() -> None:
    assert version_key("26.0.1") > version_key("26.0.0") > version_key("25.10.0")  # type: ignore[operator]
    assert version_key("26") == version_key("26.0.0")
    for unfollowed in ("26.0.0rc1", "26.0.0.dev1", "26.0.0+local", "v26", "", "026.0", "1" * 30):
        assert version_key(unfollowed) is None, unfollowed
    assert release_of("25.0.5") == 25
    assert release_of("26.0.0b1") is None


def test_wheel_names_are_those_of_idc_index_data_releases() -> None:
    assert wheel_version("idc_index_data-26.0.0-py3-none-any.whl") == "26.0.0"
    # PEP 427 escapes the dashes of the name: unescaped, the parts do not add up
    assert wheel_version("idc-index-data-26.0.0-py3-none-any.whl") is None
    assert wheel_version("IDC.Index_Data-26.0.0-1-py3-none-any.whl") == "26.0.0"  # build tag
    assert wheel_version("idc_index-26.0.0-py3-none-any.whl") is None  # another project
    assert wheel_version("idc_index_data-26.0.0.tar.gz") is None  # an sdist
    assert wheel_version("idc_index_data-26.0.0rc1-py3-none-any.whl") is None
    assert wheel_version("../idc_index_data-26.0.0-py3-none-any.whl") is None


def test_project_url_is_the_project_page_under_the_index() -> None:
    assert project_url("https://pypi.org/simple") == "https://pypi.org/simple/idc-index-data/"
    assert project_url("https://pypi.org/simple/") == "https://pypi.org/simple/idc-index-data/"


def test_json_page_gives_every_wheel_with_its_hash_size_and_absolute_url() -> None:
    body = json_page(
        entry("idc_index_data-25.0.5-py3-none-any.whl", size=80_000_000),
        entry("idc_index_data-26.0.0-py3-none-any.whl", url="../../files/x.whl"),
        entry("idc_index_data-26.0.0.tar.gz"),
    )
    files = parse_page(body, JSON, PAGE)
    assert [f.version for f in files] == ["25.0.5", "26.0.0"]
    assert files[0].size == 80_000_000
    assert files[0].sha256 == HASH
    assert files[1].url == "https://pypi.example.org/files/x.whl"
    best = newest(files)
    assert best is not None
    assert (best.version, best.release) == ("26.0.0", 26)


def test_json_entries_without_a_usable_wheel_are_left_out() -> None:
    name = "idc_index_data-27.0.0-py3-none-any.whl"
    body = json_page(
        entry(name, yanked=True),
        entry(name, yanked="broken data"),
        {**entry(name), "hashes": {"md5": "0" * 32}},  # nothing to check the download with
        {**entry(name), "hashes": {"sha256": "not hex"}},
        entry(name, url="file:///etc/passwd"),
        entry(name, url="javascript:alert(1)"),
        {**entry(name), "url": 42},
        {"filename": None},
        "not an entry",  # type: ignore[arg-type]
        entry("idc_index_data-27.0.0rc1-py3-none-any.whl"),
        entry("idc_index_data-26.0.0-py3-none-any.whl", size=-1),
    )
    files = parse_page(body, JSON, PAGE)
    assert [(f.version, f.size) for f in files] == [("26.0.0", None)]


def test_html_page_reads_anchors_hash_fragments_and_skips_yanked() -> None:
    wheel = "idc_index_data-{}-py3-none-any.whl"
    anchors = [
        f'<a href="../../files/{wheel.format("25.0.5")}#sha256=HASH">{wheel.format("25.0.5")}</a>',
        f'<a href="https://f.example.org/{wheel.format("26.0.0")}#sha256=HASH" data-yanked="">'
        f"{wheel.format('26.0.0')}</a>",
        f'<a href="https://f.example.org/{wheel.format("25.1.0")}">{wheel.format("25.1.0")}</a>',
        f"<a>{wheel.format('25.2.0')}</a>",
    ]
    body = (
        (
            '<!DOCTYPE html><html><head><meta name="pypi:repository-version" content="1.1">'
            f"</head><body>{'<br>'.join(anchors)}</body></html>"
        )
        .replace("HASH", HASH.upper())
        .encode()
    )
    files = parse_page(body, "text/html; charset=utf-8", PAGE)
    assert [(f.version, f.url, f.sha256) for f in files] == [(
        "25.0.5", "https://pypi.example.org/files/idc_index_data-25.0.5-py3-none-any.whl", HASH,
    )]  # fmt: skip


@pytest.mark.parametrize(
    ("body", "content_type", "message"),
    [
        (b"{not json", JSON, "unreadable JSON"),
        (b'{"meta": {"api-version": "2.0"}, "files": []}', JSON, "version '2.0'"),
        (b'{"files": []}', JSON, "version None"),
        (b'{"meta": {"api-version": "1.0"}, "files": {}}', JSON, "without a list of files"),
        (b"[]", JSON, "without a list of files"),
        (b"\xff\xfe<a>", "text/html", "not UTF-8"),
        (b'<meta name="pypi:repository-version" content="2.0">', "text/html", "not 1.x"),
        (b"<a>x</a>", "application/pdf", "not a Simple repository API page"),
        (b"<a>x</a>", "", "Content-Type none"),
        (b" " * (MAX_PAGE_BYTES + 1), "text/html", "a page over"),
    ],
)
def test_pages_that_are_not_a_project_page_are_refused(
    body: bytes, content_type: str, message: str
) -> None:
    with pytest.raises(ReleaseCheckError, match=message) as caught:
        parse_page(body, content_type, PAGE)
    assert caught.value.reason == "index"


def test_a_page_of_nothing_usable_offers_no_release() -> None:
    assert newest(parse_page(json_page(), JSON, PAGE)) is None
    assert newest(parse_page(b"<html><body>nothing here</body></html>", "text/html", PAGE)) is None


def test_of_several_wheels_of_the_newest_release_the_first_by_name_is_chosen() -> None:
    body = json_page(entry("idc_index_data-26.0.0-py3-none-any.whl"),
                     entry("idc_index_data-26.0.0-1-py3-none-any.whl"),
                     entry("idc_index_data-26.0.1-py3-none-any.whl"),
                     entry("idc_index_data-3.0.0-py3-none-any.whl"))  # fmt: skip
    best = newest(parse_page(body, JSON, PAGE))
    assert best is not None
    assert best.filename == "idc_index_data-26.0.1-py3-none-any.whl"
    again = newest(parse_page(json_page(entry("idc_index_data-26.0.0-py3-none-any.whl"),
                                        entry("idc_index_data-26.0.0-1-py3-none-any.whl")),
                              JSON, PAGE))  # fmt: skip
    assert again is not None
    assert again.filename == "idc_index_data-26.0.0-1-py3-none-any.whl"
