"""The ``idc-sync`` command and ``python -m idc_sync``: load the command line, then run it.
Loading takes the first ~0.5 s of every run; a Ctrl-C or SIGTERM meanwhile ends the run as
one later does (exit 130, one line), not with Python's traceback of whatever was being
imported, nor (SIGTERM) silently by the signal."""

from __future__ import annotations

import signal
import sys
from types import FrameType

# cli/main.py's EXIT_CODES says what each means
EXIT_OK, EXIT_INCOMPLETE, EXIT_CONFIG, EXIT_STATE, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
# what an interrupted run says, before its job began and once it has
NOT_BEGUN = "interrupted before anything began"
RESUMABLE = "interrupted; run the same command again to resume"


def _as_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main() -> None:
    # until a job's own handler takes over (cli/main.py _terminable; serve's drain), SIGTERM
    # is a Ctrl-C: loading, settings, and what prints after the job
    signal.signal(signal.SIGTERM, _as_interrupt)
    try:
        from idc_sync.cli.main import main as command_line
    except KeyboardInterrupt:
        print(NOT_BEGUN, file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)
    command_line()
