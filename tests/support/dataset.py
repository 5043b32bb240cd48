"""IDC-like test data: real rows of the installed IDC index (read with DuckDB) and, for each
series, synthetic but valid DICOM Part 10 files whose count and total size match the row
exactly, keyed ``<crdc_series_uuid>/<crdc_instance_uuid>.dcm`` as in the IDC buckets.

Only the identifiers come from the index (PatientID, Study/SeriesInstanceUID, Modality,
SOPClassUID); crdc_instance_uuids and SOPInstanceUIDs are derived deterministically from the
crdc_series_uuid, and the bytes are a small dataset padded with a private OB element.
"""

from __future__ import annotations

import io
import struct
import threading
import uuid
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import duckdb
import idc_index_data
import pydicom
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

from idc_sync.core.model import AWS_TO_GCS_BUCKET
from tests.support.moto import moto_put_many
from tests.support.s3server import S3TestServer

Row = dict[str, Any]

INDEX_PARQUET = str(idc_index_data.IDC_INDEX_PARQUET_FILEPATH)
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"

# The padding element comes last in the dataset (group 0x0029 sorts after every other tag
# written here), so its 4-byte length is the last thing pydicom writes for an empty value.
_PRIVATE_GROUP = 0x0029
_PRIVATE_CREATOR = "IDC-SYNC TEST"
_PADDING_TAG = (_PRIVATE_GROUP << 16) | 0x1000
_PADDING_HEADER = struct.pack("<HH", _PRIVATE_GROUP, 0x1000) + b"OB\x00\x00"


# -- rows of the real index ------------------------------------------------------------


def series_size_bytes(row: Mapping[str, Any]) -> int:
    """The exact byte size of a series (``series_size_MB`` is a whole number of bytes / 1e6)."""
    return round(float(row["series_size_MB"]) * 1_000_000)


_connection: duckdb.DuckDBPyConnection | None = None
_connection_lock = threading.Lock()


@lru_cache(maxsize=128)
def _query(
    sql: str, params: tuple[Any, ...]
) -> tuple[tuple[str, ...], tuple[tuple[Any, ...], ...]]:
    global _connection
    with _connection_lock:
        if _connection is None:
            # one in-memory database per process, so the parquet metadata is read once
            _connection = duckdb.connect()
            path = INDEX_PARQUET.replace("'", "''")
            _connection.execute(f"CREATE VIEW \"index\" AS SELECT * FROM read_parquet('{path}')")
        cursor = _connection.execute(sql, list(params))
        columns = tuple(d[0] for d in cursor.description)
        return columns, tuple(cursor.fetchall())


def real_series(
    collection_id: str | None = None,
    *,
    limit: int,
    max_series_bytes: int | None = None,
    where: str | None = None,
    order_by: str = "crdc_series_uuid",
) -> list[Row]:
    """Rows of the installed IDC index (table ``index``, every column), ordered by
    ``order_by`` then crdc_series_uuid, so the same arguments always give the same rows.
    ``where`` is extra SQL over the table's columns, as a user would write it."""
    clauses = ["TRUE"]
    params: list[Any] = []
    if collection_id is not None:
        clauses.append("collection_id = ?")
        params.append(collection_id)
    if max_series_bytes is not None:
        clauses.append("round(series_size_MB * 1e6) <= ?")
        params.append(max_series_bytes)
    if where:
        clauses.append(f"({where})")
    sql = (
        f'SELECT * FROM "index" WHERE {" AND ".join(clauses)} '
        f"ORDER BY {order_by}, crdc_series_uuid LIMIT ?"
    )
    params.append(limit)
    columns, rows = _query(sql, tuple(params))
    return [dict(zip(columns, values, strict=True)) for values in rows]


@dataclass(frozen=True, slots=True)
class Selection:
    """A small, named set of real series worth testing with, found by query, not by UUID."""

    description: str
    limit: int
    collection_id: str | None = None
    where: str | None = None
    max_series_bytes: int | None = None
    order_by: str = "crdc_series_uuid"

    def rows(self) -> list[Row]:
        return real_series(
            self.collection_id,
            limit=self.limit,
            max_series_bytes=self.max_series_bytes,
            where=self.where,
            order_by=self.order_by,
        )


SELECTIONS: Mapping[str, Selection] = {
    "qin_pet_phantom": Selection(
        "the whole qin_pet_phantom collection: 44 PT series in idc-open-data (CC BY 3.0), "
        "22 x 81 files (~4.76 MB) + 22 x 47 files (~6.43 MB); 2,816 files, 246.3 MB",
        limit=100,
        collection_id="qin_pet_phantom",
    ),
    "qin_pet_phantom_small": Selection(
        "four qin_pet_phantom series of 81 files (~59 KB each): 324 files, ~19 MB",
        limit=4,
        collection_id="qin_pet_phantom",
        where="instanceCount = 81",
    ),
    "cr_nc": Selection(
        "one small CC BY-NC series in idc-open-data-cr (commercial use restricted)",
        limit=1,
        where="aws_bucket = 'idc-open-data-cr' AND license_short_name LIKE 'CC BY-NC%' "
        "AND instanceCount BETWEEN 2 AND 20",
        max_series_bytes=10_000_000,
        order_by="series_size_MB",
    ),
    "two": Selection(
        "one small series in idc-open-data-two (CC BY)",
        limit=1,
        where="aws_bucket = 'idc-open-data-two' AND instanceCount BETWEEN 2 AND 20",
        max_series_bytes=10_000_000,
        order_by="series_size_MB",
    ),
    "nc_in_open_data": Selection(
        "the smallest CC BY-NC series that lives in idc-open-data, not idc-open-data-cr "
        "(license alone does not decide the bucket); ~19 MB, the smallest there is",
        limit=1,
        where="aws_bucket = 'idc-open-data' AND license_short_name LIKE 'CC BY-NC%'",
        order_by="series_size_MB",
    ),
    "patient_id_with_equals": Selection(
        "one small series whose PatientID contains '=' (a layout-template hazard)",
        limit=1,
        where="contains(PatientID, '=')",
        max_series_bytes=10_000_000,
        order_by="series_size_MB",
    ),
    "single_instance": Selection(
        "one small single-file series (the median IDC series has one file)",
        limit=1,
        where="instanceCount = 1 AND series_size_MB > 0.01",
        max_series_bytes=1_000_000,
        order_by="series_size_MB",
    ),
}


def selection(name: str) -> list[Row]:
    """The rows of one of :data:`SELECTIONS`."""
    return SELECTIONS[name].rows()


# -- synthetic instances ---------------------------------------------------------------


def instance_uuids(row: Mapping[str, Any]) -> list[str]:
    """The crdc_instance_uuids of a series: uuid5 of the crdc_series_uuid and the index."""
    series = uuid.UUID(str(row["crdc_series_uuid"]))
    return [str(uuid.uuid5(series, str(i))) for i in range(int(row["instanceCount"]))]


def instance_keys(row: Mapping[str, Any]) -> list[str]:
    """The object keys of a series, ``<crdc_series_uuid>/<crdc_instance_uuid>.dcm``."""
    return [f"{row['crdc_series_uuid']}/{u}.dcm" for u in instance_uuids(row)]


def instance_sizes(row: Mapping[str, Any]) -> list[int]:
    """Per-file sizes summing exactly to the series size, spread evenly and all even (DICOM
    values have even lengths, and every IDC series size is even)."""
    total, count = series_size_bytes(row), int(row["instanceCount"])
    if total % 2:
        raise ValueError(f"series {row['crdc_series_uuid']} has an odd size {total}")
    base, extra = divmod(total // 2, count)
    return [2 * (base + (1 if i < extra else 0)) for i in range(count)]


def _element(tag: int, vr: str, value: object) -> DataElement:
    # Index values are written as they are; pydicom's value checks would only warn.
    return DataElement(tag, vr, value, validation_mode=pydicom.config.IGNORE)


def _template(row: Mapping[str, Any]) -> Dataset:
    sop_class = str(row.get("SOPClassUID") or SECONDARY_CAPTURE)
    meta = FileMetaDataset()
    meta[0x00020002] = _element(0x00020002, "UI", sop_class)
    meta[0x00020003] = _element(0x00020003, "UI", "2.25.0")
    meta[0x00020010] = _element(0x00020010, "UI", ExplicitVRLittleEndian)
    ds = Dataset()
    ds.file_meta = meta
    ds[0x00080016] = _element(0x00080016, "UI", sop_class)
    ds[0x00080018] = _element(0x00080018, "UI", "2.25.0")
    ds[0x00080060] = _element(0x00080060, "CS", str(row.get("Modality") or "OT"))
    ds[0x00100020] = _element(0x00100020, "LO", str(row["PatientID"]))
    ds[0x0020000D] = _element(0x0020000D, "UI", str(row["StudyInstanceUID"]))
    ds[0x0020000E] = _element(0x0020000E, "UI", str(row["SeriesInstanceUID"]))
    ds[0x00200013] = _element(0x00200013, "IS", "0")
    ds[(_PRIVATE_GROUP << 16) | 0x0010] = _element(
        (_PRIVATE_GROUP << 16) | 0x0010, "LO", _PRIVATE_CREATOR
    )
    ds[_PADDING_TAG] = _element(_PADDING_TAG, "OB", b"")
    return ds


def _instance_bytes(ds: Dataset, instance_uuid: str, number: int, size: int) -> bytes:
    sop_instance = f"2.25.{uuid.UUID(instance_uuid).int}"
    ds.file_meta[0x00020003] = _element(0x00020003, "UI", sop_instance)
    ds[0x00080018] = _element(0x00080018, "UI", sop_instance)
    ds[0x00200013] = _element(0x00200013, "IS", str(number))
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
    written = buffer.getvalue()
    assert written[-12:-4] == _PADDING_HEADER, "padding must be the last element"
    padding = size - len(written)
    if padding < 0:
        raise ValueError(f"a {size}-byte file is too small for a {len(written)}-byte dataset")
    return written[:-4] + struct.pack("<I", padding) + bytes(padding)


def iter_series_objects(row: Mapping[str, Any]) -> Iterator[tuple[str, bytes]]:
    """(key, DICOM bytes) for each instance of the series, one at a time."""
    ds = _template(row)
    uuids = instance_uuids(row)
    sizes = instance_sizes(row)
    prefix = row["crdc_series_uuid"]
    for number, (instance_uuid, size) in enumerate(zip(uuids, sizes, strict=True), start=1):
        yield f"{prefix}/{instance_uuid}.dcm", _instance_bytes(ds, instance_uuid, number, size)


class _SeriesCache:
    """Built series by crdc_series_uuid, least recently used dropped past a byte budget."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._entries: OrderedDict[str, dict[str, bytes]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, series: str) -> dict[str, bytes] | None:
        with self._lock:
            objects = self._entries.get(series)
            if objects is not None:
                self._entries.move_to_end(series)
            return objects

    def put(self, series: str, objects: dict[str, bytes]) -> None:
        size = sum(len(b) for b in objects.values())
        with self._lock:
            if series in self._entries or size > self.max_bytes:
                return
            self._entries[series] = objects
            self._bytes += size
            while self._bytes > self.max_bytes:
                _, dropped = self._entries.popitem(last=False)
                self._bytes -= sum(len(b) for b in dropped.values())


_cache = _SeriesCache(max_bytes=512 * 1024 * 1024)


def series_objects(row: Mapping[str, Any]) -> dict[str, bytes]:
    """Every object of the series: exactly ``instanceCount`` DICOM files whose sizes add up to
    ``series_size_MB * 1e6`` bytes. Cached by crdc_series_uuid; the dict is the caller's."""
    series = str(row["crdc_series_uuid"])
    objects = _cache.get(series)
    if objects is None:
        objects = dict(iter_series_objects(row))
        _cache.put(series, objects)
    return dict(objects)


# -- loading series into a server ------------------------------------------------------


def bucket_for(row: Mapping[str, Any], flavour: str = "s3") -> str:
    """The bucket that holds the series: ``aws_bucket``, or its GCS twin for flavour "gcs"."""
    bucket = str(row["aws_bucket"])
    return AWS_TO_GCS_BUCKET[bucket] if flavour == "gcs" else bucket


def populate(
    target: S3TestServer | str, rows: Sequence[Mapping[str, Any]]
) -> dict[tuple[str, str], bytes]:
    """Upload every object of ``rows`` to an S3TestServer (GCS bucket names when it has the
    GCS flavour) or to a moto endpoint URL; returns {(bucket, key): bytes}."""
    uploaded: dict[tuple[str, str], bytes] = {}
    for row in rows:
        objects = series_objects(row)
        if isinstance(target, str):
            bucket = bucket_for(row)
            moto_put_many(target, bucket, objects)
        else:
            bucket = bucket_for(row, target.flavour)
            target.put_many(bucket, objects)
        uploaded.update({(bucket, key): data for key, data in objects.items()})
    return uploaded
