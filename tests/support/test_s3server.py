"""Tests of the test servers themselves, so the rest of the suite can trust them: S3TestServer
speaks ListObjectsV2, ranges, conditions and part numbers as botocore and aiohttp expect,
answers with GCS headers in the GCS flavour, injects every fault kind it documents, and
moto serves the public IDC buckets to anonymous clients."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import http.client
import re
import struct
import time
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import botocore.exceptions
import google_crc32c
import pytest
from aiobotocore.session import get_session
from botocore import UNSIGNED
from botocore.config import Config

from idc_sync.core.listing import parse_list_page
from tests.support.moto import MotoServer, moto_put, signed_client, unsigned_client
from tests.support.s3server import (
    FAULT_KINDS,
    FaultPlan,
    S3TestServer,
    iter_hostile_keys,
    md5_hex,
    multipart_etag,
)

NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"
MD5_RE = re.compile(r"[0-9a-f]{32}")


@asynccontextmanager
async def anonymous_s3(endpoint: str) -> AsyncIterator[Any]:
    config = Config(
        signature_version=UNSIGNED,
        s3={"addressing_style": "path"},
        retries={"total_max_attempts": 1, "mode": "standard"},  # no retries
    )
    async with get_session().create_client(
        "s3", region_name="us-east-1", endpoint_url=endpoint, config=config
    ) as client:
        yield client


def raw(
    server: S3TestServer, method: str, target: str, headers: dict[str, str] | None = None
) -> tuple[int, http.client.HTTPMessage, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        conn.request(method, target, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.headers, response.read()
    finally:
        conn.close()


def aiohttp_get(
    url: str, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, list[str]], bytes]:
    async def fetch() -> tuple[int, dict[str, list[str]], bytes]:
        async with aiohttp.ClientSession() as session, session.get(url, headers=headers) as resp:
            found: dict[str, list[str]] = {}
            for name, value in resp.headers.items():
                found.setdefault(name.lower(), []).append(value)
            return resp.status, found, await resp.read()

    return asyncio.run(fetch())


# -- ListObjectsV2 ---------------------------------------------------------------------


def test_aiobotocore_paginates_2500_keys_in_pages_of_1000(s3_server: S3TestServer) -> None:
    expected = {f"series/{i:05d}.dcm": f"instance {i}".encode() for i in range(2500)}
    s3_server.put_many("idc-open-data", expected)
    s3_server.put("idc-open-data", "other/0.dcm", b"not in the prefix")

    async def list_all() -> list[dict[str, Any]]:
        async with anonymous_s3(s3_server.endpoint) as s3:
            pages = s3.get_paginator("list_objects_v2").paginate(
                Bucket="idc-open-data", Prefix="series/"
            )
            return [page async for page in pages]

    pages = asyncio.run(list_all())
    assert [page["KeyCount"] for page in pages] == [1000, 1000, 500]
    assert [page["IsTruncated"] for page in pages] == [True, True, False]
    listed = [item for page in pages for item in page["Contents"]]
    assert [item["Key"] for item in listed] == sorted(expected)
    for item in listed:
        data = expected[item["Key"]]
        assert item["Size"] == len(data)
        assert item["ETag"] == f'"{md5_hex(data)}"'
        assert item["StorageClass"] == "STANDARD"
    lists = [r for r in s3_server.requests() if r.kind == "LIST"]
    assert len(lists) == 3 == s3_server.count("LIST", key_prefix="series/")
    assert not any(r.has_authorization for r in lists)


def test_listing_xml_has_the_shape_s3_gives_it(s3_server: S3TestServer) -> None:
    s3_server.put("b", "p/a.dcm", b"abc")
    s3_server.put("b", "p/b.dcm", b"defg")
    status, headers, body = raw(s3_server, "GET", "/b?list-type=2&prefix=p/&max-keys=1")
    assert status == 200
    assert headers["Content-Type"] == "application/xml"
    root = ET.fromstring(body)
    assert root.tag == f"{NS}ListBucketResult"
    assert [child.tag.removeprefix(NS) for child in root] == [
        "Name", "Prefix", "KeyCount", "MaxKeys", "IsTruncated", "NextContinuationToken",
        "Contents",
    ]  # fmt: skip
    contents = root.find(f"{NS}Contents")
    assert contents is not None
    assert [c.tag.removeprefix(NS) for c in contents] == [
        "Key", "LastModified", "ETag", "Size", "StorageClass"
    ]  # fmt: skip
    assert contents.findtext(f"{NS}ETag") == f'"{md5_hex(b"abc")}"'
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.000Z", contents.findtext(f"{NS}LastModified") or ""
    )
    token = root.findtext(f"{NS}NextContinuationToken")
    status, _, body = raw(s3_server, "GET", f"/b?list-type=2&prefix=p/&continuation-token={token}")
    page2 = ET.fromstring(body)
    assert page2.findtext(f"{NS}ContinuationToken") == token
    assert [k.text for k in page2.iter(f"{NS}Key")] == ["p/b.dcm"]
    assert page2.findtext(f"{NS}IsTruncated") == "false"


def test_listing_honours_start_after_and_delimiter(s3_server: S3TestServer) -> None:
    for key in ["a/1", "a/2", "a/3", "b/x/1", "b/x/2", "b/y", "c"]:
        s3_server.put("b", key, key.encode())

    async def run() -> tuple[list[str], list[str], list[str]]:
        async with anonymous_s3(s3_server.endpoint) as s3:
            after = await s3.list_objects_v2(Bucket="b", Prefix="a/", StartAfter="a/1")
            top = await s3.list_objects_v2(Bucket="b", Delimiter="/")
            nested = await s3.list_objects_v2(Bucket="b", Prefix="b/", Delimiter="/")
        return (
            [c["Key"] for c in after["Contents"]],
            [p["Prefix"] for p in top["CommonPrefixes"]] + [c["Key"] for c in top["Contents"]],
            [p["Prefix"] for p in nested["CommonPrefixes"]]
            + [c["Key"] for c in nested["Contents"]],
        )

    after, top, nested = asyncio.run(run())
    assert after == ["a/2", "a/3"]
    assert top == ["a/", "b/", "c"]
    assert nested == ["b/x/", "b/y"]


def test_url_encoded_listing_round_trips_awkward_keys_through_aiobotocore(
    s3_server: S3TestServer,
) -> None:
    keys = ["s/a b.dcm", "s/plus+sign.dcm", "s/100%.dcm", "s/ctl\x01.dcm", "s/é.dcm", "s/&<>.dcm"]
    for key in keys:
        s3_server.put("b", key, b"x")

    async def run() -> list[str]:
        async with anonymous_s3(s3_server.endpoint) as s3:
            page = await s3.list_objects_v2(Bucket="b", Prefix="s/")
            for key in keys:  # the key also survives the trip through the request path
                assert await (await s3.get_object(Bucket="b", Key=key))["Body"].read() == b"x"
            return [c["Key"] for c in page["Contents"]]

    assert asyncio.run(run()) == sorted(keys)
    assert next(r for r in s3_server.requests() if r.kind == "LIST").query["encoding-type"] == [
        "url"
    ]


def test_missing_key_and_bucket_answer_s3_error_codes(s3_server: S3TestServer) -> None:
    s3_server.create_bucket("empty")

    async def run() -> list[str]:
        codes = []
        async with anonymous_s3(s3_server.endpoint) as s3:
            for call in (
                s3.get_object(Bucket="empty", Key="nope"),
                s3.get_object(Bucket="nobucket", Key="nope"),
                s3.list_objects_v2(Bucket="nobucket"),
            ):
                with pytest.raises(botocore.exceptions.ClientError) as caught:
                    await call
                codes.append(caught.value.response["Error"]["Code"])
            empty = await s3.list_objects_v2(Bucket="empty")
            assert empty["KeyCount"] == 0
            assert "Contents" not in empty
        return codes

    assert asyncio.run(run()) == ["NoSuchKey", "NoSuchBucket", "NoSuchBucket"]
    status, _, body = raw(s3_server, "HEAD", "/empty/nope")
    assert (status, body) == (404, b"")


# -- objects: headers, ranges, conditions, parts -----------------------------------------


def test_s3_object_headers(s3_server: S3TestServer) -> None:
    s3_server.put("b", "k", b"0123456789")
    status, headers, body = raw(s3_server, "GET", "/b/k")
    assert (status, body) == (200, b"0123456789")
    assert headers["ETag"] == f'"{md5_hex(body)}"'
    assert headers["Content-Length"] == "10"
    assert headers["Accept-Ranges"] == "bytes"
    assert headers["Last-Modified"].endswith(" GMT")
    assert headers.get("x-goog-hash") is None
    status, headers, body = raw(s3_server, "HEAD", "/b/k")
    assert (status, body, headers["Content-Length"]) == (200, b"", "10")


@pytest.mark.parametrize(
    ("range_header", "status", "content_range", "body"),
    [
        ("bytes=2-5", 206, "bytes 2-5/10", b"2345"),
        ("bytes=7-", 206, "bytes 7-9/10", b"789"),
        ("bytes=-3", 206, "bytes 7-9/10", b"789"),
        ("bytes=8-100", 206, "bytes 8-9/10", b"89"),
        ("bytes=-100", 206, "bytes 0-9/10", b"0123456789"),
        ("bytes=10-", 416, "bytes */10", None),
        ("bytes=-0", 416, "bytes */10", None),
        ("bytes=5-2", 200, None, b"0123456789"),  # malformed: ignored, as S3 does
    ],
)
def test_range_requests(
    s3_server: S3TestServer,
    range_header: str,
    status: int,
    content_range: str | None,
    body: bytes | None,
) -> None:
    s3_server.put("b", "k", b"0123456789")
    got_status, headers, got_body = raw(s3_server, "GET", "/b/k", {"Range": range_header})
    assert got_status == status
    assert headers.get("Content-Range") == content_range
    if body is not None:
        assert got_body == body
        assert headers["Content-Length"] == str(len(body))
    else:
        assert b"<Code>InvalidRange</Code>" in got_body


def test_if_match_and_if_none_match(s3_server: S3TestServer) -> None:
    etag = s3_server.put("b", "k", b"data").etag
    assert raw(s3_server, "GET", "/b/k", {"If-Match": f'"{etag}"'})[0] == 200
    status, _, body = raw(s3_server, "GET", "/b/k", {"If-Match": f'"{md5_hex(b"other")}"'})
    assert status == 412
    assert b"<Code>PreconditionFailed</Code>" in body
    assert raw(s3_server, "HEAD", "/b/k", {"If-Match": '"nope"'})[0] == 412
    assert raw(s3_server, "GET", "/b/k", {"If-None-Match": f'"{etag}"'})[0] == 304


def test_multipart_object_has_multipart_etag_and_answers_part_numbers(
    s3_server: S3TestServer,
) -> None:
    data = bytes(range(256)) * 40  # 10,240 bytes: parts of 4,096 + 4,096 + 2,048
    stored = s3_server.put("b", "k", data, part_size=4096)
    parts = [data[:4096], data[4096:8192], data[8192:]]
    digest = hashlib.md5(b"".join(hashlib.md5(p).digest() for p in parts)).hexdigest()
    assert stored.etag == multipart_etag(data, 4096) == f"{digest}-3"

    async def run() -> None:
        async with anonymous_s3(s3_server.endpoint) as s3:
            head = await s3.head_object(Bucket="b", Key="k", PartNumber=3)
            assert head["ContentLength"] == 2048
            assert head["PartsCount"] == 3
            assert head["ETag"] == f'"{digest}-3"'
            got = await s3.get_object(Bucket="b", Key="k", PartNumber=2)
            assert got["ContentRange"] == "bytes 4096-8191/10240"
            assert await got["Body"].read() == parts[1]
            with pytest.raises(botocore.exceptions.ClientError) as caught:
                await s3.get_object(Bucket="b", Key="k", PartNumber=4)
            assert caught.value.response["Error"]["Code"] == "InvalidPartNumber"
            whole = await s3.get_object(Bucket="b", Key="k")
            assert await whole["Body"].read() == data

    asyncio.run(run())


def test_unsigned_clients_send_no_authorization_header(s3_server: S3TestServer) -> None:
    s3_server.put("b", "k", b"x")

    async def run() -> None:
        async with anonymous_s3(s3_server.endpoint) as s3:
            await (await s3.get_object(Bucket="b", Key="k"))["Body"].read()

    asyncio.run(run())
    raw(s3_server, "GET", "/b/k", {"Authorization": "AWS4-HMAC-SHA256 Credential=x"})
    first, second = s3_server.requests()
    assert not first.has_authorization
    assert first.authorization is None
    assert second.has_authorization
    assert second.authorization == "AWS4-HMAC-SHA256 Credential=x"


# -- GCS flavour -----------------------------------------------------------------------


def _goog(data: bytes) -> tuple[str, str]:
    crc = base64.b64encode(struct.pack(">I", google_crc32c.value(data))).decode()
    return crc, base64.b64encode(hashlib.md5(data).digest()).decode()


def test_gcs_sends_x_goog_hash_as_one_header_line(gcs_server: S3TestServer) -> None:
    data = b"gcs object"
    gcs_server.put("idc-open-data", "k", data)
    crc, md5 = _goog(data)
    status, headers, body = aiohttp_get(f"{gcs_server.endpoint}/idc-open-data/k")
    assert (status, body) == (200, data)
    assert headers["x-goog-hash"] == [f"crc32c={crc},md5={md5}"]
    assert headers["x-goog-stored-content-length"] == [str(len(data))]
    assert int(headers["x-goog-generation"][0]) > 0
    assert headers["etag"] == [f'"{md5_hex(data)}"']


def test_gcs_two_line_x_goog_hash_reaches_aiohttp_as_two_values() -> None:
    data = b"two lines"
    crc, md5 = _goog(data)
    with S3TestServer("gcs", goog_hash="two") as server:
        server.put("b", "k", data)
        server.put("b", "one", data, goog_hash="one")
        _, headers, _ = aiohttp_get(f"{server.endpoint}/b/k", {"Range": "bytes=0-3"})
        _, one_line, _ = aiohttp_get(f"{server.endpoint}/b/one")
    # a ranged read still carries the hashes and stored length of the whole object
    assert headers["x-goog-hash"] == [f"crc32c={crc}", f"md5={md5}"]
    assert headers["x-goog-stored-content-length"] == [str(len(data))]
    assert one_line["x-goog-hash"] == [f"crc32c={crc},md5={md5}"]


def test_gcs_composite_object_has_only_crc32c_and_a_non_md5_etag(
    gcs_server: S3TestServer,
) -> None:
    data = b"composed of two components"
    gcs_server.put("b", "k", data, composite=True)
    _, headers, body = aiohttp_get(f"{gcs_server.endpoint}/b/k")
    assert body == data
    assert headers["x-goog-hash"] == [f"crc32c={_goog(data)[0]}"]
    assert not MD5_RE.fullmatch(headers["etag"][0].strip('"'))
    assert headers["x-goog-component-count"] == ["2"]


def test_gcs_listing_carries_generation(gcs_server: S3TestServer) -> None:
    stored = gcs_server.put("idc-open-cr", "s/1.dcm", b"x")
    _, _, body = raw(gcs_server, "GET", "/idc-open-cr?list-type=2")
    contents = ET.fromstring(body).find(f"{NS}Contents")
    assert contents is not None
    assert contents.findtext(f"{NS}Generation") == str(stored.generation)


# -- faults ----------------------------------------------------------------------------


def test_latency_delays_the_first_byte(s3_server: S3TestServer) -> None:
    s3_server.put("b", "slow", b"x")
    s3_server.put("b", "fast", b"x")
    s3_server.faults.add("latency", keys={"slow"}, seconds=0.3)
    started = time.monotonic()
    raw(s3_server, "GET", "/b/fast")
    fast = time.monotonic() - started
    started = time.monotonic()
    raw(s3_server, "GET", "/b/slow")
    slow = time.monotonic() - started
    assert slow >= 0.3 > fast
    assert s3_server.faults.fired("latency") == 1


@pytest.mark.parametrize(
    ("kind", "status", "code"),
    [
        ("status_500", 500, "InternalError"),
        ("slow_down", 503, "SlowDown"),
        ("throttle_429", 429, "TooManyRequests"),
    ],
)
def test_error_status_faults_fire_the_given_number_of_times(
    s3_server: S3TestServer, kind: Any, status: int, code: str
) -> None:
    s3_server.put("b", "k", b"x")
    s3_server.faults.add(kind, times=2)
    results = [raw(s3_server, "GET", "/b/k") for _ in range(3)]
    assert [r[0] for r in results] == [status, status, 200]
    assert f"<Code>{code}</Code>".encode() in results[0][2]
    listing = raw(s3_server, "GET", "/b?list-type=2")
    assert listing[0] == 200
    assert [r.faults for r in s3_server.requests()] == [(kind,), (kind,), (), ()]


def test_error_status_faults_reach_aiobotocore_listings(s3_server: S3TestServer) -> None:
    s3_server.put("b", "k", b"x")
    s3_server.faults.add("slow_down", on={"LIST"}, times=1)

    async def run() -> str:
        async with anonymous_s3(s3_server.endpoint) as s3:
            with pytest.raises(botocore.exceptions.ClientError) as caught:
                await s3.list_objects_v2(Bucket="b")
            assert (await s3.list_objects_v2(Bucket="b"))["KeyCount"] == 1
            return str(caught.value.response["Error"]["Code"])

    assert asyncio.run(run()) == "SlowDown"


def test_reset_sends_part_of_the_body_then_rst(s3_server: S3TestServer) -> None:
    s3_server.put("b", "k", b"x" * 200_000)
    s3_server.faults.add("reset", keys={"k"}, after_bytes=1000)
    with pytest.raises(aiohttp.ClientPayloadError) as caught:
        aiohttp_get(f"{s3_server.endpoint}/b/k")
    causes = []
    error: BaseException | None = caught.value
    while error is not None:
        causes.append(error)
        error = error.__cause__ or error.__context__
    assert "ConnectionResetError" in repr(causes)
    assert s3_server.requests()[0].faults == ("reset",)


def test_truncate_promises_the_full_length_and_closes_early(s3_server: S3TestServer) -> None:
    s3_server.put("b", "k", b"x" * 10_000)
    s3_server.faults.add("truncate", keys={"k"}, after_bytes=3000)
    with pytest.raises(aiohttp.ClientPayloadError, match="received 3000 of 10000"):
        aiohttp_get(f"{s3_server.endpoint}/b/k")
    conn = http.client.HTTPConnection("127.0.0.1", s3_server.port, timeout=5)
    try:
        conn.request("GET", "/b/k")
        response = conn.getresponse()
        assert response.headers["Content-Length"] == "10000"  # the fault fires every time
        with pytest.raises(http.client.IncompleteRead):
            response.read()
    finally:
        conn.close()


def test_flip_changes_one_byte_and_keeps_length_and_etag(s3_server: S3TestServer) -> None:
    data = bytes(1000)
    s3_server.put("b", "k", data)
    s3_server.faults.add("flip", keys={"k"}, offset=10)
    _, headers, body = raw(s3_server, "GET", "/b/k")
    assert len(body) == len(data)
    assert [i for i in range(len(data)) if body[i] != data[i]] == [10]
    assert headers["ETag"] == f'"{md5_hex(data)}"' != f'"{md5_hex(body)}"'


def _listed_etags(server: S3TestServer, bucket: str) -> dict[str, str]:
    _, _, body = raw(server, "GET", f"/{bucket}?list-type=2")
    root = ET.fromstring(body)
    return {
        c.findtext(f"{NS}Key") or "": (c.findtext(f"{NS}ETag") or "").strip('"')
        for c in root.iter(f"{NS}Contents")
    }


def test_wrong_etag_is_md5_shaped_but_not_the_md5_in_headers_and_listing(
    s3_server: S3TestServer,
) -> None:
    s3_server.put("b", "bad", b"bad")
    s3_server.put("b", "good", b"good")
    s3_server.faults.add("wrong_etag", keys={"bad"})
    listed = _listed_etags(s3_server, "b")
    _, headers, body = raw(s3_server, "GET", "/b/bad")
    etag = headers["ETag"].strip('"')
    assert MD5_RE.fullmatch(etag)
    assert etag != md5_hex(body)
    assert listed == {"bad": etag, "good": md5_hex(b"good")}


def test_listing_etag_is_wrong_only_in_the_listing(s3_server: S3TestServer) -> None:
    s3_server.put("b", "k", b"data")
    s3_server.faults.add("listing_etag", keys={"k"})
    assert _listed_etags(s3_server, "b")["k"] != md5_hex(b"data")
    assert raw(s3_server, "HEAD", "/b/k")[1]["ETag"] == f'"{md5_hex(b"data")}"'


def test_missing_etag_drops_the_header(s3_server: S3TestServer) -> None:
    s3_server.put("b", "k", b"data")
    s3_server.faults.add("missing_etag")
    assert raw(s3_server, "GET", "/b/k")[1].get("ETag") is None
    assert raw(s3_server, "HEAD", "/b/k")[1].get("ETag") is None


def test_multipart_etag_looks_multipart_in_headers_and_listing(s3_server: S3TestServer) -> None:
    s3_server.put("b", "k", b"data")
    s3_server.faults.add("multipart_etag")
    assert re.fullmatch(r"[0-9a-f]{32}-\d+", _listed_etags(s3_server, "b")["k"])
    assert re.fullmatch(r'"[0-9a-f]{32}-\d+"', raw(s3_server, "HEAD", "/b/k")[1]["ETag"])


def test_bad_goog_hash_sends_wrong_crc32c(gcs_server: S3TestServer) -> None:
    data = b"payload"
    gcs_server.put("b", "k", data)
    gcs_server.faults.add("bad_goog_hash", times=1)
    crc, md5 = _goog(data)
    bad = aiohttp_get(f"{gcs_server.endpoint}/b/k")[1]["x-goog-hash"][0]
    good = aiohttp_get(f"{gcs_server.endpoint}/b/k")[1]["x-goog-hash"][0]
    assert good == f"crc32c={crc},md5={md5}"
    assert f"crc32c={crc}" not in bad
    assert f"md5={md5}" not in bad


def test_changed_object_serves_new_bytes_and_etag_while_listing_keeps_old(
    s3_server: S3TestServer,
) -> None:
    old = b"version one"
    s3_server.put("b", "k", old)
    s3_server.faults.add("changed", keys={"k"})
    assert _listed_etags(s3_server, "b")["k"] == md5_hex(old)
    _, headers, body = raw(s3_server, "GET", "/b/k")
    assert body != old
    assert headers["ETag"] == f'"{md5_hex(body)}"'
    assert raw(s3_server, "GET", "/b/k", {"If-Match": f'"{md5_hex(old)}"'})[0] == 412


def test_list_omit_leaves_keys_out(s3_server: S3TestServer) -> None:
    s3_server.put_many("b", {f"s/{i}": b"x" for i in range(5)})
    s3_server.faults.add("list_omit", keys={"s/1", "s/3"})
    assert sorted(_listed_etags(s3_server, "b")) == ["s/0", "s/2", "s/4"]
    assert raw(s3_server, "GET", "/b/s/1")[0] == 200


def test_list_extra_adds_hostile_keys_that_aiobotocore_decodes_verbatim(
    s3_server: S3TestServer,
) -> None:
    prefix = "3f0c6b1e-0000-4000-8000-000000000000/"
    s3_server.put("b", f"{prefix}real.dcm", b"real")
    hostile = list(iter_hostile_keys(prefix))
    s3_server.faults.add("list_extra", extra_keys=hostile)

    async def run() -> list[str]:
        async with anonymous_s3(s3_server.endpoint) as s3:
            page = await s3.list_objects_v2(Bucket="b", Prefix=prefix)
        return [c["Key"] for c in page["Contents"]]

    assert asyncio.run(run()) == [f"{prefix}real.dcm", *hostile]
    assert "../x" in hostile
    assert any("\x00" in key for key in hostile)


def test_rate_faults_are_seeded_and_scoped() -> None:
    def fire_pattern(seed: int) -> list[bool]:
        plan = FaultPlan(seed=seed)
        plan.add("status_500", rate=0.3, key_prefix="s/")
        return [plan.draw("status_500", "GET", f"s/{i}") is not None for i in range(400)]

    first = fire_pattern(7)
    assert first == fire_pattern(7) != fire_pattern(8)
    assert 80 < sum(first) < 160
    plan = FaultPlan()
    plan.add("status_500", key_prefix="s/", times=1)
    assert plan.draw("status_500", "GET", "other/1") is None
    assert plan.draw("status_500", "HEAD", "s/1") is not None
    assert plan.draw("status_500", "GET", "s/2") is None  # times=1 used up
    with pytest.raises(ValueError, match="applies only to"):
        plan.add("flip", on={"LIST"})


def test_trickle_sends_the_body_one_byte_at_a_time(s3_server: S3TestServer) -> None:
    s3_server.put("b", "k", b"abcd")
    s3_server.faults.add("trickle", keys=["k"], seconds=0.2)
    started = time.monotonic()
    status, _, body = raw(s3_server, "GET", "/b/k")
    assert (status, body) == (200, b"abcd")
    assert time.monotonic() - started >= 0.75  # four bytes, 0.2 s before each


def test_endless_list_says_truncated_with_a_fresh_token_every_time(
    s3_server: S3TestServer,
) -> None:
    s3_server.put("b", "s/1.dcm", b"1")
    s3_server.faults.add("endless_list")
    tokens = set()
    target = "/b?list-type=2&prefix=s/"
    for _ in range(3):
        status, _, body = raw(s3_server, "GET", target)
        page = parse_list_page(body)
        assert status == 200
        assert [o.key for o in page.objects] == ["s/1.dcm"]
        assert page.next_token is not None
        tokens.add(page.next_token)
        target = f"/b?list-type=2&prefix=s/&continuation-token={page.next_token}"
    assert len(tokens) == 3


def test_every_documented_fault_kind_has_a_test_here() -> None:
    source = Path(__file__).read_text(encoding="utf-8")
    assert all(f'"{kind}"' in source for kind in FAULT_KINDS)


# -- capacity and shutdown -------------------------------------------------------------


def test_serves_100_concurrent_keep_alive_connections(s3_server: S3TestServer) -> None:
    s3_server.put_many("b", {f"k{i}": bytes(1024) for i in range(100)})

    async def run() -> int:
        connector = aiohttp.TCPConnector(limit=100)
        async with aiohttp.ClientSession(connector=connector) as session:

            async def fetch(i: int) -> int:
                async with session.get(f"{s3_server.endpoint}/b/k{i % 100}") as resp:
                    return len(await resp.read())

            sizes = await asyncio.gather(*(fetch(i) for i in range(1000)))
        return sum(sizes)

    assert asyncio.run(run()) == 1000 * 1024
    assert s3_server.count("GET") == 1000


def test_close_returns_promptly_with_idle_keep_alive_connections() -> None:
    server = S3TestServer().start()
    server.put("b", "k", b"x")
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    try:
        conn.request("GET", "/b/k")
        conn.getresponse().read()  # the connection stays open, its thread waiting
        started = time.monotonic()
        server.close()
        assert time.monotonic() - started < 2
    finally:
        conn.close()


# -- moto ------------------------------------------------------------------------------


@pytest.mark.slow
def test_moto_serves_public_idc_buckets_to_unsigned_clients(moto_server: MotoServer) -> None:
    endpoint = moto_server.endpoint
    key = "moto-anonymous-test/1.dcm"
    etag = moto_put(endpoint, "idc-open-data-cr", key, b"dicom bytes")
    assert etag == md5_hex(b"dicom bytes")
    anonymous = unsigned_client(endpoint)
    try:
        page = anonymous.list_objects_v2(Bucket="idc-open-data-cr", Prefix="moto-anonymous-test/")
        assert [(c["Key"], c["Size"]) for c in page["Contents"]] == [(key, 11)]
        assert anonymous.head_object(Bucket="idc-open-data-cr", Key=key)["ContentLength"] == 11
        body = anonymous.get_object(Bucket="idc-open-data-cr", Key=key, Range="bytes=0-4")["Body"]
        assert body.read() == b"dicom"
        # the policy is what opens the bucket: a bucket without one refuses anonymous GETs
        signed = signed_client(endpoint)
        signed.create_bucket(Bucket="private-test-bucket")
        signed.put_object(Bucket="private-test-bucket", Key=key, Body=b"secret")
        with pytest.raises(botocore.exceptions.ClientError) as caught:
            anonymous.get_object(Bucket="private-test-bucket", Key=key)
        assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    finally:
        anonymous.close()


@pytest.mark.slow
def test_moto_listing_parses_in_aiobotocore_without_signing(moto_endpoint: str) -> None:
    for i in range(3):
        moto_put(moto_endpoint, "idc-open-data-two", f"moto-aio-test/{i}.dcm", b"x" * i)

    async def run() -> list[tuple[str, int]]:
        async with anonymous_s3(moto_endpoint) as s3:
            page = await s3.list_objects_v2(Bucket="idc-open-data-two", Prefix="moto-aio-test/")
            obj = await s3.get_object(Bucket="idc-open-data-two", Key="moto-aio-test/2.dcm")
            assert await obj["Body"].read() == b"xx"
        return [(c["Key"], c["Size"]) for c in page["Contents"]]

    assert asyncio.run(run()) == [(f"moto-aio-test/{i}.dcm", i) for i in range(3)]


def test_s3_checksums_are_listed_and_sent_only_when_asked_for_the_whole_object() -> None:
    data = b"123456789"
    with S3TestServer("s3", checksum_algorithm="CRC64NVME") as server:
        server.put("b", "k", data)
        server.put("b", "plain", data, checksum_algorithm=None)
        _, _, body = raw(server, "GET", "/b?list-type=2")
        listed = {c.findtext(f"{NS}Key"): c for c in ET.fromstring(body).iter(f"{NS}Contents")}
        assert listed["k"].findtext(f"{NS}ChecksumAlgorithm") == "CRC64NVME"
        assert listed["k"].findtext(f"{NS}ChecksumType") == "FULL_OBJECT"
        assert listed["plain"].find(f"{NS}ChecksumAlgorithm") is None
        ask = {"x-amz-checksum-mode": "ENABLED"}
        crc = base64.b64encode(bytes.fromhex("ae8b14860a799888")).decode()  # its check value
        assert raw(server, "GET", "/b/k", ask)[1]["x-amz-checksum-crc64nvme"] == crc
        assert raw(server, "HEAD", "/b/k", ask)[1]["x-amz-checksum-type"] == "FULL_OBJECT"
        assert raw(server, "GET", "/b/k")[1]["x-amz-checksum-crc64nvme"] is None
        assert (
            raw(server, "GET", "/b/k", {**ask, "Range": "bytes=0-3"})[1]["x-amz-checksum-crc64nvme"]
            is None
        )
        assert raw(server, "GET", "/b/plain", ask)[1]["x-amz-checksum-crc64nvme"] is None
        assert not server.errors


def test_a_composite_s3_checksum_carries_its_part_count(s3_server: S3TestServer) -> None:
    data = bytes(3000)
    s3_server.put(
        "b", "k", data, part_size=1000, checksum_algorithm="CRC32C", checksum_type="COMPOSITE"
    )
    headers = raw(s3_server, "GET", "/b/k", {"x-amz-checksum-mode": "ENABLED"})[1]
    assert headers["x-amz-checksum-type"] == "COMPOSITE"
    assert re.fullmatch(r"[A-Za-z0-9+/=]{8}-3", headers["x-amz-checksum-crc32c"] or "")


def test_bad_amz_checksum_sends_a_wrong_checksum_once() -> None:
    with S3TestServer("s3", checksum_algorithm="CRC32") as server:
        server.put("b", "k", b"123456789")
        server.faults.add("bad_amz_checksum", times=1)
        ask = {"x-amz-checksum-mode": "ENABLED"}
        bad = raw(server, "GET", "/b/k", ask)[1]["x-amz-checksum-crc32"]
        good = raw(server, "GET", "/b/k", ask)[1]["x-amz-checksum-crc32"]
        assert good == "y/Q5Jg=="  # CRC-32's check value
        assert bad != good
        assert server.faults.fired("bad_amz_checksum") == 1


def test_moto_stores_and_sends_checksums_the_way_the_test_server_does(
    moto_server: MotoServer,
) -> None:
    # moto is the reference: boto3 uploads with a CRC32 by default; a listing names it,
    # a GET of the whole object sends it when asked, a ranged GET does not
    key = "checksums/k"
    moto_put(moto_server.endpoint, "idc-open-data-two", key, b"123456789")
    url = f"{moto_server.endpoint}/idc-open-data-two/{key}"
    ask = {"x-amz-checksum-mode": "ENABLED"}
    assert aiohttp_get(url, ask)[1]["x-amz-checksum-crc32"] == ["y/Q5Jg=="]
    assert "x-amz-checksum-crc32" not in aiohttp_get(url, {**ask, "Range": "bytes=0-3"})[1]
    assert "x-amz-checksum-crc32" not in aiohttp_get(url)[1]
