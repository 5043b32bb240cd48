"""The mirror tells the truth and forgives mistakes, tried as an operator would: real
`idc-sync` processes on real files against a local S3 server. A typo stops before anything
is touched; selections add up and only --prune takes away, behind a guard; retired files
leave the mirror tree and come back without a GET; the state is bound to its destination."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.support import dataset
from tests.support.cli import dicom_files, idc_sync, tree
from tests.support.disks import remount, tmpfs
from tests.support.mirror import expected_path
from tests.support.s3server import S3TestServer

Row = dict[str, Any]


def common(destination: Path, endpoint: str) -> list[str]:
    """Flags of sync and plan alike (no bar: the output is not a terminal)."""
    return ["--destination", str(destination), "--endpoint", endpoint, "--concurrency", "8",
            "--series-concurrency", "4", "--log-level", "warning"]  # fmt: skip


def series_args(rows: list[Row]) -> list[str]:
    return ["--series", ",".join(str(row["crdc_series_uuid"]) for row in rows)]


def keys_of(rows: list[Row]) -> set[str]:
    return {key for row in rows for key in dataset.instance_keys(row)}


def gets(server: S3TestServer) -> set[str]:
    return {str(r.key) for r in server.requests() if r.method == "GET" and r.key}


@pytest.fixture
def mirrored(tmp_path: Path, s3_server: S3TestServer) -> dict[str, Any]:
    """A finished mirror of two qin_pet_phantom series (162 files) and one small series."""
    qin = dataset.selection("qin_pet_phantom_small")[:2]
    small = dataset.selection("two")
    uploaded = dataset.populate(s3_server, qin + small)
    destination = tmp_path / "mirror"
    done = idc_sync("sync", *series_args(qin + small), *common(destination, s3_server.endpoint))
    assert done.returncode == 0, done.stderr
    s3_server.clear_requests()
    return {"qin": qin, "small": small, "uploaded": uploaded, "destination": destination}


# -- 1. unknown selection entries are errors --------------------------------------------


def test_a_misspelt_collection_exits_2_naming_it_and_the_real_one_and_touches_nothing(
    tmp_path: Path, s3_server: S3TestServer, mirrored: dict[str, Any]
) -> None:
    destination = mirrored["destination"]
    before = tree(tmp_path)
    for command in ("sync", "plan"):
        done = idc_sync(command, "--collection", "qin_pet_phantm",
                        *common(destination, s3_server.endpoint))  # fmt: skip
        assert done.returncode == 2, (command, done.stdout, done.stderr)
        assert (
            "unknown collection 'qin_pet_phantm' (--collection); did you mean "
            "'qin_pet_phantom'" in done.stderr
        ), done.stderr
        assert "Traceback" not in done.stderr
    assert tree(tmp_path) == before
    assert s3_server.requests() == []
    # a typo among good entries stops the run just the same
    good = str(mirrored["small"][0]["crdc_series_uuid"])
    done = idc_sync("sync", "--series", f"{good},1.2.3.4.5.nonsense",
                    *common(destination, s3_server.endpoint))  # fmt: skip
    assert done.returncode == 2
    assert "unknown SeriesInstanceUID '1.2.3.4.5.nonsense' (--series)" in done.stderr
    assert tree(tmp_path) == before


def test_a_mistyped_uid_is_answered_with_the_closest_real_one(
    tmp_path: Path, s3_server: S3TestServer
) -> None:
    [row] = dataset.selection("two")
    uid = str(row["SeriesInstanceUID"])
    typo = uid[:-1] + ("0" if uid[-1] != "0" else "1")
    done = idc_sync("sync", "--series", typo, *common(tmp_path / "m", s3_server.endpoint))
    assert done.returncode == 2
    assert f"unknown SeriesInstanceUID {typo!r} (--series); did you mean " in done.stderr
    assert repr(uid) in done.stderr
    assert not (tmp_path / "m").exists()  # not even the state directory
    # an identifier given as an argument is looked up in every column idc download uses
    done = idc_sync("sync", "qin_pet_phantm", *common(tmp_path / "m", s3_server.endpoint))
    assert done.returncode == 2
    assert "'qin_pet_phantm' (argument)" in done.stderr
    assert "did you mean 'qin_pet_phantom'" in done.stderr


def test_an_entry_only_earlier_releases_had_is_reported_and_strict_makes_it_fatal(
    tmp_path: Path, s3_server: S3TestServer
) -> None:
    from tests.core.test_releases import removed_series

    gone = removed_series()
    kept = dataset.selection("two")
    dataset.populate(s3_server, kept)
    args = ["--series", f"{gone['SeriesInstanceUID']},{kept[0]['crdc_series_uuid']}",
            *common(tmp_path / "m", s3_server.endpoint)]  # fmt: skip
    done = idc_sync("sync", *args)
    assert done.returncode == 0, done.stderr
    assert "was removed from IDC after release v" in done.stderr
    assert "mirror complete" in done.stdout
    strict = idc_sync("sync", "--strict", *args)
    assert strict.returncode == 2
    assert "was removed from IDC after release v" in strict.stderr


# -- 2-6. selections add up; prune is asked for and guarded; retired files leave and return


def test_selections_add_up_prune_is_guarded_and_retired_files_come_back_without_a_get(
    tmp_path: Path, s3_server: S3TestServer
) -> None:
    qin = dataset.selection("qin_pet_phantom_small")[:2]
    small = dataset.selection("two")
    uploaded = dataset.populate(s3_server, qin + small)
    destination = tmp_path / "mirror"
    args = common(destination, s3_server.endpoint)

    assert idc_sync("sync", *series_args(qin), *args).returncode == 0
    second = idc_sync("sync", *series_args(small), *args)  # idc download users expect: adds
    assert second.returncode == 0, second.stderr
    live = {p.name for p in dicom_files(destination)}
    assert live == {k.split("/")[1] for k in keys_of(qin + small)}
    status = json.loads(idc_sync("status", "--destination", destination, "--json").stdout)
    assert sum(c["series_complete"] for c in status["collections"]) == 3
    # no selection: the mirror's own is synced again, and nothing is fetched
    s3_server.clear_requests()
    again = idc_sync("sync", *args)
    assert again.returncode == 0, again.stderr
    assert gets(s3_server) == set()

    # pruning to `small` would retire 162 of 165 files: refused, nothing moved (the lock
    # file is rewritten by every run that takes it)
    before = tree(tmp_path, ignore={"lock"})
    for command in ("plan", "sync"):
        refused = idc_sync(command, *series_args(small), "--prune", *args)
        assert refused.returncode == 2, refused.stdout + refused.stderr
        assert "would retire 162 of the mirror's" in refused.stderr
        assert "--allow-retire" in refused.stderr
    assert tree(tmp_path, ignore={"lock"}) == before

    pruned = idc_sync("sync", *series_args(small), "--prune", "--allow-retire", *args)
    assert pruned.returncode == 0, pruned.stderr
    retired_dir = tmp_path / "mirror.retired"
    assert "retired 2 series" in pruned.stdout
    assert f"162 files moved to {retired_dir}" in pruned.stdout
    # a walk of the mirror finds exactly the live selection's DICOM files
    assert {p.name for p in dicom_files(destination)} == {k.split("/")[1] for k in keys_of(small)}
    assert len(dicom_files(retired_dir)) == 162
    status = json.loads(idc_sync("status", "--destination", destination, "--json").stdout)
    assert status["retired"]["series"] == 2
    assert status["retired"]["files"] == 162
    assert status["retired"]["retired_dir"] == str(retired_dir)

    # selected again: checked against the listing and moved back, not fetched
    s3_server.clear_requests()
    back = idc_sync("sync", *series_args(qin), *args)
    assert back.returncode == 0, back.stderr
    assert "restored 162 from the retired folder" in back.stdout
    assert gets(s3_server) == set()
    for (_, key), data in uploaded.items():
        row = next(r for r in qin + small if key.startswith(str(r["crdc_series_uuid"])))
        assert expected_path(destination, row, key).read_bytes() == data
    assert dicom_files(retired_dir) == set()


# -- 8. the state is bound to its destination ---------------------------------------------


def test_a_relative_destination_means_one_place_from_any_directory(
    tmp_path: Path, s3_server: S3TestServer
) -> None:
    rows = dataset.selection("two")
    dataset.populate(s3_server, rows)
    first, other = tmp_path / "here", tmp_path / "elsewhere"
    first.mkdir()
    other.mkdir()
    state = tmp_path / "state"
    args = [*series_args(rows), "--endpoint", s3_server.endpoint, "--no-progress",
            "--state-dir", str(state), "--destination", "mirror"]  # fmt: skip
    assert idc_sync("sync", *args, cwd=first).returncode == 0
    moved = idc_sync("sync", *args, cwd=other)
    assert moved.returncode == 2
    assert f"describes the mirror at {first / 'mirror'}, not {other / 'mirror'}" in moved.stderr
    assert not (other / "mirror").exists()


def test_a_moved_mirror_is_refused_then_adopted_without_fetching_and_a_missing_one_refused(
    tmp_path: Path, s3_server: S3TestServer
) -> None:
    rows = dataset.selection("qin_pet_phantom_small")[:1]
    dataset.populate(s3_server, rows)
    old, new, state = tmp_path / "disk1" / "idc", tmp_path / "disk2" / "idc", tmp_path / "state"
    args = [*series_args(rows), "--endpoint", s3_server.endpoint, "--no-progress",
            "--state-dir", str(state)]  # fmt: skip
    assert idc_sync("sync", *args, "--destination", old).returncode == 0
    new.parent.mkdir()
    old.rename(new)
    s3_server.clear_requests()

    # the old place is gone (a disk not mounted looks the same): refused, not recreated
    gone = idc_sync("sync", *args, "--destination", old)
    assert gone.returncode == 2
    assert "is the disk mounted?" in gone.stderr
    assert not old.exists()
    # the new place without saying so: refused, naming both
    elsewhere = idc_sync("sync", *args, "--destination", new)
    assert elsewhere.returncode == 2
    assert str(old) in elsewhere.stderr
    assert str(new) in elsewhere.stderr
    assert "--adopt-destination" in elsewhere.stderr
    # adopted: every file verified where it is now, nothing fetched again
    adopted = idc_sync("sync", *args, "--destination", new, "--adopt-destination")
    assert adopted.returncode == 0, adopted.stderr
    assert "re-verified 81 already on disk" in adopted.stdout
    assert gets(s3_server) == set()
    assert not old.exists()
    assert idc_sync("verify", "--state-dir", state, "--destination", new).returncode == 0


# -- 10. the habits users bring from idc download and rclone --------------------------------


def test_positional_identifiers_patient_and_study_flags_and_comma_separated_values(
    tmp_path: Path, s3_server: S3TestServer
) -> None:
    patient = dataset.real_series(where="PatientID = 'DSC-DRO-BRAIN'", limit=10)
    two = dataset.selection("two")
    single = dataset.selection("single_instance")
    dataset.populate(s3_server, patient + two + single)
    destination = tmp_path / "m"
    args = common(destination, s3_server.endpoint)
    # what `idc download` takes: a PatientID and a crdc_series_uuid in one comma list,
    # and a SeriesInstanceUID as a second argument
    done = idc_sync(
        "sync", f"DSC-DRO-BRAIN,{two[0]['crdc_series_uuid']}", str(single[0]["SeriesInstanceUID"]),
        *args,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert {p.name for p in dicom_files(destination)} == {
        k.split("/")[1] for k in keys_of(patient + two + single)
    }
    status = json.loads(idc_sync("status", "--destination", destination, "--json").stdout)
    kinds = {(entry["kind"], entry["value"]) for entry in status["selection"]}
    assert ("patient", "DSC-DRO-BRAIN") in kinds  # kept as what it was recognised as
    # flags: --patient-id and --study-instance-uid, values comma-separated
    study = str(patient[0]["StudyInstanceUID"])
    planned = idc_sync("plan", "--json", "--patient-id", "DSC-DRO-BRAIN,EAY131-8355627",
                       "--study-instance-uid", study, *args)  # fmt: skip
    assert planned.returncode == 0, planned.stderr
    report = json.loads(planned.stdout)
    # the study is one of the patient's; the mirror's own selection (two, single) adds up
    assert report["series"] == len(patient) + 2 + 1 + 1
    # a positional whole collection, as a dry run (`sync --dry-run` is `plan`)
    dry = idc_sync("sync", "--dry-run", "qin_pet_phantom", *args)
    assert dry.returncode == 0, dry.stderr
    # the collection's 44 series and what the mirror holds already
    assert f"selected:        {44 + len(patient) + 2} series" in dry.stdout


def test_help_lists_exit_codes_and_the_default_config_file_is_found(
    tmp_path: Path, s3_server: S3TestServer
) -> None:
    helped = idc_sync("sync", "--help")
    assert "Exit codes: 0 every selected file is verified" in " ".join(helped.stdout.split())
    rows = dataset.selection("two")
    dataset.populate(s3_server, rows)
    home = tmp_path / "home"
    (home / ".config" / "idc-sync").mkdir(parents=True)
    (home / ".config" / "idc-sync" / "config.toml").write_text(
        f'destination = "{tmp_path / "m"}"\n'
        f'series = ["{rows[0]["crdc_series_uuid"]}"]\n'
        f'endpoints.aws = "{s3_server.endpoint}"\n'
    )
    # IDC_SYNC_CONFIG="" reads no config file at all
    empty = idc_sync("sync", "--no-progress", env={"HOME": str(home), "IDC_SYNC_CONFIG": ""})
    assert empty.returncode == 2
    assert "destination is not set" in empty.stderr
    # no --config, no IDC_SYNC_CONFIG: the user's ~/.config/idc-sync/config.toml
    env = {k: v for k, v in os.environ.items() if k not in ("XDG_CONFIG_HOME", "IDC_SYNC_CONFIG")}
    found = subprocess.run(
        [sys.executable, "-m", "idc_sync", "sync", "--no-progress"],
        capture_output=True, text=True, check=False, env={**env, "HOME": str(home)}, timeout=120,
    )  # fmt: skip
    assert found.returncode == 0, found.stderr
    # IDC_SYNC_CONFIG names one
    named = tmp_path / "named.toml"
    named.write_text((home / ".config" / "idc-sync" / "config.toml").read_text())
    by_variable = idc_sync("status", env={"IDC_SYNC_CONFIG": str(named)})
    assert by_variable.returncode == 0, by_variable.stderr


# -- 9. local storage errors are one clear line --------------------------------------------


def test_a_full_disk_under_the_state_is_one_line_and_the_next_run_completes(
    tmp_path: Path, s3_server: S3TestServer
) -> None:
    rows = dataset.selection("qin_pet_phantom_small")
    uploaded = dataset.populate(s3_server, rows)
    destination = tmp_path / "mirror"
    with tmpfs(tmp_path / "state", "160k") as state:
        args = [*series_args(rows), *common(destination, s3_server.endpoint),
                "--state-dir", str(state)]  # fmt: skip
        full = idc_sync("sync", *args)
        assert full.returncode == 1, full.stdout + full.stderr
        assert f"no space left on device writing the state database {state}" in full.stderr
        assert "Traceback" not in full.stderr
        placed = {p.name for p in dicom_files(destination)}
        s3_server.clear_requests()
        remount(state, "size=16m")
        again = idc_sync("sync", *args)
        assert again.returncode == 0, again.stdout + again.stderr
        assert "mirror complete" in again.stdout
    # what was placed before the disk filled up is re-verified, not fetched again
    assert not {key.split("/")[1] for key in gets(s3_server)} & placed
    assert {p.name for p in dicom_files(destination)} == {k.split("/")[1] for _, k in uploaded}


def test_a_read_only_mirror_is_one_line_exit_1_and_nothing_is_lost(
    tmp_path: Path, s3_server: S3TestServer
) -> None:
    rows = dataset.selection("two")
    more = dataset.selection("single_instance")
    dataset.populate(s3_server, rows + more)
    with tmpfs(tmp_path / "disk", "8m") as disk:
        args = [*common(disk / "idc", s3_server.endpoint), "--state-dir", str(tmp_path / "s")]
        assert idc_sync("sync", *series_args(rows), *args).returncode == 0
        before = tree(disk)
        remount(disk, "ro")
        done = idc_sync("sync", *series_args(more), *args)
        remount(disk, "rw")
        assert done.returncode == 1, done.stdout + done.stderr
        assert "Read-only file system" in done.stderr
        assert "Traceback" not in done.stderr
        assert tree(disk) == before
        assert idc_sync("sync", *series_args(more), *args).returncode == 0
