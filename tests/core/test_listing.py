"""ListObjectsV2 as plain HTTP: the pure page parser, and the engine's listing against moto
(the protocol reference) and the project's S3 test server (pagination, encoded keys, GCS,
errors)."""

from __future__ import annotations

import asyncio
import hashlib
import uuid

import pytest

from idc_sync.core.errors import PermanentError, RetryableError
from idc_sync.core.listing import parse_list_page
from idc_sync.core.model import ListedObject
from idc_sync.core.retry import FailureClass, classify_exception
from idc_sync.engines.native import NativeEngine
from idc_sync.net.options import NetOptions
from idc_sync.net.wire import LowSpeed
from tests.support.moto import moto_put, signed_client
from tests.support.s3server import S3TestServer

# no byte for 10 s fails an attempt
FAST = NetOptions(connect_timeout=5, low_speed=LowSpeed(0, 10))

SERIES = "5e1d7c2a-0000-4000-8000-00000000abcd"


def listing(endpoint: str, bucket: str, series: str = SERIES) -> list[ListedObject]:
    async def go() -> list[ListedObject]:
        async with NativeEngine(endpoint, concurrency=4, network=FAST) as engine:
            return await engine.list_series(bucket, series, None)

    return asyncio.run(go())


def page(contents: str, extra: str = "") -> bytes:
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
        f"<Name>b</Name>{extra}{contents}</ListBucketResult>"
    ).encode()


def test_a_page_gives_keys_sizes_and_unquoted_etags() -> None:
    parsed = parse_list_page(
        page(
            "<Contents><Key>a/1.dcm</Key><Size>12</Size><ETag>&quot;abc&quot;</ETag></Contents>"
            "<Contents><Key>a/2.dcm</Key><Size>0</Size></Contents>",
            "<IsTruncated>false</IsTruncated>",
        )
    )
    assert parsed.objects == [ListedObject("a/1.dcm", 12, "abc"), ListedObject("a/2.dcm", 0, "")]
    assert parsed.next_token is None


def test_url_encoded_keys_are_decoded_only_when_the_page_says_so() -> None:
    entry = "<Contents><Key>a/x+y%2Fz.dcm</Key><Size>1</Size></Contents>"
    encoded = parse_list_page(page(entry, "<EncodingType>url</EncodingType>"))
    plain = parse_list_page(page(entry))
    assert encoded.objects[0].key == "a/x y/z.dcm"
    assert plain.objects[0].key == "a/x+y%2Fz.dcm"


def test_gcs_namespace_and_truncation_token() -> None:
    body = (
        b'<ListBucketResult xmlns="http://doc.s3.amazonaws.com/2006-03-01">'
        b"<IsTruncated>true</IsTruncated><NextContinuationToken>t2</NextContinuationToken>"
        b"<Contents><Key>k</Key><Size>3</Size><ETag>e</ETag></Contents></ListBucketResult>"
    )
    parsed = parse_list_page(body)
    assert parsed.objects == [ListedObject("k", 3, "e")]
    assert parsed.next_token == "t2"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"<html>proxy error", "unreadable XML"),
        (b"<Error><Code>InternalError</Code></Error>", "expected ListBucketResult"),
        (page("<Contents><Size>1</Size></Contents>"), "without a usable Key"),
        (page("<Contents><Key>k</Key><Size>-1</Size></Contents>"), "without a usable Key"),
        (page("", "<IsTruncated>true</IsTruncated>"), "without a continuation token"),
    ],
)
def test_unusable_pages_are_retryable_errors(body: bytes, message: str) -> None:
    with pytest.raises(RetryableError, match=message):
        parse_list_page(body)


def test_moto_listing_round_trips_through_the_engine(moto_endpoint: str) -> None:
    series = str(uuid.uuid4())
    keys = {f"{series}/{uuid.uuid4()}.dcm": bytes(range(n)) for n in (1, 7, 200)}
    for key, data in keys.items():
        moto_put(moto_endpoint, "idc-open-data-two", key, data)

    found = listing(moto_endpoint, "idc-open-data-two", series)

    # botocore's reading of the same listing: the checksum S3 (moto) stores for each object
    pages = signed_client(moto_endpoint).list_objects_v2(
        Bucket="idc-open-data-two", Prefix=f"{series}/"
    )
    algorithms = {
        item["Key"]: (item.get("ChecksumAlgorithm") or [None])[0] for item in pages["Contents"]
    }
    assert sorted(found, key=str) == sorted(
        (
            ListedObject(key, len(data), hashlib.md5(data).hexdigest(), algorithms[key])
            for key, data in keys.items()
        ),
        key=str,
    )


def test_2500_keys_arrive_across_pages_with_awkward_names(s3_server: S3TestServer) -> None:
    keys = [f"{SERIES}/{n:05d}.dcm" for n in range(2497)]
    keys += [f"{SERIES}/a b+c.dcm", f"{SERIES}/é%20&<>.dcm", f"{SERIES}/sub/../x.dcm"]
    for key in keys:
        s3_server.put("idc-open-data", key, b"x")
    s3_server.put("idc-open-data", "other-series/1.dcm", b"y")

    found = listing(s3_server.endpoint, "idc-open-data")

    assert sorted(o.key for o in found) == sorted(keys)
    lists = [r for r in s3_server.requests() if r.kind == "LIST"]
    assert len(lists) == 3  # pages of 1,000
    assert all(r.authorization is None for r in lists)


def test_gcs_flavour_listing(gcs_server: S3TestServer) -> None:
    stored = gcs_server.put("public-datasets-idc", f"{SERIES}/1.dcm", b"abc")
    found = listing(gcs_server.endpoint, "public-datasets-idc")
    assert found == [ListedObject(f"{SERIES}/1.dcm", 3, stored.etag)]


@pytest.mark.parametrize("fault", ["slow_down", "status_500", "truncate", "reset"])
def test_listing_faults_are_retryable(s3_server: S3TestServer, fault: str) -> None:
    s3_server.put("idc-open-data", f"{SERIES}/1.dcm", b"abc")
    s3_server.faults.add(fault, on=["LIST"], times=1)  # type: ignore[arg-type]
    with pytest.raises(Exception) as caught:  # noqa: PT011 - the class is checked below
        listing(s3_server.endpoint, "idc-open-data")
    assert classify_exception(caught.value) is FailureClass.RETRYABLE
    # the fault fired once: the next listing is whole
    assert [o.key for o in listing(s3_server.endpoint, "idc-open-data")] == [f"{SERIES}/1.dcm"]


def test_a_missing_bucket_is_permanent(s3_server: S3TestServer) -> None:
    with pytest.raises(PermanentError, match="NoSuchBucket"):
        listing(s3_server.endpoint, "no-such-bucket")


@pytest.mark.parametrize(
    ("fields", "etag", "algorithm"),
    [
        (
            "<ChecksumAlgorithm>CRC64NVME</ChecksumAlgorithm><ChecksumType>FULL_OBJECT</ChecksumType>",
            "abc",
            "CRC64NVME",
        ),
        (
            "<ChecksumAlgorithm>CRC32C</ChecksumAlgorithm><ChecksumType>COMPOSITE</ChecksumType>",
            "abc-3",
            None,
        ),
        # without ChecksumType: an older upload's checksum covers the object unless multipart
        ("<ChecksumAlgorithm>CRC32</ChecksumAlgorithm>", "abc", "CRC32"),
        ("<ChecksumAlgorithm>SHA256</ChecksumAlgorithm>", "abc-2", None),
        ("<ChecksumAlgorithm>CRC64NVME</ChecksumAlgorithm>", "abc-2", "CRC64NVME"),
        ("<ChecksumAlgorithm>SHA1</ChecksumAlgorithm>", "abc", None),
        ("", "abc", None),
    ],
)
def test_a_listed_full_object_checksum_algorithm_is_kept(
    fields: str, etag: str, algorithm: str | None
) -> None:
    entry = (
        f"<Contents><Key>a/1.dcm</Key><ETag>&quot;{etag}&quot;</ETag>{fields}"
        "<Size>3</Size></Contents>"
    )
    (listed,) = parse_list_page(page(entry)).objects
    assert listed.checksum_algorithm == algorithm
