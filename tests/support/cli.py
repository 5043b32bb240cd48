"""Helpers for tests that drive the real ``idc-sync`` command: a run in a subprocess with
no config file but what the test gives, a picture of a directory tree to compare before and
after, and the DICOM files a tree holds."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

DICM_OFFSET = 128


def idc_sync(
    *args: str | Path,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    """``idc-sync ARGS`` as a user would run it: its own process, exit code, stdout, stderr.
    No default config file is read unless the test's ``env`` names one."""
    environment = {**os.environ, "COLUMNS": "200", "IDC_SYNC_CONFIG": "", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "idc_sync", *map(str, args)],
        capture_output=True, text=True, check=False, cwd=cwd, env=environment, timeout=timeout,
    )  # fmt: skip


def tree(root: Path, ignore: frozenset[str] | set[str] = frozenset()) -> dict[str, tuple[str, int]]:
    """Every file under ``root`` (but those named in ``ignore``): its SHA-256 and mtime, to
    prove nothing was touched."""
    if not root.exists():
        return {}
    found = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and path.name not in ignore:
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            found[str(path.relative_to(root))] = (digest, path.stat().st_mtime_ns)
    return found


def dicom_files(root: Path) -> set[Path]:
    """Files under ``root`` a DICOM importer would take: a .dcm name or the DICM magic."""
    found: set[Path] = set()
    for path in root.rglob("*"):
        if not path.is_file():
            continue
        if path.suffix == ".dcm":
            found.add(path)
            continue
        with path.open("rb") as handle:
            handle.seek(DICM_OFFSET)
            if handle.read(4) == b"DICM":
                found.add(path)
    return found
