"""Parse IDC manifests (portal exports, s5cmd run files, plain bucket URLs) into
ManifestEntry values; only ``read_manifest`` touches the disk."""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping
from pathlib import Path

from idc_sync.core.errors import ManifestError
from idc_sync.core.model import AWS_TO_GCS_BUCKET, ManifestEntry

CANONICAL_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")

# `public-datasets-idc` held idc-open-data's series on GCS up to IDC release 19: manifests
# written then, and prior_versions_index (gcs_bucket), still name it.
_LEGACY_GCS_TO_AWS_BUCKET: Mapping[str, str] = {"public-datasets-idc": "idc-open-data"}

GCS_TO_AWS_BUCKET: Mapping[str, str] = {
    **{gcs: aws for aws, gcs in AWS_TO_GCS_BUCKET.items()},
    **_LEGACY_GCS_TO_AWS_BUCKET,
}

# s5cmd pointed at storage.googleapis.com reads `s3://<gcs bucket>/...` (idc-index writes such
# manifests for GCS), so the s3 scheme accepts GCS names too; no GCS name is another AWS bucket.
_BUCKETS_BY_SCHEME: Mapping[str, Mapping[str, str]] = {
    "s3": {**GCS_TO_AWS_BUCKET, **{aws: aws for aws in AWS_TO_GCS_BUCKET}},
    "gs": GCS_TO_AWS_BUCKET,
}

_URL = re.compile(r"(?P<scheme>[A-Za-z0-9]+)://(?P<bucket>[^/]*)/(?P<series>[^/]*)/(?P<rest>.*)")
_INSTANCE_KEY = re.compile(r"(?P<instance>[^/]+)\.dcm")
_QUOTE_LIMIT = 200
_SHELL_SYNTAX = re.compile(r"['\"\\#]")


def _quote(text: str) -> str:
    if len(text) > _QUOTE_LIMIT:
        text = text[:_QUOTE_LIMIT] + "..."
    return repr(text)


def _known_buckets() -> str:
    aws = ", ".join(AWS_TO_GCS_BUCKET)
    gcs = ", ".join(dict.fromkeys([*AWS_TO_GCS_BUCKET.values(), *_LEGACY_GCS_TO_AWS_BUCKET]))
    return f"IDC buckets are {aws} (AWS, s3://) and {gcs} (GCS, gs:// or s3://)"


def _canonical_uuid(text: str) -> str | None:
    lowered = text.lower()
    return lowered if CANONICAL_UUID.fullmatch(lowered) else None


def _parse_url(url: str, origin: str, line_number: int) -> ManifestEntry:
    match = _URL.fullmatch(url)
    if match is None:
        raise ManifestError(
            origin,
            line_number,
            f"expected s3://<bucket>/<crdc_series_uuid>/* or .../<crdc_instance_uuid>.dcm, "
            f"got {_quote(url)}",
        )
    scheme = match["scheme"].lower()
    buckets = _BUCKETS_BY_SCHEME.get(scheme)
    if buckets is None:
        raise ManifestError(
            origin,
            line_number,
            f"unsupported URL scheme {scheme!r} in {_quote(url)}: use s3:// or gs://",
        )
    bucket = buckets.get(match["bucket"])
    if bucket is None:
        raise ManifestError(
            origin,
            line_number,
            f"unknown bucket {match['bucket']!r} in {_quote(url)}; {_known_buckets()}",
        )
    series_uuid = _canonical_uuid(match["series"])
    if series_uuid is None:
        raise ManifestError(
            origin,
            line_number,
            f"{match['series']!r} in {_quote(url)} is not a crdc_series_uuid "
            "(8-4-4-4-12 hexadecimal digits)",
        )
    rest = match["rest"]
    if rest in ("", "*"):
        return ManifestEntry(bucket, series_uuid, None, f"{origin}:{line_number}")
    instance = _INSTANCE_KEY.fullmatch(rest)
    instance_uuid = _canonical_uuid(instance["instance"]) if instance is not None else None
    if instance_uuid is None:
        raise ManifestError(
            origin,
            line_number,
            f"expected '*', nothing, or <crdc_instance_uuid>.dcm after the series in "
            f"{_quote(url)}, got {rest!r}",
        )
    return ManifestEntry(bucket, series_uuid, instance_uuid, f"{origin}:{line_number}")


def _parse_line(line: str, origin: str, line_number: int) -> ManifestEntry | None:
    if _SHELL_SYNTAX.search(line) is None:
        words = line.split()  # the usual line, and 30 times faster than shlex
    else:
        try:
            # Destinations may be quoted and hold spaces; a '#' starting a word is a comment.
            words = shlex.split(line, comments=True)
        except ValueError as exc:  # unbalanced quotes
            raise ManifestError(origin, line_number, f"{exc} in {_quote(line)}") from None
    if not words:
        return None
    if words[0] == "cp":
        if len(words) != 3:
            raise ManifestError(
                origin,
                line_number,
                f"'cp' takes a source URL and one destination, got {_quote(line)}",
            )
        return _parse_url(words[1], origin, line_number)
    if len(words) == 1:
        return _parse_url(words[0], origin, line_number)
    raise ManifestError(
        origin,
        line_number,
        f"expected 'cp <url> <destination>' or a bare URL, got {_quote(line)}",
    )


def parse_manifest_text(text: str, origin: str) -> list[ManifestEntry]:
    """Every entry of a manifest, in line order; the first unreadable line raises ManifestError.

    ``origin`` names the manifest in errors and in each entry's ``origin`` ("<origin>:<line>").
    """
    entries: list[ManifestEntry] = []
    # split on "\n" only, so line numbers match an editor's (splitlines also splits on \f, \x1c...)
    for line_number, raw_line in enumerate(text.split("\n"), start=1):
        line = raw_line.strip()
        if not line or line.startswith("#"):
            continue
        entry = _parse_line(line, origin, line_number)
        if entry is not None:
            entries.append(entry)
    if not entries:
        raise ManifestError(origin, None, "no entries: the manifest holds no s3:// or gs:// URL")
    return entries


def read_manifest(path: Path) -> list[ManifestEntry]:
    """Read and parse a UTF-8 manifest file (a byte order mark is allowed)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ManifestError(str(path), None, f"cannot read: {exc.strerror or exc}") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line_number = data.count(b"\n", 0, exc.start) + 1
        raise ManifestError(
            str(path),
            None,
            f"not UTF-8 text: byte {data[exc.start]:#04x} on line {line_number}",
        ) from None
    return parse_manifest_text(text, str(path))
