"""Hostile names: object keys and index values built to escape the mirror root or to
overwrite another file, and symlinks planted inside the mirror. Property tests drive the
pure functions (parse_object_key, render_series_dir, resolve_inside); end-to-end runs
against the test server show that nothing is written outside the root and nothing is
overwritten."""

from __future__ import annotations

import asyncio
import os
import uuid
from pathlib import Path, PurePosixPath

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from idc_sync.core.errors import UnsafePathError
from idc_sync.core.layout import (
    DEFAULT_TEMPLATE,
    NAME_MAX_BYTES,
    parse_object_key,
    render_series_dir,
    resolve_inside,
)
from idc_sync.run.jobs import SyncReport, sync
from tests.support import dataset
from tests.support.mirror import assert_mirrored, expected_path, settings_for, state_rows
from tests.support.s3server import S3TestServer

SERIES = "2b80a40a-40bd-4805-b974-e038d6834cfe"
INSTANCE = "42720eeb-3b45-5275-82ae-850fd8656d28"
COLUMNS = frozenset({"collection_id", "PatientID", "StudyInstanceUID", "Modality",
                     "SeriesInstanceUID"})  # fmt: skip

# Pieces an attacker (or a broken uploader) would put in a key or an index value.
HOSTILE_PIECES = [
    "..", ".", "/", "//", "\\", "..\\", "\x00", "\n", "\r", "\t", "\x1b[2J", "\x7f", "\x85",
    "%2e%2e", "%2F", "~", "$HOME", "*", "?", " ", "\u202e", "\ufeff", "\u00e9", "e\u0301",
    "\U0001f600", "\ud800", "CON", "a" * 300, "\u00e9" * 200, ".dcm", SERIES, INSTANCE,
    INSTANCE.upper(),
]  # fmt: skip
hostile_text = st.lists(
    st.one_of(st.sampled_from(HOSTILE_PIECES), st.text(max_size=8)), max_size=8
).map("".join)


def run(settings_: object) -> SyncReport:
    return asyncio.run(sync(settings_))  # type: ignore[arg-type]


# -- object keys ----------------------------------------------------------------------------


@given(key=st.one_of(hostile_text, hostile_text.map(lambda tail: f"{SERIES}/{tail}")))
@example(key=f"{SERIES}/../{INSTANCE}.dcm")
@example(key=f"{SERIES}/{INSTANCE}.dcm/")
@example(key=f"{SERIES}/{INSTANCE}.dcm\x00")
@example(key=f"{SERIES}//{INSTANCE}.dcm")
@example(key=f"{SERIES}/./{INSTANCE}.dcm")
@example(key=f"{SERIES}/{INSTANCE.upper()}.dcm")
@example(key=f"{SERIES}\\{INSTANCE}.dcm")
@example(key=f"/{SERIES}/{INSTANCE}.dcm")
@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
def test_parse_object_key_accepts_only_the_canonical_shape(key: str) -> None:
    instance = canonical_instance(key)
    if instance is not None:
        assert parse_object_key(key, SERIES) == instance
    else:
        with pytest.raises(UnsafePathError):
            parse_object_key(key, SERIES)


def canonical_instance(key: str) -> str | None:
    """The instance UUID when ``key`` is exactly ``<SERIES>/<lowercase uuid>.dcm``."""
    prefix = f"{SERIES}/"
    if not (key.startswith(prefix) and key.endswith(".dcm")):
        return None
    tail = key[len(prefix) : -len(".dcm")]
    try:
        return tail if str(uuid.UUID(tail)) == tail else None
    except ValueError:
        return None


@given(instance=st.uuids().map(str))
def test_every_canonical_key_names_one_plain_file_in_the_series_directory(instance: str) -> None:
    parsed = parse_object_key(f"{SERIES}/{instance}.dcm", SERIES)
    assert parsed == instance
    assert PurePosixPath(f"{parsed}.dcm").parts == (f"{parsed}.dcm",)
    with pytest.raises(UnsafePathError):
        parse_object_key(f"{SERIES}/{instance}.dcm", instance)  # another series' prefix


# -- template values ------------------------------------------------------------------------


values = st.fixed_dictionaries(
    {column: st.one_of(hostile_text, st.none()) for column in sorted(COLUMNS)}
)


@given(
    values=values,
    template=st.sampled_from(
        [DEFAULT_TEMPLATE, "%PatientID", "%collection_id/%PatientID_%Modality", ""]
    ),
)
@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
def test_rendered_series_dirs_stay_inside_the_root(
    values: dict[str, str | None], template: str
) -> None:  # fmt: skip
    root = Path("/srv/idc")
    relative = render_series_dir(template, values, COLUMNS)
    for part in relative.parts:
        assert part not in ("", ".", "..")
        assert "/" not in part
        assert "\\" not in part
        assert "\x00" not in part
        assert all(ord(c) >= 0x20 for c in part)
        assert len(part.encode("utf-8")) <= NAME_MAX_BYTES
    joined = resolve_inside(root, relative)  # nothing under /srv/idc exists: no lstat hits
    normal = Path(os.path.normpath(joined))
    assert normal == root or root in normal.parents
    assert len(relative.parts) == (template.count("/") + 1 if template else 0) or (
        not template and relative == PurePosixPath(".")
    )


def valid_unicode(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


# Lone surrogates included (HOSTILE_PIECES has one, st.text draws more): they are refused
# with UnsafePathError like every other unusable path, never a UnicodeEncodeError.
@given(relative=hostile_text)
@example(relative="a/\ud800/b")
@example(relative="\udc80")  # what os.fsdecode makes of a non-UTF-8 byte
@settings(max_examples=300)
def test_resolve_inside_never_returns_a_path_outside_the_root(relative: str) -> None:
    root = Path("/srv/idc")
    try:
        joined = resolve_inside(root, PurePosixPath(relative))
    except UnsafePathError:
        return
    assert valid_unicode(str(joined))
    normal = Path(os.path.normpath(joined))
    assert normal == root or root in normal.parents


@pytest.mark.parametrize("piece", [chr(0xD800), chr(0xDFFF), chr(0xDC80)])
def test_resolve_inside_refuses_a_lone_surrogate_even_below_an_existing_directory(
    tmp_path: Path, piece: str
) -> None:
    (tmp_path / "collection").mkdir()
    with pytest.raises(UnsafePathError, match="not valid Unicode"):
        resolve_inside(tmp_path, PurePosixPath(f"collection/{piece}/series"))
    with pytest.raises(UnsafePathError, match="not valid Unicode"):
        resolve_inside(tmp_path, PurePosixPath(f"missing/{piece}"))


# -- symlinks planted in the mirror, and colliding names ------------------------------------


def outside_dir(tmp_path: Path) -> tuple[Path, dict[str, bytes]]:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious.txt").write_bytes(b"not the mirror's")
    return outside, {"precious.txt": b"not the mirror's"}


def contents(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in directory.rglob("*")
            if p.is_file()}  # fmt: skip


@pytest.mark.parametrize("planted_at", ["series directory", "collection directory"])
def test_directory_symlink_planted_in_the_mirror_is_never_written_through(
    tmp_path: Path, s3_server: S3TestServer, planted_at: str
) -> None:
    rows = dataset.selection("two")
    uploaded = dataset.populate(s3_server, rows)
    settings_ = settings_for(tmp_path, s3_server.endpoint, rows)
    outside, before = outside_dir(tmp_path)
    series_dir = expected_path(settings_.mirror_root, rows[0], "x/y.dcm").parent
    link = series_dir if planted_at == "series directory" else series_dir.parents[2]
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(outside, target_is_directory=True)

    report = run(settings_)

    assert not report.ok
    assert contents(outside) == before, "something was written through the symlink"
    assert link.is_symlink()
    [(state, reason)] = state_rows(settings_, "SELECT state, last_error FROM series")
    assert state == "failed"
    assert "symlink" in reason
    assert s3_server.count("GET") == 0
    # once the operator removes the link, the next run mirrors normally
    link.unlink()
    assert run(settings_).ok
    assert_mirrored(settings_.mirror_root, rows, uploaded)
    assert contents(outside) == before


def test_file_symlink_planted_at_an_instance_path_is_replaced_not_followed(
    tmp_path: Path, s3_server: S3TestServer
) -> None:
    rows = dataset.selection("two")
    uploaded = dataset.populate(s3_server, rows)
    settings_ = settings_for(tmp_path, s3_server.endpoint, rows)
    outside, before = outside_dir(tmp_path)
    key = sorted(k for _, k in uploaded)[0]
    planted = expected_path(settings_.mirror_root, rows[0], key)
    planted.parent.mkdir(parents=True)
    planted.symlink_to(outside / "precious.txt")

    report = run(settings_)

    assert report.ok, report.problems
    assert contents(outside) == before
    assert not planted.is_symlink()
    assert_mirrored(settings_.mirror_root, rows, uploaded)


@pytest.mark.parametrize("listed_first", ["thief", "owner"])
def test_a_listing_naming_another_series_key_does_not_touch_that_series(
    tmp_path: Path, s3_server: S3TestServer, listed_first: str, caplog: pytest.LogCaptureFixture
) -> None:
    rows = dataset.selection("qin_pet_phantom_small")[:2]
    uploaded = dataset.populate(s3_server, rows)
    # one series at a time, in plan order: the first row is listed first
    thief, owner = rows if listed_first == "thief" else rows[::-1]
    stolen = dataset.instance_keys(owner)[0]
    s3_server.faults.add(
        "list_extra", on=["LIST"], key_prefix=f"{thief['crdc_series_uuid']}/", extra_keys=[stolen]
    )
    settings_ = settings_for(tmp_path, s3_server.endpoint, rows, series_concurrency=1)

    with caplog.at_level("ERROR", logger="idc_sync"):
        run(settings_)

    assert stolen in caplog.text  # the hostile listing is logged
    [(state, series)] = state_rows(
        settings_, f"SELECT state, crdc_series_uuid FROM object WHERE key = '{stolen}'"
    )
    assert (state, series) == ("done", str(owner["crdc_series_uuid"]))
    states = dict(state_rows(settings_, "SELECT crdc_series_uuid, state FROM series"))
    assert states[str(owner["crdc_series_uuid"])] == "complete"
    assert_mirrored(settings_.mirror_root, rows, uploaded)


def test_two_objects_mapping_to_one_path_never_overwrite_each_other(
    tmp_path: Path, s3_server: S3TestServer
) -> None:
    first, second = dataset.selection("qin_pet_phantom_small")[:2]
    rows = [first, second]
    uploaded = dataset.populate(s3_server, rows)
    # In a flat layout, an object of the second series named like one of the first's
    # instances maps to the same local file.
    taken = dataset.instance_keys(first)[0]
    impostor = f"{second['crdc_series_uuid']}/{taken.split('/')[1]}"
    s3_server.put(str(second["aws_bucket"]), impostor, b"impostor bytes")
    settings_ = settings_for(tmp_path, s3_server.endpoint, rows, dir_template="",
                             series_concurrency=1)  # fmt: skip

    report = run(settings_)

    assert not report.ok  # the collision is reported, not hidden
    refused = state_rows(settings_, "SELECT key, last_error FROM object WHERE state = 'refused'")
    assert [key for key, _ in refused] == [impostor]
    assert "already belongs to" in refused[0][1]
    assert (settings_.mirror_root / taken.split("/")[1]).read_bytes() == uploaded[
        (str(first["aws_bucket"]), taken)
    ]
