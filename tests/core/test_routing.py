"""Tests of idc_sync.core.routing: bucket choice per source, addressing style and URLs."""

from __future__ import annotations

from urllib.parse import unquote, urlsplit

import duckdb
import idc_index_data
import pytest
from hypothesis import given
from hypothesis import strategies as st

from idc_sync.core.errors import ConfigurationError, PermanentError
from idc_sync.core.model import AWS_TO_GCS_BUCKET
from idc_sync.core.routing import addressing_style, bucket_for, bucket_url, object_url, other_source

SERIES = "085e85b3-3780-47f6-8538-585bcca95336"
KEY = f"{SERIES}/8f4a4d6c-0b7e-4a0e-9b2f-3c1d2e4f5a6b.dcm"


# --- bucket_for -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("aws_bucket", "gcs_bucket"),
    [
        ("idc-open-data", "idc-open-data"),
        ("idc-open-data-cr", "idc-open-cr"),
        ("idc-open-data-two", "idc-open-idc1"),
    ],
)
def test_bucket_for_maps_each_aws_bucket_to_its_gcs_twin(aws_bucket: str, gcs_bucket: str) -> None:
    assert bucket_for("aws", aws_bucket) == aws_bucket
    assert bucket_for("gcs", aws_bucket) == gcs_bucket


def test_every_bucket_in_the_installed_index_is_routable() -> None:
    parquet = idc_index_data.IDC_INDEX_PARQUET_FILEPATH
    buckets = {
        row[0]
        for row in duckdb.sql(
            f"SELECT DISTINCT aws_bucket FROM read_parquet('{parquet}')"
        ).fetchall()
    }
    assert buckets == set(AWS_TO_GCS_BUCKET)
    for bucket in buckets:
        assert bucket_for("gcs", bucket) == AWS_TO_GCS_BUCKET[bucket]


@pytest.mark.parametrize("source", ["aws", "gcs"])
@pytest.mark.parametrize("bucket", ["public-datasets-idc", "idc-open-cr", "", "IDC-OPEN-DATA"])
def test_bucket_for_names_an_unknown_bucket(source: str, bucket: str) -> None:
    # "idc-open-cr" is a GCS name: the index's column holds AWS names only.
    with pytest.raises(PermanentError, match=repr(bucket)):
        bucket_for(source, bucket)  # type: ignore[arg-type]


@pytest.mark.parametrize("aws_bucket", sorted(AWS_TO_GCS_BUCKET))
def test_other_source_reads_the_same_series_from_the_twin_bucket(aws_bucket: str) -> None:
    assert other_source("aws") == "gcs"
    assert other_source("gcs") == "aws"
    assert other_source(other_source("aws")) == "aws"
    twins = {bucket_for("aws", aws_bucket), bucket_for(other_source("aws"), aws_bucket)}
    assert twins == {aws_bucket, AWS_TO_GCS_BUCKET[aws_bucket]}


def test_bucket_for_refuses_an_unknown_source() -> None:
    with pytest.raises(ConfigurationError, match="azure"):
        bucket_for("azure", "idc-open-data")  # type: ignore[arg-type]


# --- addressing_style -------------------------------------------------------------------


@pytest.mark.parametrize(
    "endpoint",
    [
        "https://s3.amazonaws.com",
        "https://s3.amazonaws.com/",
        "HTTPS://S3.AMAZONAWS.COM",
        "https://s3.us-east-1.amazonaws.com",
        "https://s3.eu-central-1.amazonaws.com:443",
    ],
)
def test_real_aws_endpoints_use_virtual_hosted_style(endpoint: str) -> None:
    assert addressing_style(endpoint) == "virtual"


@pytest.mark.parametrize(
    "endpoint",
    [
        "https://storage.googleapis.com",
        "http://127.0.0.1:9000",
        "http://localhost:5000/",
        "http://[::1]:9000",
        "http://s3.amazonaws.com",  # not https
        "https://s3.amazonaws.com:8443",
        "https://s3.amazonaws.com/prefix",
        "https://s3.amazonaws.com.example.org",
        "https://evil-s3.amazonaws.com.attacker.net",
        "https://minio.internal",
    ],
)
def test_everything_else_uses_path_style(endpoint: str) -> None:
    assert addressing_style(endpoint) == "path"


@pytest.mark.parametrize(
    "endpoint",
    [
        "s3.amazonaws.com",
        "ftp://s3.amazonaws.com",
        "file:///srv/mirror",
        "https://",
        "http://:9000",
        "",
        "https://user:secret@s3.amazonaws.com",
        "https://s3.amazonaws.com/?x=1",
        "http://127.0.0.1:99999",
    ],
)
def test_endpoint_must_be_http_with_a_host(endpoint: str) -> None:
    with pytest.raises(ConfigurationError):
        addressing_style(endpoint)
    with pytest.raises(ConfigurationError):
        object_url(endpoint, "idc-open-data", KEY)
    with pytest.raises(ConfigurationError):
        bucket_url(endpoint, "idc-open-data")


# --- object_url and bucket_url ---------------------------------------------------------


def test_object_url_on_aws_is_virtual_hosted() -> None:
    assert object_url("https://s3.amazonaws.com", "idc-open-data", KEY) == (
        f"https://idc-open-data.s3.amazonaws.com/{KEY}"
    )


def test_object_url_on_a_regional_aws_endpoint_keeps_the_region() -> None:
    assert object_url("https://s3.us-east-1.amazonaws.com/", "idc-open-data-cr", KEY) == (
        f"https://idc-open-data-cr.s3.us-east-1.amazonaws.com/{KEY}"
    )


def test_object_url_on_gcs_is_path_style() -> None:
    assert object_url("https://storage.googleapis.com", "idc-open-cr", KEY) == (
        f"https://storage.googleapis.com/idc-open-cr/{KEY}"
    )


@pytest.mark.parametrize("endpoint", ["http://127.0.0.1:9000", "http://127.0.0.1:9000/"])
def test_object_url_on_a_local_server_tolerates_a_trailing_slash(endpoint: str) -> None:
    assert (
        object_url(endpoint, "idc-open-data", KEY) == f"http://127.0.0.1:9000/idc-open-data/{KEY}"
    )


def test_object_url_keeps_an_endpoint_base_path() -> None:
    assert object_url("http://gateway.local/s3/", "idc-open-data", "a/b") == (
        "http://gateway.local/s3/idc-open-data/a/b"
    )


def test_bucket_with_dots_falls_back_to_path_style_on_aws() -> None:
    # *.s3.amazonaws.com certificates do not cover a dotted bucket name.
    assert object_url("https://s3.amazonaws.com", "my.bucket", "k") == (
        "https://s3.amazonaws.com/my.bucket/k"
    )
    assert bucket_url("https://s3.amazonaws.com", "my.bucket") == (
        "https://s3.amazonaws.com/my.bucket"
    )


def test_object_url_percent_encodes_each_key_segment() -> None:
    url = object_url("http://127.0.0.1:9000", "idc-open-data", "a b/c?d#e%f/é+=&")
    assert url == "http://127.0.0.1:9000/idc-open-data/a%20b/c%3Fd%23e%25f/%C3%A9%2B%3D%26"


@pytest.mark.parametrize("key", ["", ".", "..", "a/../b", "a/./b", "../" + KEY, "\ud800"])
def test_object_url_refuses_keys_a_url_cannot_carry(key: str) -> None:
    with pytest.raises(PermanentError):
        object_url("http://127.0.0.1:9000", "idc-open-data", key)


@pytest.mark.parametrize("bucket", ["", "a", "a/b", "Idc", "x" * 223, "-idc", "idc?x=1"])
def test_invalid_bucket_names_are_refused(bucket: str) -> None:
    with pytest.raises(PermanentError):
        object_url("http://127.0.0.1:9000", bucket, KEY)
    with pytest.raises(PermanentError):
        bucket_url("http://127.0.0.1:9000", bucket)


@given(
    key=st.lists(
        st.text(
            alphabet=st.characters(exclude_categories=["Cs"], exclude_characters="/"),
            min_size=1,
        ).filter(lambda segment: segment not in (".", "..")),
        min_size=1,
        max_size=4,
    ).map("/".join)
)
def test_object_url_path_decodes_back_to_the_key(key: str) -> None:
    for endpoint, prefix in [
        ("https://s3.amazonaws.com", "/"),
        ("http://127.0.0.1:9000/", "/idc-open-data/"),
    ]:
        url = object_url(endpoint, "idc-open-data", key)
        path = urlsplit(url).path
        assert path.startswith(prefix)
        assert unquote(path[len(prefix) :]) == key
        # Nothing in the key may leak into the query, fragment or authority.
        assert "?" not in url
        assert "#" not in url
        assert urlsplit(url).netloc in ("idc-open-data.s3.amazonaws.com", "127.0.0.1:9000")


def test_bucket_url_per_style() -> None:
    assert bucket_url("https://s3.amazonaws.com", "idc-open-data") == (
        "https://idc-open-data.s3.amazonaws.com/"
    )
    assert bucket_url("https://storage.googleapis.com/", "idc-open-idc1") == (
        "https://storage.googleapis.com/idc-open-idc1"
    )
    assert bucket_url("http://[::1]:9000", "idc-open-data") == "http://[::1]:9000/idc-open-data"
