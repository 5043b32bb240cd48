"""One page of a ListObjectsV2 answer, parsed from its XML. Pure.

S3 and GCS's XML API send the same elements under different namespaces, so tags are
matched by local name. With ``encoding-type=url`` S3 form-encodes keys (a space is "+");
a page is decoded only when it says it was encoded, as botocore does. An entry's
``ChecksumAlgorithm`` and ``ChecksumType`` say whether S3 stores a full-object checksum
that a GET with ``x-amz-checksum-mode: ENABLED`` returns."""

from __future__ import annotations

import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass
from urllib.parse import unquote_plus

from idc_sync.core.errors import RetryableError
from idc_sync.core.model import ListedObject


@dataclass(frozen=True, slots=True)
class ListPage:
    objects: list[ListedObject]
    next_token: str | None  # None when the listing is complete


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def parse_list_page(body: bytes | bytearray | memoryview) -> ListPage:
    """The objects of one page and the continuation token of the next, if any.

    A page that is not a ListBucketResult, an entry without a key or with a size that is
    not a non-negative integer, or a truncated page without a token raises RetryableError:
    a proxy's error page or a cut-short body, worth another request."""
    try:
        # expat >= 2.4.1 (CPython 3.11 bundles it) bounds entity expansion, and ElementTree
        # never fetches external entities: a hostile server cannot blow up or probe us.
        root = ElementTree.fromstring(body)  # noqa: S314
    except ElementTree.ParseError as error:
        raise RetryableError(f"LIST: unreadable XML ({error})") from None
    if _local(root.tag) != "ListBucketResult":
        raise RetryableError(f"LIST: expected ListBucketResult, got {_local(root.tag)}")
    fields = {_local(child.tag): (child.text or "") for child in root if len(child) == 0}
    encoded = fields.get("EncodingType", "").lower() == "url"
    objects = []
    for entry in root:
        if _local(entry.tag) != "Contents":
            continue
        item = {_local(child.tag): (child.text or "") for child in entry}
        key = item.get("Key")
        size = item.get("Size", "")
        if not key or not size.isdigit():
            raise RetryableError(f"LIST: an entry without a usable Key and Size: {item}")
        etag = item.get("ETag", "").strip().strip('"')
        objects.append(
            ListedObject(
                key=unquote_plus(key) if encoded else key,
                size=int(size),
                etag=etag,
                checksum_algorithm=_full_object_checksum(entry, etag),
            )
        )
    truncated = fields.get("IsTruncated", "false").lower() == "true"
    token = fields.get("NextContinuationToken") or None
    if truncated and token is None:
        raise RetryableError("LIST: a truncated page without a continuation token")
    return ListPage(objects, token if truncated else None)


FULL_OBJECT_ALGORITHMS = frozenset({"CRC64NVME", "CRC32C", "CRC32", "SHA256"})


def _full_object_checksum(entry: ElementTree.Element, etag: str) -> str | None:
    """The entry's full-object checksum algorithm, if it has one we can check. Without a
    ChecksumType an older object's checksum covers the whole object only when it was not a
    multipart upload (then it is a checksum of part checksums); CRC64NVME always does."""
    algorithms = [
        (child.text or "").strip().upper()
        for child in entry
        if _local(child.tag) == "ChecksumAlgorithm"
    ]
    kinds = [
        (child.text or "").strip().upper() for child in entry if _local(child.tag) == "ChecksumType"
    ]
    for algorithm in algorithms:
        if algorithm not in FULL_OBJECT_ALGORITHMS:
            continue
        if kinds:
            if kinds[0] == "FULL_OBJECT":
                return algorithm
        elif algorithm == "CRC64NVME" or "-" not in etag:
            return algorithm
    return None


# A series holds at most 91,980 instances in IDC v25; one whose count the index does not give
# (an earlier release's UUID) may list this many keys before the listing counts as endless.
UNKNOWN_COUNT_KEYS = 200_000
# S3 and GCS send 1,000 keys a page; a server may send fewer, so pages get twice the room.
KEYS_PER_PAGE = 1000


@dataclass(frozen=True, slots=True)
class ListingBounds:
    """How far one series' listing may go: a server that answers IsTruncated with a fresh
    token forever, or lists more keys than the series can hold, is cut off here."""

    max_keys: int
    max_pages: int

    @classmethod
    def for_series(cls, instance_count: int | None) -> ListingBounds:
        """Room for ``instance_count`` keys plus slack (a listing may hold a few objects
        the index does not, which the mirror refuses or skips)."""
        if instance_count is None:
            keys = UNKNOWN_COUNT_KEYS
        else:
            keys = instance_count + max(10, instance_count // 10)
        return cls(keys, 10 + 2 * -(-keys // KEYS_PER_PAGE))
