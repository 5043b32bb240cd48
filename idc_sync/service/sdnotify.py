"""systemd's notify protocol (sd_notify(3)) without libsystemd: newline-separated
``KEY=value`` assignments in one datagram to the unix socket named by ``NOTIFY_SOCKET``.

Used by ``idc-sync serve`` under ``Type=notify``: READY=1 once the state is open and the
first plan is done, STATUS= progress lines, WATCHDOG=1 from the event loop, STOPPING=1 at
drain. Without ``NOTIFY_SOCKET`` (not started by systemd) every call is a cheap no-op, and
a failed send is logged, never raised: the service must not die because systemd is busy."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
from collections.abc import Mapping

log = logging.getLogger(__name__)


def socket_address(value: str) -> str | bytes:
    """The address to send to: ``@name`` is a Linux abstract-namespace socket (a leading
    NUL byte), anything else a path."""
    if value.startswith("@"):
        return b"\0" + value[1:].encode()
    return value


class Notifier:
    """Sends notifications to systemd, if it asked for them."""

    def __init__(
        self,
        notify_socket: str | None,
        watchdog_usec: int | None = None,
    ) -> None:
        self.address = socket_address(notify_socket) if notify_socket else None
        self.watchdog_usec = watchdog_usec
        self._socket: socket.socket | None = None

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> Notifier:
        """Read NOTIFY_SOCKET, WATCHDOG_USEC and WATCHDOG_PID as systemd sets them. The
        watchdog is ours only if WATCHDOG_PID is unset or names this process (a child
        started by us must not ping on our behalf)."""
        env = os.environ if environ is None else environ
        watchdog: int | None = None
        pid = env.get("WATCHDOG_PID")
        usec = env.get("WATCHDOG_USEC", "")
        if usec.isdigit() and int(usec) > 0 and (pid is None or pid == str(os.getpid())):
            watchdog = int(usec)
        return cls(env.get("NOTIFY_SOCKET") or None, watchdog)

    @property
    def enabled(self) -> bool:
        return self.address is not None

    @property
    def watchdog_interval(self) -> float | None:
        """Seconds between WATCHDOG=1 pings: half the deadline, as sd_watchdog_enabled(3)
        recommends, so one late ping never trips it."""
        if self.watchdog_usec is None or not self.enabled:
            return None
        return self.watchdog_usec / 2 / 1_000_000

    def send(self, *assignments: str) -> bool:
        """Send ``KEY=value`` lines in one datagram; True if it was sent."""
        if self.address is None or not assignments:
            return False
        payload = "\n".join(assignments).encode()
        try:
            if self._socket is None:
                self._socket = socket.socket(
                    socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC
                )
                # Never block the event loop on a full socket buffer: a dropped STATUS or
                # ping is harmless, a stalled loop is not.
                self._socket.setblocking(False)
            self._socket.sendto(payload, self.address)
        except OSError as error:
            log.debug("sd_notify %s failed: %s", assignments[0], error)
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        return self.send("READY=1", *self._status(status))

    def status(self, text: str) -> bool:
        return self.send(*self._status(text))

    def watchdog(self) -> bool:
        return self.send("WATCHDOG=1")

    def reloading(self) -> bool:
        # MONOTONIC_USEC lets Type=notify-reload match this reload to its SIGHUP.
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.send("RELOADING=1", f"MONOTONIC_USEC={usec}")

    def stopping(self, status: str | None = None) -> bool:
        return self.send("STOPPING=1", *self._status(status))

    @staticmethod
    def _status(text: str | None) -> tuple[str, ...]:
        # one assignment per line: a newline inside the text would start a bogus key
        return () if text is None else ("STATUS=" + " ".join(text.split()),)

    def close(self) -> None:
        if self._socket is not None:
            with contextlib.suppress(OSError):
                self._socket.close()
            self._socket = None
