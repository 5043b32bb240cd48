"""Tests of idc_sync.core.verify: ETag and x-goog-hash parsing, streaming hashes checked against
independent calculations and published CRC32C vectors, and the verdict rules."""

from __future__ import annotations

import array
import base64
import hashlib
import itertools
import random
from pathlib import Path

import google_crc32c
import pytest
from hypothesis import given
from hypothesis import strategies as st

from idc_sync.core.hashing import Digests, StreamHasher, hash_file
from idc_sync.core.verify import (
    COMMON_PART_SIZES,
    MIB,
    Expected,
    Published,
    Verdict,
    VerdictKind,
    expectation_from_listing,
    guess_part_size,
    hashers_needed,
    multipart_etag_possible,
    multipart_part_size_valid,
    parse_amz_checksums,
    parse_goog_hash,
    part_count,
    published_checksums,
    verdict,
)


def reference_multipart_etag(data: bytes, part_size: int) -> str:
    """The S3 multipart ETag, computed the plain way: MD5 of the concatenated part MD5s."""
    parts = [data[i : i + part_size] for i in range(0, len(data), part_size)] or [b""]
    joined = b"".join(hashlib.md5(part).digest() for part in parts)
    return f"{hashlib.md5(joined).hexdigest()}-{len(parts)}"


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def md5_b64(data: bytes) -> str:
    return b64(hashlib.md5(data).digest())


def hash_all(hasher: StreamHasher, data: bytes) -> Digests:
    hasher.update(data)
    return hasher.digests()


def payload(size: int, seed: int = 25) -> bytes:
    return random.Random(seed).randbytes(size)


def passed(kind: VerdictKind, checksum: str) -> Verdict:
    return Verdict(ok=True, kind=kind, checksum=checksum, reason=None)


# --- expectation_from_listing ---------------------------------------------------------------


def test_plain_md5_etag_is_the_md5_whatever_its_quotes_and_case() -> None:
    md5 = hashlib.md5(b"instance").hexdigest()
    expected = expectation_from_listing(f' "{md5.upper()}" ', 8)
    assert expected == Expected(size=8, etag=md5, md5_hex=md5, multipart_parts=None)


def test_multipart_etag_gives_the_part_count_and_no_md5() -> None:
    etag = reference_multipart_etag(payload(100), 30)
    expected = expectation_from_listing(f'"{etag.upper()}"', 100)
    assert expected.multipart_parts == 4
    assert expected.md5_hex is None
    assert expected.etag == etag


@pytest.mark.parametrize(
    "etag",
    [
        "",
        "CJ3Qm6j7x/ECEAE=",  # a GCS-style opaque ETag
        "0123456789abcdef0123456789abcde",  # 31 hex digits
        "0123456789abcdef0123456789abcdef0",  # 33 hex digits
        "0123456789abcdef0123456789abcdeg",
        "0123456789abcdef0123456789abcdef-0",  # no upload has zero parts
        "0123456789abcdef0123456789abcdef-10001",  # S3 allows at most 10,000 parts
        "0123456789abcdef0123456789abcdef-",
        "0123456789abcdef0123456789abcdef-01",
        'W/"0123456789abcdef0123456789abcdef"',  # a weak ETag is no content hash
    ],
)
def test_etag_that_is_neither_md5_nor_multipart_promises_nothing(etag: str) -> None:
    expected = expectation_from_listing(etag, 10)
    assert expected.md5_hex is None
    assert expected.multipart_parts is None


def test_multipart_etag_with_the_s3_maximum_of_parts_is_accepted() -> None:
    expected = expectation_from_listing("0123456789abcdef0123456789abcdef-10000", 10)
    assert expected.multipart_parts == 10_000


# --- parse_goog_hash -----------------------------------------------------------------------


HELLO = b"hello world"
HELLO_CRC32C = b64(bytes.fromhex("c99465aa"))


def test_goog_hash_on_one_header_line() -> None:
    goog = parse_goog_hash([f"crc32c={HELLO_CRC32C},md5={md5_b64(HELLO)}"])
    assert goog == Published(md5_b64=md5_b64(HELLO), crc32c_b64=HELLO_CRC32C)


def test_goog_hash_on_two_header_lines_equals_one_line() -> None:
    two_lines = parse_goog_hash([f"crc32c={HELLO_CRC32C}", f"md5={md5_b64(HELLO)}"])
    one_line = parse_goog_hash([f" md5={md5_b64(HELLO)} , crc32c={HELLO_CRC32C} "])
    assert two_lines == one_line == Published(md5_b64(HELLO), HELLO_CRC32C)


def test_composite_object_has_crc32c_and_no_md5() -> None:
    assert parse_goog_hash([f"crc32c={HELLO_CRC32C}"]) == Published(None, HELLO_CRC32C)


def test_no_header_gives_no_hashes() -> None:
    assert parse_goog_hash([]) == Published(None, None)


@pytest.mark.parametrize(
    "junk",
    [
        "md5",
        "md5=",
        "md5=not base64!",
        f"md5={b64(b'short')}",  # decodes, but not 16 bytes
        f"crc32c={b64(b'12345')}",  # 5 bytes
        "crc32c=n03x6A",  # missing padding
        "sha256=abcd",
        "=abcd",
        "",
    ],
)
def test_malformed_goog_hash_items_are_ignored(junk: str) -> None:
    goog = parse_goog_hash([f"{junk},crc32c={HELLO_CRC32C}", junk, f"md5={md5_b64(HELLO)}"])
    assert goog == Published(md5_b64(HELLO), HELLO_CRC32C)


def test_conflicting_duplicate_makes_that_hash_unusable_only() -> None:
    other = md5_b64(b"something else")
    goog = parse_goog_hash([f"crc32c={HELLO_CRC32C},md5={md5_b64(HELLO)}", f"md5={other}"])
    assert goog == Published(md5_b64=None, crc32c_b64=HELLO_CRC32C)


def test_identical_duplicate_is_harmless() -> None:
    goog = parse_goog_hash([f"md5={md5_b64(HELLO)}", f"md5={md5_b64(HELLO)},MD5={md5_b64(HELLO)}"])
    assert goog.md5_b64 == md5_b64(HELLO)


@given(st.binary(min_size=16, max_size=16), st.binary(min_size=4, max_size=4), st.booleans())
def test_goog_hash_round_trips_any_digest_in_either_form(
    md5: bytes, crc: bytes, one_line: bool
) -> None:
    items = [f"crc32c={b64(crc)}", f"md5={b64(md5)}"]
    goog = parse_goog_hash([",".join(items)] if one_line else items)
    assert goog == Published(b64(md5), b64(crc))


# --- CRC32C ---------------------------------------------------------------------------------


@given(st.binary(max_size=5000), st.integers(min_value=1, max_value=700))
def test_crc32c_in_chunks_agrees_with_google_crc32c(data: bytes, chunk: int) -> None:
    hasher = StreamHasher(md5=False, crc32c=True)
    for start in range(0, len(data), chunk):
        hasher.update(bytearray(data[start : start + chunk]))
    assert hasher.digests().crc32c_b64 == b64(google_crc32c.value(data).to_bytes(4, "big"))


@pytest.mark.parametrize(
    ("flag", "field", "expected"),
    [
        # the catalogued check values of each CRC over "123456789"
        ("crc64nvme", "crc64nvme_b64", b64(bytes.fromhex("ae8b14860a799888"))),
        ("crc32", "crc32_b64", b64(bytes.fromhex("cbf43926"))),
        ("sha256", "sha256_b64", b64(hashlib.sha256(b"123456789").digest())),
    ],
)
def test_s3_checksums_match_their_check_values_in_s3_form(
    flag: str, field: str, expected: str
) -> None:
    hasher = StreamHasher(md5=False, **{flag: True})
    hasher.update(b"1234")
    hasher.update(memoryview(bytearray(b"xx56789"))[2:])
    digests = hasher.digests()
    assert getattr(digests, field) == expected
    assert digests.md5_hex is None
    assert hasher.computes == {flag}


@pytest.mark.parametrize(
    ("data", "crc"),
    [
        (b"123456789", 0xE3069283),  # the standard check value of CRC-32C
        (bytes(32), 0x8A9136AA),  # RFC 3720 B.4: 32 bytes of zeros
        (b"\xff" * 32, 0x62A8AB43),  # RFC 3720 B.4: 32 bytes of ones
        (bytes(range(32)), 0x46DD794E),  # RFC 3720 B.4: incrementing bytes
        (b"", 0),
    ],
)
def test_crc32c_matches_known_vectors_in_gcs_form(data: bytes, crc: int) -> None:
    digests = hash_all(StreamHasher(md5=False, crc32c=True), data)
    assert digests.crc32c_b64 == b64(crc.to_bytes(4, "big"))
    assert digests.md5_hex is None


def test_crc32c_accepts_bytearray_and_memoryview_chunks() -> None:
    hasher = StreamHasher(md5=False, crc32c=True)
    hasher.update(bytearray(b"1234"))
    hasher.update(memoryview(b"xx56789")[2:])
    assert hasher.digests().crc32c_b64 == b64(bytes.fromhex("e3069283"))


def test_chunk_with_wide_items_is_hashed_as_its_bytes() -> None:
    words = array.array("I", range(1000))
    digests = hash_all(StreamHasher(crc32c=True, part_size=100), memoryview(words))  # type: ignore[arg-type]
    raw = words.tobytes()
    assert digests.size == len(raw)
    assert digests.md5_hex == hashlib.md5(raw).hexdigest()
    assert digests.multipart_etag == reference_multipart_etag(raw, 100)
    assert digests.crc32c_b64 == hash_all(StreamHasher(md5=False, crc32c=True), raw).crc32c_b64


# --- multipart ETags --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "part_size", "parts"),
    [(0, 5, 1), (1, 5, 1), (5, 5, 1), (6, 5, 2), (10, 5, 2), (11, 5, 3)],
)
def test_multipart_etag_matches_an_independent_calculation(
    size: int, part_size: int, parts: int
) -> None:
    data = payload(size)
    digests = hash_all(StreamHasher(md5=False, part_size=part_size), data)
    assert digests.multipart_etag == reference_multipart_etag(data, part_size)
    assert digests.multipart_etag is not None
    assert digests.multipart_etag.endswith(f"-{parts}")
    assert part_count(size, part_size) == parts


def test_multipart_etag_of_real_sized_parts() -> None:
    data = payload(20 * MIB + 12345)
    hasher = StreamHasher(md5=True, part_size=8 * MIB)
    # network-like chunks that straddle part boundaries
    view = memoryview(data)
    for start in range(0, len(data), 1_000_003):
        hasher.update(view[start : start + 1_000_003])
    digests = hasher.digests()
    assert digests.multipart_etag == reference_multipart_etag(data, 8 * MIB)
    assert digests.md5_hex == hashlib.md5(data).hexdigest()
    assert digests.size == len(data)


@given(
    data=st.binary(max_size=600),
    cuts=st.lists(st.integers(min_value=0, max_value=600), max_size=12),
    part_size=st.integers(min_value=1, max_value=64),
)
def test_any_chunking_of_the_same_bytes_gives_the_same_digests(
    data: bytes, cuts: list[int], part_size: int
) -> None:
    whole = hash_all(StreamHasher(md5=True, crc32c=True, part_size=part_size), data)
    chunked = StreamHasher(md5=True, crc32c=True, part_size=part_size)
    bounds = sorted({0, len(data), *(cut for cut in cuts if cut <= len(data))})
    for start, end in itertools.pairwise(bounds):
        chunked.update(memoryview(data)[start:end] if start % 2 else data[start:end])
    assert chunked.digests() == whole
    assert whole.multipart_etag == reference_multipart_etag(data, part_size)
    assert whole.md5_hex == hashlib.md5(data).hexdigest()


def test_digests_mid_stream_do_not_disturb_the_stream() -> None:
    data = payload(1000)
    hasher = StreamHasher(crc32c=True, part_size=100)
    hasher.update(data[:300])
    first = hasher.digests()
    assert hasher.digests() == first
    assert first.multipart_etag == reference_multipart_etag(data[:300], 100)
    hasher.update(data[300:])
    assert hasher.digests() == hash_all(StreamHasher(crc32c=True, part_size=100), data)


def test_part_size_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        StreamHasher(part_size=0)
    with pytest.raises(ValueError, match="positive"):
        part_count(10, 0)


def test_part_size_validity_follows_the_part_count() -> None:
    assert multipart_part_size_valid(16 * MIB, 2, 8 * MIB)
    assert not multipart_part_size_valid(16 * MIB, 3, 8 * MIB)
    assert multipart_part_size_valid(16 * MIB + 1, 3, 8 * MIB)
    assert not multipart_part_size_valid(10, 0, 5)
    assert not multipart_part_size_valid(10, 2, 0)


def test_part_size_guess_is_exact_for_one_part() -> None:
    assert guess_part_size(123_456_789, 1) == 123_456_789


def test_part_size_guess_prefers_the_aws_cli_default() -> None:
    # 125 MB, a typical slide microscopy instance, uploaded by aws-cli in 8 MiB parts
    assert guess_part_size(125_000_000, 15) == 8 * MIB


def test_part_size_guess_falls_back_to_the_smallest_whole_mib() -> None:
    # 7 parts, 27 MiB each but the last: no common size gives 7 parts for this size, and
    # every whole MiB from 24 to 27 does, so the guess can be wrong (the caller should ask
    # the server for part 1's size when it can).
    size = 6 * 27 * MIB + 1
    assert not any(multipart_part_size_valid(size, 7, common) for common in COMMON_PART_SIZES)
    assert guess_part_size(size, 7) == 24 * MIB


def test_part_size_guess_gives_up_when_no_single_size_fits() -> None:
    # 3 parts for 3 bytes cannot be whole MiB parts (parts of varying size, or tiny ones)
    assert guess_part_size(3, 3) is None


@given(st.integers(min_value=0, max_value=10**12), st.integers(min_value=1, max_value=10_000))
def test_a_guessed_part_size_always_reproduces_the_part_count(size: int, parts: int) -> None:
    guess = guess_part_size(size, parts)
    if guess is not None:
        assert multipart_part_size_valid(size, parts, guess)


# --- hashers_needed and verdict ---------------------------------------------------------------


def test_md5_etag_needs_only_md5_when_the_operator_insists_on_md5() -> None:
    data = payload(1000)
    expected = expectation_from_listing(hashlib.md5(data).hexdigest(), len(data))
    goog = Published(md5_b64(data), HELLO_CRC32C)
    hasher = hashers_needed(expected, goog, part_size=None, mode="md5")
    assert hasher.computes == {"md5"}
    result = verdict(expected, hash_all(hasher, data), goog, mode="md5")
    assert result == passed("md5", hashlib.md5(data).hexdigest())


def test_md5_etag_alone_needs_only_md5() -> None:
    data = payload(1000)
    expected = expectation_from_listing(hashlib.md5(data).hexdigest(), len(data))
    hasher = hashers_needed(expected, None, part_size=None)
    assert hasher.computes == {"md5"}
    assert verdict(expected, hash_all(hasher, data)) == passed("md5", hashlib.md5(data).hexdigest())


def test_md5_mismatch_names_expected_and_got() -> None:
    data = payload(1000)
    expected = expectation_from_listing(hashlib.md5(data).hexdigest(), len(data))
    damaged = bytes([data[0] ^ 1]) + data[1:]
    result = verdict(expected, hash_all(hashers_needed(expected, None, None), damaged))
    assert not result.ok
    assert result.kind == "md5"
    assert result.reason is not None
    assert hashlib.md5(data).hexdigest() in result.reason
    assert hashlib.md5(damaged).hexdigest() in result.reason
    assert result.checksum == hashlib.md5(damaged).hexdigest()


def test_size_mismatch_fails_before_any_hash_and_states_both_sizes() -> None:
    data = payload(1000)
    expected = expectation_from_listing(hashlib.md5(data).hexdigest(), 1001)
    result = verdict(expected, hash_all(StreamHasher(), data))
    assert not result.ok
    assert result.reason is not None
    assert "1001" in result.reason
    assert "1000" in result.reason


def test_etag_md5_and_gcs_md5_must_both_agree() -> None:
    data = payload(1000)
    expected = expectation_from_listing(hashlib.md5(data).hexdigest(), len(data))
    contradicting = Published(md5_b64(b"other bytes"), None)
    result = verdict(
        expected, hash_all(hashers_needed(expected, contradicting, None), data), contradicting
    )
    assert not result.ok
    assert result.reason is not None
    assert "x-goog-hash" in result.reason


def test_multipart_etag_is_verified_with_a_given_part_size() -> None:
    data = payload(2500)
    expected = expectation_from_listing(reference_multipart_etag(data, 1000), len(data))
    hasher = hashers_needed(expected, None, part_size=1000)
    assert hasher.computes == {"multipart"}
    result = verdict(expected, hash_all(hasher, data))
    assert result == passed("multipart-md5", reference_multipart_etag(data, 1000))


def test_multipart_etag_of_one_part_needs_no_part_size() -> None:
    data = payload(3000)
    expected = expectation_from_listing(reference_multipart_etag(data, 3000), len(data))
    hasher = hashers_needed(expected, None, part_size=None)
    assert verdict(expected, hash_all(hasher, data)).kind == "multipart-md5"


def test_multipart_mismatch_names_the_part_size_used() -> None:
    data = payload(2500)
    expected = expectation_from_listing(reference_multipart_etag(data, 1000), len(data))
    damaged = data[:-1] + bytes([data[-1] ^ 0x80])
    result = verdict(expected, hash_all(hashers_needed(expected, None, 1000), damaged))
    assert not result.ok
    assert result.kind == "multipart-md5"
    assert result.reason is not None
    assert "1000-byte parts" in result.reason
    assert expected.etag in result.reason


# A real multipart upload with an unusual part size: 7 parts of 5.9 MiB but the last. No
# common uploader size and no whole MiB gives 7 parts for this size.
ODD_PART = int(5.9 * MIB)
ODD_SIZE = 6 * ODD_PART + 1000


def test_multipart_without_a_usable_part_size_is_size_only_and_says_so() -> None:
    data = payload(ODD_SIZE)
    expected = expectation_from_listing(reference_multipart_etag(data, ODD_PART), len(data))
    assert expected.multipart_parts == 7
    hasher = hashers_needed(expected, None, part_size=8 * MIB)  # 8 MiB gives 5 parts
    assert hasher.computes == frozenset()
    result = verdict(expected, hash_all(hasher, data))
    assert result.ok
    assert result.kind == "size-only"
    assert result.checksum == ""
    assert result.reason == "multipart ETag not checked: part size unknown"


def test_multipart_hashed_with_the_wrong_part_count_is_not_called_corrupt() -> None:
    data = payload(ODD_SIZE)
    expected = expectation_from_listing(reference_multipart_etag(data, ODD_PART), len(data))
    result = verdict(expected, hash_all(StreamHasher(md5=False, part_size=8 * MIB), data))
    assert result.ok
    assert result.kind == "size-only"
    assert result.reason is not None
    assert "do not give 7" in result.reason


def test_a_multipart_etag_the_size_cannot_have_is_refused_when_nothing_else_checks() -> None:
    # A 3,000-byte object listed as "<md5>-2": no upload of 3,000 bytes has two parts
    # (every part but the last is at least 5 MiB), so the listing says nothing true about
    # the bytes, and accepting them by size would let flipped bytes in.
    data = payload(3000)
    expected = expectation_from_listing(hashlib.md5(b"other").hexdigest() + "-2", len(data))
    hasher = hashers_needed(expected, None, part_size=len(data))  # HEAD ?partNumber=1
    result = verdict(expected, hash_all(hasher, data))
    assert not result.ok
    assert result.kind == "multipart-md5"
    assert result.reason is not None
    assert "3000 bytes cannot have 2 parts" in result.reason


def test_a_multipart_etag_the_size_cannot_have_defers_to_the_gcs_md5() -> None:
    data = payload(3000)
    expected = expectation_from_listing(hashlib.md5(b"other").hexdigest() + "-2", len(data))
    goog = Published(md5_b64(data), None)
    result = verdict(expected, hash_all(hashers_needed(expected, goog, None), data), goog)
    assert result == Verdict(
        ok=True,
        kind="md5",
        checksum=hashlib.md5(data).hexdigest(),
        reason="multipart ETag not checked: part size unknown",
    )
    flipped = bytes([data[0] ^ 0xFF]) + data[1:]
    assert not verdict(expected, hash_all(hashers_needed(expected, goog, None), flipped), goog).ok


@pytest.mark.parametrize(
    ("size", "parts", "possible"),
    [
        (0, 1, True),
        (3000, 1, True),
        (3000, 2, False),
        (5 * MIB - 1, 2, False),
        (5 * MIB, 2, True),  # a full 5 MiB part and an empty last one
        (125_000_000, 15, True),  # 8 MiB parts
        (10_000 * 5 * MIB, 10_000, True),
        (10**15, 10_001, False),
        (ODD_SIZE, 7, True),
    ],
)
def test_multipart_etag_possible_follows_the_5_mib_minimum_part(
    size: int, parts: int, possible: bool
) -> None:
    assert multipart_etag_possible(size, parts) is possible


@given(
    size=st.integers(min_value=0, max_value=10**11), part_size=st.integers(5 * MIB, 5 * 1024 * MIB)
)
def test_every_real_upload_has_a_possible_part_count(size: int, part_size: int) -> None:
    # whatever part size an uploader picked (S3 allows 5 MiB to 5 GiB), its ETag is possible
    assert multipart_etag_possible(size, part_count(size, part_size)) or (
        part_count(size, part_size) > 10_000
    )


def test_an_s3_listing_md5_holds_even_when_gcs_serves_a_composite_object() -> None:
    # failover: the checksum comes from the S3 listing, the bytes from GCS, which calls the
    # object composite (crc32c only); its crc32c agrees with any bytes it serves
    data = payload(700)
    other = bytes([data[0] ^ 0xFF]) + data[1:]
    md5 = hashlib.md5(data).hexdigest()
    goog_of_other = Published(None, b64(google_crc32c.value(other).to_bytes(4, "big")))
    from_gcs = expectation_from_listing(md5, len(data))
    from_s3 = expectation_from_listing(md5, len(data), from_s3=True)
    assert from_s3.etag_from_s3

    lenient = verdict(from_gcs, hash_all(hashers_needed(from_gcs, goog_of_other, None), other),
                      goog_of_other)  # fmt: skip
    assert lenient.ok  # on GCS alone a composite object's ETag promises nothing
    hasher = hashers_needed(from_s3, goog_of_other, None)
    assert "md5" in hasher.computes
    strict = verdict(from_s3, hash_all(hasher, other), goog_of_other)
    assert not strict.ok
    assert strict.reason is not None
    assert strict.reason.startswith("md5 (ETag) mismatch")
    goog = Published(None, b64(google_crc32c.value(data).to_bytes(4, "big")))
    assert verdict(from_s3, hash_all(hashers_needed(from_s3, goog, None), data), goog) == (
        passed("md5", md5)
    )


def test_gcs_md5_is_used_when_the_etag_promises_nothing_and_md5_is_asked_for() -> None:
    data = payload(700)
    expected = expectation_from_listing("CJ3Qm6j7x/ECEAE=", len(data))
    goog = Published(md5_b64(data), b64(bytes(4)))
    hasher = hashers_needed(expected, goog, None, mode="md5")
    assert hasher.computes == {"md5"}
    assert verdict(expected, hash_all(hasher, data), goog, mode="md5") == passed(
        "md5", hashlib.md5(data).hexdigest()
    )


def test_composite_gcs_object_is_checked_by_crc32c_alone_even_with_an_md5_shaped_etag() -> None:
    data = b"123456789"
    # GCS says to assume nothing about a composite object's ETag, even if it looks like an MD5
    expected = expectation_from_listing("0123456789abcdef0123456789abcdef", len(data))
    goog = parse_goog_hash(["crc32c=4waSgw=="])
    hasher = hashers_needed(expected, goog, None)
    assert hasher.computes == {"crc32c"}
    result = verdict(expected, hash_all(hasher, data), goog)
    assert result == passed("crc32c", "4waSgw==")
    bad = verdict(expected, hash_all(hashers_needed(expected, goog, None), b"123456780"), goog)
    assert not bad.ok
    assert bad.kind == "crc32c"


def test_nothing_promised_is_size_only_without_hashing() -> None:
    expected = expectation_from_listing("opaque", 5)
    hasher = hashers_needed(expected, None, None)
    assert hasher.computes == frozenset()
    assert verdict(expected, hash_all(hasher, b"12345")) == passed("size-only", "")


def test_a_promised_check_that_was_not_hashed_is_named_not_hidden() -> None:
    data = payload(100)
    expected = expectation_from_listing(hashlib.md5(data).hexdigest(), len(data))
    result = verdict(expected, hash_all(StreamHasher(md5=False), data))
    assert result.ok
    assert result.kind == "size-only"
    assert result.reason == "md5 (ETag) not checked"


@given(st.binary(min_size=1, max_size=300), st.data())
def test_any_single_bit_flip_is_caught(data: bytes, draw: st.DataObject) -> None:
    position = draw.draw(st.integers(min_value=0, max_value=len(data) - 1))
    bit = draw.draw(st.integers(min_value=0, max_value=7))
    damaged = bytearray(data)
    damaged[position] ^= 1 << bit
    for etag, goog in [
        (hashlib.md5(data).hexdigest(), None),
        (reference_multipart_etag(data, 64), None),
        ("opaque", Published(md5_b64(data), None)),
        ("opaque", Published(None, hash_all(StreamHasher(False, True), data).crc32c_b64)),
    ]:
        expected = expectation_from_listing(etag, len(data))
        good = verdict(expected, hash_all(hashers_needed(expected, goog, 64), data), goog)
        bad = verdict(expected, hash_all(hashers_needed(expected, goog, 64), bytes(damaged)), goog)
        assert good.ok
        assert good.kind != "size-only"
        assert not bad.ok


# --- hash_file --------------------------------------------------------------------------------


def test_hash_file_equals_streaming_hash(tmp_path: Path) -> None:
    data = payload(3 * 1000 + 17)
    path = tmp_path / "instance.dcm"
    path.write_bytes(data)
    on_disk = hash_file(path, StreamHasher(crc32c=True, part_size=1000), chunk_size=333)
    assert on_disk == hash_all(StreamHasher(crc32c=True, part_size=1000), data)
    assert on_disk.multipart_etag == reference_multipart_etag(data, 1000)


def test_hash_file_of_an_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.dcm"
    path.write_bytes(b"")
    assert hash_file(path, StreamHasher()).md5_hex == hashlib.md5(b"").hexdigest()


def test_hash_file_refuses_a_used_hasher(tmp_path: Path) -> None:
    path = tmp_path / "instance.dcm"
    path.write_bytes(b"data")
    hasher = StreamHasher()
    hasher.update(b"x")
    with pytest.raises(ValueError, match="fresh"):
        hash_file(path, hasher)


# --- published checksums: the cheapest first --------------------------------------------------


def amz_b64(algorithm: str, data: bytes) -> str:
    from tests.support.s3server import amz_checksum

    return amz_checksum(algorithm, data)


def test_every_s3_checksum_header_is_read_and_composite_ones_are_not() -> None:
    data = payload(300)
    headers = [
        ("x-amz-checksum-crc64nvme", amz_b64("CRC64NVME", data)),
        ("x-amz-checksum-crc32c", amz_b64("CRC32C", data)),
        ("x-amz-checksum-crc32", amz_b64("CRC32", data)),
        ("x-amz-checksum-sha256", amz_b64("SHA256", data)),
        ("x-amz-checksum-type", "FULL_OBJECT"),
    ]
    published = parse_amz_checksums(headers)
    assert published == Published(
        crc32c_b64=amz_b64("CRC32C", data), crc64nvme_b64=amz_b64("CRC64NVME", data),
        crc32_b64=amz_b64("CRC32", data), sha256_b64=amz_b64("SHA256", data),
        header="x-amz-checksum",
    )  # fmt: skip
    assert parse_amz_checksums([*headers[:1], ("x-amz-checksum-type", "COMPOSITE")]) is None
    # a checksum of part checksums carries its part count; it is not the bytes' checksum
    assert parse_amz_checksums([("x-amz-checksum-crc32c", f"{amz_b64('CRC32C', data)}-3")]) is None
    assert parse_amz_checksums([("x-amz-checksum-crc32", "not base64!")]) is None
    assert parse_amz_checksums([("etag", '"abc"')]) is None
    twice = [("x-amz-checksum-crc32", amz_b64("CRC32", data)), ("x-amz-checksum-crc32", "AAAAAA==")]
    assert parse_amz_checksums(twice) is None  # two values: neither is trusted


def test_x_goog_hash_wins_over_s3_headers_only_on_a_gcs_answer() -> None:
    goog = published_checksums([("x-goog-hash", f"crc32c={HELLO_CRC32C}")])
    assert goog == Published(crc32c_b64=HELLO_CRC32C)
    assert published_checksums([("content-length", "5")]) is None


@pytest.mark.parametrize(
    ("names", "chosen"),
    [
        (("CRC64NVME", "CRC32C", "CRC32", "SHA256"), "crc64nvme"),
        (("CRC32C", "CRC32", "SHA256"), "crc32c"),
        (("CRC32", "SHA256"), "crc32"),
        (("SHA256",), "sha256"),
    ],
)
def test_the_cheapest_published_checksum_is_hashed_instead_of_the_md5_etag(
    names: tuple[str, ...], chosen: str
) -> None:
    data = payload(5000)
    expected = expectation_from_listing(hashlib.md5(data).hexdigest(), len(data), from_s3=True)
    published = parse_amz_checksums(
        [(f"x-amz-checksum-{name.lower()}", amz_b64(name, data)) for name in names]
    )
    hasher = hashers_needed(expected, published, None)
    assert hasher.computes == {chosen}
    result = verdict(expected, hash_all(hasher, data), published)
    assert result == passed(chosen, amz_b64(chosen.upper(), data))  # type: ignore[arg-type]
    damaged = bytes([data[0] ^ 1]) + data[1:]
    bad = verdict(expected, hash_all(hashers_needed(expected, published, None), damaged), published)
    assert not bad.ok
    assert bad.kind == chosen
    assert bad.reason is not None
    assert bad.reason.startswith(f"{chosen} (x-amz-checksum-{chosen}) mismatch")


def test_gcs_crc32c_is_hashed_instead_of_its_md5_by_default() -> None:
    data = payload(2000)
    expected = expectation_from_listing(hashlib.md5(data).hexdigest(), len(data))
    goog = Published(md5_b64(data), b64(google_crc32c.value(data).to_bytes(4, "big")))
    hasher = hashers_needed(expected, goog, None)
    assert hasher.computes == {"crc32c"}
    assert verdict(expected, hash_all(hasher, data), goog) == passed(
        "crc32c", goog.crc32c_b64 or ""
    )


def test_a_multipart_object_with_a_full_object_crc_needs_no_part_size() -> None:
    data = payload(3000)
    expected = expectation_from_listing(reference_multipart_etag(data, 1000), len(data))
    published = parse_amz_checksums([("x-amz-checksum-crc64nvme", amz_b64("CRC64NVME", data))])
    hasher = hashers_needed(expected, published, None)
    assert hasher.computes == {"crc64nvme"}
    assert hasher.part_size is None
    assert verdict(expected, hash_all(hasher, data), published).kind == "crc64nvme"


def test_md5_mode_and_bytes_from_the_other_cloud_keep_to_the_listing_md5() -> None:
    data = payload(2000)
    md5 = hashlib.md5(data).hexdigest()
    published = parse_amz_checksums([("x-amz-checksum-crc64nvme", amz_b64("CRC64NVME", data))])
    insisting = expectation_from_listing(md5, len(data))
    assert hashers_needed(insisting, published, None, mode="md5").computes == {"md5"}
    assert verdict(insisting, hash_all(StreamHasher(), data), published, mode="md5") == passed(
        "md5", md5
    )
    # failover: S3 serves what GCS listed; S3's own CRC is no promise about the GCS listing
    foreign = expectation_from_listing(md5, len(data), foreign=True)
    assert hashers_needed(foreign, published, None).computes == {"md5"}
    opaque = expectation_from_listing("CJ3Qm6j7x/ECEAE=", len(data), foreign=True)
    assert hashers_needed(opaque, published, None).computes == frozenset()


def test_md5_mode_falls_back_to_a_published_crc_when_nothing_md5_shaped_exists() -> None:
    data = payload(2000)
    expected = expectation_from_listing("CJ3Qm6j7x/ECEAE=", len(data))
    published = parse_amz_checksums([("x-amz-checksum-crc32", amz_b64("CRC32", data))])
    hasher = hashers_needed(expected, published, None, mode="md5")
    assert hasher.computes == {"crc32"}
    assert verdict(expected, hash_all(hasher, data), published, mode="md5").kind == "crc32"
