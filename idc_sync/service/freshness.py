"""When the daemon last saw every selected file verified: the value behind
``idc_sync_last_complete_timestamp_seconds``, which lets an alert tell a mirror that has
fallen behind (a new release not fetched for days, files that keep failing) from one that
is merely busy.

It is kept in a small file in the state directory, so that a restart neither makes a stale
mirror look fresh nor a fresh one look as if it had never been complete. Written when the
mirror becomes complete, when it stops being complete (the last moment seen), at a clean
stop and, while it stays complete, every ``persist_every`` seconds: after a crash the value
is at most that much too old. Blocking file I/O: the daemon calls it in a worker thread."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)

LAST_COMPLETE_FILE = "last-complete"
PERSIST_EVERY = 600.0


class LastComplete:
    """The last moment the mirror was seen complete (Unix time), None if never."""

    def __init__(
        self,
        path: Path,
        *,
        clock: Callable[[], float] = time.time,
        persist_every: float = PERSIST_EVERY,
    ) -> None:
        self._path = path
        self._clock = clock
        self._persist_every = persist_every
        self._lock = threading.Lock()
        self._was_complete = False
        self._write_failed = False
        self.timestamp = self._read()
        self._written = self.timestamp

    @classmethod
    def in_state_dir(cls, state_dir: Path) -> LastComplete:
        return cls(state_dir / LAST_COMPLETE_FILE)

    def _read(self) -> float | None:
        try:
            text = self._path.read_text(encoding="ascii").strip()
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError) as error:
            log.warning("cannot read %s (%s): the mirror counts as never complete until it "
                        "is", self._path, error)  # fmt: skip
            return None
        try:
            value = float(text)
        except ValueError:
            # a write torn by a crash; the next complete observation rewrites it
            log.warning("%s holds %r, not a time: ignored", self._path, text[:40])
            return None
        return value if value > 0 else None

    def observe(self, complete: bool) -> None:
        """The daemon looked at the selection and found it ``complete`` (or not)."""
        with self._lock:
            now = self._clock()
            if complete:
                self.timestamp = now
                stale = self._written is None or now - self._written >= self._persist_every
                if not self._was_complete or stale:
                    self._write(now)
            elif self._was_complete and self.timestamp is not None:
                self._write(self.timestamp)
            self._was_complete = complete

    def flush(self) -> None:
        """Write the latest time if the file holds an older one (at a clean stop)."""
        with self._lock:
            if self.timestamp is not None and self.timestamp != self._written:
                self._write(self.timestamp)

    def _write(self, timestamp: float) -> None:
        temp = self._path.with_name(f".{self._path.name}.tmp")
        try:
            temp.write_text(f"{timestamp:.3f}\n", encoding="ascii")
            # no fsync: losing the last few minutes to a power cut only makes the mirror
            # look a little staler than it was
            temp.replace(self._path)
        except OSError as error:
            if not self._write_failed:  # once: the state directory has bigger problems
                log.warning("cannot record when the mirror was last complete in %s: %s",
                            self._path, error)  # fmt: skip
            self._write_failed = True
            return
        self._write_failed = False
        self._written = timestamp
