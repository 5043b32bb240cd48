"""The sd_notify protocol against real unix datagram sockets (a path and the abstract
namespace), as systemd's NOTIFY_SOCKET receives it."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from idc_sync.service.sdnotify import Notifier, socket_address


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    """A datagram socket bound where systemd would put NOTIFY_SOCKET."""
    path = tmp_path / "notify"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(5)
    yield sock, str(path)
    sock.close()


def received(sock: socket.socket) -> list[str]:
    return sock.recv(4096).decode().split("\n")


def test_ready_with_status_is_one_datagram(listener: tuple[socket.socket, str]) -> None:
    sock, path = listener
    notifier = Notifier(path)
    assert notifier.ready("planned 44 series")
    assert received(sock) == ["READY=1", "STATUS=planned 44 series"]
    notifier.close()


def test_status_watchdog_reloading_and_stopping(listener: tuple[socket.socket, str]) -> None:
    sock, path = listener
    notifier = Notifier(path)
    assert notifier.status("mirroring:\n1/2 files")
    assert notifier.watchdog()
    assert notifier.reloading()
    assert notifier.stopping("draining")
    # a newline in the text would start a bogus assignment: it is folded into a space
    assert received(sock) == ["STATUS=mirroring: 1/2 files"]
    assert received(sock) == ["WATCHDOG=1"]
    reloading = received(sock)
    assert reloading[0] == "RELOADING=1"
    assert reloading[1].startswith("MONOTONIC_USEC=")
    assert int(reloading[1].split("=")[1]) > 0
    assert received(sock) == ["STOPPING=1", "STATUS=draining"]
    notifier.close()


def test_abstract_namespace_socket() -> None:
    name = f"idc-sync-test-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(b"\0" + name.encode())
    sock.settimeout(5)
    try:
        assert socket_address(f"@{name}") == b"\0" + name.encode()
        notifier = Notifier.from_environment({"NOTIFY_SOCKET": f"@{name}"})
        assert notifier.ready()
        assert received(sock) == ["READY=1"]
        notifier.close()
    finally:
        sock.close()


def test_without_notify_socket_nothing_is_sent() -> None:
    notifier = Notifier.from_environment({})
    assert not notifier.enabled
    assert not notifier.ready("x")
    assert notifier.watchdog_interval is None


def test_a_vanished_socket_is_not_fatal(tmp_path: Path) -> None:
    notifier = Notifier(str(tmp_path / "gone"))
    assert notifier.enabled
    assert not notifier.status("nobody listens")  # ENOENT: reported as not sent, no raise
    notifier.close()


def test_watchdog_interval_is_half_the_deadline_and_honours_watchdog_pid(
    listener: tuple[socket.socket, str],
) -> None:
    _, path = listener
    env = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "30000000"}
    assert Notifier.from_environment(env).watchdog_interval == 15.0
    mine = {**env, "WATCHDOG_PID": str(os.getpid())}
    assert Notifier.from_environment(mine).watchdog_interval == 15.0
    # the watchdog belongs to another process (our parent, say): do not ping for it
    other = {**env, "WATCHDOG_PID": str(os.getpid() + 1)}
    assert Notifier.from_environment(other).watchdog_interval is None
    assert Notifier.from_environment({**env, "WATCHDOG_USEC": "0"}).watchdog_interval is None
    assert Notifier.from_environment({"WATCHDOG_USEC": "30000000"}).watchdog_interval is None
