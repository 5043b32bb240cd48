"""The one retry loop of the workers: run an attempt, classify what it raised, ask the retry
policy (core/retry.py) whether and when to try again, and tell the observer. Listing a series
and fetching an object both go through it; failures of our own disk are never retried."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable, Mapping
from typing import Protocol, TypeVar

from idc_sync.core.retry import STOPS_RUN, FailureClass, RetryPolicy, classify_exception

log = logging.getLogger("idc_sync.run.mirror")

T = TypeVar("T")


class FailureObserver(Protocol):
    """Told of every failed attempt and every retry (service/metrics.py counts them)."""

    def attempt_failed(self, failure: FailureClass) -> None: ...

    def retrying(self, failure: FailureClass) -> None: ...


class NoObserver:
    def attempt_failed(self, failure: FailureClass) -> None:
        pass

    def retrying(self, failure: FailureClass) -> None:
        pass


class LocalFailure(Exception):
    """Our own disk, or the way to the buckets (a TLS or proxy setup), failed during an
    attempt (``cause``): the run stops, it does not retry."""

    def __init__(self, cause: Exception) -> None:
        super().__init__(str(cause))
        self.cause = cause


# Decides, after a failed attempt, to try again at once (True) instead of backing off: a
# 412 whose re-list found the object changed.
Rescue = Callable[[Exception], Awaitable[bool]]


async def retrying(
    attempt: Callable[[], Awaitable[T]],
    policy: RetryPolicy,
    *,
    observer: FailureObserver,
    rng: random.Random,
    what: str,
    log_extra: Mapping[str, object] | None = None,
    rescue: Rescue | None = None,
) -> T:
    """``attempt()`` until it succeeds. Raises RetryExhausted when the policy gives up (a
    permanent failure at once), LocalFailure for a failure that stops the run."""
    while True:
        try:
            return await attempt()
        except asyncio.CancelledError:
            raise
        except Exception as error:
            failure = classify_exception(error)
            observer.attempt_failed(failure)
            if failure in STOPS_RUN:
                raise LocalFailure(error) from error
            if rescue is not None and await rescue(error):
                continue
            policy = policy.increment(failure, str(error))  # raises RetryExhausted
            log.info("%s: %s; retrying", what, error, extra=dict(log_extra or {}))
            observer.retrying(failure)
            await asyncio.sleep(policy.backoff(rng))
