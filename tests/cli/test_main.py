"""The command line's contract with scripts (cli/main.py): every kind of failure is one line
on stderr and its own exit code, as `idc-sync --help` lists them."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support import dataset
from tests.support.cli import idc_sync
from tests.support.mirror import assert_mirrored
from tests.support.s3server import S3TestServer


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_each_kind_of_failure_has_its_exit_code_and_one_line(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text("concurrency = 'many'\n")
    cases = [
        # a config error names the key and the file: 2
        (["sync", "--config", str(config), "--destination", str(tmp_path / "m")], 2,
         f"config error in {config}: concurrency"),
        # no state where one is needed: 3
        (["status", "--destination", str(tmp_path / "none")], 3, "no idc-sync state at"),
        # nothing selected: 2
        (["sync", "--destination", str(tmp_path / "m")], 2, "nothing is selected"),
        # no daemon answering: 1
        (["health", "--listen", f"127.0.0.1:{_closed_port()}", "--timeout", "2"], 1,
         "unhealthy: no answer"),
    ]  # fmt: skip
    for args, code, said in cases:
        done = idc_sync(*args)
        assert done.returncode == code, (args, done.stdout, done.stderr)
        assert said in done.stderr, (args, done.stderr)
        assert "Traceback" not in done.stderr
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert not (tmp_path / "m").exists()
    assert not (tmp_path / "none").exists()


def test_the_version_and_every_command_are_listed() -> None:
    done = idc_sync("--help")
    assert done.returncode == 0
    for command in ("sync", "plan", "status", "verify", "retry-failed", "serve", "health",
                    "citations"):  # fmt: skip
        assert command in done.stdout
    assert idc_sync("--version").stdout.startswith("idc-sync, version ")


def test_a_sync_that_follows_no_release_never_imports_aiohttp(
    tmp_path: Path, s3_server: S3TestServer
) -> None:
    # aiohttp costs ~0.16 s of every start; only the release watch and the daemon need it
    rows = dataset.selection("two")
    uploaded = dataset.populate(s3_server, rows)
    destination = tmp_path / "mirror"
    series = [arg for row in rows for arg in ("--series", str(row["crdc_series_uuid"]))]
    done = subprocess.run(
        [
            sys.executable, "-X", "importtime", "-m", "idc_sync", "sync", "--no-progress",
            "--destination", str(destination), "--endpoint", s3_server.endpoint, *series,
        ],
        capture_output=True, text=True, check=False, timeout=120,
        env={**os.environ, "IDC_SYNC_CONFIG": ""},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert_mirrored(destination, rows, uploaded)
    imported = {line.split("|")[-1].strip() for line in done.stderr.splitlines()}
    assert "idc_sync.run.jobs" in imported  # -X importtime did report
    assert not {name for name in imported if name.split(".")[0] == "aiohttp"}


@pytest.mark.parametrize("interrupt", [signal.SIGINT, signal.SIGTERM])
def test_a_ctrl_c_while_the_command_line_loads_is_one_line_and_exit_130(
    interrupt: signal.Signals,
) -> None:
    """SIGINT (or SIGTERM) as soon as the import of pydantic has finished (-X importtime
    reports each import as it ends), while the rest of the command line is still loading."""
    command = Path(sys.executable).with_name("idc-sync")
    seen: list[str] = []
    with subprocess.Popen(
        [str(command), "--version"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, env={**os.environ, "PYTHONPROFILEIMPORTTIME": "1"},
    ) as process:  # fmt: skip
        assert process.stderr is not None
        assert process.stdout is not None
        for line in process.stderr:
            seen.append(line)
            if line.split("|")[-1].strip() == "pydantic":
                process.send_signal(interrupt)
                break
        rest = process.stderr.read()
        printed = process.stdout.read()
        code = process.wait(timeout=30)
    assert code == 130, rest[-2000:]
    assert "idc_sync.cli.main" not in "".join(seen)  # it was still loading
    assert "Traceback" not in rest
    assert "interrupted before anything began" in rest
    assert printed == ""


def test_a_ctrl_c_while_the_settings_load_is_one_line_and_exit_130(tmp_path: Path) -> None:
    """SIGINT while `plan` reads its config file (a FIFO the test holds open and never writes),
    after click has taken over and before the job runs: not click's "Aborted!" and exit 1."""
    config = tmp_path / "config.toml"
    os.mkfifo(config)
    command = Path(sys.executable).with_name("idc-sync")
    with subprocess.Popen(
        [str(command), "plan", "--config", str(config), "--collection", "qin_pet_phantom",
         "--destination", str(tmp_path / "mirror")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    ) as process:  # fmt: skip
        writer = -1
        deadline = time.monotonic() + 30
        while writer < 0:  # ENXIO until the command opens the FIFO to read it
            assert process.poll() is None
            assert time.monotonic() < deadline
            try:
                writer = os.open(config, os.O_WRONLY | os.O_NONBLOCK)
            except OSError:
                time.sleep(0.02)
        try:
            time.sleep(0.2)  # from open() into read(), which waits for a byte
            process.send_signal(signal.SIGINT)
            printed, said = process.communicate(timeout=30)
        finally:
            os.close(writer)
    assert process.returncode == 130, said
    assert said.strip() == "interrupted before anything began"
    assert printed == ""
    assert not (tmp_path / "mirror").exists()


@pytest.mark.parametrize("interrupt", [signal.SIGINT, signal.SIGTERM])
def test_a_ctrl_c_after_the_job_ran_says_to_run_it_again(
    tmp_path: Path, s3_server: S3TestServer, interrupt: signal.Signals
) -> None:
    """SIGINT (or SIGTERM) while `status`, its state read, waits for a daemon's /status (a
    socket that accepts and never answers): after the job, not 'before anything began'."""
    rows = dataset.selection("two")
    dataset.populate(s3_server, rows)
    destination = tmp_path / "mirror"
    series = [arg for row in rows for arg in ("--series", str(row["crdc_series_uuid"]))]
    done = idc_sync("sync", "--no-progress", "--destination", destination,
                    "--endpoint", s3_server.endpoint, *series)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        listen = f"127.0.0.1:{silent.getsockname()[1]}"
        command = [sys.executable, "-m", "idc_sync", "status", "--destination", str(destination)]
        with subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "IDC_SYNC_CONFIG": "", "IDC_SYNC_HTTP__LISTEN": listen},
        ) as process:  # fmt: skip
            silent.settimeout(60)
            connection, _ = silent.accept()  # status has read the state and asks the daemon
            with connection:
                process.send_signal(interrupt)
                _, said = process.communicate(timeout=30)
    assert process.returncode == 130, said
    assert said.strip() == "interrupted; run the same command again to resume"


def test_sigterm_ends_a_sync_as_ctrl_c_does_even_where_sigint_is_ignored(
    tmp_path: Path, s3_server: S3TestServer
) -> None:
    """timeout(1), systemd and kill send SIGTERM: the sync stops what is in flight, says so
    in one line and exits 130, and the next run completes. Also when SIGINT is ignored, as
    a shell starts background jobs (`idc-sync sync ... &`)."""
    rows = dataset.selection("qin_pet_phantom_small")
    uploaded = dataset.populate(s3_server, rows)
    s3_server.faults.add("latency", seconds=0.05, on=["GET"])
    destination = tmp_path / "mirror"
    series = [arg for row in rows for arg in ("--series", str(row["crdc_series_uuid"]))]
    command = [
        sys.executable,
        "-m",
        "idc_sync",
        "sync",
        "--no-progress",
        "--destination",
        str(destination),
        "--endpoint",
        s3_server.endpoint,
        "--workers",
        "2",
        *series,
    ]
    for ignoring_sigint in (False, True):
        before = len(list(destination.rglob("*.dcm"))) if destination.exists() else 0
        with subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "IDC_SYNC_CONFIG": ""},
            preexec_fn=(lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
            if ignoring_sigint else None,
        ) as process:  # fmt: skip
            deadline = time.monotonic() + 60
            placed = before
            while placed < before + 5:  # files placed: the job runs
                assert process.poll() is None, process.communicate()[1][-3000:]
                assert time.monotonic() < deadline
                placed = len(list(destination.rglob("*.dcm"))) if destination.exists() else 0
                time.sleep(0.02)
            process.send_signal(signal.SIGTERM)
            _, said = process.communicate(timeout=30)
        assert process.returncode == 130, said[-3000:]
        assert said.strip().splitlines()[-1] == "interrupted; run the same command again to resume"
        assert "Traceback" not in said
    s3_server.faults.clear()
    again = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False,
                           env={**os.environ, "IDC_SYNC_CONFIG": ""})  # fmt: skip
    assert again.returncode == 0, again.stderr[-3000:]
    assert_mirrored(destination, rows, uploaded)


def test_a_python_whose_sqlite_is_too_old_is_refused_before_anything_is_written(
    tmp_path: Path,
) -> None:
    """Ubuntu 22.04's SQLite (3.37.2) has no ->> operator: the first plan would fail with a
    syntax error. Python's sqlite3 module is made to report that version, as a Python
    linked there does."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        "import sqlite3\n"
        "sqlite3.sqlite_version_info = (3, 37, 2)\n"
        "sqlite3.sqlite_version = '3.37.2'\n"
    )
    destination = tmp_path / "mirror"
    done = idc_sync(
        "sync", "--collection", "qin_pet_phantom", "--destination", destination,
        "--endpoint", f"http://127.0.0.1:{_closed_port()}", env={"PYTHONPATH": str(site)},
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "needs SQLite 3.38.0 or newer" in done.stderr
    assert "runs SQLite 3.37.2" in done.stderr
    assert "Traceback" not in done.stderr
    assert not destination.exists()
