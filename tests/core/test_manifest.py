"""Tests of manifest parsing: every line form IDC users write, and the errors for the rest."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from idc_sync.core.errors import ConfigurationError, ManifestError
from idc_sync.core.manifest import parse_manifest_text, read_manifest
from idc_sync.core.model import ManifestEntry

SERIES = "d98abc9a-0ddd-44a3-8646-df10344c49d7"  # a qin_pet_phantom series
INSTANCE = "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d"


def only_entry(line: str) -> ManifestEntry:
    entries = parse_manifest_text(line, "m.txt")
    assert len(entries) == 1
    return entries[0]


@pytest.mark.parametrize(
    "line",
    [
        f"cp s3://idc-open-data/{SERIES}/* .",
        f"cp s3://idc-open-data/{SERIES}/* /data/idc",
        f'cp s3://idc-open-data/{SERIES}/* "/data/my idc/"',
        f"cp s3://idc-open-data/{SERIES}/* '/data/my idc/'",
        f"cp  s3://idc-open-data/{SERIES}/*\t.",
        f"s3://idc-open-data/{SERIES}/*",
        f"s3://idc-open-data/{SERIES}/",
        f"gs://idc-open-data/{SERIES}/*",
        f"   s3://idc-open-data/{SERIES}/*   ",
        f"s3://idc-open-data/{SERIES.upper()}/*",
        f"s3://idc-open-data/{SERIES}/*  # trailing note",
    ],
)
def test_every_whole_series_line_form_gives_the_series(line: str) -> None:
    assert only_entry(line) == ManifestEntry("idc-open-data", SERIES, None, "m.txt:1")


def test_single_instance_url_names_the_instance() -> None:
    entry = only_entry(f"cp s3://idc-open-data/{SERIES}/{INSTANCE.upper()}.dcm ./x")
    assert entry == ManifestEntry("idc-open-data", SERIES, INSTANCE, "m.txt:1")


@pytest.mark.parametrize(
    ("url_bucket", "aws_bucket"),
    [
        ("gs://idc-open-cr", "idc-open-data-cr"),
        ("gs://idc-open-idc1", "idc-open-data-two"),
        ("gs://public-datasets-idc", "idc-open-data"),
        # idc-index writes GCS bucket names under s3:// for s5cmd against the GCS endpoint
        ("s3://idc-open-cr", "idc-open-data-cr"),
        ("s3://idc-open-data-cr", "idc-open-data-cr"),
        ("s3://idc-open-data-two", "idc-open-data-two"),
    ],
)
def test_bucket_names_map_to_the_aws_bucket(url_bucket: str, aws_bucket: str) -> None:
    assert only_entry(f"{url_bucket}/{SERIES}/*").bucket == aws_bucket


def test_comments_blank_lines_and_crlf_keep_line_numbers() -> None:
    text = (
        "# To download, run s5cmd --no-sign-request --endpoint-url https://s3.amazonaws.com run\r\n"
        "\r\n"
        f"cp s3://idc-open-data/{SERIES}/* .\r\n"
        "   # indented comment\r\n"
        f"s3://idc-open-data-cr/{INSTANCE}/*\r\n"
    )
    entries = parse_manifest_text(text, "portal.s5cmd")
    assert [(e.crdc_series_uuid, e.origin) for e in entries] == [
        (SERIES, "portal.s5cmd:3"),
        (INSTANCE, "portal.s5cmd:5"),
    ]


def test_duplicate_lines_are_kept_for_the_catalog_to_merge() -> None:
    entries = parse_manifest_text(f"s3://idc-open-data/{SERIES}/*\n" * 2, "m")
    assert [e.origin for e in entries] == ["m:1", "m:2"]


@pytest.mark.parametrize(
    ("line", "quoted"),
    [
        ("s3://idc-open-data/not-a-uuid/*", "'not-a-uuid'"),
        (f"s3://idc-open-data/{SERIES[:-1]}/*", repr(SERIES[:-1])),
        (f"s3://idc-open-data/{SERIES}", f"'s3://idc-open-data/{SERIES}'"),
        (f"s3://idc-open-data/{SERIES}/file.txt", "'file.txt'"),
        (f"s3://idc-open-data/{SERIES}/sub/{INSTANCE}.dcm", f"'sub/{INSTANCE}.dcm'"),
        (f"https://s3.amazonaws.com/idc-open-data/{SERIES}/*", "'https'"),
        (f"sync s3://idc-open-data/{SERIES}/* .", "'sync s3://"),
        (f"cp s3://idc-open-data/{SERIES}/*", "'cp s3://"),
        (f"cp s3://idc-open-data/{SERIES}/* a b", "'cp s3://"),
        (f'cp s3://idc-open-data/{SERIES}/* "/unterminated', "No closing quotation"),
        ("1.2.826.0.1.3417726.3.140464.20131001150949437", "'1.2.826.0.1.3417726"),
    ],
)
def test_bad_line_raises_with_its_number_and_text(line: str, quoted: str) -> None:
    text = f"# header\ns3://idc-open-data/{SERIES}/*\n{line}\n"
    with pytest.raises(ManifestError) as caught:
        parse_manifest_text(text, "cohort.txt")
    assert caught.value.path == "cohort.txt"
    assert caught.value.line_number == 3
    assert str(caught.value).startswith("cohort.txt:3: ")
    assert quoted in str(caught.value)


def test_unknown_bucket_is_named_with_the_idc_buckets() -> None:
    with pytest.raises(ManifestError) as caught:
        parse_manifest_text(f"\ns3://my-lab-bucket/{SERIES}/*", "m.txt")
    message = str(caught.value)
    assert caught.value.line_number == 2
    assert "'my-lab-bucket'" in message
    for bucket in ("idc-open-data", "idc-open-data-cr", "idc-open-data-two", "idc-open-idc1"):
        assert bucket in message


def test_aws_only_bucket_name_is_not_a_gcs_bucket() -> None:
    with pytest.raises(ManifestError, match="unknown bucket 'idc-open-data-cr'"):
        parse_manifest_text(f"gs://idc-open-data-cr/{SERIES}/*", "m.txt")


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n   \n"])
def test_manifest_without_entries_is_an_error(text: str) -> None:
    with pytest.raises(ManifestError, match="no entries") as caught:
        parse_manifest_text(text, "empty.txt")
    assert caught.value.line_number is None


def test_manifest_error_is_a_configuration_error() -> None:
    # the CLI maps ConfigurationError to exit code 2
    with pytest.raises(ConfigurationError):
        parse_manifest_text("nonsense", "m.txt")


def test_read_manifest_reads_utf8_with_byte_order_mark(tmp_path: Path) -> None:
    path = tmp_path / "manifest.s5cmd"
    path.write_bytes(b"\xef\xbb\xbf" + f"cp s3://idc-open-data/{SERIES}/* .\n".encode())
    assert read_manifest(path) == [
        ManifestEntry("idc-open-data", SERIES, None, f"{path}:1"),
    ]


def test_read_manifest_of_missing_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.txt"
    with pytest.raises(ManifestError, match="cannot read") as caught:
        read_manifest(path)
    assert caught.value.path == str(path)
    assert caught.value.line_number is None


def test_read_manifest_of_a_directory_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="cannot read"):
        read_manifest(tmp_path)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_read_manifest_of_unreadable_file_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "secret.txt"
    path.write_text(f"s3://idc-open-data/{SERIES}/*\n")
    path.chmod(0)
    with pytest.raises(ManifestError, match="cannot read"):
        read_manifest(path)


def test_read_manifest_of_non_utf8_file_says_where(tmp_path: Path) -> None:
    path = tmp_path / "latin1.txt"
    path.write_bytes(f"s3://idc-open-data/{SERIES}/*\n# caf\xe9\n".encode("latin-1"))
    with pytest.raises(ManifestError, match=r"not UTF-8 text: byte 0xe9 on line 2") as caught:
        read_manifest(path)
    assert caught.value.line_number is None
