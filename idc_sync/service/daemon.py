"""The daemon behind ``idc-sync serve``: hold the state directory, plan the selection into
the queue, keep workers fetching, replan on a schedule and on SIGHUP, serve status and
metrics over HTTP, talk to systemd, watch the package index for new IDC releases
(service/release_watch.py: a followed release asks for a replan), and on SIGTERM/SIGINT
drain and exit 0.

Life of the daemon, one loop: plan -> a round of workers until the queue has nothing
left -> idle until the next replan (schedule or SIGHUP) -> replan -> ... A replan never
runs beside workers: the round is drained first (in-flight files finish), because
planning re-queues unfinished series, which must not be leased by a running round."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from typing import Any

from idc_sync.config import Settings
from idc_sync.core.errors import ConfigurationError
from idc_sync.core.logs import LOGGER, RecentProblems
from idc_sync.core.units import size_text
from idc_sync.run.binding import bind
from idc_sync.run.jobs import license_roots
from idc_sync.run.objects import RunSummary
from idc_sync.run.plan import PlanCancelled, PlanOutcome, Resolved, plan_into, resolve_plan
from idc_sync.run.round import Drainable, run_round
from idc_sync.run.select import selection_of
from idc_sync.service.freshness import LastComplete
from idc_sync.service.httpapi import HttpServer
from idc_sync.service.metrics import Metrics
from idc_sync.service.release_watch import ReleaseWatch
from idc_sync.service.sdnotify import Notifier
from idc_sync.service.status import Phase, StatusReport
from idc_sync.state.database import peek_selection
from idc_sync.state.lock import StateLock
from idc_sync.state.store import STATE_DB, State

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_INTERRUPTED = 130

# /status reads the queue's running totals (one row per collection) and a few problems;
# scrapes and dashboards still share one answer this long.
STATUS_TTL = 2.0
# A round stopped by a local failure (disk full) is retried after this long.
LOCAL_RETRY_SECONDS = 300.0


class Daemon:
    """One running ``idc-sync serve``. ``reload`` re-reads the configuration on SIGHUP;
    ``hard_exit`` ends the process on a second stop signal (tests replace it)."""

    def __init__(
        self,
        settings: Settings,
        reload: Callable[[], Settings] | None = None,
        *,
        adopt: bool = False,
        notifier: Notifier | None = None,
        metrics: Metrics | None = None,
        hard_exit: Callable[[int], None] | None = None,
        report_interval: float = 30.0,
        status_ttl: float = STATUS_TTL,
    ) -> None:
        self.settings = settings
        self._reload = reload
        self._adopt = adopt
        self.notifier = notifier or Notifier.from_environment()
        self.metrics = metrics or Metrics()
        self._hard_exit = hard_exit or _exit_now
        self._report_interval = report_interval
        self._status_ttl = status_ttl
        self.phase = Phase.STARTING
        self.http_address: tuple[str, int] | None = None
        self.last_plan: PlanOutcome | None = None
        self.last_round: RunSummary | None = None
        self._state: State | None = None
        self._first_plan: Resolved | None = None
        self._mirror: Drainable | None = None
        self._planned = False
        self._stop = asyncio.Event()
        self._replan = asyncio.Event()
        self._reload_wanted = False
        self._next_plan = 0.0  # monotonic
        self._status_cache: tuple[float, dict[str, Any]] | None = None
        self._recent = RecentProblems()
        self._reporting = StatusReport(self.metrics, self._recent)
        self.releases = ReleaseWatch(lambda: self.settings, self.metrics, self._replan.set)

    # -- control (signal handlers call these; so can tests) ---------------------------

    def request_stop(self, reason: str) -> None:
        if self._stop.is_set():
            log.warning("%s again: exiting at once; leases and the next start cover the rest",
                        reason)  # fmt: skip
            self._hard_exit(EXIT_INTERRUPTED)
            return
        log.info("%s: draining (in-flight files get up to %s s to finish)", reason,
                 f"{self.settings.drain_seconds:g}")  # fmt: skip
        self._stop.set()
        self.phase = Phase.DRAINING
        self.notifier.stopping(f"draining after {reason}")
        if self._mirror is not None:
            self._mirror.drain(reason)

    def request_reload(self) -> None:
        log.info("SIGHUP: reloading the configuration and replanning")
        self._reload_wanted = True
        self._replan.set()
        self.releases.check_now()

    # -- what the HTTP API asks --------------------------------------------------------

    def healthy(self) -> bool:
        # The handler answering proves the event loop runs; the daemon is unhealthy only
        # once it has given up.
        return self.phase is not Phase.STOPPED

    def ready(self) -> bool:
        return self._planned and self._state is not None and not self._stop.is_set()

    async def metrics_text(self) -> bytes:
        await self.status()  # the gauges that mirror /status are set there
        return self.metrics.exposition()

    async def status(self) -> dict[str, Any]:
        now = time.monotonic()
        if self._status_cache is not None and now - self._status_cache[0] < self._status_ttl:
            return self._status_cache[1]
        body = await self._status()
        self._status_cache = (now, body)
        return body

    async def _status(self) -> dict[str, Any]:
        return await self._reporting.body(
            self.settings, self.phase, self.ready(), self._state, self.last_plan,
            max(self._next_plan - time.monotonic(), 0.0),
        )  # fmt: skip

    # -- the daemon ----------------------------------------------------------------------

    async def run(self) -> int:
        """Serve until stopped; returns the exit code. Configuration and state errors
        raise (the CLI turns them into exit codes 2 and 3)."""
        settings = self.settings
        # a bad selection is reported before the state is touched
        given = selection_of(settings)
        state_db = settings.state_path / STATE_DB
        stored = peek_selection(state_db)
        self._first_plan = await resolve_plan(settings, given, stored)
        logging.getLogger(LOGGER).addHandler(self._recent)
        try:
            with StateLock(settings.state_path):
                last_complete = await asyncio.to_thread(
                    LastComplete.in_state_dir, settings.state_path
                )
                self._reporting.last_complete = last_complete
                self._state = await State.open(state_db)
                try:
                    await bind(
                        self._state, settings.mirror_root,
                        other_roots=license_roots(settings), adopt=self._adopt,
                    )  # fmt: skip
                    if await self._state.plans.stored_selection() != stored:
                        self._first_plan.close()  # changed meanwhile: resolve it anew
                        self._first_plan = None
                    return await self._serve()
                finally:
                    state, self._state = self._state, None
                    await state.close()
                    await asyncio.to_thread(last_complete.flush)
        finally:
            if self._first_plan is not None:
                self._first_plan.close()
            logging.getLogger(LOGGER).removeHandler(self._recent)
            self.phase = Phase.STOPPED
            self.notifier.close()

    async def _serve(self) -> int:
        http: HttpServer | None = None
        if self.settings.http.listen:
            http = HttpServer(self)
            self.http_address = await http.start(self.settings.http.listen)
        loop = asyncio.get_running_loop()
        handled = self._install_signals(loop)
        helpers = [asyncio.create_task(self._watchdog()), asyncio.create_task(self._reporter()),
                   asyncio.create_task(self.releases.run())]  # fmt: skip
        try:
            await self._main()
        finally:
            for task in helpers:
                task.cancel()
            await asyncio.gather(*helpers, return_exceptions=True)
            for signum in handled:
                loop.remove_signal_handler(signum)
            if http is not None:
                await http.close()
        log.info("stopped cleanly")
        return EXIT_OK

    def _install_signals(self, loop: asyncio.AbstractEventLoop) -> list[int]:
        handled: list[int] = []
        actions: dict[int, Callable[[], None]] = {
            signal.SIGTERM: lambda: self.request_stop("SIGTERM"),
            signal.SIGINT: lambda: self.request_stop("SIGINT"),
            signal.SIGHUP: self.request_reload,
        }
        for signum, action in actions.items():
            try:
                loop.add_signal_handler(signum, action)
            except (RuntimeError, ValueError):  # not the main thread: the caller drives us
                continue
            handled.append(signum)
        return handled

    async def _main(self) -> None:
        await self._plan(self.settings)
        if self._stop.is_set():
            return
        self._planned = True
        self.metrics.ready.set(1)
        self.notifier.ready(await self._status_line())
        while True:
            self.phase = Phase.MIRRORING
            round_task = asyncio.create_task(self._round())
            await self._wait(round_task)
            if not round_task.done():
                await self._drain(round_task)
            elif (error := round_task.exception()) is not None:
                raise error
            if self._stop.is_set():
                return
            if not self._replan_due():
                self.phase = Phase.IDLE
                self.notifier.status(await self._status_line())
                await self._wait(None)
                if self._stop.is_set():
                    return
            await self._replan_now()
            if self._stop.is_set():
                return

    def _replan_due(self) -> bool:
        return self._replan.is_set() or time.monotonic() >= self._next_plan

    async def _wait(self, round_task: asyncio.Task[RunSummary] | None) -> None:
        """Until the round ends, a stop, a SIGHUP or the replan time, whichever is first."""
        waiters = {asyncio.create_task(self._stop.wait()), asyncio.create_task(self._replan.wait())}
        try:
            timeout = max(self._next_plan - time.monotonic(), 0.0)
            candidates: set[asyncio.Future[Any]] = set(waiters)
            if round_task is not None:
                candidates.add(round_task)
            await asyncio.wait(candidates, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()
            await asyncio.gather(*waiters, return_exceptions=True)

    async def _drain(self, round_task: asyncio.Task[RunSummary]) -> None:
        """Stop claiming, give in-flight files ``drain_seconds``, cancel the rest (their
        series stay leased until the lease runs out or the next plan re-queues them)."""
        reason = "shutdown" if self._stop.is_set() else "replan"
        if self._mirror is not None:
            self._mirror.drain(reason)
        deadline = self.settings.drain_seconds
        done, _ = await asyncio.wait({round_task}, timeout=deadline)
        if not done:
            log.warning("drain deadline (%s s) passed: cancelling in-flight transfers",
                        f"{deadline:g}")  # fmt: skip
            round_task.cancel()
        (outcome,) = await asyncio.gather(round_task, return_exceptions=True)
        if isinstance(outcome, BaseException) and not isinstance(outcome, asyncio.CancelledError):
            raise outcome

    async def _round(self) -> RunSummary:
        settings = self.settings

        def started(mirror: Drainable) -> None:
            self._mirror = mirror
            if self._stop.is_set():
                mirror.drain("shutdown")

        try:
            # as after a sync, a round that ran to its end retires what leaves the mirror
            # (per the `retired` policy) and rewrites the provenance manifest
            outcome = await run_round(
                self._require_state(), settings, self.metrics, observer=self.metrics,
                meter=self.metrics, started=started, finish=lambda: not self._stop.is_set(),
            )  # fmt: skip
        finally:
            self._mirror = None
        summary = outcome.summary
        if outcome.retired.series_retired:
            log.info("retired %d series that left the mirror", outcome.retired.series_retired)
        self.last_round = summary
        self._status_cache = None
        if summary.stopped is not None and not self._stop.is_set() and not self._replan.is_set():
            # stopped by our own disk (full, read-only): try again well before the next
            # scheduled plan, once an operator has had a chance to make room
            self._next_plan = min(self._next_plan, time.monotonic() + LOCAL_RETRY_SECONDS)
        log.info(
            "round finished: fetched %d files (%s), re-verified %d, restored %d; series "
            "complete %d, incomplete %d, failed %d%s",
            summary.files_fetched, size_text(summary.bytes_fetched), summary.files_reverified,
            summary.files_restored, summary.series_complete, summary.series_incomplete,
            summary.series_failed, f"; stopped: {summary.stopped}" if summary.stopped else "",
        )  # fmt: skip
        return summary

    async def _replan_now(self) -> None:
        settings = self.settings
        if self._reload_wanted and self._reload is not None:
            self.notifier.reloading()
            try:
                settings = self._reloaded(self._reload())
            except ConfigurationError as error:
                log.error("configuration reload failed; keeping the running configuration: %s",
                          error)  # fmt: skip
        self._reload_wanted = False
        self._replan.clear()
        try:
            await self._plan(settings)
        except ConfigurationError as error:
            # the old queue rows stay: the workers carry on with what was planned before
            log.error("replan failed; keeping the previous plan: %s", error)
            self._next_plan = time.monotonic() + self.settings.replan_interval
        else:
            self.releases.reloaded(self.settings, settings)
            self.settings = settings
        if not self._stop.is_set():
            self.notifier.ready(await self._status_line())

    def _reloaded(self, new: Settings) -> Settings:
        old = self.settings
        if new.state_path != old.state_path:
            raise ConfigurationError(
                f"state_dir changed ({old.state_path} -> {new.state_path}); restart to use it"
            )
        if new.http != old.http:
            log.warning("http.listen changes take effect at the next start")
        logging.getLogger(LOGGER).setLevel(new.log_level.upper())
        return new

    async def _plan(self, settings: Settings) -> None:
        """Plan the selection into the state (run/plan.py: DuckDB on a worker thread, so
        the loop, and with it the watchdog, keeps answering)."""
        self.phase = Phase.PLANNING
        self.notifier.status("planning the selection")
        resolved, self._first_plan = self._first_plan, None
        try:
            outcome = await plan_into(
                self._require_state(), settings, selection_of(settings), resolved=resolved,
                stop=self._stop.is_set,
            )  # fmt: skip
        except PlanCancelled:
            return
        for item in outcome.unknown:
            log.warning("IDC release v%s: %s", outcome.release, item.describe())
        held = outcome.held_unselected
        if held.series:
            log.warning(
                "%d series (%d files) no longer selected stay in the mirror; prune = true "
                "retires them", held.series, held.files,
            )  # fmt: skip
        self.last_plan = outcome
        self._next_plan = time.monotonic() + settings.replan_interval
        self._status_cache = None
        self.metrics.planned(outcome.release)
        tally = outcome.tally
        log.info("planned IDC release v%s%s from %s: %s series, %s files, %s (%.1f s)",
                 outcome.release, f" shard {settings.shard}" if settings.shard else "",
                 outcome.catalog, f"{tally.series:,}", f"{tally.files:,}",
                 size_text(tally.bytes), outcome.seconds)  # fmt: skip

    def _require_state(self) -> State:
        assert self._state is not None, "the state is opened before anything uses it"
        return self._state

    # -- helpers -------------------------------------------------------------------------

    async def _watchdog(self) -> None:
        """WATCHDOG=1 from the event loop itself: if the loop wedges, the pings stop and
        systemd restarts the service."""
        interval = self.notifier.watchdog_interval
        if interval is None:
            return
        while True:
            self.notifier.watchdog()
            await asyncio.sleep(interval)

    async def _reporter(self) -> None:
        """Queue gauges and systemd's STATUS= line, refreshed now and then."""
        while True:
            await asyncio.sleep(self._report_interval)
            if self._planned and not self._stop.is_set():
                self.notifier.status(await self._status_line())

    async def _status_line(self) -> str:
        body = await self.status()
        o = body["overall"]
        rate = body["rate_bytes_per_second"]
        return (
            f"{self.phase.value}: {o['files_done']:,}/{o['files_expected']:,} files, "
            f"{size_text(o['bytes_done'])}/{size_text(o['bytes_expected'])}, {size_text(rate)}/s, "
            f"{o['files_failed'] + o['files_quarantined']:,} failed"
        )


def _exit_now(code: int) -> None:
    with contextlib.suppress(Exception):
        sys.stderr.flush()
    os._exit(code)
