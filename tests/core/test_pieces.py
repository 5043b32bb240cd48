"""Tests of idc_sync.core.pieces: checksums hashed in independent pieces and combined equal
those of the whole object (checked against the one-pass hashers and zlib/google-crc32c)."""

from __future__ import annotations

import base64
import itertools
import random
import subprocess
import sys
import zlib
from collections.abc import Callable
from functools import partial

import google_crc32c
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from idc_sync.core.hashing import Digests, StreamHasher
from idc_sync.core.pieces import CRCS, PieceHasher, aligned_range, combine, splittable


def hash_cut(data: bytes, hasher: Callable[[], StreamHasher], cuts: list[int]) -> Digests:
    bounds = [0, *sorted(set(cuts)), len(data)]
    pieces = []
    for start, end in itertools.pairwise(bounds):
        if start == end:
            continue
        piece = PieceHasher(hasher(), start)
        piece.update(data[start : (start + end) // 2])
        piece.update(bytearray(data[(start + end) // 2 : end]))
        pieces.append(piece)
    return combine(pieces, hasher())


@settings(max_examples=60)
@given(
    st.binary(min_size=1, max_size=3000),
    st.lists(st.integers(min_value=1, max_value=2999), max_size=6),
    st.sampled_from(["crc32", "crc32c", "crc64nvme"]),
)
def test_a_crc_combined_from_pieces_is_the_crc_of_the_whole(
    data: bytes, cuts: list[int], name: str
) -> None:
    cuts = [cut for cut in cuts if cut < len(data)]
    hasher = partial(StreamHasher, md5=False, **{name: True})
    whole = hasher()
    whole.update(data)
    assert hash_cut(data, hasher, cuts) == whole.digests()


def test_combined_crcs_agree_with_zlib_and_google_crc32c() -> None:
    data = random.Random(5).randbytes(1_000_003)
    hasher = partial(StreamHasher, md5=False, crc32=True, crc32c=True)
    got = hash_cut(data, hasher, [1, 333_333, 999_999])
    crc32 = zlib.crc32(data).to_bytes(4, "big")
    crc32c = google_crc32c.value(data).to_bytes(4, "big")
    assert got.crc32_b64 == base64.b64encode(crc32).decode()
    assert got.crc32c_b64 == base64.b64encode(crc32c).decode()


@pytest.mark.parametrize("part_size", [1000, 4096])
def test_a_multipart_etag_combined_from_aligned_pieces_is_the_whole_objects(part_size: int) -> None:
    data = random.Random(part_size).randbytes(5 * part_size * 3 + 77)
    hasher = partial(StreamHasher, md5=False, part_size=part_size, crc64nvme=True)
    whole = hasher()
    whole.update(data)
    range_size = aligned_range(3 * part_size + 5, part_size)
    assert range_size == 3 * part_size
    cuts = list(range(range_size, len(data), range_size))
    assert hash_cut(data, hasher, cuts) == whole.digests()


def test_a_piece_that_splits_a_part_is_refused() -> None:
    with pytest.raises(ValueError, match="not aligned"):
        PieceHasher(StreamHasher(md5=False, part_size=1000), 1500)


def test_only_crcs_and_multipart_etags_split() -> None:
    assert splittable(StreamHasher(md5=False, crc64nvme=True))
    assert splittable(StreamHasher(md5=False, part_size=8 << 20))
    assert not splittable(StreamHasher())  # a plain MD5 is one sequence
    assert not splittable(StreamHasher(md5=False, sha256=True))
    assert not splittable(StreamHasher(md5=True, crc32c=True))
    assert not splittable(StreamHasher(md5=False))  # nothing to hash: nothing to split
    assert set(CRCS) == {"crc32", "crc32c", "crc64nvme"}


def test_awscrt_is_imported_only_when_a_crc_is_asked_for() -> None:
    # awscrt is ~50 ms of every process's start-up; an MD5 run must not pay it
    probe = (
        "import sys, idc_sync.cli.main, idc_sync.run.worker\n"
        "from idc_sync.core.hashing import StreamHasher\n"
        "StreamHasher(md5=True).update(b'x')\n"
        "print('awscrt' in sys.modules)\n"
        "StreamHasher(md5=False, crc64nvme=True).update(b'x')\n"
        "print('awscrt' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    ).stdout.split()
    assert out == ["False", "True"]
