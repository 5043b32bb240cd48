"""Tests of the IDC-like test data: real index rows come back deterministically, every
synthetic series has exactly the row's file count and byte size, its files are DICOM that
pydicom reads with the row's identifiers, and populate() loads them where a test needs them."""

from __future__ import annotations

import io
import re
import time
import uuid
from typing import Any

import pydicom
import pytest

from tests.support import dataset
from tests.support.moto import unsigned_client
from tests.support.s3server import S3TestServer, md5_hex

UUID_KEY = re.compile(r"([0-9a-f-]{36})/([0-9a-f-]{36})\.dcm")


def test_real_series_is_deterministic_and_filtered() -> None:
    rows = dataset.real_series("qin_pet_phantom", limit=10, max_series_bytes=5_000_000)
    assert rows == dataset.real_series("qin_pet_phantom", limit=10, max_series_bytes=5_000_000)
    uuids = [row["crdc_series_uuid"] for row in rows]
    assert uuids == sorted(uuids)
    assert len(rows) == 10
    for row in rows:
        assert row["collection_id"] == "qin_pet_phantom"
        assert dataset.series_size_bytes(row) <= 5_000_000
        assert {"PatientID", "StudyInstanceUID", "aws_bucket", "license_short_name"} <= set(row)
    mr = dataset.real_series(limit=3, where="Modality = 'MR' AND instanceCount = 1")
    assert [(r["Modality"], r["instanceCount"]) for r in mr] == [("MR", 1)] * 3


def test_selections_find_what_they_promise() -> None:
    phantom = dataset.selection("qin_pet_phantom")
    assert len(phantom) == 44
    assert sum(row["instanceCount"] for row in phantom) == 2816
    assert {row["instanceCount"] for row in phantom} == {47, 81}
    assert {row["aws_bucket"] for row in phantom} == {"idc-open-data"}

    (cr,) = dataset.selection("cr_nc")
    assert cr["aws_bucket"] == "idc-open-data-cr"
    assert cr["license_short_name"].startswith("CC BY-NC")
    assert dataset.series_size_bytes(cr) < 10_000_000

    (two,) = dataset.selection("two")
    assert two["aws_bucket"] == "idc-open-data-two"
    assert dataset.series_size_bytes(two) < 10_000_000

    (nc,) = dataset.selection("nc_in_open_data")
    assert nc["aws_bucket"] == "idc-open-data"
    assert nc["license_short_name"].startswith("CC BY-NC")

    (equals,) = dataset.selection("patient_id_with_equals")
    assert "=" in equals["PatientID"]
    (single,) = dataset.selection("single_instance")
    assert single["instanceCount"] == 1
    assert len(dataset.selection("qin_pet_phantom_small")) == 4


@pytest.mark.parametrize("name", ["cr_nc", "two", "single_instance", "patient_id_with_equals"])
def test_series_objects_match_the_row_exactly(name: str) -> None:
    (row,) = dataset.selection(name)
    objects = dataset.series_objects(row)
    assert len(objects) == row["instanceCount"]
    assert sum(len(data) for data in objects.values()) == round(row["series_size_MB"] * 1e6)
    sizes = sorted(len(data) for data in objects.values())
    assert sizes[-1] - sizes[0] <= 2  # spread evenly
    sop_instance_uids = set()
    for key, data in objects.items():
        match = UUID_KEY.fullmatch(key)
        assert match is not None
        assert match.group(1) == row["crdc_series_uuid"]
        ds = pydicom.dcmread(io.BytesIO(data))
        assert ds.PatientID == row["PatientID"]
        assert ds.StudyInstanceUID == row["StudyInstanceUID"]
        assert ds.SeriesInstanceUID == row["SeriesInstanceUID"]
        assert ds.Modality == row["Modality"]
        assert ds.SOPInstanceUID == f"2.25.{uuid.UUID(match.group(2)).int}"
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        sop_instance_uids.add(ds.SOPInstanceUID)
    assert len(sop_instance_uids) == len(objects)


def test_series_objects_are_deterministic_and_the_cache_hands_out_copies() -> None:
    (row,) = dataset.selection("two")
    first = dataset.series_objects(row)
    first.clear()
    again = dataset.series_objects(row)
    rebuilt = dict(dataset.iter_series_objects(row))
    assert again == rebuilt
    assert list(again) == dataset.instance_keys(row)
    expected = uuid.uuid5(uuid.UUID(row["crdc_series_uuid"]), "0")
    assert dataset.instance_uuids(row)[0] == str(expected)


def test_building_324_files_of_59_kb_is_fast() -> None:
    rows = dataset.selection("qin_pet_phantom_small")
    started = time.perf_counter()
    built = [list(dataset.iter_series_objects(row)) for row in rows]
    elapsed = time.perf_counter() - started
    assert sum(len(objects) for objects in built) == 324
    assert elapsed < 2.0


def test_instance_sizes_are_even_and_sum_to_the_series_size() -> None:
    row: dict[str, Any] = {
        "crdc_series_uuid": str(uuid.UUID(int=1)),
        "instanceCount": 7,
        "series_size_MB": 0.100006,
    }
    sizes = dataset.instance_sizes(row)
    assert sum(sizes) == 100_006
    assert all(size % 2 == 0 for size in sizes)
    with pytest.raises(ValueError, match="odd size"):
        dataset.instance_sizes({**row, "series_size_MB": 0.100001})


def test_populate_loads_series_into_the_gcs_twin_bucket(gcs_server: S3TestServer) -> None:
    rows = dataset.selection("cr_nc") + dataset.selection("two")
    uploaded = dataset.populate(gcs_server, rows)
    assert {bucket for bucket, _ in uploaded} == {"idc-open-cr", "idc-open-idc1"}
    for row in rows:
        bucket = dataset.bucket_for(row, "gcs")
        keys = gcs_server.keys(bucket)
        assert [k for k in keys if k.startswith(row["crdc_series_uuid"])] == sorted(
            dataset.instance_keys(row)
        )
    for (bucket, key), data in uploaded.items():
        stored = gcs_server.get(bucket, key)
        assert stored is not None
        assert stored.etag == md5_hex(data)


@pytest.mark.slow
def test_populate_loads_series_into_moto_readable_anonymously(moto_endpoint: str) -> None:
    (row,) = dataset.selection("cr_nc")
    uploaded = dataset.populate(moto_endpoint, [row])
    client = unsigned_client(moto_endpoint)
    try:
        page = client.list_objects_v2(Bucket="idc-open-data-cr", Prefix=row["crdc_series_uuid"])
        listed = {(item["Key"], item["Size"], item["ETag"].strip('"')) for item in page["Contents"]}
    finally:
        client.close()
    assert listed == {(key, len(data), md5_hex(data)) for (bucket, key), data in uploaded.items()}
    assert sum(size for _, size, _ in listed) == dataset.series_size_bytes(row)
