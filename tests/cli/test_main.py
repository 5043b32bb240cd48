"""The command line's contract with scripts (cli/main.py): every kind of failure is one line
on stderr and its own exit code, as `idc-sync --help` lists them."""

from __future__ import annotations

import socket
from pathlib import Path

from tests.support.cli import idc_sync


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
