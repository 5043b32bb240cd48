"""One page of a ListObjectsV2 answer, parsed from its XML. Pure.

S3 and GCS's XML API send the same elements under different namespaces, so tags are
matched by local name. With ``encoding-type=url`` S3 form-encodes keys (a space is "+");
a page is decoded only when it says it was encoded, as botocore does."""

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
        objects.append(
            ListedObject(
                key=unquote_plus(key) if encoded else key,
                size=int(size),
                etag=item.get("ETag", "").strip().strip('"'),
            )
        )
    truncated = fields.get("IsTruncated", "false").lower() == "true"
    token = fields.get("NextContinuationToken") or None
    if truncated and token is None:
        raise RetryableError("LIST: a truncated page without a continuation token")
    return ListPage(objects, token if truncated else None)
