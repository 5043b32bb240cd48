"""A new IDC release installed in place under a running `idc-sync serve`: pip upgrades
idc-index-data in the daemon's own environment (a throwaway venv that sees idc-sync and its
dependencies through a .pth file), SIGHUP, and the daemon mirrors the new release without
a restart: new series fetched, the revised one's old version and the removed one retired
once the replacement is verified, and the metrics name the new release."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import sysconfig
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import dataset, wheels
from tests.support.daemon import wait_for
from tests.support.s3server import S3TestServer

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def make_venv(root: Path) -> Path:
    """A venv without packages of its own but idc-index-data; ours through a .pth file
    (appended after its site-packages, so what pip installs there comes first)."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True,
                   timeout=120)  # fmt: skip
    python = root / "bin" / "python"
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True, timeout=60,
    ).stdout.strip()  # fmt: skip
    ours = sysconfig.get_paths()["purelib"]
    (Path(purelib) / "zz_idc_sync_tests.pth").write_text(
        f"import site; site.addsitedir({ours!r})\n"
    )
    return python


def pip_install(python: Path, wheel: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pip", "--isolated", "--python", str(python), "install", "-q",
         "--no-deps", "--no-index", "--disable-pip-version-check", str(wheel)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr


def _get(port: int, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as reply:
            return reply.status, reply.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()
    except OSError:
        return 0, b""


def _status(port: int) -> dict[str, Any]:
    code, body = _get(port, "/status")
    return json.loads(body) if code == 200 else {}


@pytest.fixture
def daemon(tmp_path: Path, s3_server: S3TestServer) -> Iterator[dict[str, Any]]:
    first, second, roles = wheels.two_releases()
    for row in roles.values():
        s3_server.put_many(str(row["aws_bucket"]), dataset.series_objects(row))
    python = make_venv(tmp_path / "venv")
    pip_install(python, wheels.write_wheel(tmp_path / "wheels", first))
    port = _free_port()
    config = tmp_path / "config.toml"
    config.write_text(
        f'destination = "{tmp_path / "mirror"}"\ncollections = ["{wheels.COLLECTION}"]\n'
        "release_check_interval = 0\n"  # only what is installed counts here
        f'[endpoints]\naws = "{s3_server.endpoint}"\n[http]\nlisten = "127.0.0.1:{port}"\n'
    )
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("IDC_SYNC_") and k != "PYTHONPATH"}  # fmt: skip
    process = subprocess.Popen(
        [str(python), "-m", "idc_sync", "serve", "--config", str(config)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path,
    )  # fmt: skip
    try:
        yield {"process": process, "port": port, "python": python, "tmp": tmp_path,
               "second": second, "roles": roles}  # fmt: skip
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=30)


def test_a_release_installed_under_a_running_daemon_is_mirrored_after_sighup(
    daemon: dict[str, Any],
) -> None:
    process, port, tmp = daemon["process"], daemon["port"], daemon["tmp"]
    roles = daemon["roles"]

    def idle_at(release: int) -> bool:
        assert process.poll() is None, process.communicate()
        seen = _status(port)
        return seen.get("phase") == "idle" and seen.get("idc_release") == release and (
            seen["overall"]["files_done"] == 4)  # fmt: skip

    wait_for(lambda: idle_at(25), 90, lambda: str(_status(port)))

    pip_install(daemon["python"], wheels.write_wheel(tmp / "wheels", daemon["second"]))
    process.send_signal(signal.SIGHUP)

    state = tmp / "mirror" / ".idc-sync" / "state.sqlite"

    def states() -> dict[str, str]:
        with sqlite3.connect(state) as db:
            return dict(db.execute("SELECT crdc_series_uuid, state FROM series").fetchall())

    def followed() -> bool:
        return idle_at(26) and states().get(str(roles["removed"]["crdc_series_uuid"])) == (
            "retired")  # fmt: skip

    wait_for(followed, 90, lambda: str(_status(port)))
    found = states()
    for role, expected in (("kept", "complete"), ("also_kept", "complete"),
                           ("revised_new", "complete"), ("added", "complete"),
                           ("revised", "retired"), ("removed", "retired")):  # fmt: skip
        assert found[str(roles[role]["crdc_series_uuid"])] == expected, role
    metrics = _get(port, "/metrics")[1].decode()
    assert re.search(r'idc_sync_build_info\{idc_release="26",version="[^"]+"\} 1\.0', metrics)
    assert "idc_sync_idc_release 26.0" in metrics

    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 0, stderr
    assert "planned IDC release v26 from idc-index-data 26.0.0 (installed" in stderr
    assert "reinstall it" not in stderr
