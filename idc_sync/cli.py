"""The ``idc-sync`` command line: parse flags, run a job from sync.py, print the outcome
and exit with a code scripts can trust.

Exit codes: 0 everything selected is verified; 1 the run ended with files missing or
failed (the summary says which and why); 2 bad configuration, manifest or selection
(nothing touched); 3 the state directory is unusable (locked, corrupt, newer schema);
130 interrupted."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.logging import RichHandler
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
from idc_sync.config import Settings, load_settings
from idc_sync.errors import ConfigurationError, IdcSyncError, StateError
from idc_sync.mirror import ProgressSink
from idc_sync.queue import CollectionStatus, Problem
from idc_sync.sync import PlanReport, SyncReport, describe_unknown, plan, status, sync

EXIT_OK, EXIT_INCOMPLETE, EXIT_CONFIG, EXIT_STATE, EXIT_INTERRUPTED = 0, 1, 2, 3, 130

stderr = Console(stderr=True)
stdout = Console()
log = logging.getLogger("idc_sync")

F = TypeVar("F", bound=Callable[..., Any])


def _setup_logging(level: str) -> None:
    handler: logging.Handler
    if stderr.is_terminal:
        handler = RichHandler(console=stderr, show_path=False, rich_tracebacks=False)
        handler.setFormatter(logging.Formatter("%(message)s"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("idc_sync")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False
    # botocore and aiohttp are chatty at INFO about things our own log already says
    logging.getLogger("botocore").setLevel(logging.WARNING)


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
        click.option("--strict/--no-strict", default=None,
                     help="Fail when the selection names things the IDC release lacks."),
        click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"])),
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
    try:
        return asyncio.run(job())
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
    _setup_logging(settings.log_level)
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
    _setup_logging(settings.log_level)
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
    if report.unknown:
        stderr.print(f"[yellow]not in this release:[/] {describe_unknown(report.unknown)}")


@main.command("status")
@click.option("--config", "config_file", type=click.Path(path_type=Path))
@click.option("--destination", type=click.Path(path_type=Path))
@click.option("--state-dir", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def status_command(as_json: bool, **flags: Any) -> None:
    """Per collection: series and files done, pending, failed, bytes (from the state)."""
    settings = _run_load(flags)
    report = _run(lambda: status(settings))
    if as_json:
        stdout.print_json(json.dumps({
            "state": str(report.state_db),
            "collections": [asdict(c) for c in report.collections],
            "problems": [asdict(p) for p in report.problems],
        }))  # fmt: skip
    else:
        _print_collections(report.collections)
        _print_problems(report.problems)
    complete = all(c.series_complete == c.series_total for c in report.collections)
    sys.exit(EXIT_OK if complete and not report.problems else EXIT_INCOMPLETE)


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
    """Progress of one sync: a rich bar on a terminal, a log line every 15 s otherwise."""

    def __init__(self, progress: Progress | None, task: TaskID | None, files: int,
                 size: int, files_done: int, bytes_done: int) -> None:  # fmt: skip
        self._progress, self._task = progress, task
        self.files, self.size = files, size
        self.files_done, self.bytes_done = files_done, bytes_done
        self._last_log = time.monotonic()

    def bytes_received(self, count: int) -> None:
        self.bytes_done += count
        if self._progress is not None and self._task is not None:
            self._progress.advance(self._task, count)

    def file_finished(self, size: int, *, fetched: bool, ok: bool) -> None:
        self.files_done += 1
        if not fetched and ok:
            self.bytes_received(size)  # verified on disk: counts toward the total at once
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, files=f"{self.files_done:,}/{self.files:,} files")
        elif time.monotonic() - self._last_log > 15:
            self._last_log = time.monotonic()
            log.info("progress: %s/%s files, %s/%s", f"{self.files_done:,}", f"{self.files:,}",
                     _size(self.bytes_done), _size(self.size))  # fmt: skip


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

    def __enter__(self) -> _ProgressDisplay:
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()

    def sink(self, files: int, size: int, files_done: int, bytes_done: int) -> ProgressSink:
        task = None
        if self._progress is not None:
            task = self._progress.add_task(
                "sync", total=size, completed=bytes_done,
                files=f"{files_done:,}/{files:,} files",
            )  # fmt: skip
        return _Sink(self._progress, task, files, size, files_done, bytes_done)
