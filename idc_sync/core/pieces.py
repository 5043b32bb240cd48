"""Checksums of one object hashed in independent pieces and combined in order, so the ranges
of a large object are hashed on the threads that receive them, from the receive buffer,
with no read-back of the file: CRCs by polynomial arithmetic (what zlib's crc32_combine
does, for any reflected CRC), a multipart ETag from the MD5s of its parts (ranges aligned
to the part size keep every part inside one range). Pure computation.

A plain MD5 or SHA-256 cannot be split; those keep the in-order follower of net/ranged.py.
Combining costs a few hundred microseconds per range in Python (some 25 polynomial
products for a range of tens of MiB), nothing next to the range's own hashing."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

from idc_sync.core.hashing import Buffer, Digests, StreamHasher, crc_b64, crc_function

if TYPE_CHECKING:
    from hashlib import _Hash


@dataclass(frozen=True, slots=True)
class Crc:
    """A reflected CRC with all-ones start and final XOR (CRC-32, CRC-32C, CRC-64/NVME)."""

    name: str
    width: int  # bits
    poly: int  # the polynomial, bit-reflected

    @property
    def top(self) -> int:
        return 1 << (self.width - 1)  # x^0 in reflected order

    def multiply(self, a: int, b: int) -> int:
        """a(x) * b(x) modulo the polynomial (reflected bit order)."""
        m, product = self.top, 0
        while m:
            if a & m:
                product ^= b
            m >>= 1
            b = (b >> 1) ^ self.poly if b & 1 else b >> 1
        return product

    def shift(self, nbytes: int) -> int:
        """x^(8 * nbytes) modulo the polynomial, by repeated squaring."""
        result, square = self.top, self.top >> 8  # x^0, x^8
        while nbytes:
            if nbytes & 1:
                result = self.multiply(square, result)
            square = self.multiply(square, square)
            nbytes >>= 1
        return result

    def combine(self, first: int, second: int, second_length: int) -> int:
        """The CRC of A + B from CRC(A), CRC(B) and B's length."""
        return self.multiply(self.shift(second_length), first) ^ second


CRCS = {
    "crc32": Crc("crc32", 32, 0xEDB88320),
    "crc32c": Crc("crc32c", 32, 0x82F63B78),
    "crc64nvme": Crc("crc64nvme", 64, 0x9A6C9329AC4BC9B5),
}


def splittable(hasher: StreamHasher) -> bool:
    """Whether what ``hasher`` computes can be computed in pieces and combined."""
    computes = hasher.computes
    return bool(computes) and computes <= {*CRCS, "multipart"}


def aligned_range(range_bytes: int, part_size: int | None) -> int:
    """A range size near ``range_bytes`` holding whole multipart parts."""
    if part_size is None:
        return range_bytes
    return part_size * max(1, round(range_bytes / part_size))


class PieceHasher:
    """Hashes one piece, ``[start, ...)`` of an object, as ``hasher`` would the whole."""

    def __init__(self, hasher: StreamHasher, start: int) -> None:
        names = hasher.computes
        self.crcs = {name: 0 for name in CRCS if name in names}
        self._crc_of = {name: crc_function(name) for name in self.crcs}
        self.part_size = hasher.part_size if "multipart" in names else None
        if self.part_size is not None and start % self.part_size:
            raise ValueError(f"piece at {start} is not aligned to {self.part_size}-byte parts")
        self.length = 0
        self.parts: list[bytes] = []  # MD5s of the parts closed in this piece
        self._part: _Hash | None = None
        self._filled = 0

    def update(self, data: Buffer) -> None:
        view = memoryview(data).cast("B")
        self.length += view.nbytes
        for name, value in self.crcs.items():
            self.crcs[name] = self._crc_of[name](view, value)
        if self.part_size is not None:
            self._parts(view)

    def _parts(self, view: memoryview) -> None:
        assert self.part_size is not None
        while view.nbytes:
            if self._part is None:
                self._part, self._filled = hashlib.md5(usedforsecurity=False), 0
            take = min(self.part_size - self._filled, view.nbytes)
            self._part.update(view[:take])
            self._filled += take
            view = view[take:]
            if self._filled == self.part_size:
                self.parts.append(self._part.digest())
                self._part = None

    def finish(self) -> None:
        """Close the piece's last, short part (the object's last part)."""
        if self._part is not None:
            self.parts.append(self._part.digest())
            self._part = None


def combine(pieces: list[PieceHasher], hasher: StreamHasher) -> Digests:
    """The digests ``hasher`` would give the whole object, from its pieces in order."""
    size = sum(piece.length for piece in pieces)
    found: dict[str, str] = {}
    for name, crc in CRCS.items():
        if name not in hasher.computes:
            continue
        value = pieces[0].crcs[name]
        for piece in pieces[1:]:
            value = crc.combine(value, piece.crcs[name], piece.length)
        found[f"{name}_b64"] = crc_b64(value, crc.width // 8)
    etag = None
    if "multipart" in hasher.computes:
        for piece in pieces:
            piece.finish()
        parts = [digest for piece in pieces for digest in piece.parts]
        etag = f"{hashlib.md5(b''.join(parts), usedforsecurity=False).hexdigest()}-{len(parts)}"
    return Digests(
        size=size, md5_hex=None, crc32c_b64=found.get("crc32c_b64"), multipart_etag=etag,
        part_size=hasher.part_size, crc64nvme_b64=found.get("crc64nvme_b64"),
        crc32_b64=found.get("crc32_b64"),
    )  # fmt: skip
