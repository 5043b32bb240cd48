"""A real forward proxy for the tests: tinyproxy (a Debian package, installed by .ci/run) on
127.0.0.1, with its log parsed into the requests it carried, so a test can prove that every
request went through it (plain HTTP as absolute-form GETs, HTTPS as CONNECT tunnels)."""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import time
from pathlib import Path

# "Request (file descriptor 5): GET http://127.0.0.1:9/ HTTP/1.1"
_REQUEST = re.compile(r"Request \(file descriptor \d+\): (\S+) (\S+) HTTP/")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Tinyproxy:
    """``with Tinyproxy(tmp_path) as proxy``: ``proxy.url``, ``proxy.requests()``.
    ``rules``: extra config lines (e.g. ``ConnectPort 443`` to refuse other CONNECTs,
    ``Allow 10.0.0.1`` to refuse us)."""

    def __init__(self, directory: Path, rules: tuple[str, ...] = ("Allow 127.0.0.1",)) -> None:
        binary = shutil.which("tinyproxy") or "/usr/bin/tinyproxy"
        if not Path(binary).exists():
            raise RuntimeError("tinyproxy is not installed: apt-get install tinyproxy")
        self.binary = binary
        self.port = free_port()
        directory.mkdir(parents=True, exist_ok=True)
        directory.chmod(0o777)  # tinyproxy may drop privileges before it opens its log
        self.log = directory / "tinyproxy.log"
        self.config = directory / "tinyproxy.conf"
        lines = [
            f"Port {self.port}",
            "Listen 127.0.0.1",
            "Timeout 30",
            f'LogFile "{self.log}"',
            "LogLevel Connect",
            "MaxClients 200",
            *rules,
        ]
        self.config.write_text("\n".join(lines) + "\n")
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Tinyproxy:
        self._process = subprocess.Popen(
            [self.binary, "-d", "-c", str(self.config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return self
            except OSError:
                if self._process.poll() is not None:
                    break
                time.sleep(0.05)
        self.__exit__()
        raise RuntimeError(f"tinyproxy did not start: {self.log.read_text(errors='replace')}")

    def __exit__(self, *exc: object) -> None:
        if self._process is not None:
            self._process.terminate()
            try:
                self._process.wait(5)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(5)
            self._process = None

    def requests(self, method: str | None = None) -> list[tuple[str, str]]:
        """(method, target) of every request tinyproxy logged, optionally of one method."""
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        found = [(m.group(1), m.group(2)) for m in _REQUEST.finditer(text)]
        return [r for r in found if method is None or r[0] == method]
