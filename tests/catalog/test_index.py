"""Tests of the catalog against the installed idc-index-data (IDC release 25, 1,044,191 series):
exact counts, name matching, earlier versions, manifests, SQL, and streaming in batches."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import duckdb
import idc_index_data
import pytest

from idc_sync.catalog.index import Catalog
from idc_sync.catalog.resolution import Resolution
from idc_sync.core.errors import ConfigurationError, SelectionError
from idc_sync.core.manifest import parse_manifest_text
from idc_sync.core.model import SeriesRecord, UnknownSelection
from idc_sync.core.selection import Selection, normalize_collection_id

INDEX = Path(str(idc_index_data.IDC_INDEX_PARQUET_FILEPATH))
PRIOR = Path(str(idc_index_data.PRIOR_VERSIONS_INDEX_PARQUET_FILEPATH))

# qin_pet_phantom: 44 PT series, 2816 instances, all CC BY 3.0 in idc-open-data
PHANTOM_UUID = "d98abc9a-0ddd-44a3-8646-df10344c49d7"  # 81 instances, 4,761,722 bytes
PHANTOM_UID = "1.2.826.0.1.3417726.3.140464.20131001150949437"  # the same series
PHANTOM_UW_UUID = "25ed1798-73aa-4794-8237-9294eb061a7a"  # 47 instances, 6,431,312 bytes
PHANTOM_PARTIAL_UUID = "26c920ca-68e7-483b-944c-c828b723be2b"
# Earlier versions, known only to prior_versions_index:
# cptac_cm series in idc-open-data-two up to release 9; its current version lives elsewhere
PRIOR_TWO_UUID = "00558422-7ab3-4953-95b7-7cddc861d55e"
# tcga_thym series listed twice (GCS bucket public-datasets-idc to 19, idc-open-data to 24)
PRIOR_TWICE_UUID = "0000c569-5c60-4cba-9bc5-1ee5859bc02b"
# cptac_lscc series whose SeriesInstanceUID is gone from the current index
PRIOR_GONE_UUID = "000faa14-9cae-4f00-bef2-0dca3a8f697f"

INSTANCE_A = "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d"
INSTANCE_B = "1b2c3d4e-5f6a-4b7c-8d9e-0f1a2b3c4d5e"
UNKNOWN_UUID = "ffffffff-ffff-4fff-8fff-ffffffffffff"


@pytest.fixture(scope="module")
def catalog() -> Iterator[Catalog]:
    with Catalog() as opened:
        yield opened


def all_records(resolution: Resolution) -> list[SeriesRecord]:
    return [record for batch in resolution.batches() for record in batch]


def by_uuid(records: list[SeriesRecord]) -> dict[str, SeriesRecord]:
    found = {record.crdc_series_uuid: record for record in records}
    assert len(found) == len(records), "a series came out more than once"
    return found


# --- release and tables -------------------------------------------------------------------


def test_release_is_the_major_version_of_idc_index_data(catalog: Catalog) -> None:
    assert catalog.release == 25
    assert str(idc_index_data.__version__).startswith("25.")


def test_the_catalog_scans_on_one_thread(catalog: Catalog) -> None:
    # each table of idc-index-data is one row group: a second thread would find nothing
    # to scan and take CPU from the spare workers and fetches running beside the plan
    assert catalog._conn.execute("SELECT current_setting('threads')").fetchone() == (1,)


def test_index_columns_are_those_of_the_parquet_file(catalog: Catalog) -> None:
    assert len(catalog.index_columns) == 31
    assert catalog.index_columns[:4] == (
        "collection_id",
        "analysis_result_id",
        "PatientID",
        "SeriesInstanceUID",
    )
    assert "crdc_series_uuid" in catalog.index_columns


def test_collection_ids_lists_every_collection_of_the_release(catalog: Catalog) -> None:
    assert len(catalog.collection_ids) == 179
    assert "qin_pet_phantom" in catalog.collection_ids


def test_custom_index_without_version_table_takes_release_from_revisions(
    tmp_path: Path,
) -> None:
    index = tmp_path / "phantom.parquet"
    duckdb.sql(
        f"COPY (SELECT * FROM read_parquet('{INDEX}') WHERE collection_id = 'qin_pet_phantom') "
        f"TO '{index}' (FORMAT parquet)"
    )
    with Catalog(index, PRIOR) as phantom:
        # the newest revision among these series was made in release 22: a lower bound
        assert phantom.release == 22
        resolution = phantom.resolve(Selection(collections=("qin_pet_phantom",)))
        assert resolution.series_count == 44
    (tmp_path / "version_metadata_index.parquet").write_bytes(
        (INDEX.parent / "version_metadata_index.parquet").read_bytes()
    )
    with Catalog(index, PRIOR) as phantom:
        assert phantom.release == 25


def test_missing_index_file_is_a_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="does not exist"):
        Catalog(tmp_path / "absent.parquet")


def test_index_without_required_columns_is_a_configuration_error(tmp_path: Path) -> None:
    index = tmp_path / "thin.parquet"
    duckdb.sql(f"COPY (SELECT 'x' AS collection_id) TO '{index}' (FORMAT parquet)")
    with pytest.raises(ConfigurationError, match="lacks columns crdc_series_uuid"):
        Catalog(index, PRIOR)


def test_index_with_a_file_row_number_column_is_a_configuration_error(tmp_path: Path) -> None:
    index = tmp_path / "numbered.parquet"
    duckdb.sql(
        f"COPY (SELECT *, 1 AS File_Row_Number FROM read_parquet('{INDEX}') LIMIT 3) "
        f"TO '{index}' (FORMAT parquet)"
    )
    with pytest.raises(ConfigurationError, match="column named File_Row_Number"):
        Catalog(index, PRIOR)


# --- collections --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def phantom(catalog: Catalog) -> tuple[Resolution, list[list[SeriesRecord]]]:
    resolution = catalog.resolve(
        Selection(collections=("QIN-PET-Phantom",)),
        layout_columns=("PatientID", "StudyInstanceUID", "Modality"),
        batch_size=10,
    )
    return resolution, list(resolution.batches())


def test_collection_resolves_to_exact_counts(
    phantom: tuple[Resolution, list[list[SeriesRecord]]],
) -> None:
    resolution, batches = phantom
    records = by_uuid([record for batch in batches for record in batch])
    assert (resolution.series_count, resolution.total_instances) == (44, 2816)
    assert resolution.total_bytes == 246_305_000
    assert resolution.unknown == []
    assert len(records) == 44
    assert sum(record.instance_count or 0 for record in records.values()) == 2816
    record = records[PHANTOM_UUID]
    assert record.SeriesInstanceUID == PHANTOM_UID
    assert (record.collection_id, record.aws_bucket) == ("qin_pet_phantom", "idc-open-data")
    assert (record.license_short_name, record.idc_version) == ("CC BY 3.0", 25)
    assert (record.instance_count, record.series_size_bytes) == (81, 4_761_722)
    assert record.source_DOI == "10.7937/k9/tcia.2015.zpukhckb"
    assert record.instances is None


def test_batches_hold_at_most_batch_size_series(
    phantom: tuple[Resolution, list[list[SeriesRecord]]],
) -> None:
    _, batches = phantom
    assert sorted((len(batch) for batch in batches), reverse=True) == [10, 10, 10, 10, 4]


def test_layout_values_hold_each_requested_column(
    phantom: tuple[Resolution, list[list[SeriesRecord]]],
) -> None:
    _, batches = phantom
    record = next(r for batch in batches for r in batch if r.crdc_series_uuid == PHANTOM_UUID)
    assert dict(record.layout_values) == {
        "PatientID": "QIN-PET-Phantom-UI-01",
        "StudyInstanceUID": record.layout_values["StudyInstanceUID"],
        "Modality": "PT",
    }
    assert str(record.layout_values["StudyInstanceUID"]).startswith("1.")


def test_series_size_bytes_is_exact_for_every_series_of_a_collection(
    phantom: tuple[Resolution, list[list[SeriesRecord]]],
) -> None:
    _, batches = phantom
    sizes = dict(
        duckdb.sql(
            f"SELECT crdc_series_uuid, series_size_MB FROM read_parquet('{INDEX}') "
            "WHERE collection_id = 'qin_pet_phantom'"
        ).fetchall()
    )
    for record in (r for batch in batches for r in batch):
        exact = sizes[record.crdc_series_uuid] * 1e6
        # a whole number of bytes up to float error, far from any rounding boundary
        assert abs(exact - round(exact)) < 1e-4
        assert record.series_size_bytes == round(exact)


def test_series_size_mb_is_a_whole_number_of_bytes_in_every_current_row() -> None:
    worst = duckdb.sql(
        "SELECT max(abs(series_size_MB * 1e6 - round(series_size_MB * 1e6))) "
        f"FROM read_parquet('{INDEX}')"
    ).fetchone()
    assert worst is not None
    assert worst[0] < 1e-4


def test_prior_version_sizes_are_rounded_so_records_leave_them_out() -> None:
    # every prior_versions_index size is a multiple of 10 kB: not a byte count to verify
    not_rounded = duckdb.sql(
        f"SELECT count(*) FROM read_parquet('{PRIOR}') "
        "WHERE CAST(round(series_size_MB * 1e6) AS BIGINT) % 10000 <> 0"
    ).fetchone()
    assert not_rounded == (0,)


def test_collection_names_match_ignoring_case_dashes_and_spaces(catalog: Catalog) -> None:
    resolution = catalog.resolve(
        Selection(collections=("QIN-PET-Phantom", " qin pet phantom ", "qin_pet_phantom")),
        batch_size=100,
    )
    assert resolution.unknown == []
    assert resolution.series_count == 44
    assert len(by_uuid(all_records(resolution))) == 44


def test_normalize_collection_id_spells_names_as_idc_does() -> None:
    assert normalize_collection_id(" TCGA-LUAD ") == "tcga_luad"
    assert normalize_collection_id("NSCLC Radiomics") == "nsclc_radiomics"


def test_unknown_collection_is_reported_and_close_names_suggested(catalog: Catalog) -> None:
    resolution = catalog.resolve(Selection(collections=("QIN-PET-Phantm",)))
    [unknown] = resolution.unknown
    assert (unknown.kind, unknown.value, unknown.origin) == (
        "collection", "QIN-PET-Phantm", "--collection",
    )  # fmt: skip
    assert unknown.given
    assert unknown.removed_after is None
    assert unknown.suggestions[0] == "qin_pet_phantom"
    assert unknown.describe().startswith(
        "unknown collection 'QIN-PET-Phantm' (--collection); did you mean 'qin_pet_phantom'"
    )
    assert (resolution.series_count, resolution.total_instances, resolution.total_bytes) == (
        0,
        0,
        0,
    )
    assert all_records(resolution) == []
    assert catalog.suggest_collections("QIN-PET-Phantm")[0] == "qin_pet_phantom"


# --- series values and manifest entries ---------------------------------------------------

MANIFEST = f"""\
# IDC portal export
cp s3://idc-open-data/{PHANTOM_UUID}/* .
s3://idc-open-data/{PHANTOM_PARTIAL_UUID}/{INSTANCE_A}.dcm
s3://idc-open-data/{PHANTOM_PARTIAL_UUID}/{INSTANCE_B}.dcm
s3://idc-open-data/{PHANTOM_PARTIAL_UUID}/{INSTANCE_A}.dcm
s3://idc-open-data/{PHANTOM_UUID}/{INSTANCE_A}.dcm
gs://public-datasets-idc/{PRIOR_TWICE_UUID}/{INSTANCE_B}.dcm
s3://idc-open-data/{UNKNOWN_UUID}/*
"""


@pytest.fixture(scope="module")
def mixed(catalog: Catalog) -> tuple[Resolution, dict[str, SeriesRecord]]:
    selection = Selection(
        series=(
            PHANTOM_UID,
            f" {PHANTOM_UW_UUID.upper()} ",
            PRIOR_TWO_UUID,
            PRIOR_GONE_UUID,
            "1.2.3.4.5.not.in.idc",
            "ffffffff-0000-4000-8000-000000000000",
        ),
        manifest_entries=tuple(parse_manifest_text(MANIFEST, "cohort.s5cmd")),
    )
    resolution = catalog.resolve(selection, layout_columns=("PatientID", "StudyDate", "Modality"))
    return resolution, by_uuid(all_records(resolution))


def test_each_series_comes_out_once_however_often_it_is_named(
    mixed: tuple[Resolution, dict[str, SeriesRecord]],
) -> None:
    resolution, records = mixed
    # PHANTOM_UUID is named by UID, by a manifest prefix and by one of its instances
    assert set(records) == {
        PHANTOM_UUID,
        PHANTOM_UW_UUID,
        PHANTOM_PARTIAL_UUID,
        PRIOR_TWO_UUID,
        PRIOR_TWICE_UUID,
        PRIOR_GONE_UUID,
    }
    assert resolution.series_count == 6


def test_series_instance_uid_and_any_case_uuid_resolve(
    mixed: tuple[Resolution, dict[str, SeriesRecord]],
) -> None:
    _, records = mixed
    assert records[PHANTOM_UUID].SeriesInstanceUID == PHANTOM_UID
    assert records[PHANTOM_UW_UUID].instance_count == 47
    assert records[PHANTOM_UW_UUID].instances is None


def test_named_series_carry_the_records_a_scan_of_their_collection_gives(
    tmp_path: Path,
) -> None:
    # Named series are found by row number and their records read by it (two queries):
    # the records must be those of the rows the names match, in an index of many row groups
    # as in idc-index-data's single one.
    index = tmp_path / "grouped.parquet"
    duckdb.sql(
        f"COPY (SELECT * FROM read_parquet('{INDEX}') WHERE collection_id IN "
        "('qin_pet_phantom', 'lidc_idri') ORDER BY SeriesInstanceUID) "
        f"TO '{index}' (FORMAT parquet, ROW_GROUP_SIZE 2048)"
    )
    layout = ("PatientID", "StudyInstanceUID", "Modality", "SeriesInstanceUID")
    for source in (Catalog(), Catalog(index, PRIOR)):
        with source as catalog:
            scanned = by_uuid(
                all_records(
                    catalog.resolve(Selection(collections=("qin_pet_phantom", "lidc_idri")), layout)
                )
            )
            assert len(scanned) == 44 + 15_116
            # every third series by SeriesInstanceUID, the rest by crdc_series_uuid
            ordered = sorted(scanned.values(), key=lambda record: record.crdc_series_uuid)
            names = tuple(
                record.SeriesInstanceUID if number % 3 == 0 else record.crdc_series_uuid
                for number, record in enumerate(ordered)
            )
            named = by_uuid(all_records(catalog.resolve(Selection(series=names), layout)))
            assert named == scanned


def test_single_instances_of_a_series_are_grouped(
    mixed: tuple[Resolution, dict[str, SeriesRecord]],
) -> None:
    _, records = mixed
    assert records[PHANTOM_PARTIAL_UUID].instances == frozenset({INSTANCE_A, INSTANCE_B})
    # the catalog keeps the series' own counts; the totals count the named instances
    assert records[PHANTOM_PARTIAL_UUID].instance_count == 81


def test_a_series_selected_whole_ignores_its_single_instances(
    mixed: tuple[Resolution, dict[str, SeriesRecord]],
) -> None:
    _, records = mixed
    assert records[PHANTOM_UUID].instances is None


def test_prior_version_resolves_with_its_own_bucket_and_release(
    mixed: tuple[Resolution, dict[str, SeriesRecord]],
) -> None:
    _, records = mixed
    record = records[PRIOR_TWO_UUID]
    assert (record.collection_id, record.aws_bucket, record.idc_version) == (
        "cptac_cm",
        "idc-open-data-two",
        9,
    )
    assert (record.instance_count, record.series_size_bytes) == (None, None)
    # license and DOI of the current version of the same SeriesInstanceUID
    assert record.license_short_name == "CC BY 4.0"
    assert record.source_DOI == "10.5281/zenodo.12666775"


def test_prior_version_listed_twice_resolves_to_its_latest_row(
    mixed: tuple[Resolution, dict[str, SeriesRecord]],
) -> None:
    _, records = mixed
    record = records[PRIOR_TWICE_UUID]
    assert (record.aws_bucket, record.idc_version) == ("idc-open-data", 24)
    assert record.instances == frozenset({INSTANCE_B})


def test_prior_version_without_current_series_takes_its_collection_license(
    mixed: tuple[Resolution, dict[str, SeriesRecord]],
) -> None:
    _, records = mixed
    record = records[PRIOR_GONE_UUID]
    assert record.collection_id == "cptac_lscc"
    assert (record.license_short_name, record.source_DOI) == ("CC BY 4.0", None)


def test_prior_versions_lack_layout_columns_they_do_not_have(
    mixed: tuple[Resolution, dict[str, SeriesRecord]],
) -> None:
    _, records = mixed
    assert dict(records[PRIOR_TWO_UUID].layout_values) == {
        "PatientID": "C3L-04739",
        "StudyDate": None,
        "Modality": "SM",
    }
    assert dict(records[PHANTOM_UW_UUID].layout_values) == {
        "PatientID": "QIN-PET-Phantom-UW-01",
        "StudyDate": "2013-09-24",
        "Modality": "PT",
    }


def test_totals_count_named_instances_and_only_exact_sizes(
    mixed: tuple[Resolution, dict[str, SeriesRecord]],
) -> None:
    resolution, _ = mixed
    # whole: 81 + 47 instances; partial: 2 + 1 named; prior whole series: unknown count
    assert resolution.total_instances == 81 + 47 + 2 + 1
    assert resolution.total_bytes == 4_761_722 + 6_431_312


def test_every_unknown_entry_is_reported_with_its_origin(
    mixed: tuple[Resolution, dict[str, SeriesRecord]],
) -> None:
    resolution, _ = mixed
    assert [(u.kind, u.value, u.origin, u.given) for u in resolution.unknown] == [
        ("series", "1.2.3.4.5.not.in.idc", "--series", True),
        ("crdc_series_uuid", "ffffffff-0000-4000-8000-000000000000", "--series", True),
        ("crdc_series_uuid", UNKNOWN_UUID, "cohort.s5cmd:8", True),
    ]


# --- SQL ----------------------------------------------------------------------------------


def test_sql_selection_resolves_its_series_instance_uids(catalog: Catalog) -> None:
    resolution = catalog.resolve(
        Selection(
            sql=(
                "SELECT SeriesInstanceUID FROM index\n"
                "WHERE collection_id = 'qin_pet_phantom' AND PatientID LIKE '%UW%' -- UW only\n;",
            )
        )
    )
    records = by_uuid(all_records(resolution))
    expected = duckdb.sql(
        f"SELECT count(*) FROM read_parquet('{INDEX}') "
        "WHERE collection_id = 'qin_pet_phantom' AND PatientID LIKE '%UW%'"
    ).fetchone()
    assert expected is not None
    assert 0 < resolution.series_count == len(records) == expected[0] < 44
    assert PHANTOM_UW_UUID in records
    assert resolution.unknown == []


def test_sql_and_collection_together_give_each_series_once(catalog: Catalog) -> None:
    resolution = catalog.resolve(
        Selection(
            collections=("qin_pet_phantom",),
            sql=("SELECT crdc_series_uuid FROM index WHERE collection_id = 'qin_pet_phantom'",),
        )
    )
    assert resolution.series_count == 44
    assert len(by_uuid(all_records(resolution))) == 44


def test_sql_over_prior_versions_and_literal_values_reports_unknowns(catalog: Catalog) -> None:
    sql = f"""
        SELECT crdc_series_uuid FROM prior_versions_index
        WHERE crdc_series_uuid = '{PRIOR_TWO_UUID}'
        UNION ALL SELECT * FROM (VALUES ('{UNKNOWN_UUID}'), (NULL)) AS extra(crdc_series_uuid)
    """
    resolution = catalog.resolve(Selection(sql=(sql,)))
    records = by_uuid(all_records(resolution))
    assert set(records) == {PRIOR_TWO_UUID}
    assert records[PRIOR_TWO_UUID].aws_bucket == "idc-open-data-two"
    # values a query returned are reported, but nobody typed them: not a typo to stop on
    assert resolution.unknown == [
        UnknownSelection("crdc_series_uuid", "NULL", "--sql", given=False),
        UnknownSelection("crdc_series_uuid", UNKNOWN_UUID, "--sql", given=False),
    ]


def test_unknown_ids_in_the_sql_answer_do_not_hide_named_series(catalog: Catalog) -> None:
    resolution = catalog.resolve(
        Selection(
            series=(PHANTOM_UUID,),
            sql=("SELECT '1.2.3.4.5.not.in.idc' AS SeriesInstanceUID",),
        )
    )
    assert [record.crdc_series_uuid for record in all_records(resolution)] == [PHANTOM_UUID]
    assert resolution.unknown == [
        UnknownSelection("series", "1.2.3.4.5.not.in.idc", "--sql", given=False)
    ]


def test_failing_sql_is_a_selection_error_with_the_duckdb_message(catalog: Catalog) -> None:
    with pytest.raises(SelectionError, match="no_such_column"):
        catalog.resolve(Selection(sql=("SELECT no_such_column FROM index",)))
    with pytest.raises(SelectionError, match=r"does not parse: .*syntax error"):
        catalog.resolve(Selection(sql=("SELEC SeriesInstanceUID FROM index",)))


def test_sql_without_an_id_column_is_a_selection_error(catalog: Catalog) -> None:
    with pytest.raises(SelectionError, match="SeriesInstanceUID or crdc_series_uuid") as caught:
        catalog.resolve(Selection(sql=("SELECT PatientID, Modality FROM index LIMIT 1",)))
    assert "PatientID, Modality" in str(caught.value)


@pytest.mark.parametrize(
    "sql",
    [
        'DROP VIEW "index"',
        "SELECT SeriesInstanceUID FROM index; DROP VIEW prior_versions_index",
        "EXPLAIN SELECT SeriesInstanceUID FROM index",
        "",
    ],
)
def test_sql_must_be_one_select_statement(catalog: Catalog, sql: str) -> None:
    with pytest.raises(SelectionError, match="selection SQL must be"):
        catalog.resolve(Selection(sql=(sql,)))


def test_sql_cannot_close_its_subquery_and_run_more(catalog: Catalog) -> None:
    escape = "SELECT 1 AS SeriesInstanceUID) AS x; DROP VIEW prior_versions_index; SELECT (1"
    with pytest.raises(SelectionError):
        catalog.resolve(Selection(sql=(escape,)))
    still_there = (
        "SELECT crdc_series_uuid FROM prior_versions_index "
        f"WHERE crdc_series_uuid = '{PRIOR_TWO_UUID}'"
    )
    assert catalog.resolve(Selection(sql=(still_there,))).series_count == 1


# --- selection values travel through a private file -----------------------------------


def test_selection_values_leave_no_file_behind(
    catalog: Catalog, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    resolution = catalog.resolve(Selection(collections=("qin_pet_phantom",), series=("x\ty",)))
    assert resolution.unknown == [UnknownSelection("series", "x\ty", "--series")]
    assert list(tmp_path.iterdir()) == []


def test_resolving_does_not_import_pandas() -> None:
    # duckdb imports pandas, numpy and pyarrow (~90 MB) on the first bound parameter
    script = (
        "import sys\n"
        "from idc_sync.catalog.index import Catalog, Selection\n"
        "with Catalog() as catalog:\n"
        "    resolution = catalog.resolve(\n"
        f"        Selection(collections=('qin_pet_phantom',), series=('{PHANTOM_UID}',)))\n"
        "    assert resolution.series_count == 44\n"
        "    assert sum(map(len, resolution.batches())) == 44\n"
        "heavy = sorted({'pandas', 'numpy', 'pyarrow'} & set(sys.modules))\n"
        "assert not heavy, heavy\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert (done.returncode, done.stderr) == (0, "")


# --- API contract -------------------------------------------------------------------------


def test_selection_is_empty_only_without_any_part() -> None:
    assert Selection().is_empty()
    assert not Selection(collections=("nlst",)).is_empty()
    assert not Selection(sql=("SELECT 1",)).is_empty()


def test_empty_selection_resolves_to_nothing(catalog: Catalog) -> None:
    resolution = catalog.resolve(Selection(), layout_columns=("PatientID",))
    assert (resolution.series_count, resolution.unknown) == (0, [])
    assert all_records(resolution) == []


def test_unknown_layout_column_is_a_configuration_error(catalog: Catalog) -> None:
    with pytest.raises(ConfigurationError, match="did you mean PatientID"):
        catalog.resolve(Selection(collections=("nlst",)), layout_columns=("PatientId",))


def test_batch_size_below_one_is_refused(catalog: Catalog) -> None:
    with pytest.raises(ValueError, match="batch_size"):
        catalog.resolve(Selection(collections=("nlst",)), batch_size=0)


def test_a_stream_survives_resolving_another_selection(catalog: Catalog) -> None:
    first = catalog.resolve(Selection(series=(PHANTOM_UUID, PHANTOM_UW_UUID)), batch_size=1)
    stream = first.batches()
    seen = [record.crdc_series_uuid for record in next(stream)]
    second = catalog.resolve(Selection(series=(PHANTOM_PARTIAL_UUID,)))
    assert [r.crdc_series_uuid for r in all_records(second)] == [PHANTOM_PARTIAL_UUID]
    seen += [record.crdc_series_uuid for batch in stream for record in batch]
    assert sorted(seen) == sorted([PHANTOM_UUID, PHANTOM_UW_UUID])
    # one open stream per resolution: a second would silently cut the first short
    open_stream = first.batches()
    next(open_stream)
    with pytest.raises(RuntimeError, match="stream of this Resolution is open"):
        next(first.batches())
    open_stream.close()
    assert len(list(first.batches())) == 2
