"""The native engine against the project's S3 test server over real HTTP: small objects read
whole, large ones as parallel ranged GETs written out of order and hashed in order."""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
from pathlib import Path

import pytest

from idc_sync.core.errors import IntegrityError, PermanentError, RetryableError
from idc_sync.core.verify import Verdict, expectation_from_listing
from idc_sync.disk.storage import TempFile
from idc_sync.engines.base import FetchJob
from idc_sync.engines.native import NativeEngine
from idc_sync.net.options import NetOptions
from idc_sync.net.wire import LowSpeed
from tests.support.s3server import S3TestServer

# no byte for 10 s fails an attempt
FAST = NetOptions(connect_timeout=5, low_speed=LowSpeed(0, 10))

BUCKET = "idc-open-data"
SERIES = "0a1b2c3d-0000-4000-8000-000000000001"
KEY = f"{SERIES}/1f2e3d4c-0000-4000-8000-000000000002.dcm"
MIB = 1 << 20


def payload(size: int, seed: int = 7) -> bytes:
    return random.Random(seed).randbytes(size)


def fetch(
    server: S3TestServer,
    final: Path,
    *,
    size: int,
    etag: str,
    part_size: int | None = None,
    pin_etag: bool = True,
) -> tuple[Verdict, list[int]]:
    """Fetch KEY with ranges of 1 MiB (objects above 1 MiB count as large here)."""
    received: list[int] = []

    async def go() -> Verdict:
        engine = NativeEngine(
            server.endpoint,
            concurrency=4,
            pin_etag=pin_etag,
            small_object=MIB,
            range_bytes=MIB,
            range_streams=3,
            network=FAST,
        )
        async with engine:
            job = FetchJob(BUCKET, KEY, expectation_from_listing(etag, size), final, part_size)
            return await engine.fetch(job, received.append)

    return asyncio.run(go()), received


def leftovers(directory: Path) -> list[str]:
    return sorted(os.listdir(directory)) if directory.exists() else []


def object_gets(server: S3TestServer) -> list[dict[str, list[str]]]:
    return [r.headers for r in server.requests() if r.kind == "GET" and r.key == KEY]


def test_a_large_object_arrives_as_parallel_pinned_ranges_and_verifies_by_md5(
    s3_server: S3TestServer, tmp_path: Path
) -> None:
    data = payload(5 * MIB + 12345)
    stored = s3_server.put(BUCKET, KEY, data)
    final = tmp_path / "series" / "instance.dcm"

    result, received = fetch(s3_server, final, size=len(data), etag=stored.etag)

    assert result.ok
    assert result.kind == "md5"
    assert result.checksum == hashlib.md5(data).hexdigest()
    assert final.read_bytes() == data
    assert leftovers(final.parent) == ["instance.dcm"]
    assert sum(received) == len(data)
    gets = object_gets(s3_server)
    ranges = sorted(h["range"][0] for h in gets)
    expected = [f"bytes={s}-{min(s + MIB, len(data)) - 1}" for s in range(0, len(data), MIB)]
    assert ranges == sorted(expected)
    assert all(h["if-match"] == [f'"{stored.etag}"'] for h in gets)


def test_a_multipart_etag_is_verified_over_ranges_that_do_not_match_its_parts(
    s3_server: S3TestServer, tmp_path: Path
) -> None:
    data = payload(4 * MIB + 7)
    part_size = 3 * MIB // 2  # parts of 1.5 MiB fetched as ranges of 1 MiB
    stored = s3_server.put(BUCKET, KEY, data, part_size=part_size)
    final = tmp_path / "instance.dcm"

    result, _ = fetch(s3_server, final, size=len(data), etag=stored.etag, part_size=part_size)

    assert result.ok
    assert result.kind == "multipart-md5"
    assert result.checksum == stored.etag
    assert final.read_bytes() == data


def test_gcs_crc32c_of_a_composite_large_object_is_checked(
    gcs_server: S3TestServer, tmp_path: Path
) -> None:
    data = payload(3 * MIB)
    stored = gcs_server.put(BUCKET, KEY, data, composite=True)
    final = tmp_path / "instance.dcm"

    result, _ = fetch(gcs_server, final, size=len(data), etag=stored.etag, pin_etag=False)

    assert result.ok
    assert result.kind == "crc32c"
    assert final.read_bytes() == data


def test_a_flipped_byte_in_one_range_is_caught_and_nothing_is_placed(
    s3_server: S3TestServer, tmp_path: Path
) -> None:
    data = payload(4 * MIB)
    stored = s3_server.put(BUCKET, KEY, data)
    s3_server.faults.add("flip", keys=[KEY], times=1)
    final = tmp_path / "series" / "instance.dcm"

    with pytest.raises(IntegrityError, match="md5"):
        fetch(s3_server, final, size=len(data), etag=stored.etag)

    assert s3_server.faults.fired("flip") == 1
    assert leftovers(final.parent) == []


@pytest.mark.parametrize("kind", ["reset", "truncate"])
def test_a_range_cut_short_is_retryable_and_leaves_no_temp_file(
    s3_server: S3TestServer, tmp_path: Path, kind: str
) -> None:
    data = payload(4 * MIB)
    stored = s3_server.put(BUCKET, KEY, data)
    s3_server.faults.add(kind, keys=[KEY], times=1, after_bytes=1000)  # type: ignore[arg-type]
    final = tmp_path / "series" / "instance.dcm"

    with pytest.raises(RetryableError, match="GET range"):
        fetch(s3_server, final, size=len(data), etag=stored.etag)

    assert leftovers(final.parent) == []
    # the next attempt completes
    result, _ = fetch(s3_server, final, size=len(data), etag=stored.etag)
    assert result.ok
    assert final.read_bytes() == data


def test_an_object_replaced_since_the_listing_is_refused(
    s3_server: S3TestServer, tmp_path: Path
) -> None:
    old = payload(3 * MIB, seed=1)
    listed = hashlib.md5(old).hexdigest()
    s3_server.put(BUCKET, KEY, payload(3 * MIB + 5, seed=2))  # other size, other ETag
    final = tmp_path / "series" / "instance.dcm"

    # pinned: the server refuses the stale ETag (412), so no byte of the new object arrives
    with pytest.raises((IntegrityError, RetryableError, PermanentError)):
        fetch(s3_server, final, size=len(old), etag=listed)
    # unpinned (GCS): Content-Range names the other size
    with pytest.raises(IntegrityError, match="listing said"):
        fetch(s3_server, final, size=len(old), etag=listed, pin_etag=False)
    assert leftovers(final.parent) == []


def test_a_missing_object_is_permanent(s3_server: S3TestServer, tmp_path: Path) -> None:
    s3_server.create_bucket(BUCKET)
    with pytest.raises(PermanentError, match="404"):
        fetch(s3_server, tmp_path / "instance.dcm", size=2 * MIB, etag="0" * 32)
    assert leftovers(tmp_path) == []


def test_small_objects_take_one_get_without_a_range(
    s3_server: S3TestServer, tmp_path: Path
) -> None:
    data = payload(MIB)  # exactly the threshold: still small
    stored = s3_server.put(BUCKET, KEY, data)
    final = tmp_path / "instance.dcm"

    result, received = fetch(s3_server, final, size=len(data), etag=stored.etag)

    assert result.ok
    assert final.read_bytes() == data
    assert received == [len(data)]
    (headers,) = object_gets(s3_server)
    assert "range" not in headers


def test_cancelling_a_large_transfer_stops_its_threads_and_discards_the_temp_file(
    s3_server: S3TestServer, tmp_path: Path
) -> None:
    data = payload(4 * MIB)
    stored = s3_server.put(BUCKET, KEY, data)
    # the server stalls every range after its first bytes: threads sit in recv()
    s3_server.faults.add("latency", keys=[KEY], seconds=30)
    final = tmp_path / "series" / "instance.dcm"

    async def go() -> float:
        engine = NativeEngine(
            s3_server.endpoint, concurrency=4, small_object=MIB, range_bytes=MIB,
            range_streams=3, network=NetOptions(low_speed=LowSpeed(0, 60)),
        )  # fmt: skip
        async with engine:
            job = FetchJob(BUCKET, KEY, expectation_from_listing(stored.etag, len(data)), final)
            task = asyncio.create_task(engine.fetch(job, lambda n: None))
            await asyncio.sleep(0.5)
            started = asyncio.get_running_loop().time()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            return asyncio.get_running_loop().time() - started

    took = asyncio.run(go())

    assert took < 10  # not the 30 s stall nor the 60 s read timeout
    assert leftovers(final.parent) == []


def test_a_large_multipart_object_with_a_stored_crc64nvme_asks_a_head_for_it(
    tmp_path: Path,
) -> None:
    data = payload(5 * MIB + 4321)
    with S3TestServer("s3") as server:
        stored = server.put(BUCKET, KEY, data, part_size=2 * MIB, checksum_algorithm="CRC64NVME")
        final = tmp_path / "series" / "instance.dcm"

        async def go() -> Verdict:
            engine = NativeEngine(
                server.endpoint, concurrency=4, small_object=MIB, range_bytes=MIB,
                range_streams=3, network=FAST, ask_checksums=True,
            )  # fmt: skip
            async with engine:
                expected = expectation_from_listing(stored.etag, len(data), from_s3=True)
                job = FetchJob(BUCKET, KEY, expected, final, listed_checksum="CRC64NVME")
                return await engine.fetch(job, lambda count: None)

        result = asyncio.run(go())

        assert result.ok
        assert result.kind == "crc64nvme"
        assert final.read_bytes() == data
        heads = [r for r in server.requests() if r.kind == "HEAD"]
        assert len(heads) == 1
        assert heads[0].headers["x-amz-checksum-mode"] == ["ENABLED"]
        assert "partNumber" not in heads[0].query  # the part size is not needed
        # ranges hold whole 2 MiB parts, in case the parts have to be hashed
        assert len([r for r in server.requests() if r.kind == "GET"]) == 3


def test_a_large_object_whose_crc_does_not_match_is_never_placed(tmp_path: Path) -> None:
    data = payload(3 * MIB + 99)
    with S3TestServer("s3") as server:
        stored = server.put(BUCKET, KEY, data, checksum_algorithm="CRC32C")
        server.faults.add("bad_amz_checksum", on=["HEAD"], times=1)
        final = tmp_path / "series" / "instance.dcm"

        async def go() -> Verdict:
            engine = NativeEngine(
                server.endpoint, concurrency=4, small_object=MIB, range_bytes=MIB,
                network=FAST, ask_checksums=True,
            )  # fmt: skip
            async with engine:
                expected = expectation_from_listing(stored.etag, len(data), from_s3=True)
                job = FetchJob(BUCKET, KEY, expected, final, listed_checksum="CRC32C")
                return await engine.fetch(job, lambda count: None)

        with pytest.raises(IntegrityError, match=r"crc32c \(x-amz-checksum-crc32c\) mismatch"):
            asyncio.run(go())
        assert not final.exists()
        assert leftovers(final.parent) == []


@pytest.mark.parametrize(("listed", "pieces"), [(None, True), ("CRC32C", True), ("SHA256", False)])
def test_a_large_object_is_hashed_on_the_range_threads_unless_its_checksum_cannot_split(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, listed: str | None, pieces: bool
) -> None:
    data = payload(6 * MIB + 1000)
    read_back: list[int] = []
    real = TempFile.read_into

    def counting(self: TempFile, buffer: memoryview, offset: int) -> int:
        read_back.append(offset)
        return real(self, buffer, offset)

    monkeypatch.setattr(TempFile, "read_into", counting)
    with S3TestServer("s3") as server:
        stored = server.put(BUCKET, KEY, data, part_size=MIB, checksum_algorithm=listed)
        final = tmp_path / "series" / "instance.dcm"

        async def go() -> Verdict:
            engine = NativeEngine(
                server.endpoint, concurrency=4, small_object=MIB, range_bytes=2 * MIB + 5,
                range_streams=3, network=FAST, ask_checksums=True,
            )  # fmt: skip
            async with engine:
                expected = expectation_from_listing(stored.etag, len(data), from_s3=True)
                job = FetchJob(BUCKET, KEY, expected, final, MIB, listed_checksum=listed)
                return await engine.fetch(job, lambda count: None)

        result = asyncio.run(go())

    assert result.ok
    assert result.kind == {None: "multipart-md5", "CRC32C": "crc32c", "SHA256": "sha256"}[listed]
    assert final.read_bytes() == data
    assert (read_back == []) is pieces  # pieces: no byte read back from the temp file
