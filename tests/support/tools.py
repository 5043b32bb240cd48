"""Programs some tests need from the system's package manager (promtool, chromium): found on
PATH, else the test is skipped on a developer's machine and fails in CI (``CI`` set, as
``.ci/run`` does), where a missing tool would otherwise hide a whole kind of check."""

from __future__ import annotations

import os
import shutil

import pytest


def require(*names: str, package: str) -> str:
    """The first of ``names`` on PATH, from the Debian package ``package``."""
    for name in names:
        found = shutil.which(name)
        if found is not None:
            return found
    message = f"{names[0]} is not installed (Debian package {package}; .ci/run installs it)"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)
