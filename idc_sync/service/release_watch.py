"""The daemon's watch for new IDC releases: a check of the package index (run/follow.py) at
start, at every SIGHUP and every ``release_check_interval`` seconds (0: never). A newer
release is reported (``/status`` ``latest_release``, the ``idc_sync_latest_idc_release``
gauge, one log line per release); with ``follow_releases`` it is fetched and unpacked, and
the daemon asked to replan, which applies it. A failed check is one warning and one count
of ``idc_sync_release_check_failures_total{reason}``; the mirror carries on with its
release and the next check tries again. A check that succeeds (and fetches what it was to
fetch) sets ``idc_sync_last_release_check_timestamp_seconds``, which the alert
IdcSyncReleaseChecksFailing watches."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from idc_sync.config import Settings
from idc_sync.core.errors import ReleaseCheckError
from idc_sync.run import follow
from idc_sync.run.follow import ReleaseCheck
from idc_sync.service.metrics import Metrics

log = logging.getLogger(__name__)


class ReleaseWatch:
    """``settings``: the daemon's settings as they are now (a reload changes them);
    ``replan``: asks the daemon for a plan, called once a followed release is unpacked."""

    def __init__(
        self, settings: Callable[[], Settings], metrics: Metrics, replan: Callable[[], None]
    ) -> None:
        self._settings = settings
        self._metrics = metrics
        self._replan = replan
        self._wanted = asyncio.Event()
        self._reported: str | None = None  # the newer version last logged
        self.last: ReleaseCheck | None = None

    def check_now(self) -> None:
        """Check at once (SIGHUP), or right after the check under way."""
        self._wanted.set()

    def reloaded(self, old: Settings, new: Settings) -> None:
        """The settings changed (SIGHUP): SIGHUP's own check ran with the old ones, so
        check again if any that the check reads changed."""
        if _watched(old) != _watched(new):
            self.check_now()

    async def run(self) -> None:
        """Check now, then whenever asked or due, until cancelled."""
        while True:
            self._wanted.clear()
            interval = self._settings().release_check_interval
            if interval > 0:
                await self.once()
            # with interval 0 only a SIGHUP wakes the watch (to see whether that changed)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wanted.wait(), timeout=interval or None)

    async def once(self) -> ReleaseCheck | None:
        """One check; what it found, None when it failed (logged and counted)."""
        settings = self._settings()
        try:
            found = await follow.look(settings)
            self.last = found
            self._report(found, settings)
            if settings.follow_releases and found.newer and found.offered is not None:
                followed = await follow.fetch(settings, found.offered)
                log.info("fetched IDC release v%d into %s: replanning", found.offered.release,
                         followed.location)  # fmt: skip
                self._replan()
            self._metrics.release_check_succeeded()
        except ReleaseCheckError as error:
            self._metrics.release_check_failed(error.reason)
            log.warning(
                "checking %s for a newer IDC release failed (%s): %s; the mirror stays on its "
                "release", settings.index_url, error.reason, error,
            )  # fmt: skip
            return None
        except Exception:
            # a bug here must not end the daemon: the mirror does not need the check
            self._metrics.release_check_failed("index")
            log.exception("checking for a newer IDC release failed")
            return None
        return found

    def _report(self, found: ReleaseCheck, settings: Settings) -> None:
        self._metrics.set_latest_release(found.latest_release)
        offered = found.offered
        if not found.newer or offered is None or offered.version == self._reported:
            return
        self._reported = offered.version
        log.info(
            "IDC release v%d (idc-index-data %s) is out; the mirror has %s%s",
            offered.release, offered.version, found.current.describe(),
            "" if settings.follow_releases else " (follow_releases = true would mirror it)",
        )  # fmt: skip


def _watched(settings: Settings) -> tuple[object, ...]:
    return (settings.index_url, settings.follow_releases, settings.release_check_interval,
            settings.max_release_wheel_bytes, settings.proxy, settings.ca_bundle)  # fmt: skip
