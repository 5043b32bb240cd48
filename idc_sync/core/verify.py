"""Integrity of one object: what the server promised (listing ETag, x-goog-hash), what we
hashed while streaming, and the verdict. Pure except `hash_file`, which re-reads a file on disk."""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import google_crc32c

from idc_sync.core.errors import ConfigurationError

if TYPE_CHECKING:
    from hashlib import _Hash

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

VerdictKind = Literal["md5", "multipart-md5", "crc32c", "size-only"]


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


@dataclass(frozen=True)
class GoogHash:
    """The hashes GCS sent in x-goog-hash, base64 as on the wire; None when absent or unusable."""

    md5_b64: str | None
    crc32c_b64: str | None


@dataclass(frozen=True)
class Digests:
    """What we computed over the bytes we received (or re-read from disk)."""

    size: int
    md5_hex: str | None
    crc32c_b64: str | None
    multipart_etag: str | None
    # The part size behind multipart_etag, kept so a mismatch can say what was assumed.
    part_size: int | None = None


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


def expectation_from_listing(etag: str, size: int, *, from_s3: bool = False) -> Expected:
    """Read what an ETag says about the content; anything not S3-shaped promises nothing.
    ``from_s3``: the listing came from S3 (see ``Expected.etag_from_s3``)."""
    normalized = normalize_etag(etag)
    if _MD5_ETAG.fullmatch(normalized):
        return Expected(size, normalized, normalized, None, from_s3)
    match = _MULTIPART_ETAG.fullmatch(normalized)
    if match is not None and int(match.group(2)) <= S3_MAX_PARTS:
        return Expected(size, normalized, None, int(match.group(2)), from_s3)
    return Expected(size, normalized, None, None, from_s3)


def _decode_b64(value: str, length: int) -> bytes | None:
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return None
    return raw if len(raw) == length else None


def parse_goog_hash(values: Iterable[str]) -> GoogHash:
    """Parse every x-goog-hash header line (one line "crc32c=..,md5=.." or one line per hash).

    Malformed or unknown items are ignored. Two different valid values for the same hash mean
    we cannot tell which is right, so that hash becomes unusable (None) rather than trusted.
    """
    lengths = {"md5": 16, "crc32c": 4}
    found: dict[str, bytes] = {}
    conflicting: set[str] = set()
    for header_value in values:
        for item in header_value.split(","):
            # partition at the first "=": base64 padding also uses "="
            name, sep, value = item.strip().partition("=")
            name = name.strip().lower()
            if not sep or name not in lengths:
                continue
            raw = _decode_b64(value.strip(), lengths[name])
            if raw is None:
                continue
            if name in found and found[name] != raw:
                conflicting.add(name)
            found.setdefault(name, raw)

    def usable(name: str) -> str | None:
        if name in conflicting or name not in found:
            return None
        return base64.b64encode(found[name]).decode("ascii")

    return GoogHash(md5_b64=usable("md5"), crc32c_b64=usable("crc32c"))


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


def crc32c_is_native() -> bool:
    """Whether google_crc32c uses its C extension (the pure-Python fallback is ~100x slower)."""
    return bool(google_crc32c.implementation == "c")


class StreamHasher:
    """Hashes an object as its bytes arrive, in chunks of any size.

    Chunks are not aligned with multipart parts; they are split with memoryview slices so
    nothing is copied for MD5. hashlib releases the GIL on large buffers, so hashing can run
    in a worker thread alongside the event loop.
    """

    def __init__(self, md5: bool = True, crc32c: bool = False, part_size: int | None = None):
        if part_size is not None and part_size <= 0:
            raise ValueError(f"part size must be positive, got {part_size}")
        if crc32c and not crc32c_is_native():
            raise ConfigurationError(
                "google-crc32c is running its pure-Python fallback, too slow to verify GCS "
                "objects; reinstall google-crc32c with its C extension"
            )
        self._size = 0
        self._md5: _Hash | None = hashlib.md5(usedforsecurity=False) if md5 else None
        self._crc32c: int | None = 0 if crc32c else None
        self._part_size = part_size
        # Multipart state: the running MD5 of the closed parts' binary digests (no list grows
        # with the part count), the open part's MD5 and how full it is.
        self._parts_md5: _Hash | None = None
        self._part: _Hash | None = None
        self._parts_closed = 0
        self._part_filled = 0
        if part_size is not None:
            self._parts_md5 = hashlib.md5(usedforsecurity=False)
            self._part = hashlib.md5(usedforsecurity=False)

    @property
    def bytes_hashed(self) -> int:
        return self._size

    @property
    def part_size(self) -> int | None:
        return self._part_size

    @property
    def computes(self) -> frozenset[str]:
        """Which digests this hasher produces: a subset of {"md5", "crc32c", "multipart"}."""
        names: set[str] = set()
        if self._md5 is not None:
            names.add("md5")
        if self._crc32c is not None:
            names.add("crc32c")
        if self._part_size is not None:
            names.add("multipart")
        return frozenset(names)

    def update(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data)
        if view.ndim != 1 or view.itemsize != 1:
            view = view.cast("B")
        length = view.nbytes
        if length == 0:
            return
        self._size += length
        if self._md5 is not None:
            self._md5.update(view)
        if self._crc32c is not None:
            # google_crc32c only accepts bytes (not memoryview or bytearray), and releases the
            # GIL only for bytes; the copy costs far less than the CRC of a composite object.
            self._crc32c = google_crc32c.extend(
                self._crc32c, data if isinstance(data, bytes) else view.tobytes()
            )
        if self._part_size is not None:
            self._update_parts(view)

    def _update_parts(self, view: memoryview) -> None:
        assert self._part is not None
        assert self._part_size is not None
        while view.nbytes:
            # A full part is closed lazily, when more data arrives: data ending exactly on a
            # part boundary must not produce an extra empty part.
            if self._part_filled == self._part_size:
                self._close_part()
            take = min(self._part_size - self._part_filled, view.nbytes)
            self._part.update(view[:take])
            self._part_filled += take
            view = view[take:]

    def _close_part(self) -> None:
        assert self._parts_md5 is not None
        assert self._part is not None
        self._parts_md5.update(self._part.digest())
        self._parts_closed += 1
        self._part = hashlib.md5(usedforsecurity=False)
        self._part_filled = 0

    def _multipart_etag(self) -> str | None:
        if self._parts_md5 is None or self._part is None:
            return None
        # The open part (possibly the one empty part of an empty object) is the last part;
        # copies keep digests() side-effect free so it may be called mid-stream.
        final = self._parts_md5.copy()
        final.update(self._part.digest())
        return f"{final.hexdigest()}-{self._parts_closed + 1}"

    def digests(self) -> Digests:
        crc32c_b64 = None
        if self._crc32c is not None:
            crc32c_b64 = base64.b64encode(self._crc32c.to_bytes(4, "big")).decode("ascii")
        return Digests(
            size=self._size,
            md5_hex=self._md5.hexdigest() if self._md5 is not None else None,
            crc32c_b64=crc32c_b64,
            multipart_etag=self._multipart_etag(),
            part_size=self._part_size,
        )


def _is_composite(goog: GoogHash | None, expected: Expected | None = None) -> bool:
    # GCS gives composite objects a crc32c but no md5, and their ETag is not an MD5 even when
    # it looks like one (GCS says to assume nothing about it). An ETag from an S3 listing
    # describes the bytes whatever GCS says.
    if expected is not None and expected.etag_from_s3:
        return False
    return goog is not None and goog.md5_b64 is None and goog.crc32c_b64 is not None


def _b64_to_hex(value: str) -> str:
    return base64.b64decode(value).hex()


def _mib(size: int) -> str:
    return f"{size // MIB} MiB" if size and size % MIB == 0 else f"{size}-byte"


def hashers_needed(
    expected: Expected, goog: GoogHash | None, part_size: int | None
) -> StreamHasher:
    """The cheapest hasher whose digests let `verdict` use the strongest available check.

    ``part_size`` is the multipart part size when known (from config, or a HEAD with
    partNumber=1); when None or inconsistent with the ETag's part count it is guessed.
    """
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
    if goog is not None and goog.crc32c_b64 is not None:
        return StreamHasher(md5=False, crc32c=True)
    return StreamHasher(md5=False)


@dataclass(frozen=True)
class _Check:
    kind: VerdictKind
    label: str
    expected: str
    got: str | None
    detail: str = ""


def _checks(expected: Expected, digests: Digests, goog: GoogHash | None) -> list[_Check]:
    """Every check the server's promises allow, strongest first (got=None: not hashed)."""
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
    if goog is not None and goog.md5_b64 is not None:
        checks.append(
            _Check("md5", "md5 (x-goog-hash)", _b64_to_hex(goog.md5_b64), digests.md5_hex)
        )
    if goog is not None and goog.crc32c_b64 is not None:
        checks.append(_Check("crc32c", "crc32c (x-goog-hash)", goog.crc32c_b64, digests.crc32c_b64))
    return checks


def verdict(expected: Expected, digests: Digests, goog: GoogHash | None = None) -> Verdict:
    """Judge one object: size first, then every check we hashed for; the strongest names it.

    Every check with both sides present must pass, so an md5 ETag and a GCS md5 must both
    agree with the bytes. A promised check we did not hash for is named in ``reason`` so a
    weaker verdict is never silent.
    """
    if digests.size != expected.size:
        return Verdict(
            ok=False,
            kind="size-only",
            checksum="",
            reason=f"size mismatch: expected {expected.size} bytes, got {digests.size} bytes",
        )
    checks = _checks(expected, digests, goog)
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


def _impossible_multipart(expected: Expected, goog: GoogHash | None) -> str | None:
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


def hash_file(path: Path, hasher: StreamHasher, chunk_size: int = 8 << 20) -> Digests:
    """Hash a file already on disk (a restart re-verifies files without a "done" row)."""
    if hasher.bytes_hashed:
        raise ValueError("hash_file needs a fresh StreamHasher")
    with path.open("rb", buffering=0) as file:
        # read() returns bytes, which google_crc32c can hash with the GIL released.
        while chunk := file.read(chunk_size):
            hasher.update(chunk)
    return hasher.digests()
