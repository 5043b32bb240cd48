"""Which bucket a series is read from and the URL of a bucket or object, for AWS S3,
the GCS XML API and any local S3-compatible server; no I/O."""

from __future__ import annotations

import functools
import re
from typing import Literal
from urllib.parse import SplitResult, quote, urlsplit

from idc_sync.core.errors import ConfigurationError, PermanentError
from idc_sync.core.model import AWS_TO_GCS_BUCKET, Source

AddressingStyle = Literal["virtual", "path"]

# The global endpoint and the regional ones (s3.us-east-1.amazonaws.com). Dual-stack,
# FIPS and legacy dash forms are left to path style, which AWS still serves for the IDC
# buckets.
_AWS_S3_HOST_RE = re.compile(r"s3(?:\.[a-z0-9-]+)?\.amazonaws\.com")

# A bucket name usable as a DNS label in a virtual-hosted URL. Dots would break TLS
# (the certificate covers *.s3.amazonaws.com only) and are sent path style instead.
_DNS_LABEL_BUCKET_RE = re.compile(r"[a-z0-9](?:[a-z0-9-]{1,61})[a-z0-9]")

# Keys quote() would leave unchanged segment by segment ('/' separates segments).
_PLAIN_KEY_RE = re.compile(r"[A-Za-z0-9_.~/-]+")

# S3 and GCS bucket names: lowercase letters, digits, '.', '-', '_' (GCS), 3-222 characters.
_BUCKET_RE = re.compile(r"[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]")


def bucket_for(source: Source, aws_bucket: str) -> str:
    """The bucket to read a series from on ``source``, given the index's ``aws_bucket``.

    The ``aws_bucket`` column is authoritative (license does not determine the bucket).
    A bucket outside model.AWS_TO_GCS_BUCKET raises PermanentError on either source: it
    means the index is newer than this program, and guessing could read the wrong data.
    """
    if aws_bucket not in AWS_TO_GCS_BUCKET:
        known = ", ".join(sorted(AWS_TO_GCS_BUCKET))
        raise PermanentError(f"unknown IDC bucket {aws_bucket!r} (known: {known})")
    if source == "aws":
        return aws_bucket
    if source == "gcs":
        return AWS_TO_GCS_BUCKET[aws_bucket]
    raise ConfigurationError(f"unknown source {source!r}; expected 'aws' or 'gcs'")


def other_source(source: Source) -> Source:
    """The other cloud, which holds the same IDC objects under the same keys (failover)."""
    return "gcs" if source == "aws" else "aws"


def _split_endpoint(endpoint: str) -> SplitResult:
    parts = urlsplit(endpoint.strip())
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise ConfigurationError(
            f"endpoint {endpoint!r} must be an http:// or https:// URL with a host"
        )
    # Anonymous access only: credentials in the URL would end up in logs and metrics.
    if parts.username is not None or parts.password is not None:
        raise ConfigurationError(f"endpoint {endpoint!r} must not carry credentials")
    if parts.query or parts.fragment:
        raise ConfigurationError(f"endpoint {endpoint!r} must not have a query or fragment")
    try:
        parts.port  # noqa: B018 - parsing the port is the check
    except ValueError as error:
        raise ConfigurationError(f"endpoint {endpoint!r} has an invalid port") from error
    return parts


def _is_virtual(parts: SplitResult) -> bool:
    host = (parts.hostname or "").lower()
    return (
        parts.scheme.lower() == "https"
        and parts.port in (None, 443)
        and parts.path in ("", "/")
        and _AWS_S3_HOST_RE.fullmatch(host) is not None
    )


def addressing_style(endpoint: str) -> AddressingStyle:
    """ "virtual" for the real AWS S3 endpoints over https, "path" for everything else.

    GCS's XML API, moto, MinIO and other local servers only resolve path-style URLs.
    """
    return "virtual" if _is_virtual(_split_endpoint(endpoint)) else "path"


def _check_bucket(bucket: str) -> None:
    if _BUCKET_RE.fullmatch(bucket) is None:
        raise PermanentError(f"{bucket!r} is not a valid bucket name")


@functools.lru_cache(maxsize=1024)
def _bucket_base(endpoint: str, bucket: str) -> tuple[str, AddressingStyle]:
    """The bucket's URL without a trailing slash, and the style it was built in.

    A bucket name that is not a single DNS label falls back to path style even on AWS.
    """
    _check_bucket(bucket)
    parts = _split_endpoint(endpoint)
    scheme = parts.scheme.lower()
    if _is_virtual(parts) and _DNS_LABEL_BUCKET_RE.fullmatch(bucket) is not None:
        return f"{scheme}://{bucket}.{(parts.hostname or '').lower()}", "virtual"
    base_path = parts.path.rstrip("/")
    return f"{scheme}://{parts.netloc}{base_path}/{bucket}", "path"


def bucket_url(endpoint: str, bucket: str) -> str:
    """The URL to send bucket requests (ListObjectsV2) to; append ``?list-type=2&...``.

    Virtual style gives ``https://<bucket>.<aws host>/``, path style ``<endpoint>/<bucket>``
    (the request paths botocore sends in each style).
    """
    base, style = _bucket_base(endpoint, bucket)
    return base + "/" if style == "virtual" else base


def object_url(endpoint: str, bucket: str, key: str) -> str:
    """The URL of one object; the key is percent-encoded per segment, '/' kept.

    Keys with "." or ".." segments are refused (PermanentError): HTTP clients normalize
    them away and would fetch a different object.
    """
    segments = key.split("/")
    if key == "" or any(segment in (".", "..") for segment in segments):
        raise PermanentError(f"object key {key!r} cannot be addressed by URL")
    if _PLAIN_KEY_RE.fullmatch(key) is not None:
        encoded = key  # IDC's own keys (<uuid>/<uuid>.dcm): nothing to encode
    else:
        try:
            encoded = "/".join(quote(segment, safe="", errors="strict") for segment in segments)
        except UnicodeEncodeError as error:
            raise PermanentError(f"object key {key!r} is not valid Unicode") from error
    base, _ = _bucket_base(endpoint, bucket)
    return f"{base}/{encoded}"
