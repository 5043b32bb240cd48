"""Following IDC releases from a package index on 127.0.0.1: the newest release is found over
JSON or HTML, fetched into the state directory, checked and unpacked; every failure (index
unreachable or hostile, wrong hash, a wheel too large, unreadable or too slow) is one
ReleaseCheckError naming its step and leaves nothing behind. Then ``sync`` with
``follow_releases`` takes a mirror from release 25 to 26."""

from __future__ import annotations

import asyncio
import os
import socket
from pathlib import Path
from typing import Any

import pytest

from idc_sync.catalog import sources
from idc_sync.config import Settings, load_settings
from idc_sync.core.errors import ReleaseCheckError
from idc_sync.run.follow import ReleaseCheck, check_releases
from tests.support import dataset, wheels
from tests.support.cli import idc_sync
from tests.support.mirror import run, state_rows
from tests.support.package_index import JSON_TYPE, PAGE, PackageIndex, publish_release
from tests.support.s3server import S3TestServer
from tests.support.tinyproxy import Tinyproxy
from tests.support.tls import LocalCA

pytestmark = pytest.mark.timeout(60)


Releases = tuple[wheels.FakeRelease, wheels.FakeRelease, dict[str, wheels.Row]]


@pytest.fixture(scope="module")
def releases() -> tuple[wheels.FakeRelease, wheels.FakeRelease, dict[str, wheels.Row]]:
    return wheels.two_releases()


@pytest.fixture
def installed_25(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, releases: Releases) -> Path:
    """idc-index-data 25.0.0 (the fake) as the installed package."""
    site = wheels.unpack_into(tmp_path / "site", releases[0])
    monkeypatch.syspath_prepend(str(site))
    return site


@pytest.fixture
def index(installed_25: Path) -> Any:
    with PackageIndex() as serving:
        yield serving


def settings(tmp_path: Path, index_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {"destination": tmp_path / "mirror", "index_url": index_url,
                              "follow_releases": True}  # fmt: skip
    values.update(overrides)
    return load_settings(None, **values)


def check(chosen: Settings, **kwargs: Any) -> ReleaseCheck:
    return asyncio.run(check_releases(chosen, **kwargs))


def catalogs_of(chosen: Settings) -> list[str]:
    root = chosen.state_path / sources.CATALOGS_DIR
    return sorted(p.name for p in root.iterdir()) if root.exists() else []


@pytest.mark.parametrize("form", ["json", "html"])
def test_a_newer_release_is_found_fetched_and_unpacked_for_the_next_plan(
    tmp_path: Path, index: PackageIndex, releases: Releases, form: str
) -> None:
    _, second, _ = releases
    index.behaviour.json = form == "json"
    publish_release(index, wheels.FakeRelease("24.0.0", []))  # older: never chosen
    publish_release(index, second)
    chosen = settings(tmp_path, index.url)

    found = check(chosen)

    assert found.newer
    assert found.offered is not None
    assert (found.offered.version, found.latest_release) == ("26.0.0", 26)
    assert found.current.version == "25.0.0"
    assert found.followed is not None
    assert found.followed.location == chosen.state_path / "catalogs" / "26.0.0"
    assert catalogs_of(chosen) == ["26.0.0"]  # the download itself is gone
    newest = sources.newest(chosen.state_path)
    assert (newest.version, newest.origin) == ("26.0.0", sources.FOLLOWED)
    page_requests = [h for path, h in index.behaviour.requests if path == PAGE]
    assert JSON_TYPE in page_requests[0]["Accept"]  # JSON asked for first, HTML accepted

    # the next check finds nothing newer and fetches nothing
    index.behaviour.requests.clear()
    again = check(chosen)
    assert not again.newer
    assert again.followed is None
    assert [path for path, _ in index.behaviour.requests] == [PAGE]


def test_without_follow_a_newer_release_is_only_reported(
    tmp_path: Path, index: PackageIndex, releases: Releases
) -> None:
    publish_release(index, releases[1])
    found = check(settings(tmp_path, index.url, follow_releases=False))
    assert found.newer
    assert found.latest_release == 26
    assert found.followed is None
    assert [path for path, _ in index.behaviour.requests] == [PAGE]
    assert catalogs_of(settings(tmp_path, index.url)) == []


def test_an_index_with_nothing_newer_reports_the_mirrors_own_release(
    tmp_path: Path, index: PackageIndex, releases: Releases
) -> None:
    publish_release(index, releases[0])
    found = check(settings(tmp_path, index.url))
    assert (found.newer, found.latest_release, found.followed) == (False, 25, None)


def _fails(chosen: Settings, reason: str, message: str) -> None:
    with pytest.raises(ReleaseCheckError, match=message) as caught:
        check(chosen)
    assert caught.value.reason == reason
    assert catalogs_of(chosen) == [], "a failed check left files in the state directory"
    assert sources.newest(chosen.state_path).version == "25.0.0"


def test_an_unreachable_index_fails_the_check(tmp_path: Path, installed_25: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed once the block ends: nothing listens there
    _fails(settings(tmp_path, f"http://127.0.0.1:{port}/simple/"), "index", "cannot reach")


@pytest.mark.parametrize(
    ("page", "status", "message"),
    [
        (None, 503, "HTTP 503"),
        ((b"<html>log in first</html>", "text/plain"), 200, "not a Simple repository API"),
        ((b"{" * (4 << 20 | 1), JSON_TYPE), 200, "a page over"),
        ((b'{"meta": {"api-version": "9.0"}, "files": []}', JSON_TYPE), 200, "not 1.x"),
    ],
)
def test_a_page_that_is_no_project_page_fails_the_check(
    tmp_path: Path, index: PackageIndex, releases: Releases,
    page: tuple[bytes, str] | None, status: int, message: str,
) -> None:  # fmt: skip
    publish_release(index, releases[1])
    index.behaviour.page, index.behaviour.page_status = page, status
    _fails(settings(tmp_path, index.url), "index", message)


def test_a_wheel_whose_hash_is_not_the_indexs_is_not_used(
    tmp_path: Path, index: PackageIndex, releases: Releases
) -> None:
    publish_release(index, releases[1], sha256="0" * 64)
    _fails(settings(tmp_path, index.url), "hash", "is not the 0000")


def test_a_wheel_announced_larger_than_allowed_is_not_downloaded(
    tmp_path: Path, index: PackageIndex, releases: Releases
) -> None:
    publish_release(index, releases[1], size=2_000_000_000)
    _fails(settings(tmp_path, index.url), "size", "the index says 2,000,000,000 bytes")
    assert all(not path.startswith("/files/") for path, _ in index.behaviour.requests)


def test_a_wheel_larger_than_allowed_stops_downloading_at_the_limit(
    tmp_path: Path, index: PackageIndex, releases: Releases
) -> None:
    published = publish_release(index, releases[1])
    limit = len(published.data) // 2
    _fails(settings(tmp_path, index.url, max_release_wheel_bytes=limit), "size",
           "larger than max_release_wheel_bytes")  # fmt: skip


def test_an_unreadable_wheel_with_the_right_hash_is_not_used(
    tmp_path: Path, index: PackageIndex
) -> None:
    index.publish(wheels.wheel_name("26.0.0"), b"PK\x03\x04 and then nothing useful")
    _fails(settings(tmp_path, index.url), "wheel", "not a readable wheel")


def test_a_missing_wheel_fails_the_download(
    tmp_path: Path, index: PackageIndex, releases: Releases
) -> None:
    publish_release(index, releases[1])
    index.behaviour.file_status = 404
    _fails(settings(tmp_path, index.url), "download", "HTTP 404")


def test_a_wheel_that_drips_is_abandoned_by_the_low_speed_rule(
    tmp_path: Path, index: PackageIndex, releases: Releases
) -> None:
    _, second, _ = releases
    bulky = wheels.FakeRelease(second.version, second.index, second.prior,
                               {"idc_index_data/padding.bin": os.urandom(300_000)})  # fmt: skip
    publish_release(index, bulky)
    index.behaviour.drip_seconds = 0.02  # ~50 KB/s, for ~6 s
    chosen = settings(tmp_path, index.url, low_speed_seconds=1.0,
                      low_speed_bytes_per_second=200_000)  # fmt: skip
    _fails(chosen, "download", "slower than low_speed_bytes_per_second")


def test_the_index_is_asked_through_the_configured_proxy(
    tmp_path: Path, index: PackageIndex, releases: Releases
) -> None:
    publish_release(index, releases[1])
    with Tinyproxy(tmp_path / "proxy") as proxy:
        found = check(settings(tmp_path, index.url, proxy=proxy.url))
        carried = proxy.requests("GET")
    assert found.followed is not None
    origin = index.url.removesuffix("/simple/")
    assert carried == [("GET", origin + PAGE),
                       ("GET", origin + "/files/" + wheels.wheel_name("26.0.0"))]  # fmt: skip


def test_an_https_index_needs_its_ca_in_ca_bundle(
    tmp_path: Path, installed_25: Path, releases: Releases
) -> None:
    ca = LocalCA.make(tmp_path)
    with PackageIndex(tls=ca.server) as secure:
        publish_release(secure, releases[1])
        _fails(settings(tmp_path, secure.url), "index", "TLS failed")
        found = check(settings(tmp_path, secure.url, ca_bundle=ca.pem))
    assert found.followed is not None


# -- sync --follow-releases ----------------------------------------------------------------


def _populate(server: S3TestServer, roles: dict[str, wheels.Row]) -> None:
    for row in roles.values():
        server.put_many(str(row["aws_bucket"]), dataset.series_objects(row))


def test_sync_with_follow_releases_takes_the_mirror_to_the_new_release(
    tmp_path: Path, index: PackageIndex, s3_server: S3TestServer, releases: Releases
) -> None:
    first, second, roles = releases
    _populate(s3_server, roles)
    base = settings(tmp_path, index.url, follow_releases=False, series=[],
                    collections=[wheels.COLLECTION],
                    endpoints={"aws": s3_server.endpoint})  # fmt: skip
    publish_release(index, second)
    earlier = run(base)
    assert earlier.ok
    assert earlier.plan.release == 25

    def uuids() -> dict[str, str]:
        return dict(state_rows(base, "SELECT crdc_series_uuid, state FROM series"))

    assert set(uuids()) == first.uuids

    report = run(base.model_copy(update={"follow_releases": True}))

    assert report.ok, report.problems
    assert report.plan.release == 26
    assert "26.0.0 (followed" in report.plan.catalog
    states = uuids()
    for role in ("kept", "also_kept", "revised_new", "added"):
        assert states[str(roles[role]["crdc_series_uuid"])] == "complete", role
    for role in ("revised", "removed"):
        assert states[str(roles[role]["crdc_series_uuid"])] == "retired", role
    assert report.round.retired.series_retired == 2
    retired = {p.name for p in (base.retired_path / "v25").rglob("*.dcm")}
    assert len(retired) == 2
    catalogs = dict(state_rows(base, "SELECT crdc_series_uuid, catalog FROM series"))
    assert catalogs[str(roles["added"]["crdc_series_uuid"])] == "26.0.0"
    assert catalogs[str(roles["kept"]["crdc_series_uuid"])] == "25.0.0"


@pytest.mark.slow
def test_sync_command_with_an_unreachable_index_warns_and_mirrors_what_it_has(
    tmp_path: Path, installed_25: Path, s3_server: S3TestServer, releases: Releases
) -> None:
    first, _, roles = releases
    _populate(s3_server, roles)
    result = idc_sync(
        "sync", "--follow-releases", "--destination", tmp_path / "mirror", "--endpoint",
        s3_server.endpoint, "--collection", wheels.COLLECTION,
        env={"IDC_SYNC_INDEX_URL": "http://127.0.0.1:9/simple/",
             "PYTHONPATH": f"{installed_25}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "newer IDC release failed (index)" in result.stderr
    assert "cannot reach http://127.0.0.1:9/simple/idc-index-data/" in result.stderr
    mirrored = {p.parent.name for p in (tmp_path / "mirror").rglob("*.dcm")}
    assert len(mirrored) == len(first.index)
