"""What the daemon says about itself on /status (and, through the same numbers, the
gauges of /metrics, the status page and systemd's STATUS= line): its phase, the plan, the
per-collection totals of the state, what was retired, rate, ETA, free space, recent errors."""

from __future__ import annotations

import asyncio
import enum
import os
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from idc_sync.config import Settings
from idc_sync.core.logs import RecentProblems
from idc_sync.core.model import CollectionStatus
from idc_sync.run.plan import PlanOutcome
from idc_sync.service.filesystems import FileSystemProbe, roots_of
from idc_sync.service.freshness import LastComplete
from idc_sync.service.metrics import Metrics, SelectionState
from idc_sync.state.store import State


class Phase(enum.Enum):
    STARTING = "starting"
    PLANNING = "planning"
    MIRRORING = "mirroring"
    IDLE = "idle"  # everything selected is done or waits for the next replan
    DRAINING = "draining"
    STOPPED = "stopped"


@dataclass(slots=True)
class Totals:
    series_total: int = 0
    series_complete: int = 0
    series_failed: int = 0
    files_expected: int = 0
    files_done: int = 0
    files_failed: int = 0
    files_quarantined: int = 0
    bytes_expected: int = 0
    bytes_done: int = 0
    collections: list[dict[str, Any]] = field(default_factory=list)

    def add(self, c: CollectionStatus) -> None:
        for name in ("series_total", "series_complete", "series_failed", "files_expected",
                     "files_done", "files_failed", "files_quarantined", "bytes_expected",
                     "bytes_done"):  # fmt: skip
            setattr(self, name, getattr(self, name) + getattr(c, name))
        self.collections.append({**asdict(c), **pending(c)})

    def overall(self) -> dict[str, Any]:
        values = {k: v for k, v in asdict(self).items() if k != "collections"}
        return {**values, **pending(self)}


def pending(c: CollectionStatus | Totals) -> dict[str, int]:
    return {
        "files_pending": max(
            c.files_expected - c.files_done - c.files_failed - c.files_quarantined, 0
        ),
        "bytes_pending": max(c.bytes_expected - c.bytes_done, 0),
        "series_pending": max(c.series_total - c.series_complete - c.series_failed, 0),
    }


class StatusReport:
    """Builds /status; keeps what it needs between calls (free space, last complete)."""

    def __init__(self, metrics: Metrics, recent: RecentProblems) -> None:
        self._metrics = metrics
        self._recent = recent
        self._filesystems = FileSystemProbe()
        self._started = time.time()
        self.last_complete: LastComplete | None = None  # read once the state is held

    async def body(
        self,
        settings: Settings,
        phase: Phase,
        ready: bool,
        state: State | None,
        plan: PlanOutcome | None,
        next_plan_in: float,
    ) -> dict[str, Any]:
        totals = Totals()
        problems: list[dict[str, Any]] = []
        retired: dict[str, Any] = {}
        if state is not None:
            reports = state.reports
            for c in await reports.collection_totals():
                totals.add(c)
            problems = [asdict(p) for p in await reports.recent_problems(limit=20)]
            retired = {
                **asdict(await reports.retired()),
                "retired_dir": str(settings.retired_path),
                "held_unselected": asdict(await reports.held_unselected()),
            }
        overall = totals.overall()
        selection = SelectionState.of(overall)
        self._metrics.set_selection(selection)
        self._metrics.set_phase(phase.value, [phase.value for phase in Phase])
        self._metrics.ready.set(1 if ready else 0)
        # only a finished plan's totals describe the selection (a replan rewrites them)
        if self.last_complete is not None and phase in (Phase.MIRRORING, Phase.IDLE):
            await asyncio.to_thread(self.last_complete.observe, selection.complete)
        last_complete = None if self.last_complete is None else self.last_complete.timestamp
        self._metrics.set_last_complete(last_complete)
        spaces = await self._filesystems.spaces(roots_of(settings))
        self._metrics.set_filesystems(spaces)
        rate = self._metrics.rate.rate()
        return {
            "pid": os.getpid(),
            "state_dir": str(settings.state_path),
            "phase": phase.value,
            "ready": ready,
            "started_at": self._started,
            "idc_release": plan.release if plan else None,
            "latest_release": self._metrics.latest_release,
            "shard": settings.shard,
            "last_plan": None if plan is None else {
                "finished_at": plan.finished_at, "seconds": round(plan.seconds, 3),
                "series": plan.tally.series, "files": plan.tally.files,
                "bytes": plan.tally.bytes, "excluded_series": plan.tally.excluded_series,
                "new_series": plan.new_series,
                "unknown": [asdict(u) for u in plan.unknown[:20]],
            },
            "next_plan_in_seconds": next_plan_in,
            "overall": overall,
            "collections": totals.collections,
            "rate_bytes_per_second": rate,
            # the cap the bandwidth schedule sets now; 0 is unlimited
            "max_bytes_per_second": settings.bandwidth_schedule.cap_at(datetime.now()),
            "eta_seconds": overall["bytes_pending"] / rate if rate > 0 else None,
            "last_complete_at": last_complete,
            "filesystems": [asdict(space) for space in spaces],
            "recent_errors": list(self._recent.entries)[-20:],
            "problems": problems,
            "retired": retired,
        }  # fmt: skip
