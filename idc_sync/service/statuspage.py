"""The status page at ``/``: the daemon's ``/status`` answer as one plain HTML page for a
person at a browser, rendered on the server and refreshed by the browser itself (a
``<meta http-equiv="refresh">``: no script, no framework, nothing to load from elsewhere).

A pure function of the status dict and the time: every value in it is escaped, because
collection ids, paths and error messages come from the index, the config and the network."""

from __future__ import annotations

import html
import math
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from idc_sync.core import units

REFRESH_SECONDS = 10
MAX_ERRORS = 20

_STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em 2em;color:#1b1f24;background:#fff}
h1{font-size:1.5em;margin:0 0 .2em}h2{font-size:1.15em;margin:1.4em 0 .4em}
.phase{display:inline-block;padding:.1em .6em;border-radius:1em;background:#dde3ea;
font-weight:600;vertical-align:middle;margin-left:.5em;font-size:.65em}
.phase-mirroring{background:#cfe8ff}.phase-idle{background:#d3f3d8}
.phase-draining,.phase-stopped{background:#ffe1c2}
dl{display:grid;grid-template-columns:max-content 1fr;gap:.25em 1.2em;margin:0}
dt{color:#57606a}dd{margin:0;font-variant-numeric:tabular-nums}
table{border-collapse:collapse;width:100%;font-variant-numeric:tabular-nums}
th,td{text-align:left;padding:.3em .6em;border-bottom:1px solid #e4e8ec;vertical-align:top}
th{background:#f4f6f8;font-weight:600}td.n,th.n{text-align:right}
.bad{color:#b3261e;font-weight:600}.newer{color:#9a6700;font-weight:600}
progress{width:9em;vertical-align:middle}.muted{color:#57606a}
td.message{word-break:break-word}footer{margin-top:2em;color:#57606a;font-size:.9em}
"""


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def count_text(value: int | float | None) -> str:
    return "unknown" if value is None else f"{int(value):,}"


def size_text(count: float | None) -> str:
    """Bytes in decimal units, as the CLI and the daemon's log lines write them."""
    return "unknown" if count is None else units.size_text(count)


def duration_text(seconds: float | None) -> str:
    """The two largest units of a duration: "45 s", "12 min 5 s", "3 h 12 min", "2 d 3 h"."""
    if seconds is None:
        return "unknown"
    left = max(round(seconds), 0)
    parts: list[str] = []
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60), ("s", 1)):
        if left >= size or (unit == "s" and not parts):
            parts.append(f"{left // size} {unit}")
            left %= size
        elif parts:
            break
        if len(parts) == 2:
            break
    return " ".join(parts)


def time_text(timestamp: float | None, now: float) -> str:
    """A Unix time as UTC, with how long ago it was."""
    if not timestamp:
        return "never"
    stamp = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(timestamp))
    ago = now - timestamp
    return f"{stamp} ({duration_text(ago)} ago)" if ago >= 0 else stamp


def _percent(done: int, expected: int) -> str:
    """Rounded down: 100% only once everything is done."""
    if done >= expected:
        return "100%"
    return f"{math.floor(1000 * done / expected) / 10:.1f}%"


def _progress(done: int, expected: int) -> str:
    maximum = max(expected, 1)
    value = min(max(done, 0), maximum) if expected > 0 else maximum
    return (f'<progress value="{value}" max="{maximum}"></progress> '
            f"{_percent(done, expected)}")  # fmt: skip


def _flagged(value: int) -> str:
    text = _e(count_text(value))
    return f'<span class="bad">{text}</span>' if value else text


def _release_text(release: int | None) -> str:
    return "unknown" if release is None else f"v{release}"


def _latest(status: Mapping[str, Any]) -> str:
    latest, current = status.get("latest_release"), status.get("idc_release")
    if latest is None:
        return '<span class="muted">not known yet</span>'
    if current is not None and latest > current:
        return f'<span class="newer">{_e(_release_text(latest))}: newer than the mirror</span>'
    return _e(_release_text(latest))


def _rate(status: Mapping[str, Any]) -> str:
    text = f"{size_text(status.get('rate_bytes_per_second') or 0)}/s over the last minute"
    cap = status.get("max_bytes_per_second") or 0
    if cap:
        text += f" (capped at {size_text(cap)}/s)"
    return _e(text)


def _summary(status: Mapping[str, Any], now: float) -> str:
    o: Mapping[str, Any] = status.get("overall") or {}
    failed = int(o.get("files_failed", 0))
    quarantined = int(o.get("files_quarantined", 0))
    rows = [
        ("idc-release", "IDC release", _e(_release_text(status.get("idc_release")))),
        ("latest-release", "Newest IDC release known", _latest(status)),
        ("series", "Series complete",
         _e(f"{count_text(o.get('series_complete'))} of {count_text(o.get('series_total'))}")),
        ("files", "Files verified",
         _e(f"{count_text(o.get('files_done'))} of {count_text(o.get('files_expected'))}")),
        ("bytes", "Bytes verified",
         f"{_e(size_text(o.get('bytes_done')))} of {_e(size_text(o.get('bytes_expected')))} "
         + _progress(int(o.get("bytes_done", 0)), int(o.get("bytes_expected", 0)))),
        ("failed", "Files failed / quarantined", f"{_flagged(failed)} / {_flagged(quarantined)}"),
        ("rate", "Rate", _rate(status)),
        ("eta", "Time left at this rate",
         _e("nothing left" if not o.get("bytes_pending") else
            duration_text(status.get("eta_seconds")))),
        ("last-complete", "Last seen complete", _e(time_text(status.get("last_complete_at"), now))),
        ("next-plan", "Next plan in", _e(duration_text(status.get("next_plan_in_seconds")))),
    ]  # fmt: skip
    for space in status.get("filesystems") or ():
        rows.append((f"disk-{space['role']}", f"Disk ({space['role']})",
                     _e(f"{size_text(space['avail_bytes'])} free of "
                        f"{size_text(space['size_bytes'])} at {space['path']}")))  # fmt: skip
    items = "".join(f'<dt>{_e(label)}</dt><dd id="{_e(key)}">{value}</dd>'
                    for key, label, value in rows)  # fmt: skip
    return f"<dl>{items}</dl>"


def _collections(collections: Sequence[Mapping[str, Any]]) -> str:
    if not collections:
        return '<p class="muted">Nothing planned yet.</p>'
    head = ("<tr><th>Collection</th><th class=n>Series</th><th class=n>Files</th>"
            "<th class=n>Bytes</th><th class=n>Failed</th><th class=n>Quarantined</th>"
            "<th>Progress (bytes)</th></tr>")  # fmt: skip
    body = []
    for c in collections:
        files_failed, quarantined = int(c["files_failed"]), int(c["files_quarantined"])
        body.append(
            f'<tr data-collection="{_e(c["collection_id"])}">'
            f'<td class="collection">{_e(c["collection_id"])}</td>'
            f'<td class="series n">{_e(count_text(c["series_complete"]))} / '
            f"{_e(count_text(c['series_total']))}</td>"
            f'<td class="files n">{_e(count_text(c["files_done"]))} / '
            f"{_e(count_text(c['files_expected']))}</td>"
            f'<td class="bytes n">{_e(size_text(c["bytes_done"]))} / '
            f"{_e(size_text(c['bytes_expected']))}</td>"
            f'<td class="failed n">{_flagged(files_failed)}</td>'
            f'<td class="quarantined n">{_flagged(quarantined)}</td>'
            f'<td class="progress">{_progress(int(c["bytes_done"]), int(c["bytes_expected"]))}'
            "</td></tr>"
        )
    return f'<table id="collections"><thead>{head}</thead><tbody>{"".join(body)}</tbody></table>'


def _errors(entries: Iterable[Mapping[str, Any]], now: float) -> str:
    recent = list(entries)[-MAX_ERRORS:][::-1]  # newest first
    if not recent:
        return '<p id="errors" class="muted">No warnings or errors since the start.</p>'
    rows = "".join(
        f"<tr><td>{_e(time_text(entry.get('time'), now))}</td><td>{_e(entry.get('level', ''))}</td>"
        f"<td>{_e(entry.get('series') or '')}</td><td>{_e(entry.get('object') or '')}</td>"
        f'<td class="message">{_e(entry.get("message", ""))}</td></tr>'
        for entry in recent
    )
    head = "<tr><th>When</th><th>Level</th><th>Series</th><th>Object</th><th>Message</th></tr>"
    return f'<table id="errors"><thead>{head}</thead><tbody>{rows}</tbody></table>'


def _problems(problems: Iterable[Mapping[str, Any]]) -> str:
    listed = list(problems)
    if not listed:
        return '<p id="problems" class="muted">None.</p>'
    rows = "".join(
        f"<tr><td>{_e(p.get('collection_id', ''))}</td><td>{_e(p.get('crdc_series_uuid', ''))}"
        f"</td><td>{_e(p.get('key') or '')}</td><td>{_e(p.get('state', ''))}</td>"
        f'<td class="message">{_e(p.get("reason") or "")}</td></tr>'
        for p in listed
    )
    head = ("<tr><th>Collection</th><th>Series</th><th>Object</th><th>State</th>"
            "<th>Reason</th></tr>")  # fmt: skip
    return f'<table id="problems"><thead>{head}</thead><tbody>{rows}</tbody></table>'


def render(
    status: Mapping[str, Any], *, now: float | None = None, refresh_seconds: int = REFRESH_SECONDS
) -> str:
    """The whole page for one /status answer, as of ``now`` (Unix time)."""
    now = time.time() if now is None else now
    phase = str(status.get("phase", "unknown"))
    o: Mapping[str, Any] = status.get("overall") or {}
    done = _percent(int(o.get("bytes_done", 0)), int(o.get("bytes_expected", 0)))
    title = f"idc-sync: {phase}, {done} of {_release_text(status.get('idc_release'))}"
    shard = f" shard {status['shard']}" if status.get("shard") else ""
    plan = status.get("last_plan") or {}
    footer = (
        f"pid {_e(status.get('pid', ''))}{_e(shard)}, state {_e(status.get('state_dir', ''))}; "
        f"started {_e(time_text(status.get('started_at'), now))}; "
        f"last plan {_e(time_text(plan.get('finished_at'), now))}; "
        f"page of {_e(time_text(now, now).split(' (')[0])}, refreshed every "
        f'{refresh_seconds} s. Also: <a href="status">/status</a> (JSON), '
        '<a href="metrics">/metrics</a> (Prometheus).'
    )
    ready = "" if status.get("ready") else ' <span class="muted">(not ready)</span>'
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="refresh" content="{int(refresh_seconds)}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(title)}</title><style>{_STYLE}</style></head><body>"
        f'<h1>idc-sync <span id="phase" class="phase phase-{_e(phase)}">{_e(phase)}</span>'
        f"{ready}</h1>"
        f"{_summary(status, now)}"
        f"<h2>Collections</h2>{_collections(status.get('collections') or [])}"
        f"<h2>Recent warnings and errors</h2>{_errors(status.get('recent_errors') or [], now)}"
        f"<h2>Not verified yet (first {len(status.get('problems') or [])})</h2>"
        f"{_problems(status.get('problems') or [])}"
        f"<footer>{footer}</footer></body></html>\n"
    )
