"""Hashing an object's bytes as they arrive, in chunks of any size: MD5, crc32c and the
multipart ETag (the MD5 of each part's MD5) at once, without copies. Pure computation;
``hash_file`` re-reads a file on disk (a restart re-verifies files without a "done" row)."""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import google_crc32c

from idc_sync.core.errors import ConfigurationError

if TYPE_CHECKING:
    from hashlib import _Hash


@dataclass(frozen=True)
class Digests:
    """What we computed over the bytes we received (or re-read from disk)."""

    size: int
    md5_hex: str | None
    crc32c_b64: str | None
    multipart_etag: str | None
    # The part size behind multipart_etag, kept so a mismatch can say what was assumed.
    part_size: int | None = None


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


def hash_file(path: Path, hasher: StreamHasher, chunk_size: int = 8 << 20) -> Digests:
    """Hash a file already on disk (a restart re-verifies files without a "done" row)."""
    if hasher.bytes_hashed:
        raise ValueError("hash_file needs a fresh StreamHasher")
    with path.open("rb", buffering=0) as file:
        # read() returns bytes, which google_crc32c can hash with the GIL released.
        while chunk := file.read(chunk_size):
            hasher.update(chunk)
    return hasher.digests()
