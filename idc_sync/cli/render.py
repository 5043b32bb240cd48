"""What the CLI prints: tables of collections, problems with their reasons, the summary of a
sync, a plan and its difference to the mirror, what was retired, and the JSON forms."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from rich.console import Console
from rich.table import Table

from idc_sync.core.model import CollectionStatus, Problem
from idc_sync.core.planner import REMOVED, REVISED, UNSELECTED, Leaving
from idc_sync.core.units import size_text as size
from idc_sync.run.jobs import StatusReport, SyncReport
from idc_sync.run.plan import PlanOutcome, PlanReport
from idc_sync.run.select import describe_unknown

# Lines are never broken for the width of a terminal: scripts and logs read them whole.
stderr = Console(stderr=True, soft_wrap=True)
stdout = Console(soft_wrap=True)


def _held(held: Leaving | Any) -> str:
    return f"{held.series:,} series, {held.files:,} files, {size(held.bytes)}"


_LEAVING = {
    REMOVED: "removed from IDC",
    REVISED: "revised by IDC",
    UNSELECTED: "no longer selected",
}


def collections_table(collections: list[CollectionStatus]) -> None:
    table = Table(title="idc-sync status")
    for name in ("collection", "series done", "files done", "bytes done", "failed",
                 "quarantined"):  # fmt: skip
        table.add_column(name, justify="left" if name == "collection" else "right")
    for c in collections:
        table.add_row(
            c.collection_id,
            f"{c.series_complete:,}/{c.series_total:,}",
            f"{c.files_done:,}/{c.files_expected:,}",
            f"{size(c.bytes_done)}/{size(c.bytes_expected)}",
            f"{c.files_failed:,}",
            f"{c.files_quarantined:,}",
        )
    stdout.print(table)


def problems(found: list[Problem]) -> None:
    for p in found:
        what = p.key or f"series {p.crdc_series_uuid}"
        stdout.print(f"[red]{p.state}[/] {p.collection_id} {what}: {p.reason or ''}",
                     highlight=False)  # fmt: skip


def _outcome_notes(outcome: PlanOutcome) -> None:
    """What a plan reports beside its numbers: entries IDC no longer has, series that stay
    although no longer selected."""
    if outcome.unknown:
        stderr.print(f"[yellow]IDC release v{outcome.release}:[/] "
                     f"{describe_unknown(outcome.unknown)}", highlight=False)  # fmt: skip
    if outcome.tally.excluded_series:
        stderr.print(f"excluded by license policy: {outcome.tally.excluded_series:,} series")
    held = outcome.held_unselected
    if held.series:
        stderr.print(
            f"[yellow]kept, no longer selected:[/] {_held(held)} (run with --prune to retire "
            "them)", highlight=False,
        )  # fmt: skip


def sync_summary(report: SyncReport) -> None:
    s = report.round.summary
    collections_table(report.status)
    problems(report.problems)
    _outcome_notes(report.plan)
    restored = (
        f", restored {s.files_restored:,} from the retired folder" if s.files_restored else ""
    )
    stdout.print(
        f"fetched {s.files_fetched:,} files ({size(s.bytes_fetched)}), re-verified "
        f"{s.files_reverified:,} already on disk{restored}; series complete "
        f"{s.series_complete:,}, incomplete {s.series_incomplete:,}, failed {s.series_failed:,}",
        highlight=False,
    )
    retired = report.round.retired
    if retired.series_retired or retired.series_deferred:
        where = {
            "moved": f"moved to {report.retired_dir}",
            "deleted": "deleted",
            "kept": "kept in place",
        }
        parts = [
            f"{count:,} files {where[name]}"
            for name, count in (
                ("moved", retired.files_moved),
                ("deleted", retired.files_deleted),
                ("kept", retired.files_kept),
            )
            if count
        ]
        missing = f", {retired.files_missing:,} already gone" if retired.files_missing else ""
        deferred = (
            f"; {retired.series_deferred:,} kept until their new version is verified"
            if retired.series_deferred else ""
        )  # fmt: skip
        stdout.print(
            f"retired {retired.series_retired:,} series ({size(retired.bytes_retired)}: "
            f"{', '.join(parts) or 'no files'}{missing}){deferred}",
            highlight=False,
        )
    if s.files_size_only:
        stdout.print(f"[yellow]{s.files_size_only:,} files verified by size only[/]")
    if s.stopped:
        stderr.print(f"[bold red]stopped early:[/] {s.stopped}", highlight=False)
    if report.ok:
        stdout.print("[green]mirror complete: every selected file is verified[/]")
    else:
        stdout.print("[bold red]mirror incomplete[/]: see above; run again to retry")


def plan_dict(report: PlanReport) -> dict[str, Any]:
    o = report.outcome
    t = o.tally
    return {
        "idc_release": o.release,
        "series": t.series,
        "files": t.files,
        "bytes": t.bytes,
        "excluded_series": t.excluded_series,
        "excluded_by_license": t.excluded_by_license,
        "files_present": report.files_present,
        "bytes_present": report.bytes_present,
        "bytes_to_fetch": report.bytes_to_fetch,
        "free_bytes": report.free_bytes,
        "unknown": [asdict(u) for u in o.unknown],
        "retiring": {reason: asdict(held) for reason, held in o.retiring.items()},
        "kept_unselected": asdict(o.held_unselected),
        "refusal": o.refusal,
        "difference": {c: asdict(d) for c, d in report.difference.collections.items()},
    }


def plan_summary(report: PlanReport) -> None:
    o = report.outcome
    t = o.tally
    stdout.print(f"IDC release v{o.release}")
    stdout.print(f"selected:        {t.series:,} series, {t.files:,} files, {size(t.bytes)}")
    if t.excluded_series:
        by_license = ", ".join(f"{k}: {v:,}" for k, v in sorted(t.excluded_by_license.items()))
        stdout.print(f"excluded:        {t.excluded_series:,} series by license ({by_license})")
    stdout.print(f"already present: {report.files_present:,} files, {size(report.bytes_present)}")
    stdout.print(f"to fetch:        {size(report.bytes_to_fetch)}")
    for reason, held in sorted(o.retiring.items()):
        stdout.print(f"to retire:       {_held(held)} ({_LEAVING[reason]})", highlight=False)
    if report.free_bytes is not None:
        enough = report.free_bytes >= report.bytes_to_fetch
        mark = "[green]enough[/]" if enough else "[bold red]NOT ENOUGH[/]"
        stdout.print(f"free disk:       {size(report.free_bytes)} ({mark})")
    if report.difference.collections:
        _difference(report)
    _outcome_notes(o)
    if o.refusal:
        stderr.print(f"[bold red]a sync would stop:[/] {o.refusal}", highlight=False)


def _difference(report: PlanReport) -> None:
    """What a sync would change in the existing mirror, per collection."""
    table = Table(title=f"difference to IDC release v{report.outcome.release}")
    for name in ("collection", "added", "revised", "retired", "unchanged", "unfinished"):
        table.add_column(name, justify="left" if name == "collection" else "right")
    rows = sorted(report.difference.collections.items())
    for collection, d in [*rows, ("total", report.difference.total)]:
        table.add_row(
            collection,
            f"{d.added_series:,} ({size(d.added_bytes)})",
            f"{d.revised_series:,} ({size(d.revised_bytes)})",
            f"{d.retired_series:,} ({size(d.retired_bytes)})",
            f"{d.unchanged_series:,}",
            f"{d.unfinished_series:,}",
        )
    stdout.print(table)


def status_dict(report: StatusReport) -> dict[str, Any]:
    return {
        "state": str(report.state_db),
        "destination": report.destination,
        "collections": [asdict(c) for c in report.collections],
        "problems": [asdict(p) for p in report.problems],
        "retired": {**asdict(report.retired), "retired_dir": str(report.retired_dir)},
        "kept_unselected": asdict(report.held_unselected),
        "selection": [
            {"kind": kind, "value": value, "origin": origin}
            for kind, value, origin in report.selection
        ],
    }


def status_notes(report: StatusReport) -> None:
    if report.retired.series:
        stdout.print(
            f"retired: {report.retired.series:,} series; {report.retired.files:,} files "
            f"({size(report.retired.bytes)}) kept in {report.retired_dir}", highlight=False,
        )  # fmt: skip
    if report.held_unselected.series:
        stdout.print(
            f"kept, no longer selected: {_held(report.held_unselected)} (--prune retires them)",
            highlight=False,
        )


def dois(rows: list[tuple[str | None, str | None, int]]) -> None:
    current: object = object()
    for license_name, doi, count in rows:
        if license_name != current:
            stdout.print(f"[bold]{license_name or '(no license recorded)'}[/]")
            current = license_name
        link = f"https://doi.org/{doi}" if doi else "(no DOI recorded)"
        stdout.print(f"  {link}  ({count:,} series)", highlight=False)


def daemon_line(body: dict[str, Any]) -> None:
    rate = float(body.get("rate_bytes_per_second") or 0)
    eta = body.get("eta_seconds")
    eta_text = f", ETA {eta / 3600:,.1f} h" if eta is not None else ""
    stdout.print(
        f"daemon pid {body['pid']}: {body['phase']}, IDC release v{body['idc_release']}, "
        f"{size(int(rate))}/s{eta_text}",
        highlight=False,
    )
