"""Tests of idc_sync.core.layout: template parsing, path sanitizing, key parsing, safe joins."""

from __future__ import annotations

import os
import unicodedata
import uuid
from pathlib import Path, PurePosixPath

import duckdb
import idc_index_data
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from idc_index.index import IDCClient

from idc_sync.core.errors import ConfigurationError, UnsafePathError
from idc_sync.core.layout import (
    DEFAULT_TEMPLATE,
    MISSING_VALUE,
    NAME_MAX_BYTES,
    instance_file_name,
    parse_object_key,
    render_series_dir,
    resolve_inside,
    template_columns,
)

# The columns idc-index allows in a dirTemplate, plus a few more of the index's columns
# (including ones that are prefixes of others, to exercise longest-match).
COLUMNS = (
    "collection_id",
    "PatientID",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "Modality",
    "BodyPartExamined",
    "SeriesDescription",
    "SeriesNumber",
    "Series",
)

ROW = {
    "collection_id": "qin_pet_phantom",
    "PatientID": "QIN-PET-Phantom-UI-01",
    "StudyInstanceUID": "1.3.6.1.4.1.14519.5.2.1.1",
    "SeriesInstanceUID": "1.3.6.1.4.1.14519.5.2.1.2",
    "Modality": "PT",
}


def component_is_safe(component: str) -> bool:
    return (
        component not in ("", ".", "..")
        and not any(char in component for char in "/\\\0")
        and not any(unicodedata.category(char) in ("Cc", "Cs") for char in component)
        and len(component.encode("utf-8")) <= NAME_MAX_BYTES
    )


# --- template_columns -------------------------------------------------------------------


def test_default_template_uses_the_five_idc_index_columns_in_order() -> None:
    assert template_columns(DEFAULT_TEMPLATE, COLUMNS) == (
        "collection_id",
        "PatientID",
        "StudyInstanceUID",
        "Modality",
        "SeriesInstanceUID",
    )


def test_default_template_matches_idc_index() -> None:
    assert DEFAULT_TEMPLATE == IDCClient.DOWNLOAD_HIERARCHY_DEFAULT


def test_longest_known_column_wins_over_a_shorter_prefix() -> None:
    # "Series" is known too; "%SeriesNumber" must not parse as Series + literal "Number".
    assert template_columns("%SeriesNumber-%Series", COLUMNS) == ("SeriesNumber", "Series")
    assert template_columns("%Seriesx", COLUMNS) == ("Series",)


def test_underscore_after_a_column_is_a_literal_separator() -> None:
    assert template_columns("%Modality_%SeriesInstanceUID", COLUMNS) == (
        "Modality",
        "SeriesInstanceUID",
    )


def test_repeated_columns_are_listed_once() -> None:
    assert template_columns("%Modality/%Modality_%PatientID", COLUMNS) == (
        "Modality",
        "PatientID",
    )


def test_empty_template_is_a_flat_layout() -> None:
    assert template_columns("", COLUMNS) == ()
    assert render_series_dir("", ROW, COLUMNS) == PurePosixPath(".")


@pytest.mark.parametrize(
    ("template", "bad_token"),
    [
        ("%collection_id/%PatientName", "%PatientName"),
        ("%collection_id/%", "%"),
        ("%patientid", "%patientid"),  # column names are case-sensitive, as in the index
        ("x%-y", "%"),
    ],
)
def test_unknown_column_token_is_named_with_the_template(template: str, bad_token: str) -> None:
    with pytest.raises(ConfigurationError) as raised:
        template_columns(template, COLUMNS)
    assert repr(bad_token) in str(raised.value)
    assert repr(template) in str(raised.value)


def test_unknown_column_error_suggests_a_close_name() -> None:
    with pytest.raises(ConfigurationError, match="did you mean %PatientID"):
        template_columns("%PatientId", COLUMNS)


@pytest.mark.parametrize(
    "template",
    [
        "/%collection_id",
        "%collection_id//%PatientID",
        "%collection_id/",
        "../%collection_id",
        "%collection_id/../%PatientID",
        "./%collection_id",
        "%collection_id/a\\b",
        "%collection_id/a\0b",
        "%collection_id/a\nb",
    ],
)
def test_unsafe_templates_are_configuration_errors(template: str) -> None:
    with pytest.raises(ConfigurationError):
        template_columns(template, COLUMNS)
    with pytest.raises(ConfigurationError):
        render_series_dir(template, ROW, COLUMNS)


# --- render_series_dir ------------------------------------------------------------------


def test_default_template_renders_like_idc_download() -> None:
    assert render_series_dir(DEFAULT_TEMPLATE, ROW, COLUMNS) == PurePosixPath(
        "qin_pet_phantom/QIN-PET-Phantom-UI-01/1.3.6.1.4.1.14519.5.2.1.1/"
        "PT_1.3.6.1.4.1.14519.5.2.1.2"
    )


def test_spaces_and_equals_in_patient_id_are_kept_verbatim() -> None:
    row = {**ROW, "PatientID": "GBM_DSC_MRI_DRO_Bo=15T"}
    assert render_series_dir("%PatientID", row, COLUMNS) == PurePosixPath("GBM_DSC_MRI_DRO_Bo=15T")
    row = {**ROW, "PatientID": "ZZ RIDER MR8 1"}
    assert render_series_dir("%PatientID", row, COLUMNS) == PurePosixPath("ZZ RIDER MR8 1")


@pytest.mark.parametrize(
    ("value", "component"),
    [
        ("a/b", "a%2Fb"),
        ("a\\b", "a%5Cb"),
        ("a\0b", "a%00b"),
        ("tab\there", "tab%09here"),
        ("del\x7f", "del%7F"),
        ("c1\x85", "c1%C2%85"),
        ("100%", "100%25"),
        ("..", "%2E%2E"),
        (".", "%2E"),
        ("...", "..."),
        ("/", "%2F"),
        ("../../etc", "..%2F..%2Fetc"),
        ("\ud800", "%ED%A0%80"),
    ],
)
def test_unsafe_values_are_percent_encoded(value: str, component: str) -> None:
    assert render_series_dir("%PatientID", {"PatientID": value}, COLUMNS) == PurePosixPath(
        component
    )


def test_dot_dot_made_by_literal_and_value_together_is_escaped() -> None:
    rendered = render_series_dir(".%PatientID", {"PatientID": "."}, COLUMNS)
    assert rendered == PurePosixPath("%2E%2E")


@pytest.mark.parametrize("value", [None, "", float("nan")])
def test_missing_values_render_as_the_placeholder(value: object) -> None:
    row = {**ROW, "Modality": value}
    assert render_series_dir("%Modality_%SeriesInstanceUID", row, COLUMNS) == PurePosixPath(
        f"{MISSING_VALUE}_1.3.6.1.4.1.14519.5.2.1.2"
    )


def test_absent_column_renders_as_the_placeholder_and_keeps_the_depth() -> None:
    rendered = render_series_dir("%collection_id/%BodyPartExamined/%Modality", ROW, COLUMNS)
    assert rendered.parts == ("qin_pet_phantom", MISSING_VALUE, "PT")


def test_non_string_values_render_as_text() -> None:
    rendered = render_series_dir("%SeriesNumber", {"SeriesNumber": 3}, COLUMNS)
    assert rendered == PurePosixPath("3")


def test_long_component_is_cut_to_name_max_with_a_distinguishing_suffix() -> None:
    first = render_series_dir("%SeriesDescription", {"SeriesDescription": "é" * 200 + "a"}, COLUMNS)
    second = render_series_dir(
        "%SeriesDescription", {"SeriesDescription": "é" * 200 + "b"}, COLUMNS
    )
    assert first != second
    for rendered in (first, second):
        (component,) = rendered.parts
        assert len(component.encode("utf-8")) <= NAME_MAX_BYTES
        assert component.startswith("é" * 100)


def test_component_of_exactly_name_max_bytes_is_kept() -> None:
    value = "x" * NAME_MAX_BYTES
    assert render_series_dir("%PatientID", {"PatientID": value}, COLUMNS).parts == (value,)


def test_render_matches_idc_index_directory_sql_on_real_index_rows() -> None:
    # idc-index builds each directory with a DuckDB CONCAT of the raw column values
    # (IDCClient._generate_sql_concat_for_building_directory). Run its SQL on real rows,
    # including every PatientID with a space or '=', and compare.
    concat = IDCClient._generate_sql_concat_for_building_directory(  # type: ignore[no-untyped-call]
        dirTemplate=DEFAULT_TEMPLATE, downloadDir="ROOT"
    )
    parquet = idc_index_data.IDC_INDEX_PARQUET_FILEPATH
    columns = ["collection_id", "PatientID", "StudyInstanceUID", "Modality", "SeriesInstanceUID"]
    select = ", ".join(columns)
    rows = duckdb.sql(
        f"""
        WITH index AS (SELECT * FROM read_parquet('{parquet}'))
        SELECT {select}, {concat} AS path FROM index
        WHERE NOT regexp_full_match(PatientID, '[A-Za-z0-9._-]+')
        UNION ALL
        SELECT * FROM (
            SELECT {select}, {concat} AS path FROM index USING SAMPLE 3000 ROWS (reservoir, 7)
        )
        """
    ).fetchall()
    assert len(rows) > 3300
    assert any(" " in row[1] for row in rows)
    assert any("=" in row[1] for row in rows)
    for *values, idc_index_path in rows:
        ours = render_series_dir(DEFAULT_TEMPLATE, dict(zip(columns, values, strict=True)), COLUMNS)
        assert "ROOT/" + str(ours) == idc_index_path


ANY_VALUE = st.one_of(
    st.none(),
    st.integers(),
    st.text(),
    st.text(alphabet=st.sampled_from("./\\%\0\x7f\x85 =_-aé"), max_size=8),
    st.text(min_size=200, max_size=400),
)


@given(
    collection_id=ANY_VALUE,
    patient_id=ANY_VALUE,
    modality=ANY_VALUE,
    series_uid=ANY_VALUE,
)
@settings(max_examples=300)
def test_every_rendered_component_is_one_safe_name(
    collection_id: object, patient_id: object, modality: object, series_uid: object
) -> None:
    row = {
        "collection_id": collection_id,
        "PatientID": patient_id,
        "Modality": modality,
        "SeriesInstanceUID": series_uid,
    }
    template = "%collection_id/%PatientID/%Modality_%SeriesInstanceUID"
    rendered = render_series_dir(template, row, COLUMNS)
    assert not rendered.is_absolute()
    assert len(rendered.parts) == 3
    assert all(component_is_safe(part) for part in rendered.parts)
    # A pure function of its input: the same row always lands in the same place.
    assert render_series_dir(template, dict(row), COLUMNS) == rendered


@given(first=st.text(), second=st.text())
def test_distinct_values_give_distinct_components(first: str, second: str) -> None:
    # Empty strings are "missing" and share the placeholder with None by design.
    if first == second or "" in (first, second) or MISSING_VALUE in (first, second):
        return
    assert render_series_dir("%PatientID", {"PatientID": first}, COLUMNS) != render_series_dir(
        "%PatientID", {"PatientID": second}, COLUMNS
    )


@given(value=st.text(alphabet=st.sampled_from("ABCxyz019._- ="), min_size=1, max_size=64))
def test_values_of_idc_index_characters_render_verbatim(value: str) -> None:
    rendered = render_series_dir("%PatientID", {"PatientID": value}, COLUMNS)
    if value in (".", ".."):
        assert rendered.parts == ("%2E" * len(value),)
    else:
        assert rendered.parts == (value,)


# --- instance_file_name and parse_object_key ---------------------------------------------

SERIES = "085e85b3-3780-47f6-8538-585bcca95336"
INSTANCE = "8f4a4d6c-0b7e-4a0e-9b2f-3c1d2e4f5a6b"


def test_instance_file_name_is_uuid_dot_dcm() -> None:
    assert instance_file_name(INSTANCE) == f"{INSTANCE}.dcm"


@pytest.mark.parametrize("bad", ["", "../x", INSTANCE.upper(), INSTANCE + "/", "x" * 36])
def test_instance_file_name_refuses_non_uuids(bad: str) -> None:
    with pytest.raises(UnsafePathError):
        instance_file_name(bad)


@given(series=st.uuids(), instance=st.uuids())
def test_parse_object_key_round_trips_canonical_keys(
    series: uuid.UUID, instance: uuid.UUID
) -> None:
    key = f"{series}/{instance_file_name(str(instance))}"
    assert parse_object_key(key, str(series)) == str(instance)


@pytest.mark.parametrize(
    "key",
    [
        f"{INSTANCE}.dcm",
        f"00000000-0000-0000-0000-000000000000/{INSTANCE}.dcm",
        f"{SERIES}//{INSTANCE}.dcm",
        f"{SERIES}/sub/{INSTANCE}.dcm",
        f"{SERIES}/../{INSTANCE}.dcm",
        f"{SERIES}/..",
        f"{SERIES}/{INSTANCE.upper()}.dcm",
        f"{SERIES}/{INSTANCE}.DCM",
        f"{SERIES}/{INSTANCE}.dcm.tmp",
        f"{SERIES}/{INSTANCE}",
        f"{SERIES}/{INSTANCE}.dcm\n",
        f"{SERIES}/{INSTANCE}.dcm\0",
        f"/{SERIES}/{INSTANCE}.dcm",
        f"{SERIES}/",
        "",
    ],
)
def test_parse_object_key_refuses_other_shapes_and_quotes_the_key(key: str) -> None:
    with pytest.raises(UnsafePathError) as raised:
        parse_object_key(key, SERIES)
    assert repr(key) in str(raised.value)


def test_parse_object_key_refuses_a_non_canonical_series_uuid() -> None:
    with pytest.raises(UnsafePathError):
        parse_object_key(f"{SERIES.upper()}/{INSTANCE}.dcm", SERIES.upper())


# --- resolve_inside ------------------------------------------------------------------------


def test_resolve_inside_joins_paths_that_do_not_exist_yet(tmp_path: Path) -> None:
    relative = PurePosixPath("coll/patient/study/CT_1.2")
    assert resolve_inside(tmp_path, relative) == tmp_path / "coll" / "patient" / "study" / "CT_1.2"


def test_resolve_inside_flat_layout_is_the_root(tmp_path: Path) -> None:
    assert resolve_inside(tmp_path, PurePosixPath(".")) == tmp_path


def test_resolve_inside_accepts_existing_real_directories(tmp_path: Path) -> None:
    (tmp_path / "coll" / "patient").mkdir(parents=True)
    assert resolve_inside(tmp_path, PurePosixPath("coll/patient/x.dcm")) == (
        tmp_path / "coll" / "patient" / "x.dcm"
    )


@pytest.mark.parametrize("relative", ["/etc/passwd", "../outside", "coll/../../outside", "a/.."])
def test_resolve_inside_refuses_absolute_and_dot_dot(tmp_path: Path, relative: str) -> None:
    with pytest.raises(UnsafePathError):
        resolve_inside(tmp_path, PurePosixPath(relative))


def test_resolve_inside_refuses_nul(tmp_path: Path) -> None:
    with pytest.raises(UnsafePathError):
        resolve_inside(tmp_path, PurePosixPath("a\0b"))


def test_resolve_inside_refuses_a_planted_directory_symlink(tmp_path: Path) -> None:
    root = tmp_path / "mirror"
    outside = tmp_path / "outside"
    (root / "coll").mkdir(parents=True)
    outside.mkdir()
    (root / "coll" / "patient").symlink_to(outside, target_is_directory=True)
    with pytest.raises(UnsafePathError, match="symlink"):
        resolve_inside(root, PurePosixPath("coll/patient/study/x.dcm"))


def test_resolve_inside_refuses_a_symlink_even_if_it_points_inside(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "alias").symlink_to(tmp_path / "real", target_is_directory=True)
    with pytest.raises(UnsafePathError):
        resolve_inside(tmp_path, PurePosixPath("alias/x.dcm"))


def test_resolve_inside_refuses_a_symlink_at_the_target_itself(tmp_path: Path) -> None:
    (tmp_path / "coll").mkdir()
    (tmp_path / "coll" / "x.dcm").symlink_to(tmp_path / "elsewhere.dcm")
    with pytest.raises(UnsafePathError):
        resolve_inside(tmp_path, PurePosixPath("coll/x.dcm"))


def test_resolve_inside_refuses_a_dangling_symlink(tmp_path: Path) -> None:
    (tmp_path / "coll").symlink_to(tmp_path / "missing", target_is_directory=True)
    with pytest.raises(UnsafePathError):
        resolve_inside(tmp_path, PurePosixPath("coll/x.dcm"))


def test_resolve_inside_allows_the_root_itself_to_be_a_symlink(tmp_path: Path) -> None:
    (tmp_path / "disk").mkdir()
    root = tmp_path / "mirror"
    root.symlink_to(tmp_path / "disk", target_is_directory=True)
    assert resolve_inside(root, PurePosixPath("coll/x.dcm")) == root / "coll" / "x.dcm"


def test_resolve_inside_stops_below_a_regular_file(tmp_path: Path) -> None:
    # A file where a directory should be is not an escape; creating the directory fails later.
    (tmp_path / "coll").write_bytes(b"")
    assert resolve_inside(tmp_path, PurePosixPath("coll/x.dcm")) == tmp_path / "coll" / "x.dcm"


@given(value=st.text(min_size=1, max_size=300))
@settings(max_examples=100)
def test_rendered_dirs_always_resolve_inside_the_root(value: str) -> None:
    root = Path("/nonexistent-idc-sync-root")
    row = {"collection_id": value, "PatientID": value}
    relative = render_series_dir("%collection_id/%PatientID", row, COLUMNS)
    resolved = resolve_inside(root, relative)
    assert os.path.commonpath([root, resolved]) == str(root)
    assert resolved != root
