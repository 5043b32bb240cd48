"""Small real disks for tests: a tmpfs of a given size that really fills up, can grow, and
can be made read-only (mounting needs root and mount(8); without them the test skips)."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


def _mount(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["mount", *args], capture_output=True, text=True, check=False)


@contextlib.contextmanager
def tmpfs(mount_point: Path, size: str) -> Iterator[Path]:
    """``mount_point`` as a tmpfs of ``size`` (e.g. "2m") for the duration."""
    mount_point.mkdir(parents=True, exist_ok=True)
    if shutil.which("mount") is None or os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root and mount(8)")
    result = _mount("-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount_point))
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "--lazy", str(mount_point)], check=True)


def remount(mount_point: Path, options: str) -> None:
    """Change a mounted tmpfs: "size=16m" grows it, "ro" / "rw" make it read-only or not."""
    result = _mount("-o", f"remount,{options}", str(mount_point))
    assert result.returncode == 0, result.stderr
