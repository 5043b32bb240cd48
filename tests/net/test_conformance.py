"""Our client and listing parser held against aiobotocore, the protocol reference (the AWS
SDK's own parsing of S3), on the same servers: the project's S3 test server and moto. Both
must read the same keys, sizes and ETags page by page, follow the same continuation tokens,
see the same part size in a HEAD of part 1, and name the same error codes."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlencode

import botocore.exceptions
import pytest
from aiobotocore.session import get_session
from botocore import UNSIGNED
from botocore.config import Config

from idc_sync.core.errors import PermanentError
from idc_sync.core.listing import parse_list_page
from idc_sync.core.routing import bucket_url
from idc_sync.engines.native import NativeEngine
from idc_sync.net.http import HttpClient
from idc_sync.net.options import NetOptions
from tests.support.moto import moto_put_many
from tests.support.s3server import S3TestServer

BUCKET = "idc-open-data"
SERIES = "7d3c2b1a-0000-4000-8000-0000000c0f0e"
# 2,100 keys: three pages; a few awkward ones (encoding-type=url must round-trip them)
KEYS = [f"{SERIES}/{i:05d}.dcm" for i in range(2100)] + [
    f"{SERIES}/with space+plus.dcm",
    f"{SERIES}/ünïcode.dcm",
]

pytestmark = pytest.mark.timeout(120)


@contextlib.asynccontextmanager
async def reference(endpoint: str) -> AsyncIterator[Any]:
    config = Config(
        signature_version=UNSIGNED,
        s3={"addressing_style": "path"},
        retries={"total_max_attempts": 1, "mode": "standard"},
    )
    async with get_session().create_client(
        "s3", region_name="us-east-1", endpoint_url=endpoint, config=config
    ) as client:
        yield client


async def both_listings(endpoint: str) -> tuple[list[Any], list[Any]]:
    """Pages as (keys, sizes, etags, token) from aiobotocore and from our client."""
    theirs, ours = [], []
    async with reference(endpoint) as s3:
        # botocore asks for encoding-type=url itself and decodes what it asked for
        pages = s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=f"{SERIES}/")
        async for page in pages:
            contents = page.get("Contents", [])
            theirs.append(
                (
                    [item["Key"] for item in contents],
                    [item["Size"] for item in contents],
                    [item["ETag"].strip('"') for item in contents],
                    page.get("NextContinuationToken"),
                )
            )
    async with HttpClient(NetOptions()) as client:
        token: str | None = None
        while True:
            params = {"list-type": "2", "prefix": f"{SERIES}/", "encoding-type": "url"}
            if token is not None:
                params["continuation-token"] = token
            url = f"{bucket_url(endpoint, BUCKET)}?{urlencode(params)}"
            page = parse_list_page((await client.get(url, {}, 4 << 20)).body)
            ours.append(
                (
                    [o.key for o in page.objects],
                    [o.size for o in page.objects],
                    [o.etag for o in page.objects],
                    page.next_token,
                )
            )
            if page.next_token is None:
                return theirs, ours
            token = page.next_token


def objects() -> dict[str, bytes]:
    return {key: f"instance {index}".encode() * (index % 7 + 1) for index, key in enumerate(KEYS)}


def test_listings_agree_with_aiobotocore_on_the_s3_test_server(s3_server: S3TestServer) -> None:
    s3_server.put_many(BUCKET, objects())
    theirs, ours = asyncio.run(both_listings(s3_server.endpoint))
    assert len(theirs) == 3
    assert ours == theirs


def test_listings_agree_with_aiobotocore_on_moto(moto_endpoint: str) -> None:
    moto_put_many(moto_endpoint, BUCKET, objects())
    theirs, ours = asyncio.run(both_listings(moto_endpoint))
    assert len(theirs) == 3
    assert sorted(k for page in ours for k in page[0]) == sorted(KEYS)
    assert ours == theirs


def test_part_sizes_and_error_codes_agree_with_aiobotocore(s3_server: S3TestServer) -> None:
    key = f"{SERIES}/multipart.dcm"
    s3_server.put(BUCKET, key, b"m" * (12 << 20), part_size=5 << 20)

    async def go() -> None:
        async with reference(s3_server.endpoint) as s3:
            head = await s3.head_object(Bucket=BUCKET, Key=key, PartNumber=1)
            with pytest.raises(botocore.exceptions.ClientError) as missing:
                await s3.get_object(Bucket=BUCKET, Key=f"{SERIES}/missing.dcm")
        engine = NativeEngine(s3_server.endpoint, concurrency=2)
        async with engine:
            assert await engine.part_size(BUCKET, key) == head["ContentLength"] == 5 << 20
        async with HttpClient(NetOptions()) as client:
            url = f"{bucket_url(s3_server.endpoint, BUCKET)}/{SERIES}/missing.dcm"
            answer = await client.get(url, {}, 100)
        assert answer.status == missing.value.response["ResponseMetadata"]["HTTPStatusCode"]
        assert answer.error_code == missing.value.response["Error"]["Code"] == "NoSuchKey"

    asyncio.run(go())


def test_a_refusal_moto_sends_is_permanent_for_us_as_for_aiobotocore(moto_endpoint: str) -> None:
    async def go() -> None:
        async with reference(moto_endpoint) as s3:
            with pytest.raises(botocore.exceptions.ClientError) as theirs:
                await s3.list_objects_v2(Bucket="no-such-bucket-here", Prefix="x/")
        engine = NativeEngine(moto_endpoint, concurrency=2)
        async with engine:
            with pytest.raises(PermanentError, match=theirs.value.response["Error"]["Code"]):
                await engine.list_series("no-such-bucket-here", SERIES, 1)

    asyncio.run(go())
