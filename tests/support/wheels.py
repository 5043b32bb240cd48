"""Small fake idc-index-data releases for the tests of following IDC releases: a catalog of a
few real rows of the installed index (changed where a release revises, removes or adds a
series), written as the parquet files idc-index-data ships, packed into a wheel that pip
installs and that a package index serves.

A release is a dict of tables (``idc_index``, ``prior_versions_index``,
``version_metadata_index``) of rows; ``two_releases`` builds the pair the tests follow:
release 25 with four series of one collection and release 26 that keeps one, revises one
(new crdc_series_uuid, same SeriesInstanceUID), removes one and adds one."""

from __future__ import annotations

import base64
import hashlib
import io
import shutil
import tempfile
import uuid
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb

from tests.support import dataset

Row = dict[str, Any]
COLLECTION = "mri_dir"


@dataclass(slots=True)
class FakeRelease:
    """One idc-index-data version: its IDC release is the major number of ``version``."""

    version: str
    index: list[Row]
    prior: list[Row] = field(default_factory=list)
    extra_files: dict[str, bytes] = field(default_factory=dict)  # more members of the wheel

    @property
    def release(self) -> int:
        return int(self.version.split(".", 1)[0])

    @property
    def uuids(self) -> set[str]:
        return {str(row["crdc_series_uuid"]) for row in self.index}


def _prior_row(row: Row, last_release: int) -> Row:
    """A prior_versions_index row for a series the next release revises or removes."""
    return {
        "collection_id": row["collection_id"], "PatientID": row["PatientID"],
        "SeriesInstanceUID": row["SeriesInstanceUID"],
        "StudyInstanceUID": row["StudyInstanceUID"], "Modality": row["Modality"],
        "gcs_bucket": row["aws_bucket"], "crdc_series_uuid": row["crdc_series_uuid"],
        "series_size_MB": row["series_size_MB"], "series_aws_url": row["series_aws_url"],
        "aws_bucket": row["aws_bucket"], "min_idc_version": 1, "max_idc_version": last_release,
    }  # fmt: skip


def two_releases() -> tuple[FakeRelease, FakeRelease, dict[str, Row]]:
    """Releases 25.0.0 and 26.0.0 of four (then four) small real series of one collection,
    and the rows by role: kept, revised (its old version), revised_new, removed, added,
    also_kept."""
    rows = dataset.real_series(
        COLLECTION, limit=5, where="instanceCount BETWEEN 1 AND 3", max_series_bytes=200_000
    )
    assert len(rows) == 5, f"{COLLECTION} lacks five small series"
    kept, revised, removed, also_kept, added = (
        {**row, "series_revised_idc_version": min(int(row["series_revised_idc_version"]), 25),
         "series_init_idc_version": min(int(row["series_init_idc_version"]), 25)}
        for row in rows
    )  # fmt: skip
    revised_new = {
        **revised,
        "crdc_series_uuid": str(uuid.uuid5(uuid.UUID(str(revised["crdc_series_uuid"])), "26")),
        "series_revised_idc_version": 26,
    }
    added = {**added, "series_init_idc_version": 26, "series_revised_idc_version": 26}
    first = FakeRelease("25.0.0", [kept, revised, removed, also_kept])
    second = FakeRelease(
        "26.0.0", [kept, revised_new, also_kept, added],
        prior=[_prior_row(revised, 25), _prior_row(removed, 25)],
    )  # fmt: skip
    roles = {"kept": kept, "revised": revised, "revised_new": revised_new, "removed": removed,
             "also_kept": also_kept, "added": added}  # fmt: skip
    return first, second, roles


# -- parquet files -----------------------------------------------------------------------


def _index_columns() -> list[tuple[str, str]]:
    with duckdb.connect() as con:
        described = con.execute(
            f"DESCRIBE SELECT * FROM read_parquet('{dataset.INDEX_PARQUET}')"
        ).fetchall()
    return [(str(name), str(kind)) for name, kind, *_ in described]


_PRIOR_COLUMNS = [
    ("collection_id", "VARCHAR"), ("PatientID", "VARCHAR"), ("SeriesInstanceUID", "VARCHAR"),
    ("StudyInstanceUID", "VARCHAR"), ("Modality", "VARCHAR"), ("gcs_bucket", "VARCHAR"),
    ("crdc_series_uuid", "VARCHAR"), ("series_size_MB", "DOUBLE"),
    ("series_aws_url", "VARCHAR"), ("aws_bucket", "VARCHAR"), ("min_idc_version", "BIGINT"),
    ("max_idc_version", "BIGINT"),
]  # fmt: skip


def _parquet(columns: Sequence[tuple[str, str]], rows: Sequence[Mapping[str, Any]]) -> bytes:
    """One parquet file of ``rows`` with exactly these columns and types."""
    with duckdb.connect() as con:
        definition = ", ".join(f'"{name}" {kind}' for name, kind in columns)
        con.execute(f"CREATE TABLE t ({definition})")
        if rows:
            marks = ", ".join("?" for _ in columns)
            con.executemany(
                f"INSERT INTO t VALUES ({marks})",
                [[row.get(name) for name, _ in columns] for row in rows],
            )
        with tempfile.TemporaryDirectory() as directory:
            path = Path(directory) / "table.parquet"
            con.execute(f"COPY t TO '{path}' (FORMAT parquet)")
            return path.read_bytes()


def catalog_files(release: FakeRelease) -> dict[str, bytes]:
    """The parquet files of a release, by their name in idc-index-data."""
    versions = [{"idc_version": v, "version_timestamp": f"2026-01-{v:02d}"}
                for v in range(1, release.release + 1)]  # fmt: skip
    return {
        "idc_index.parquet": _parquet(_index_columns(), release.index),
        "prior_versions_index.parquet": _parquet(_PRIOR_COLUMNS, release.prior),
        "version_metadata_index.parquet": _parquet(
            [("idc_version", "BIGINT"), ("version_timestamp", "VARCHAR")], versions
        ),
    }


# -- the wheel ---------------------------------------------------------------------------


def _record_hash(data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
    return "sha256=" + digest.decode("ascii")


def wheel_name(version: str) -> str:
    return f"idc_index_data-{version}-py3-none-any.whl"


def wheel_bytes(release: FakeRelease, *, files: Mapping[str, bytes] | None = None) -> bytes:
    """A wheel of idc-index-data ``release.version`` that pip installs: the package's
    parquet files (or ``files``), a module that says its version, and the dist-info."""
    package = {
        f"idc_index_data/{name}": data
        for name, data in (files if files is not None else catalog_files(release)).items()
    }
    package["idc_index_data/__init__.py"] = f'__version__ = "{release.version}"\n'.encode()
    package.update(release.extra_files)
    info = f"idc_index_data-{release.version}.dist-info"
    package[f"{info}/METADATA"] = (
        f"Metadata-Version: 2.1\nName: idc-index-data\nVersion: {release.version}\n"
        "Summary: a test release\n"
    ).encode()
    package[f"{info}/WHEEL"] = (
        b"Wheel-Version: 1.0\nGenerator: idc-sync-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    )
    record = "".join(f"{name},{_record_hash(data)},{len(data)}\n" for name, data in package.items())
    package[f"{info}/RECORD"] = (record + f"{info}/RECORD,,\n").encode()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in package.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def write_wheel(directory: Path, release: FakeRelease, **kwargs: Any) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / wheel_name(release.version)
    path.write_bytes(wheel_bytes(release, **kwargs))
    return path


def unpack_into(directory: Path, release: FakeRelease, **kwargs: Any) -> Path:
    """``release`` as installed into ``directory`` (what pip does with a pure wheel: its
    members in place), replacing any idc-index-data there; put ``directory`` on sys.path."""
    directory.mkdir(parents=True, exist_ok=True)
    for old in directory.glob("idc_index_data*"):
        shutil.rmtree(old)
    with zipfile.ZipFile(io.BytesIO(wheel_bytes(release, **kwargs))) as archive:
        archive.extractall(directory)
    return directory
