"""The benchmark's workloads and their data: real rows of the installed IDC index (file counts
and exact sizes), synthetic bytes (a seeded random pool, a per-file header so every MD5
differs), and what each server flavour publishes about them.

Flavours: ``s3`` (an MD5 ETag, nothing else), ``s3-crc`` (S3 since December 2024: a stored
CRC64NVME, listed as ChecksumAlgorithm and sent to ``x-amz-checksum-mode: ENABLED``),
``gcs`` (``x-goog-hash: crc32c=..,md5=..`` on every answer, GCS bucket names), and
``multipart`` (ETags of uploads in 8 MiB parts, ``HEAD ?partNumber=1`` answered).
Everything the server needs is written once under the data directory and kept between
runs: objects as ``<root>/<bucket>/<key>``, one listing page per series and workload,
and a table of each object's ETag and checksums."""

from __future__ import annotations

import base64
import hashlib
import json
import random
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal
from xml.sax.saxutils import escape

from awscrt import checksums

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.support.dataset import (  # noqa: E402 - needs the repo on sys.path
    Row,
    instance_keys,
    instance_sizes,
    real_series,
)

POOL_BYTES = 64 << 20
MIB = 1 << 20
MULTIPART_PART = 8 * MIB  # aws-cli's and boto3's part size
Flavour = Literal["s3", "s3-crc", "gcs", "multipart"]
GCS_BUCKETS = {
    "idc-open-data": "idc-open-data",
    "idc-open-data-cr": "idc-open-cr",
    "idc-open-data-two": "idc-open-idc1",
}


@dataclass(frozen=True, slots=True)
class Workload:
    name: str
    description: str
    latency_ms: int
    collection_id: str | None = None
    where: str | None = None
    limit: int = 100_000
    max_files: int | None = None  # cut the row list once this many files are reached
    flavour: Flavour = "s3"

    def rows(self) -> list[Row]:
        rows = real_series(self.collection_id, limit=self.limit, where=self.where)
        if self.max_files is None:
            return rows
        kept, files = [], 0
        for row in rows:
            if files >= self.max_files:
                break
            kept.append(row)
            files += int(row["instanceCount"])
        return kept

    def bucket(self, aws_bucket: str) -> str:
        """The bucket the server calls it by (GCS twins for the gcs flavour)."""
        return GCS_BUCKETS[aws_bucket] if self.flavour == "gcs" else aws_bucket


_LARGE = "instanceCount = 1 AND series_size_MB BETWEEN 800 AND 1000"
_REQUEST = "series_size_MB * 1000 / instanceCount BETWEEN 55 AND 65"
# files read whole (up to 8 MiB) but large enough that bodies waiting in memory add up
_MID = "series_size_MB / instanceCount BETWEEN 5 AND 8 AND instanceCount BETWEEN 20 AND 200"

WORKLOADS = {
    "ct": Workload(
        "ct", "CT-sized: lungct_diagnosis, 4,682 files of ~0.53 MB", latency_ms=20,
        collection_id="lungct_diagnosis",
    ),
    "large": Workload(
        "large", "large: the 4 smallest single-file series of 800-1,000 MB", latency_ms=0,
        where=_LARGE, limit=4,
    ),
    "request": Workload(
        "request", "request-bound: acrin_nsclc_fdg_pet series of ~60 KB files", latency_ms=50,
        collection_id="acrin_nsclc_fdg_pet", where=_REQUEST, max_files=37_000,
    ),
    "mid": Workload(
        "mid", "mid-sized: 667 files of 5-8 MB (htan_ohsu slides, a varepop_apollo CT)",
        latency_ms=20, where=_MID, max_files=600,
    ),
    "large-gcs": Workload(
        "large-gcs", "large from GCS: x-goog-hash crc32c + md5", latency_ms=0, where=_LARGE,
        limit=4, flavour="gcs",
    ),
    "large-crc": Workload(
        "large-crc", "large from S3 with a stored CRC64NVME", latency_ms=0, where=_LARGE,
        limit=4, flavour="s3-crc",
    ),
    "ct-crc": Workload(
        "ct-crc", "CT-sized from S3 with a stored CRC64NVME", latency_ms=20,
        collection_id="lungct_diagnosis", flavour="s3-crc",
    ),
    "multipart": Workload(
        "multipart", "large multipart: 8 MiB parts, <md5>-N ETags", latency_ms=0,
        where=_LARGE, limit=4, flavour="multipart",
    ),
    "small": Workload(
        "small", "qin_pet_phantom, 2,816 files of ~87 KB", latency_ms=50,
        collection_id="qin_pet_phantom",
    ),
    "tiny": Workload(
        "tiny", "smoke test: one qin_pet_phantom series of 47 files", latency_ms=0,
        collection_id="qin_pet_phantom", where="instanceCount = 47", limit=1,
    ),
    "tiny-gcs": Workload(
        "tiny-gcs", "smoke test, GCS flavour", latency_ms=0, collection_id="qin_pet_phantom",
        where="instanceCount = 47", limit=1, flavour="gcs",
    ),
    "tiny-crc": Workload(
        "tiny-crc", "smoke test, S3 with CRC64NVME", latency_ms=0,
        collection_id="qin_pet_phantom", where="instanceCount = 47", limit=1, flavour="s3-crc",
    ),
    "scale": Workload(
        "scale", "100k files: acrin_nsclc_fdg_pet series of files under 40 KB", latency_ms=0,
        collection_id="acrin_nsclc_fdg_pet", where="series_size_MB * 1000 / instanceCount < 40",
        max_files=100_000,
    ),
}  # fmt: skip


@dataclass(frozen=True, slots=True)
class Facts:
    """What the server publishes about one object."""

    key: str
    size: int
    md5: str  # hex
    crc64nvme: str  # base64, big-endian
    crc32c: str
    multipart: str  # the ETag of an upload in MULTIPART_PART parts

    @property
    def md5_b64(self) -> str:
        return base64.b64encode(bytes.fromhex(self.md5)).decode()


@dataclass(slots=True)
class Dataset:
    workload: Workload
    rows: list[Row]
    files: int = 0
    size: int = 0
    buckets: dict[str, list[str]] = field(default_factory=dict)  # bucket -> series uuids


def _pool() -> bytes:
    return random.Random(20260101).randbytes(POOL_BYTES)


def _write_object(path: Path, key: str, size: int, pool: bytes) -> None:
    """Write one synthetic object. The key heads the file so that no two objects share
    content (a benchmark must not be helped by identical files)."""
    header = (key.encode() * 2)[:size]
    start = int.from_bytes(hashlib.blake2b(key.encode(), digest_size=4).digest(), "big") % (
        POOL_BYTES // 2
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as handle:
        handle.write(header)
        left = size - len(header)
        while left > 0:
            block = pool[start : start + min(left, POOL_BYTES - start)]
            handle.write(block)
            left -= len(block)
            start = (start + 4099) % (POOL_BYTES // 2)


def _facts(path: Path, key: str) -> Facts:
    md5 = hashlib.md5(usedforsecurity=False)
    part_md5s: list[bytes] = []
    crc64 = crc32c = 0
    size = 0
    with path.open("rb", buffering=0) as handle:
        while chunk := handle.read(MULTIPART_PART):
            size += len(chunk)
            md5.update(chunk)
            part_md5s.append(hashlib.md5(chunk, usedforsecurity=False).digest())
            crc64 = checksums.crc64nvme(chunk, crc64)
            crc32c = checksums.crc32c(chunk, crc32c)
    parts = part_md5s or [hashlib.md5(b"", usedforsecurity=False).digest()]
    multipart = f"{hashlib.md5(b''.join(parts), usedforsecurity=False).hexdigest()}-{len(parts)}"
    return Facts(
        key, size, md5.hexdigest(),
        base64.b64encode(crc64.to_bytes(8, "big")).decode(),
        base64.b64encode(crc32c.to_bytes(4, "big")).decode(), multipart,
    )  # fmt: skip


def list_page(bucket: str, prefix: str, contents: Sequence[Facts], flavour: Flavour) -> str:
    def entry(item: Facts) -> str:
        etag = item.multipart if flavour == "multipart" else item.md5
        extra = ""
        if flavour == "s3-crc":
            extra = (
                "<ChecksumAlgorithm>CRC64NVME</ChecksumAlgorithm>"
                "<ChecksumType>FULL_OBJECT</ChecksumType>"
            )
        return (
            f"<Contents><Key>{escape(item.key)}</Key><LastModified>2024-01-01T00:00:00.000Z"
            f"</LastModified><ETag>&quot;{etag}&quot;</ETag>{extra}<Size>{item.size}</Size>"
            f"<StorageClass>STANDARD</StorageClass></Contents>"
        )

    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
        f"<Name>{bucket}</Name><Prefix>{prefix}</Prefix><KeyCount>{len(contents)}</KeyCount>"
        f"<MaxKeys>{max(len(contents), 1000)}</MaxKeys><IsTruncated>false</IsTruncated>"
        f"{''.join(entry(item) for item in contents)}</ListBucketResult>"
    )


def build(workload: Workload, data: Path) -> Dataset:
    """Write the workload's objects (shared by every flavour), listings and checksum table
    under ``data``; kept between runs, a series is rebuilt only when its facts are missing."""
    rows = workload.rows()
    dataset = Dataset(workload, rows)
    pool: bytes | None = None
    lines: list[str] = []
    everything: dict[str, list[Facts]] = {}
    pages = data / "_list" / workload.name
    for row in rows:
        series, aws_bucket = str(row["crdc_series_uuid"]), str(row["aws_bucket"])
        bucket = workload.bucket(aws_bucket)
        dataset.buckets.setdefault(bucket, []).append(series)
        cached = data / "_facts" / f"{series}.json"
        if cached.exists():
            contents = [Facts(*item) for item in json.loads(cached.read_text())]
        else:
            pool = pool or _pool()
            contents = []
            for key, size in zip(instance_keys(row), instance_sizes(row), strict=True):
                path = data / aws_bucket / key
                if not path.exists() or path.stat().st_size != size:
                    _write_object(path, key, size, pool)
                contents.append(_facts(path, key))
            cached.parent.mkdir(parents=True, exist_ok=True)
            cached.write_text(json.dumps([list(vars_of(item)) for item in contents]))
        page = pages / bucket / f"{series}.xml"
        page.parent.mkdir(parents=True, exist_ok=True)
        page.write_text(list_page(bucket, f"{series}/", contents, workload.flavour))
        for item in contents:
            etag = item.multipart if workload.flavour == "multipart" else item.md5
            part1 = min(MULTIPART_PART, item.size) if workload.flavour == "multipart" else 0
            lines.append(
                f"{bucket}/{item.key}\t{aws_bucket}/{item.key}\t{etag}\t{item.crc64nvme}\t"
                f"{item.crc32c}\t{item.md5_b64}\t{part1}\n"
            )
            dataset.files += 1
            dataset.size += item.size
        everything.setdefault(bucket, []).extend(contents)
    (pages / "_objects.tsv").write_text("".join(lines))
    for bucket, contents in everything.items():
        # the whole-bucket page lists this workload only: aws-cli and rclone copy a bucket
        page = pages / "_bucket" / f"{bucket}.xml"
        page.parent.mkdir(parents=True, exist_ok=True)
        page.write_text(list_page(bucket, "", contents, workload.flavour))
    return dataset


def vars_of(item: Facts) -> tuple[str | int, ...]:
    return (item.key, item.size, item.md5, item.crc64nvme, item.crc32c, item.multipart)
