"""--shard K/N: the hash is stable and even, shards of a real selection are disjoint and
together cover it, and N sharded syncs against a real server mirror every file once."""

from __future__ import annotations

import asyncio
import hashlib
from collections import Counter
from pathlib import Path

import pytest

from idc_sync.config import load_settings
from idc_sync.core.errors import ConfigurationError
from idc_sync.core.shard import Shard, shard_of
from idc_sync.run.jobs import plan
from tests.support import dataset
from tests.support.mirror import run, settings_for
from tests.support.s3server import S3TestServer

UUID = "4b026528-a8e9-4c57-ab35-d27857ad766d"


def test_shard_of_is_pinned_so_hosts_keep_their_series_across_versions() -> None:
    # Changing the hash would move series between hosts and make each re-fetch the
    # other's data: these values must never change.
    assert [shard_of(UUID, n) for n in (1, 2, 3, 4, 7, 1000)] == [0, 1, 0, 3, 4, 931]
    # ...and they are the documented formula, reproducible outside idc-sync
    digest = hashlib.sha1(UUID.encode()).digest()
    assert shard_of(UUID, 1000) == int.from_bytes(digest[:8], "big") % 1000


def test_shard_of_ignores_case_and_surrounding_space() -> None:
    assert shard_of(f"  {UUID.upper()}\n", 97) == shard_of(UUID, 97)


@pytest.mark.parametrize(
    ("text", "expected"), [("0/4", Shard(0, 4)), (" 3 / 4 ", Shard(3, 4)), ("0/1", Shard(0, 1))]
)
def test_shard_spec_parses(text: str, expected: Shard) -> None:
    assert Shard.parse(text) == expected
    assert str(Shard.parse(text)) == f"{expected.index}/{expected.count}"


@pytest.mark.parametrize("text", ["4/4", "-1/4", "1/0", "a/b", "1", "1/4/2", "", "0/100001"])
def test_bad_shard_specs_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="shard"):
        Shard.parse(text)


def test_bad_shard_in_settings_is_a_configuration_error_naming_the_key() -> None:
    with pytest.raises(ConfigurationError, match=r"command line: shard: .*0\.\.3"):
        load_settings(None, destination="/tmp/x", shard="4/4")
    assert load_settings(None, destination="/tmp/x", shard="1/4").series_shard == Shard(1, 4)


def test_shards_split_real_uuids_evenly() -> None:
    rows = dataset.real_series(limit=4000, order_by="crdc_series_uuid")
    counts = Counter(shard_of(str(row["crdc_series_uuid"]), 4) for row in rows)
    assert set(counts) == {0, 1, 2, 3}
    for count in counts.values():  # 3% is five standard deviations at 4000 series
        assert abs(count / len(rows) - 0.25) < 0.03, counts


def test_shards_of_a_real_collection_cover_it_exactly_once(tmp_path: Path) -> None:
    """plan --shard K/N for every K: the tallies add up to the unsharded plan, by series,
    files and bytes, and no series is in two shards."""
    base = {"destination": tmp_path / "mirror", "collections": ["cmb_mel"]}
    whole = asyncio.run(plan(load_settings(None, **base))).outcome.tally
    assert whole.series > 500
    parts = [
        asyncio.run(plan(load_settings(None, **base, shard=f"{k}/3"))).outcome.tally
        for k in range(3)
    ]
    assert sum(p.series for p in parts) == whole.series
    assert sum(p.files for p in parts) == whole.files
    assert sum(p.bytes for p in parts) == whole.bytes
    assert all(p.series > 0 for p in parts)
    uuids = [str(r["crdc_series_uuid"]) for r in dataset.real_series("cmb_mel", limit=10_000)]
    assert len(uuids) == whole.series
    owners = {uuid: [k for k in range(3) if Shard(k, 3).includes(uuid)] for uuid in uuids}
    assert all(len(found) == 1 for found in owners.values())


@pytest.mark.slow
def test_sharded_syncs_mirror_every_file_exactly_once(
    tmp_path: Path, s3_server: S3TestServer
) -> None:
    """Three "hosts", each with its own state, one shared selection: every object is
    fetched by exactly one of them and the union of their mirrors is the whole selection."""
    rows = (
        dataset.selection("qin_pet_phantom_small")
        + dataset.selection("two")
        + dataset.selection("cr_nc")
        + dataset.selection("single_instance")
    )
    uploaded = dataset.populate(s3_server, rows)
    mirrored: dict[str, bytes] = {}
    fetched_by: Counter[str] = Counter()
    for k in range(3):
        host = tmp_path / f"host{k}"
        s3_server.clear_requests()
        report = run(settings_for(host, s3_server.endpoint, rows, shard=f"{k}/3"))
        assert report.ok, report.problems
        for request in s3_server.requests():
            if request.kind == "GET" and request.key is not None:
                fetched_by[request.key] += 1
        for path in (host / "mirror").rglob("*.dcm"):
            assert path.name not in mirrored, f"{path.name} mirrored by two shards"
            mirrored[path.name] = path.read_bytes()
    expected = {key.split("/")[1]: data for (_bucket, key), data in uploaded.items()}
    assert mirrored == expected
    assert len(fetched_by) == len(uploaded)
    assert set(fetched_by.values()) == {1}
