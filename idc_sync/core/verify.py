"""Integrity of one object: what the server promised (the listing's ETag; x-goog-hash from
GCS; x-amz-checksum-* from S3 when asked with ``x-amz-checksum-mode: ENABLED``), which
hasher that calls for (core/hashing.py), and the verdict on what it computed. Pure.

With ``checksum = "fastest"`` (the default) a published full-object CRC64NVME, CRC32C, CRC32
or SHA-256 is checked instead of MD5: any of them catches what the MD5 catches on a
transfer, at a tenth of its CPU or less (core/hashing.py has the rates). MD5 (or the
multipart ETag) is hashed only where nothing cheaper is published, or always with
``checksum = "md5"``, or when the bytes come from another cloud than the listing (source
failover), whose own headers are not the promise we verify against."""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from idc_sync.core.hashing import Digests, StreamHasher

MIB = 1 << 20

# S3 limits a multipart upload to 10,000 parts; an ETag claiming more was not made by S3.
S3_MAX_PARTS = 10_000
# Every part but the last is at least 5 MiB (S3, and the GCS XML API's multipart uploads).
S3_MIN_PART_SIZE = 5 * MIB

# Part sizes that common uploaders use, most likely first: aws-cli/boto3/s3transfer (8 MiB,
# doubled by s3transfer when a file would need more than 10,000 parts), rclone (5 MiB),
# s5cmd (50 MiB), and other round sizes seen in the wild.
COMMON_PART_SIZES: tuple[int, ...] = tuple(
    n * MIB for n in (8, 16, 5, 50, 32, 64, 15, 100, 128, 256, 512, 1024)
)

_MD5_ETAG = re.compile(r"[0-9a-f]{32}")
_MULTIPART_ETAG = re.compile(r"([0-9a-f]{32})-([1-9][0-9]{0,4})")

VerdictKind = Literal["md5", "multipart-md5", "crc32c", "crc64nvme", "crc32", "sha256", "size-only"]
ChecksumMode = Literal["fastest", "md5"]
# Published checksums by CPU per byte, cheapest first (the rates in core/hashing.py).
FASTEST_FIRST: tuple[str, ...] = ("crc64nvme", "crc32c", "crc32", "sha256")
# Binary lengths of each published checksum, and its x-amz-checksum-* header.
_LENGTHS = {"md5": 16, "crc32c": 4, "crc64nvme": 8, "crc32": 4, "sha256": 32}
AMZ_CHECKSUM_HEADERS = {f"x-amz-checksum-{name}": name for name in FASTEST_FIRST}


@dataclass(frozen=True)
class Expected:
    """What the listing promised about one object."""

    size: int
    etag: str  # normalized: no quotes, lower case
    md5_hex: str | None  # the ETag when it is a plain MD5
    multipart_parts: int | None  # N when the ETag is "<md5 of part md5s>-N"
    # The ETag comes from an S3 listing, so it is the MD5 (or multipart ETag) of the bytes
    # even when GCS serves them as a composite object (source failover).
    etag_from_s3: bool = False
    # The bytes come from another cloud than the listing (source failover): only the
    # listing's checksum is the promise, whatever the serving cloud's headers claim.
    foreign: bool = False


@dataclass(frozen=True)
class Published:
    """The full-object checksums a response's headers carry, base64 as on the wire; None
    when absent or unusable. ``header`` names where they came from, for messages:
    "x-goog-hash", "x-amz-checksum", or "recorded" (what ``verify`` holds a file to)."""

    md5_b64: str | None = None
    crc32c_b64: str | None = None
    crc64nvme_b64: str | None = None
    crc32_b64: str | None = None
    sha256_b64: str | None = None
    header: str = "x-goog-hash"

    def value(self, name: str) -> str | None:
        """The published value of checksum ``name`` ("md5", "crc32c", ...)."""
        value: str | None = getattr(self, f"{name}_b64")
        return value

    def label(self, name: str) -> str:
        where = f"{self.header}-{name}" if self.header == "x-amz-checksum" else self.header
        return f"{name} ({where})"

    @property
    def any(self) -> bool:
        return any(self.value(name) is not None for name in _LENGTHS)


@dataclass(frozen=True)
class Verdict:
    """The outcome of checking one object.

    ``checksum`` is the value verified (hex md5, multipart ETag, base64 crc32c; "" for a size
    check); on a mismatch it is the value we computed, and ``reason`` names both sides.
    """

    ok: bool
    kind: VerdictKind
    checksum: str
    reason: str | None


def normalize_etag(etag: str) -> str:
    """Strip surrounding whitespace and quotes and lower-case, as listings and headers differ."""
    return etag.strip().strip('"').lower()


def expectation_from_listing(
    etag: str, size: int, *, from_s3: bool = False, foreign: bool = False
) -> Expected:
    """Read what an ETag says about the content; anything not S3-shaped promises nothing.
    ``from_s3``: the listing came from S3 (see ``Expected.etag_from_s3``); ``foreign``: the
    bytes come from the other cloud (see ``Expected.foreign``)."""
    normalized = normalize_etag(etag)
    if _MD5_ETAG.fullmatch(normalized):
        return Expected(size, normalized, normalized, None, from_s3, foreign)
    match = _MULTIPART_ETAG.fullmatch(normalized)
    if match is not None and int(match.group(2)) <= S3_MAX_PARTS:
        return Expected(size, normalized, None, int(match.group(2)), from_s3, foreign)
    return Expected(size, normalized, None, None, from_s3, foreign)


def _decode_b64(value: str, length: int) -> bytes | None:
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return None
    return raw if len(raw) == length else None


class _Collected:
    """Values seen for each checksum name; two different valid values for the same one mean
    we cannot tell which is right, so that checksum becomes unusable rather than trusted."""

    def __init__(self) -> None:
        self.found: dict[str, bytes] = {}
        self.conflicting: set[str] = set()

    def add(self, name: str, value: str) -> None:
        raw = _decode_b64(value.strip(), _LENGTHS[name])
        if raw is None:
            return
        if name in self.found and self.found[name] != raw:
            self.conflicting.add(name)
        self.found.setdefault(name, raw)

    def usable(self, name: str) -> str | None:
        if name in self.conflicting or name not in self.found:
            return None
        return base64.b64encode(self.found[name]).decode("ascii")


def parse_goog_hash(values: Iterable[str]) -> Published:
    """Parse every x-goog-hash header line (one line "crc32c=..,md5=.." or one line per hash).

    Malformed or unknown items are ignored, and so is a hash given twice with different values.
    """
    collected = _Collected()
    for header_value in values:
        for item in header_value.split(","):
            # partition at the first "=": base64 padding also uses "="
            name, sep, value = item.strip().partition("=")
            name = name.strip().lower()
            if sep and name in ("md5", "crc32c"):
                collected.add(name, value)
    return Published(md5_b64=collected.usable("md5"), crc32c_b64=collected.usable("crc32c"))


def parse_amz_checksums(headers: Iterable[tuple[str, str]]) -> Published | None:
    """The full-object checksums of an S3 answer to ``x-amz-checksum-mode: ENABLED``
    (``headers``: lower-case names). A COMPOSITE checksum (``x-amz-checksum-type``, or a
    value ending in ``-N``) is the checksum of the part checksums, not of the bytes, and is
    ignored, as is anything malformed; None when nothing usable is left."""
    collected = _Collected()
    composite = False
    for name, value in headers:
        kind = AMZ_CHECKSUM_HEADERS.get(name)
        if kind is not None:
            collected.add(kind, value)
        elif name == "x-amz-checksum-type" and value.strip().upper() != "FULL_OBJECT":
            composite = True
    if composite:
        return None
    found = {f"{kind}_b64": collected.usable(kind) for kind in FASTEST_FIRST}
    published = Published(header="x-amz-checksum", **found)
    return published if published.any else None


def published_checksums(headers: Iterable[tuple[str, str]]) -> Published | None:
    """What a response's headers (lower-case names) publish about the whole object:
    x-goog-hash from GCS, or x-amz-checksum-* from S3; None when neither says anything."""
    # most answers carry neither: one pass over the names decides (a fifth of a small
    # GET's verification cost otherwise)
    relevant = [(n, v) for n, v in headers if n.startswith(("x-goog-hash", "x-amz-checksum"))]
    if not relevant:
        return None
    goog = [value for name, value in relevant if name == "x-goog-hash"]
    if goog:
        return parse_goog_hash(goog)
    return parse_amz_checksums(relevant)


def part_count(size: int, part_size: int) -> int:
    """Number of parts an upload of ``size`` bytes in ``part_size`` parts has.

    An empty object still has one (empty) part: S3 needs at least one part to complete
    an upload, and StreamHasher produces the matching ETag.
    """
    if part_size <= 0:
        raise ValueError(f"part size must be positive, got {part_size}")
    if size < 0:
        raise ValueError(f"size must not be negative, got {size}")
    return max(1, -(-size // part_size))


def multipart_part_size_valid(size: int, parts: int, part_size: int) -> bool:
    """Whether uploading ``size`` bytes in ``part_size`` parts gives exactly ``parts`` parts."""
    if part_size <= 0 or size < 0 or not 1 <= parts <= S3_MAX_PARTS:
        return False
    return part_count(size, part_size) == parts


def multipart_etag_possible(size: int, parts: int) -> bool:
    """Whether an upload of ``size`` bytes can have ``parts`` parts at all: every part but
    the last holds at least S3_MIN_PART_SIZE bytes. A listing that claims otherwise (a
    small single-part object shown as "<md5>-2") cannot be trusted to describe the bytes."""
    return 1 <= parts <= S3_MAX_PARTS and size >= (parts - 1) * S3_MIN_PART_SIZE


def guess_part_size(size: int, parts: int) -> int | None:
    """The most likely part size for a ``<md5>-parts`` ETag on an object of ``size`` bytes.

    Exact for one part. Otherwise a guess: the first common uploader size that gives the
    right count, else the smallest whole MiB that does. None when no whole MiB fits
    (parts of varying size cannot be reproduced with one part size).
    """
    if size < 0 or not 1 <= parts <= S3_MAX_PARTS:
        return None
    if parts == 1:
        return max(size, 1)
    for candidate in COMMON_PART_SIZES:
        if multipart_part_size_valid(size, parts, candidate):
            return candidate
    # ceil(size / p) == parts needs p >= size / parts; the smallest whole MiB above that is
    # the only one worth trying, as larger ones give the same or fewer parts.
    smallest_part = -(-size // parts)
    candidate = max(1, -(-smallest_part // MIB)) * MIB
    return candidate if multipart_part_size_valid(size, parts, candidate) else None


def _is_composite(goog: Published | None, expected: Expected | None = None) -> bool:
    # GCS gives composite objects a crc32c but no md5, and their ETag is not an MD5 even when
    # it looks like one (GCS says to assume nothing about it). An ETag from an S3 listing
    # describes the bytes whatever GCS says.
    if expected is not None and expected.etag_from_s3:
        return False
    return (
        goog is not None
        and goog.header == "x-goog-hash"
        and goog.md5_b64 is None
        and goog.crc32c_b64 is not None
    )


def _b64_to_hex(value: str) -> str:
    return base64.b64decode(value).hex()


def _mib(size: int) -> str:
    return f"{size // MIB} MiB" if size and size % MIB == 0 else f"{size}-byte"


def _fastest(expected: Expected, published: Published | None, mode: ChecksumMode) -> str | None:
    """The cheapest published checksum `verdict` may rest on in this mode, if any."""
    if mode != "fastest" or expected.foreign or published is None:
        return None
    if expected.etag_from_s3 and published.header == "x-goog-hash":
        return None  # GCS serving what S3 listed: only the listing is the promise
    for name in FASTEST_FIRST:
        if published.value(name) is not None:
            return name
    return None


def hashers_needed(
    expected: Expected,
    goog: Published | None,
    part_size: int | None,
    mode: ChecksumMode = "fastest",
) -> StreamHasher:
    """The cheapest hasher whose digests let `verdict` use the check the mode asks for: the
    cheapest published checksum (``"fastest"``), else the strongest MD5 check available.

    ``part_size`` is the multipart part size when known (from config, or a HEAD with
    partNumber=1); when None or inconsistent with the ETag's part count it is guessed.
    """
    fastest = _fastest(expected, goog, mode)
    if fastest is not None:
        return StreamHasher(md5=False, **{fastest: True})
    composite = _is_composite(goog, expected)
    goog_md5 = goog is not None and goog.md5_b64 is not None
    if expected.md5_hex is not None and not composite:
        return StreamHasher(md5=True)
    if expected.multipart_parts is not None and not composite:
        parts = expected.multipart_parts
        size = part_size
        if size is None or not multipart_part_size_valid(expected.size, parts, size):
            size = guess_part_size(expected.size, parts)
        if size is not None:
            # A GCS md5 next to a multipart ETag is exact where the part size is a guess.
            return StreamHasher(md5=goog_md5, part_size=size)
    if goog_md5:
        return StreamHasher(md5=True)
    if goog is not None and not expected.foreign:
        # nothing MD5-shaped to check: the operator's "md5" yields to what is published
        for name in ("crc32c", *FASTEST_FIRST):
            if goog.value(name) is not None:
                return StreamHasher(md5=False, **{name: True})
    elif goog is not None and goog.header == "x-goog-hash" and goog.crc32c_b64 is not None:
        # failover to a GCS composite object: its crc32c at least names a corrupt transfer
        return StreamHasher(md5=False, crc32c=True)
    return StreamHasher(md5=False)


@dataclass(frozen=True)
class _Check:
    kind: VerdictKind
    label: str
    expected: str
    got: str | None
    detail: str = ""


def _published_checks(digests: Digests, published: Published | None) -> list[_Check]:
    if published is None or published.header == "x-goog-hash":
        return []
    return [
        _Check(name, published.label(name), value, getattr(digests, f"{name}_b64"))  # type: ignore[arg-type]
        for name in FASTEST_FIRST
        if (value := published.value(name)) is not None
    ]


def _checks(
    expected: Expected, digests: Digests, goog: Published | None, mode: ChecksumMode
) -> list[_Check]:
    """Every check the server's promises allow, in the order the mode prefers them
    (got=None: not hashed)."""
    checks = _md5_checks(expected, digests, goog)
    amz = _published_checks(digests, goog)
    if _fastest(expected, goog, mode) is None:
        return checks + amz
    # the cheapest first: the one hashed names the verdict, and nothing before it was skipped
    crc32c = [check for check in checks if check.kind == "crc32c"]
    first = sorted(amz + crc32c, key=lambda check: FASTEST_FIRST.index(check.kind))
    return first + [check for check in checks if check.kind != "crc32c"]


def _md5_checks(expected: Expected, digests: Digests, goog: Published | None) -> list[_Check]:
    """The listing's MD5 checks and GCS's x-goog-hash, strongest first."""
    composite = _is_composite(goog, expected)
    checks: list[_Check] = []
    if expected.md5_hex is not None and not composite:
        checks.append(_Check("md5", "md5 (ETag)", expected.md5_hex, digests.md5_hex))
    if expected.multipart_parts is not None and not composite:
        got = digests.multipart_etag
        if got is None or digests.part_size is None:
            detail = ": part size unknown"
        elif not got.endswith(f"-{expected.multipart_parts}"):
            # Our part size gives another part count: the assumption is wrong, not the bytes.
            detail = f": {_mib(digests.part_size)} parts do not give {expected.multipart_parts}"
            got = None
        else:
            detail = f" with {_mib(digests.part_size)} parts"
        checks.append(_Check("multipart-md5", "multipart ETag", expected.etag, got, detail))
    if goog is None or goog.header != "x-goog-hash":
        return checks
    if goog.md5_b64 is not None:
        checks.append(
            _Check("md5", "md5 (x-goog-hash)", _b64_to_hex(goog.md5_b64), digests.md5_hex)
        )
    if goog.crc32c_b64 is not None:
        checks.append(_Check("crc32c", "crc32c (x-goog-hash)", goog.crc32c_b64, digests.crc32c_b64))
    return checks


def verdict(
    expected: Expected,
    digests: Digests,
    goog: Published | None = None,
    mode: ChecksumMode = "fastest",
) -> Verdict:
    """Judge one object: size first, then every check we hashed for; the first in the mode's
    order (the cheapest published one, or the strongest MD5 check) names it.

    Every check with both sides present must pass, so an md5 ETag and a GCS md5 must both
    agree with the bytes. A promised check we did not hash for that comes before the one
    that names the verdict is named in ``reason``, so a weaker verdict is never silent.
    """
    if digests.size != expected.size:
        return Verdict(
            ok=False,
            kind="size-only",
            checksum="",
            reason=f"size mismatch: expected {expected.size} bytes, got {digests.size} bytes",
        )
    checks = _checks(expected, digests, goog, mode)
    performed = [check for check in checks if check.got is not None]
    for check in performed:
        if check.got != check.expected:
            return Verdict(
                ok=False,
                kind=check.kind,
                checksum=check.got or "",
                reason=f"{check.label} mismatch{check.detail}: "
                f"expected {check.expected}, got {check.got}",
            )
    if not performed:
        impossible = _impossible_multipart(expected, goog)
        if impossible is not None:
            return Verdict(ok=False, kind="multipart-md5", checksum="", reason=impossible)
        return Verdict(ok=True, kind="size-only", checksum="", reason=_not_checked(checks))
    strongest = performed[0]
    # Only stronger checks we skipped are worth a note; weaker ones add nothing.
    stronger = checks[: checks.index(strongest)]
    return Verdict(
        ok=True, kind=strongest.kind, checksum=strongest.expected, reason=_not_checked(stronger)
    )


def _impossible_multipart(expected: Expected, goog: Published | None) -> str | None:
    """Why the listing's multipart ETag is untrustworthy, when it claims a part count its
    size cannot have. With nothing else to check, accepting by size would let any bytes of
    the right length in; a real multipart upload never meets this (its parts are >= 5 MiB),
    so only a broken or lying listing is refused."""
    parts = expected.multipart_parts
    if parts is None or _is_composite(goog, expected):
        return None
    if multipart_etag_possible(expected.size, parts):
        return None
    return (
        f"impossible multipart ETag: {expected.size} bytes cannot have {parts} parts "
        f"(all but the last are at least {_mib(S3_MIN_PART_SIZE)}); listing ETag "
        f"{expected.etag}, nothing trustworthy to verify against"
    )


def _not_checked(checks: list[_Check]) -> str | None:
    notes = [f"{check.label} not checked{check.detail}" for check in checks if check.got is None]
    return "; ".join(notes) if notes else None
