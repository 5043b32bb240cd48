"""The ``idc-sync`` command line: parse flags, run a job (run/jobs.py, run/operator.py, the
daemon), print the outcome (cli/render.py) and exit with a code scripts can trust."""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import signal
import sys
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any, TypeVar

import click
import uvloop
from rich.logging import RichHandler
from rich.markup import escape

from idc_sync import __version__
from idc_sync.cli import render
from idc_sync.cli.citations import (
    DOI_RESOLVER,
    FORMATS,
    dois_to_format,
    failure_message,
    render_json,
    render_text,
    resolve,
)
from idc_sync.cli.daemon_client import daemon_status, from_daemon, healthz
from idc_sync.cli.entry import (
    EXIT_CONFIG,
    EXIT_INCOMPLETE,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_STATE,
    NOT_BEGUN,
    RESUMABLE,
)
from idc_sync.cli.progress import ProgressDisplay
from idc_sync.cli.render import stderr, stdout
from idc_sync.config import Settings, default_config_file, load_settings
from idc_sync.core.errors import ConfigurationError, IdcSyncError, LocalStorageError, StateError
from idc_sync.core.logs import configure as configure_logging
from idc_sync.core.model import RetryCounts
from idc_sync.run.jobs import SyncReport, citations, plan, status, sync
from idc_sync.run.operator import VerifyReport, retry_failed, verify
from idc_sync.run.plan import PlanReport

EXIT_CODES = """Exit codes: 0 every selected file is verified; 1 the run ended with something
missing or failed, or the local disk failed (the summary says what and why; run again);
2 bad configuration, manifest or selection, a plan that would retire too much, or a
destination that is not the mirror the state describes (nothing was touched); 3 the state
directory is unusable (held by another idc-sync, corrupt, from a newer version); 130
interrupted (Ctrl-C or SIGTERM; run again to resume)."""

log = logging.getLogger("idc_sync")

F = TypeVar("F", bound=Callable[..., Any])


def _setup_logging(level: str, log_format: str = "text") -> None:
    handler: logging.Handler | None = None
    if log_format == "text" and stderr.is_terminal:
        handler = RichHandler(console=stderr, show_path=False, rich_tracebacks=False)
        handler.setFormatter(logging.Formatter("%(message)s"))
    configure_logging(level, log_format, sys.stderr, handler)


def _state_options(function: F) -> F:
    """Flags every command that opens a state has."""
    options = [
        click.option("--config", "config_file", type=click.Path(path_type=Path),
                     help="TOML config file (default: $IDC_SYNC_CONFIG, else "
                          "~/.config/idc-sync/config.toml, else /etc/idc-sync/config.toml)."),
        click.option("--destination", type=click.Path(path_type=Path),
                     help="Mirror root directory."),
        click.option("--state-dir", type=click.Path(path_type=Path),
                     help="State directory (default: DESTINATION/.idc-sync)."),
    ]  # fmt: skip
    for option in reversed(options):
        function = option(function)
    return function


def settings_options(function: F) -> F:
    """Flags shared by sync, plan and serve; each overrides the config file and environment."""
    options = [
        click.option("--source", type=click.Choice(["aws", "gcs"]), help="Cloud to fetch from."),
        click.option("--endpoint", help="Endpoint URL for the chosen source (e.g. a local S3)."),
        click.option("--collection", "collections", multiple=True,
                     help="collection_id(s) to mirror, comma-separated or repeated."),
        click.option("--series", "series", multiple=True,
                     help="SeriesInstanceUID(s) or crdc_series_uuid(s), comma-separated or "
                          "repeated."),
        click.option("--patient-id", "patient_ids", multiple=True,
                     help="PatientID(s), comma-separated or repeated."),
        click.option("--study-instance-uid", "study_instance_uids", multiple=True,
                     help="StudyInstanceUID(s), comma-separated or repeated."),
        click.option("--manifest", "manifests", multiple=True, type=click.Path(path_type=Path),
                     help="IDC portal / s5cmd manifest file (repeatable)."),
        click.option("--sql", help="Query over table `index` returning SeriesInstanceUID."),
        click.option("--prune/--no-prune", default=None,
                     help="Retire series that left the selection (the selection replaces "
                          "the mirror's own instead of adding to it)."),
        click.option("--allow-retire/--no-allow-retire", default=None,
                     help="Let a plan retire more than max_retire_fraction of the mirror."),
        click.option("--dir-template", help="Layout, e.g. '%collection_id/%SeriesInstanceUID'."),
        click.option("--concurrency", type=int, help="Objects in flight."),
        click.option("--series-concurrency", type=int, help="Series worked on at once."),
        click.option("--workers", type=int,
                     help="Event loops (this process and worker processes); 0: one per "
                          "10,000 objects to fetch, at most one per core."),
        click.option("--checksum", type=click.Choice(["fastest", "md5"]),
                     help="fastest: the cheapest checksum the source publishes; md5: MD5."),
        click.option("--engine", type=click.Choice(["native", "s5cmd"]),
                     help="Transfer engine (s5cmd: batches fetched by s5cmd, verified by us)."),
        click.option("--strict/--no-strict", default=None,
                     help="Also fail on selection entries only earlier IDC releases had."),
        click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"])),
        click.option("--shard", help="K/N: only the series whose crdc_series_uuid hashes to K "
                                     "of N (0 <= K < N); N hosts split one selection."),
    ]  # fmt: skip
    for option in reversed(options):
        function = option(function)
    return _state_options(function)


_SELECTION = click.argument("selection", nargs=-1)


def _load(config_file: Path | None, endpoint: str | None = None, **flags: Any) -> Settings:
    overrides = {key: (list(value) or None) if isinstance(value, tuple) else value
                 for key, value in flags.items()}  # fmt: skip
    settings = load_settings(config_file or default_config_file(), **overrides)
    if endpoint is not None:
        # --endpoint replaces the chosen source's endpoint only
        if not endpoint.startswith(("http://", "https://")):
            raise ConfigurationError(f"--endpoint must be an http:// or https:// URL: {endpoint!r}")
        endpoints = settings.endpoints.model_copy(update={settings.source: endpoint.rstrip("/")})
        settings = settings.model_copy(update={"endpoints": endpoints})
    return settings


def _run_load(flags: dict[str, Any]) -> Settings:
    try:
        return _load(**flags)
    except ConfigurationError as error:
        stderr.print(f"[bold red]error:[/] {error}", highlight=False)
        sys.exit(EXIT_CONFIG)


_BEGAN = "idc_sync.began"  # click context meta: _run has started a job


def _run(job: Callable[[], Any]) -> Any:
    """Run a job, turning our errors into one line and an exit code (no traceback)."""
    # What is loaded by now (modules, settings) lives as long as the process: leave it
    # out of the collector's full scans, which otherwise walk it again and again.
    gc.freeze()
    context = click.get_current_context(silent=True)
    if context is not None:
        context.meta[_BEGAN] = True
    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(_terminable(job))
    except ConfigurationError as error:
        stderr.print(f"[bold red]error:[/] {error}", highlight=False)
        sys.exit(EXIT_CONFIG)
    except StateError as error:
        stderr.print(f"[bold red]error:[/] {error}", highlight=False)
        sys.exit(EXIT_STATE)
    except LocalStorageError as error:
        stderr.print(f"[bold red]error:[/] {error}; free space (or fix the permissions) and "
                     "run again: nothing verified is lost", highlight=False)  # fmt: skip
        sys.exit(EXIT_INCOMPLETE)
    except IdcSyncError as error:
        stderr.print(f"[bold red]error:[/] {error}", highlight=False)
        sys.exit(EXIT_INCOMPLETE)
    except (KeyboardInterrupt, _Terminated):
        stderr.print(RESUMABLE)
        sys.exit(EXIT_INTERRUPTED)


class _Terminated(Exception):
    """SIGTERM ended the job."""


async def _terminable(job: Callable[[], Any]) -> Any:
    """Run the job; SIGTERM (timeout(1), a stopping systemd unit, kill) ends it as Ctrl-C
    does: what is in flight is cancelled and recorded, the workers stopped, exit 130. Not
    by way of SIGINT, which a shell starts background jobs ignoring. A second SIGTERM ends
    the process at once. (`serve` puts its own handler, a drain, in place of this one.)"""
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    terminated = False
    before = signal.getsignal(signal.SIGTERM)  # cli/entry.py's, around the job

    def terminate() -> None:
        nonlocal terminated
        terminated = True
        loop.remove_signal_handler(signal.SIGTERM)
        task.cancel()

    loop.add_signal_handler(signal.SIGTERM, terminate)
    try:
        return await job()
    except asyncio.CancelledError:
        if terminated:
            raise _Terminated from None
        raise
    finally:
        if not terminated:
            loop.remove_signal_handler(signal.SIGTERM)  # which leaves SIG_DFL
            signal.signal(signal.SIGTERM, before)


class _Commands(click.Group):
    """The command group; a Ctrl-C that reaches it (while settings load, before ``_run``
    takes over, or while a summary prints after it) ends the run with exit 130 and one line,
    not click's "Aborted!" and exit 1, which says something is missing."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            if ctx.meta.get(_BEGAN):
                stderr.print(RESUMABLE)
            else:
                stderr.print(NOT_BEGUN)
            sys.exit(EXIT_INTERRUPTED)


@click.group(cls=_Commands, epilog=EXIT_CODES)
@click.version_option(__version__, prog_name="idc-sync")
def main() -> None:
    """Keep a verified local mirror of NCI Imaging Data Commons data.

    A selection (collections, series, patients, studies, SQL, manifests) adds to what the
    mirror holds; --prune makes it the whole of it."""


@main.command("sync", epilog=EXIT_CODES)
@settings_options
@_SELECTION
@click.option("--progress/--no-progress", default=None, help="Progress bar (default: on a TTY).")
@click.option("--dry-run", is_flag=True, help="Only show the plan (the same as `idc-sync plan`).")
@click.option("--adopt-destination", is_flag=True,
              help="The mirror moved to --destination: verify its files there, fetch nothing "
                   "that matches.")  # fmt: skip
@click.option("--follow-releases/--no-follow-releases", default=None,
              help="First fetch a newer IDC release from index_url, if there is one, and "
                   "mirror it (follow_releases).")  # fmt: skip
def sync_command(
    selection: tuple[str, ...],
    progress: bool | None,
    dry_run: bool,
    adopt_destination: bool,
    **flags: Any,
) -> None:
    """Fetch and verify everything selected; resumes where an earlier run stopped.

    SELECTION: collection_ids, PatientIDs, StudyInstanceUIDs, SeriesInstanceUIDs or
    crdc_series_uuids (comma-separated, recognised as `idc download` does), or a manifest
    file. Without one, the mirror's own selection is synced again."""
    settings = _run_load(flags)
    _setup_logging(settings.log_level, settings.log_format)
    if dry_run:
        _plan(settings, selection, as_json=False)
        return
    show_bar = stderr.is_terminal if progress is None else progress
    with ProgressDisplay(show_bar, stderr) as display:
        report: SyncReport = _run(
            lambda: sync(settings, display.sink, selection, adopt=adopt_destination)
        )
    render.sync_summary(report)
    sys.exit(EXIT_OK if report.ok else EXIT_INCOMPLETE)


@main.command("plan", epilog=EXIT_CODES)
@settings_options
@_SELECTION
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def plan_command(selection: tuple[str, ...], as_json: bool, **flags: Any) -> None:
    """Dry run: what the selection holds, what is already here, what a sync would fetch and
    retire, and the disk space it needs. Exit 2 when a sync would refuse the plan."""
    settings = _run_load(flags)
    _setup_logging(settings.log_level, settings.log_format)
    _plan(settings, selection, as_json=as_json)


def _plan(settings: Settings, selection: tuple[str, ...], *, as_json: bool) -> None:
    report: PlanReport = _run(lambda: plan(settings, selection))
    if as_json:
        stdout.print_json(json.dumps(render.plan_dict(report)))
    else:
        render.plan_summary(report)
    sys.exit(EXIT_CONFIG if report.outcome.refusal else EXIT_OK)


@main.command("citations")
@_state_options
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
    else:
        render.dois(rows)


@main.command("status")
@_state_options
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def status_command(as_json: bool, **flags: Any) -> None:
    """Per collection: series and files done, pending, failed, bytes; what was retired (from
    the running daemon's /status when it answers, and from the state)."""
    settings = _run_load(flags)
    report = _run(lambda: status(settings))
    collections, found = report.collections, report.problems
    live = daemon_status(settings)
    if live is not None:
        collections, found = from_daemon(live)
    if as_json:
        body = render.status_dict(report)
        body["collections"] = [asdict(c) for c in collections]
        body["problems"] = [asdict(p) for p in found]
        if live is not None:
            body["daemon"] = live
        stdout.print_json(json.dumps(body))
    else:
        render.collections_table(collections)
        render.problems(found)
        render.status_notes(report)
        if live is not None:
            render.daemon_line(live)
    complete = all(c.series_complete == c.series_total for c in collections)
    sys.exit(EXIT_OK if complete and not found else EXIT_INCOMPLETE)


@main.command("verify")
@_state_options
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
@_state_options
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


@main.command("serve", epilog=EXIT_CODES)
@settings_options
@click.option("--adopt-destination", is_flag=True,
              help="The mirror moved to --destination: verify its files there.")  # fmt: skip
def serve_command(adopt_destination: bool, **flags: Any) -> None:
    """Run as a service: plan, fetch continuously, replan every replan_interval and on
    SIGHUP, serve /healthz /readyz /status /metrics on http.listen; SIGTERM drains."""
    from idc_sync.service.daemon import Daemon  # prometheus-client and the loop only when serving

    settings = _run_load(flags)
    _setup_logging(settings.log_level, settings.log_format)
    daemon = Daemon(settings, reload=lambda: _load(**flags), adopt=adopt_destination)
    code: int = _run(daemon.run)
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
        healthy, said = healthz(address, timeout)
    except ConfigurationError as error:
        stderr.print(f"[bold red]error:[/] {error}", highlight=False)
        sys.exit(EXIT_CONFIG)
    (stdout if healthy else stderr).print(said, highlight=False)
    sys.exit(EXIT_OK if healthy else EXIT_INCOMPLETE)
