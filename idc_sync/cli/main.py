"""The ``idc-sync`` command line: parse flags, run a job from sync.py, print the outcome
and exit with a code scripts can trust.

Exit codes: 0 everything selected is verified; 1 the run ended with files missing or
failed (the summary says which and why); 2 bad configuration, manifest or selection
(nothing touched); 3 the state directory is unusable (locked, corrupt, newer schema);
130 interrupted."""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any, TypeVar

import click
import uvloop
from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from idc_sync import __version__
from idc_sync.cli.citations import (
    DOI_RESOLVER,
    FORMATS,
    dois_to_format,
    failure_message,
    render_json,
    render_text,
    resolve,
)
from idc_sync.config import Settings, load_settings
from idc_sync.core.errors import ConfigurationError, IdcSyncError, StateError
from idc_sync.core.logs import configure as configure_logging
from idc_sync.core.model import CollectionStatus, Problem, RetryCounts
from idc_sync.run.jobs import (
    PlanReport,
    SyncReport,
    citations,
    describe_unknown,
    plan,
    status,
    sync,
)
from idc_sync.run.mirror import ProgressSink
from idc_sync.run.operator import VerifyReport, retry_failed, verify

EXIT_OK, EXIT_INCOMPLETE, EXIT_CONFIG, EXIT_STATE, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
# Seconds between progress bar updates.
BAR_INTERVAL = 0.1

stderr = Console(stderr=True)
stdout = Console()
log = logging.getLogger("idc_sync")

F = TypeVar("F", bound=Callable[..., Any])


def _setup_logging(level: str, log_format: str = "text") -> None:
    handler: logging.Handler | None = None
    if log_format == "text" and stderr.is_terminal:
        handler = RichHandler(console=stderr, show_path=False, rich_tracebacks=False)
        handler.setFormatter(logging.Formatter("%(message)s"))
    configure_logging(level, log_format, sys.stderr, handler)


def settings_options(function: F) -> F:
    """Flags shared by sync and plan; each overrides the config file and environment."""
    options = [
        click.option("--config", "config_file", type=click.Path(path_type=Path),
                     help="TOML config file."),
        click.option("--destination", type=click.Path(path_type=Path),
                     help="Mirror root directory."),
        click.option("--state-dir", type=click.Path(path_type=Path),
                     help="State directory (default: DESTINATION/.idc-sync)."),
        click.option("--source", type=click.Choice(["aws", "gcs"]), help="Cloud to fetch from."),
        click.option("--endpoint", help="Endpoint URL for the chosen source (e.g. a local S3)."),
        click.option("--collection", "collections", multiple=True,
                     help="collection_id to mirror (repeatable)."),
        click.option("--series", "series", multiple=True,
                     help="SeriesInstanceUID or crdc_series_uuid (repeatable)."),
        click.option("--manifest", "manifests", multiple=True, type=click.Path(path_type=Path),
                     help="IDC portal / s5cmd manifest file (repeatable)."),
        click.option("--sql", help="Query over table `index` returning SeriesInstanceUID."),
        click.option("--dir-template", help="Layout, e.g. '%collection_id/%SeriesInstanceUID'."),
        click.option("--concurrency", type=int, help="Objects in flight."),
        click.option("--series-concurrency", type=int, help="Series worked on at once."),
        click.option("--engine", type=click.Choice(["native", "s5cmd"]),
                     help="Transfer engine (s5cmd: batches fetched by s5cmd, verified by us)."),
        click.option("--strict/--no-strict", default=None,
                     help="Fail when the selection names things the IDC release lacks."),
        click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"])),
        click.option("--shard", help="K/N: only the series whose crdc_series_uuid hashes to K "
                                     "of N (0 <= K < N); N hosts split one selection."),
    ]  # fmt: skip
    for option in reversed(options):
        function = option(function)
    return function


def _load(config_file: Path | None, endpoint: str | None = None, **flags: Any) -> Settings:
    overrides = {key: (list(value) or None) if isinstance(value, tuple) else value
                 for key, value in flags.items()}  # fmt: skip
    settings = load_settings(config_file, **overrides)
    if endpoint is not None:
        # --endpoint replaces the chosen source's endpoint only
        if not endpoint.startswith(("http://", "https://")):
            raise ConfigurationError(f"--endpoint must be an http:// or https:// URL: {endpoint!r}")
        endpoints = settings.endpoints.model_copy(update={settings.source: endpoint.rstrip("/")})
        settings = settings.model_copy(update={"endpoints": endpoints})
    return settings


def _run(job: Callable[[], Any]) -> Any:
    """Run a job, turning our errors into messages and exit codes."""
    # What is loaded by now (modules, settings) lives as long as the process: leave it
    # out of the collector's full scans, which otherwise walk it again and again.
    gc.freeze()
    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(job())
    except ConfigurationError as error:
        stderr.print(f"[bold red]error:[/] {error}", highlight=False)
        sys.exit(EXIT_CONFIG)
    except StateError as error:
        stderr.print(f"[bold red]error:[/] {error}", highlight=False)
        sys.exit(EXIT_STATE)
    except IdcSyncError as error:
        stderr.print(f"[bold red]error:[/] {error}", highlight=False)
        sys.exit(EXIT_INCOMPLETE)
    except KeyboardInterrupt:
        stderr.print("interrupted; run the same command again to resume")
        sys.exit(EXIT_INTERRUPTED)


@click.group()
@click.version_option(__version__, prog_name="idc-sync")
def main() -> None:
    """Keep a verified local mirror of NCI Imaging Data Commons data."""


@main.command("sync")
@settings_options
@click.option("--progress/--no-progress", default=None, help="Progress bar (default: on a TTY).")
def sync_command(progress: bool | None, **flags: Any) -> None:
    """Fetch and verify everything selected; resumes where an earlier run stopped."""
    settings = _run_load(flags)
    _setup_logging(settings.log_level, settings.log_format)
    show_bar = stderr.is_terminal if progress is None else progress
    with _ProgressDisplay(show_bar) as display:
        report: SyncReport = _run(lambda: sync(settings, display.sink))
    _print_sync(report)
    sys.exit(EXIT_OK if report.ok else EXIT_INCOMPLETE)


@main.command("plan")
@settings_options
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def plan_command(as_json: bool, **flags: Any) -> None:
    """Dry run: what the selection holds, what is already here, the disk space it needs."""
    settings = _run_load(flags)
    _setup_logging(settings.log_level, settings.log_format)
    report: PlanReport = _run(lambda: plan(settings))
    if as_json:
        stdout.print_json(json.dumps(_plan_dict(report)))
        return
    t = report.tally
    stdout.print(f"IDC release v{report.release}")
    stdout.print(f"selected:        {t.series:,} series, {t.files:,} files, {_size(t.bytes)}")
    if t.excluded_series:
        by_license = ", ".join(f"{k}: {v:,}" for k, v in sorted(t.excluded_by_license.items()))
        stdout.print(f"excluded:        {t.excluded_series:,} series by license ({by_license})")
    stdout.print(f"already present: {report.files_present:,} files, {_size(report.bytes_present)}")
    stdout.print(f"to fetch:        {_size(report.bytes_to_fetch)}")
    if report.free_bytes is not None:
        enough = report.free_bytes >= report.bytes_to_fetch
        mark = "[green]enough[/]" if enough else "[bold red]NOT ENOUGH[/]"
        stdout.print(f"free disk:       {_size(report.free_bytes)} ({mark})")
    if report.difference.collections:
        _print_difference(report)
    if report.unknown:
        stderr.print(f"[yellow]not in this release:[/] {describe_unknown(report.unknown)}")


def _print_difference(report: PlanReport) -> None:
    """What a sync would change in the existing mirror, per collection."""
    table = Table(title=f"difference to IDC release v{report.release}")
    for name in ("collection", "added", "revised", "retired", "unchanged", "unfinished"):
        table.add_column(name, justify="left" if name == "collection" else "right")
    rows = sorted(report.difference.collections.items())
    for collection, d in [*rows, ("total", report.difference.total)]:
        table.add_row(
            collection,
            f"{d.added_series:,} ({_size(d.added_bytes)})",
            f"{d.revised_series:,} ({_size(d.revised_bytes)})",
            f"{d.retired_series:,} ({_size(d.retired_bytes)})",
            f"{d.unchanged_series:,}",
            f"{d.unfinished_series:,}",
        )
    stdout.print(table)


@main.command("citations")
@click.option("--config", "config_file", type=click.Path(path_type=Path))
@click.option("--destination", type=click.Path(path_type=Path))
@click.option("--state-dir", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option(
    "--format",
    "citation_format",
    type=click.Choice(FORMATS),
    default="doi",
    show_default=True,
    help="doi: the DOI list; apa, bibtex, csl-json, turtle: references formatted by "
    "doi.org (needs network).",
)
@click.option("--doi-resolver", default=DOI_RESOLVER, hidden=True)  # tests: a local resolver
def citations_command(as_json: bool, citation_format: str, doi_resolver: str, **flags: Any) -> None:
    """The DOIs of what the mirror holds, per license: cite them when you publish.

    Exit 0 also when doi.org cannot be reached (the DOIs are listed instead, stderr says
    so); 1 when doi.org answered but some DOIs could not be formatted."""
    settings = _run_load(flags)
    rows = _run(lambda: citations(settings))
    dois = dois_to_format(rows) if citation_format != "doi" else []
    if not dois:
        _print_dois(rows, as_json)
        return
    resolution = _run(lambda: resolve(dois, citation_format, doi_resolver))
    if not resolution.citations:
        _print_dois(rows, as_json)
    elif as_json:
        click.echo(json.dumps(render_json(rows, citation_format, resolution), indent=2))
    else:
        click.echo(render_text(rows, citation_format, resolution))
    if resolution.failures:
        message = escape(failure_message(resolution, doi_resolver))
        stderr.print(f"[yellow]warning:[/] {message}", highlight=False, soft_wrap=True)
    sys.exit(EXIT_INCOMPLETE if resolution.partial else EXIT_OK)


def _print_dois(rows: list[tuple[str | None, str | None, int]], as_json: bool) -> None:
    if as_json:
        stdout.print_json(json.dumps([
            {"license_short_name": lic, "source_DOI": doi, "series": n} for lic, doi, n in rows
        ]))  # fmt: skip
        return
    current = object()
    for license_name, doi, count in rows:
        if license_name != current:
            stdout.print(f"[bold]{license_name or '(no license recorded)'}[/]")
            current = license_name
        link = f"https://doi.org/{doi}" if doi else "(no DOI recorded)"
        stdout.print(f"  {link}  ({count:,} series)", highlight=False)


@main.command("status")
@click.option("--config", "config_file", type=click.Path(path_type=Path))
@click.option("--destination", type=click.Path(path_type=Path))
@click.option("--state-dir", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def status_command(as_json: bool, **flags: Any) -> None:
    """Per collection: series and files done, pending, failed, bytes (from the running
    daemon's /status when it answers, else from the state)."""
    settings = _run_load(flags)
    live = _daemon_status(settings)
    if live is not None:
        collections, problems = _from_daemon(live)
        state_db = str(settings.state_path / "state.sqlite")
    else:
        report = _run(lambda: status(settings))
        collections, problems, state_db = report.collections, report.problems, str(report.state_db)
    if as_json:
        stdout.print_json(json.dumps({
            "state": state_db,
            "collections": [asdict(c) for c in collections],
            "problems": [asdict(p) for p in problems],
            **({"daemon": live} if live is not None else {}),
        }))  # fmt: skip
    else:
        _print_collections(collections)
        _print_problems(problems)
        if live is not None:
            _print_daemon(live)
    complete = all(c.series_complete == c.series_total for c in collections)
    sys.exit(EXIT_OK if complete and not problems else EXIT_INCOMPLETE)


@main.command("verify")
@click.option("--config", "config_file", type=click.Path(path_type=Path))
@click.option("--destination", type=click.Path(path_type=Path))
@click.option("--state-dir", type=click.Path(path_type=Path))
@click.option("--sample", type=click.IntRange(min=1), help="Check N files chosen at random.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def verify_command(sample: int | None, as_json: bool, **flags: Any) -> None:
    """Re-hash verified files against their recorded checksums; missing, modified and
    corrupt files are queued so the next sync fetches them again."""
    settings = _run_load(flags)
    report: VerifyReport = _run(lambda: verify(settings, sample))
    if as_json:
        stdout.print_json(json.dumps({
            "checked": report.checked, "ok": report.ok, "size_only": report.size_only,
            "unconfirmed": report.unconfirmed,
            "missing": report.count("missing"), "modified": report.count("modified"),
            "corrupt": report.count("corrupt"), "requeued": report.requeued,
            "findings": [asdict(f) for f in report.findings],
        }))  # fmt: skip
    else:
        for finding in report.findings[:100]:
            stdout.print(f"[red]{finding.problem}[/] {finding.path}: {finding.detail}",
                         highlight=False)  # fmt: skip
        if len(report.findings) > 100:
            stdout.print(f"... and {len(report.findings) - 100:,} more")
        stdout.print(
            f"checked {report.checked:,} files: {report.ok:,} intact, "
            f"{report.size_only:,} checked by size only, {report.unconfirmed:,} to re-verify "
            f"with the server, {report.count('missing'):,} missing, "
            f"{report.count('modified'):,} modified, {report.count('corrupt'):,} corrupt"
        )
        if report.requeued:
            stdout.print(f"queued {report.requeued:,} files to be fetched again by the next sync")
    sys.exit(EXIT_OK if report.all_good else EXIT_INCOMPLETE)


@main.command("retry-failed")
@click.option("--config", "config_file", type=click.Path(path_type=Path))
@click.option("--destination", type=click.Path(path_type=Path))
@click.option("--state-dir", type=click.Path(path_type=Path))
def retry_failed_command(**flags: Any) -> None:
    """Put quarantined and failed files, and failed or incomplete series, back in the queue
    for the next sync."""
    settings = _run_load(flags)
    counts: RetryCounts = _run(lambda: retry_failed(settings))
    stdout.print(
        f"queued again: {counts.objects_quarantined:,} quarantined and "
        f"{counts.objects_failed:,} failed files, {counts.series:,} series; "
        "run sync to fetch them"
    )


def _daemon_status(settings: Settings) -> dict[str, Any] | None:
    """The /status of a daemon serving this state directory, or None when none answers."""
    if not settings.http.listen:
        return None
    from idc_sync.service.httpapi import url_of  # aiohttp.web: only for serve/health

    url = url_of(settings.http.listen, "/status")  # always http://host:port
    try:
        with urllib.request.urlopen(url, timeout=2) as reply:  # noqa: S310
            body = json.load(reply)
    except (OSError, ValueError):
        return None
    if not isinstance(body, dict) or body.get("state_dir") != str(settings.state_path):
        return None  # some other daemon (or something else) on that port
    return body


def _from_daemon(body: dict[str, Any]) -> tuple[list[CollectionStatus], list[Problem]]:
    names = CollectionStatus.__dataclass_fields__
    collections = [CollectionStatus(**{k: c[k] for k in names}) for c in body["collections"]]
    problems = [Problem(**p) for p in body["problems"]]
    return collections, problems


def _print_daemon(body: dict[str, Any]) -> None:
    rate = float(body.get("rate_bytes_per_second") or 0)
    eta = body.get("eta_seconds")
    eta_text = f", ETA {eta / 3600:,.1f} h" if eta is not None else ""
    stdout.print(
        f"daemon pid {body['pid']}: {body['phase']}, IDC release v{body['idc_release']}, "
        f"{_size(int(rate))}/s{eta_text}",
        highlight=False,
    )


@main.command("serve")
@settings_options
def serve_command(**flags: Any) -> None:
    """Run as a service: plan, fetch continuously, replan every replan_interval and on
    SIGHUP, serve /healthz /readyz /status /metrics on http.listen; SIGTERM drains."""
    from idc_sync.service.daemon import Daemon  # prometheus-client and the loop only when serving

    settings = _run_load(flags)
    _setup_logging(settings.log_level, settings.log_format)
    code: int = _run(lambda: Daemon(settings, reload=lambda: _load(**flags)).run())
    sys.exit(code)


@main.command("health")
@click.option("--config", "config_file", type=click.Path(path_type=Path))
@click.option("--listen", help="host:port of the daemon (default: http.listen of the config).")
@click.option("--timeout", type=float, default=10.0, show_default=True, help="Seconds.")
def health_command(config_file: Path | None, listen: str | None, timeout: float) -> None:
    """Exit 0 if the daemon answers /healthz, 1 if not (for container health checks)."""
    address = listen if listen is not None else _run_load({"config_file": config_file}).http.listen
    if not address:
        stderr.print("[bold red]error:[/] http.listen is empty: the daemon serves no HTTP")
        sys.exit(EXIT_CONFIG)
    try:
        from idc_sync.service.httpapi import url_of  # aiohttp.web: only for serve/health

        url = url_of(address, "/healthz")
        with urllib.request.urlopen(url, timeout=timeout) as reply:  # noqa: S310 - http only
            healthy = reply.status == 200
    except ConfigurationError as error:
        stderr.print(f"[bold red]error:[/] {error}", highlight=False)
        sys.exit(EXIT_CONFIG)
    except urllib.error.HTTPError as error:
        stderr.print(f"unhealthy: {url} answered {error.code}")
        sys.exit(EXIT_INCOMPLETE)
    except OSError as error:
        stderr.print(f"unhealthy: no answer from {url}: {error}")
        sys.exit(EXIT_INCOMPLETE)
    stdout.print("healthy" if healthy else "unhealthy")
    sys.exit(EXIT_OK if healthy else EXIT_INCOMPLETE)


def _run_load(flags: dict[str, Any]) -> Settings:
    try:
        return _load(**flags)
    except ConfigurationError as error:
        stderr.print(f"[bold red]error:[/] {error}", highlight=False)
        sys.exit(EXIT_CONFIG)


# -- output -----------------------------------------------------------------------------


def _size(count: int) -> str:
    value = float(count)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            return f"{value:,.0f} {unit}" if unit == "B" else f"{value:,.1f} {unit}"
        value /= 1000
    return f"{count} B"


def _plan_dict(report: PlanReport) -> dict[str, Any]:
    t = report.tally
    return {
        "idc_release": report.release,
        "series": t.series,
        "files": t.files,
        "bytes": t.bytes,
        "excluded_series": t.excluded_series,
        "excluded_by_license": t.excluded_by_license,
        "files_present": report.files_present,
        "bytes_present": report.bytes_present,
        "bytes_to_fetch": report.bytes_to_fetch,
        "free_bytes": report.free_bytes,
        "unknown": [asdict(u) for u in report.unknown],
        "difference": {c: asdict(d) for c, d in report.difference.collections.items()},
    }


def _print_collections(collections: list[CollectionStatus]) -> None:
    table = Table(title="idc-sync status")
    for name in ("collection", "series done", "files done", "bytes done", "failed",
                 "quarantined"):  # fmt: skip
        table.add_column(name, justify="left" if name == "collection" else "right")
    for c in collections:
        table.add_row(
            c.collection_id,
            f"{c.series_complete:,}/{c.series_total:,}",
            f"{c.files_done:,}/{c.files_expected:,}",
            f"{_size(c.bytes_done)}/{_size(c.bytes_expected)}",
            f"{c.files_failed:,}",
            f"{c.files_quarantined:,}",
        )
    stdout.print(table)


def _print_problems(problems: list[Problem]) -> None:
    for p in problems:
        what = p.key or f"series {p.crdc_series_uuid}"
        stdout.print(f"[red]{p.state}[/] {p.collection_id} {what}: {p.reason or ''}",
                     highlight=False)  # fmt: skip


def _print_sync(report: SyncReport) -> None:
    s = report.summary
    _print_collections(report.status)
    _print_problems(report.problems)
    if report.unknown:
        stderr.print(f"[yellow]not in IDC release v{report.release}:[/] "
                     f"{describe_unknown(report.unknown)}")  # fmt: skip
    if report.tally.excluded_series:
        stderr.print(f"excluded by license policy: {report.tally.excluded_series:,} series")
    stdout.print(
        f"fetched {s.files_fetched:,} files ({_size(s.bytes_fetched)}), re-verified "
        f"{s.files_reverified:,} already on disk; series complete {s.series_complete:,}, "
        f"incomplete {s.series_incomplete:,}, failed {s.series_failed:,}"
    )
    if s.files_size_only:
        stdout.print(f"[yellow]{s.files_size_only:,} files verified by size only[/]")
    if s.stopped:
        stderr.print(f"[bold red]stopped early:[/] {s.stopped}")
    if report.ok:
        stdout.print("[green]mirror complete: every selected file is verified[/]")
    else:
        stdout.print("[bold red]mirror incomplete[/]: see above; run again to retry")


class _Sink:
    """Progress of one sync: a rich bar on a terminal, a log line every 15 s otherwise.

    The bar hears of the counts at most every BAR_INTERVAL seconds (it redraws ten times a
    second anyway): telling it of every file cost 6% of a small-file run's CPU."""

    def __init__(self, progress: Progress | None, task: TaskID | None, files: int,
                 size: int, files_done: int, bytes_done: int) -> None:  # fmt: skip
        self._progress, self._task = progress, task
        self.files, self.size = files, size
        self.files_done, self.bytes_done = files_done, bytes_done
        self._last_log = time.monotonic()
        self._next_push = 0.0

    def bytes_received(self, count: int) -> None:
        self.bytes_done += count
        if self._progress is not None and time.monotonic() >= self._next_push:
            self.push()

    def file_finished(self, size: int, *, fetched: bool, ok: bool) -> None:
        self.files_done += 1
        if not fetched and ok:
            self.bytes_done += size  # verified on disk: counts toward the total at once
        if self._progress is not None:
            self.bytes_received(0)  # the bar, when it is due
        elif time.monotonic() - self._last_log > 15:
            self._last_log = time.monotonic()
            log.info("progress: %s/%s files, %s/%s", f"{self.files_done:,}", f"{self.files:,}",
                     _size(self.bytes_done), _size(self.size))  # fmt: skip

    def push(self) -> None:
        """Show the current counts on the bar."""
        if self._progress is None:
            return
        assert self._task is not None  # a bar always has its task
        self._next_push = time.monotonic() + BAR_INTERVAL
        self._progress.update(
            self._task,
            completed=self.bytes_done,
            files=f"{self.files_done:,}/{self.files:,} files",
        )


class _ProgressDisplay:
    def __init__(self, show: bool) -> None:
        self._progress = (
            Progress(
                TextColumn("{task.fields[files]}"),
                BarColumn(),
                DownloadColumn(),
                TransferSpeedColumn(),
                TimeRemainingColumn(),
                console=stderr,
            )
            if show
            else None
        )
        self._sinks: list[_Sink] = []

    def __enter__(self) -> _ProgressDisplay:
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            for sink in self._sinks:
                sink.push()  # the last counts, whenever they came in
            self._progress.stop()

    def sink(self, files: int, size: int, files_done: int, bytes_done: int) -> ProgressSink:
        task = None
        if self._progress is not None:
            task = self._progress.add_task(
                "sync", total=size, completed=bytes_done,
                files=f"{files_done:,}/{files:,} files",
            )  # fmt: skip
        sink = _Sink(self._progress, task, files, size, files_done, bytes_done)
        self._sinks.append(sink)
        return sink
