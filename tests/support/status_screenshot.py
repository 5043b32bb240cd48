"""Makes README's picture of the status page (docs/status-page.png): a real daemon mirrors a
few real IDC index rows (synthetic DICOM) from the S3 test server under a bandwidth cap,
with one file that never verifies, one the bucket refuses and a newer IDC release
announced, and headless Chromium photographs ``/`` half way through.

    .venv/bin/python -m tests.support.status_screenshot docs/status-page.png
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from tests.support import dataset
from tests.support.browser import screenshot
from tests.support.daemon import Running, daemon_settings, make_daemon, wait_for
from tests.support.s3server import S3TestServer


def main(target: Path) -> None:
    rows = (dataset.selection("qin_pet_phantom_small") + dataset.selection("two")
            + dataset.selection("cr_nc") + dataset.selection("single_instance"))  # fmt: skip
    demo = tempfile.TemporaryDirectory(prefix="idc-sync-demo-")
    with S3TestServer("s3") as server, demo as directory:
        uploaded = dataset.populate(server, rows)
        keys = sorted(key for _, key in uploaded)
        server.faults.add("flip", keys=[keys[7]], on=["GET"])  # quarantined
        server.faults.add("status_500", keys=[keys[-1]], on=["GET"])  # failed
        total = sum(len(data) for data in uploaded.values())
        settings = daemon_settings(
            Path(directory), server.endpoint, rows, max_bytes_per_second=total // 20,
            max_integrity_attempts=2, max_attempts=2, concurrency=4, series_concurrency=2,
        )  # fmt: skip
        daemon = make_daemon(settings)
        with Running(daemon) as running:
            wait_for(lambda: running.status()["overall"]["bytes_done"] > total * 0.55, 120)
            release = running.status()["idc_release"]
            running.call(daemon.metrics.set_latest_release, release + 1)
            time.sleep(0.5)
            screenshot(running.url("/"), target, width=1280, height=1240)
            running.stop()
    print(f"wrote {target}")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "docs/status-page.png"))
