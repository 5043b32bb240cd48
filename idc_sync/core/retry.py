"""How failures are classified and how often they are retried: a retry policy is an immutable
value (like urllib3's Retry) whose history decides the budget and the backoff, so every retry
decision is made here and is testable with a seeded random.Random and no clock."""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace
from random import Random

from idc_sync.core.errors import (
    LOCAL_ERRNOS,
    IdcSyncError,
    IntegrityError,
    LocalStorageError,
    NetworkSetupError,
    PermanentError,
    RetryableError,
    StateError,
    TransferError,
)


class FailureClass(enum.Enum):
    RETRYABLE = "retryable"  # the server or the network hiccuped: back off and try again
    INTEGRITY = "integrity"  # bytes arrived but do not match: try a few times, then quarantine
    PERMANENT = "permanent"  # trying again cannot help (403, 404, a bad key)
    LOCAL = "local"  # our own disk failed (ENOSPC, EDQUOT, EIO, EROFS): stop, do not retry blindly
    # the way to the buckets is misconfigured (untrusted certificate, proxy down or refusing):
    # every request would fail alike, so the run stops once instead of failing every series
    SETUP = "setup"


# Failures that stop the run rather than one object: nothing else can succeed until an
# operator acts.
STOPS_RUN = frozenset({FailureClass.LOCAL, FailureClass.SETUP})


# S3 (and the GCS XML API) error codes that mean "later", whatever the status says:
# RequestTimeout, for one, arrives as a 400.
RETRYABLE_ERROR_CODES = frozenset(
    {
        "SlowDown",
        "RequestTimeout",
        "RequestTimeoutException",
        "InternalError",
        "ServiceUnavailable",
        "Throttling",
        "ThrottlingException",
        "TooManyRequests",
        "RequestLimitExceeded",
        "BandwidthLimitExceeded",
        "PriorRequestNotComplete",
    }
)


# Statuses that are not a 5xx yet mean "try again":
# 408 the server gave up waiting for us; 429 too many requests;
# 412 If-Match failed: the object changed after we listed it. That attempt is useless, but the
#     object is not lost: the caller re-lists the series and fetches the new version.
# 307 S3 redirects temporarily while a bucket's DNS settles.
_RETRYABLE_STATUSES = frozenset({307, 408, 412, 429})

# 501 Not Implemented: S3 does not support something in our request; the same request
# gets the same answer, so it is a bug to surface, not load to wait out.
_PERMANENT_5XX = frozenset({501})

# Exceptions that are bugs in our code: retrying them only delays the report.
_PROGRAMMING_ERRORS = (TypeError, AttributeError, NameError, AssertionError, NotImplementedError)


def classify_status(status: int, error_code: str | None = None) -> FailureClass:
    """Classify an HTTP error response by its status and, when the body had one, its S3 code."""
    if error_code in RETRYABLE_ERROR_CODES:
        return FailureClass.RETRYABLE
    if status in _RETRYABLE_STATUSES:
        return FailureClass.RETRYABLE
    if status >= 500:
        return FailureClass.PERMANENT if status in _PERMANENT_5XX else FailureClass.RETRYABLE
    # 400/401/403/404/405/410/416 and every other 4xx; also any unexpected success or
    # redirect status given to us as an error: the same request would get the same answer.
    return FailureClass.PERMANENT


def classify_exception(exc: BaseException) -> FailureClass:
    """Classify anything raised while listing, fetching or writing one object.

    Foreign exceptions of the network (ssl, sockets, the HTTP parser) are mapped to our
    tree where they enter, at the HTTP edge (net/failures.py), so what arrives here is our
    own tree, or an OSError from the local disk, or a bug. An exception we do not know is
    RETRYABLE: a transient one misread as PERMANENT would leave a series missing for good,
    while the retry budget bounds the cost of being wrong and the policy's summary still
    names the exception type. Exceptions that are plainly bugs in our code (TypeError,
    AttributeError, ...) are PERMANENT so they surface at once.

    Cancellation and interpreter exits (BaseException that is not an Exception) are not
    failures of a transfer: they are raised again so they cannot be mistaken for one.
    """
    if not isinstance(exc, Exception):
        raise exc
    if isinstance(exc, RetryExhausted):
        return exc.failure
    # Our own tree first: its classes say what the raiser already decided.
    if isinstance(exc, IntegrityError):
        return FailureClass.INTEGRITY
    if isinstance(exc, PermanentError):
        return FailureClass.PERMANENT
    if isinstance(exc, LocalStorageError | StateError):
        return FailureClass.LOCAL
    if isinstance(exc, NetworkSetupError):
        return FailureClass.SETUP
    if isinstance(exc, RetryableError | TransferError):
        return FailureClass.RETRYABLE
    if isinstance(exc, IdcSyncError):
        # configuration, unsafe paths: nothing a retry changes
        return FailureClass.PERMANENT
    if isinstance(exc, OSError) and exc.errno in LOCAL_ERRNOS:
        return FailureClass.LOCAL
    if isinstance(exc, _PROGRAMMING_ERRORS):
        return FailureClass.PERMANENT
    return FailureClass.RETRYABLE


@dataclass(frozen=True)
class Attempt:
    """One failed attempt: its class and a short reason ("503 SlowDown", "reset")."""

    failure: FailureClass
    reason: str


SUMMARY_MAX_CHARS = 300
# One server message must not crowd the others out of the summary.
_REASON_MAX_CHARS = 80


@dataclass(frozen=True)
class RetryPolicy:
    """Budget and backoff for one object, as a value: `increment` returns a new policy.

    ``max_retryable`` and ``max_integrity`` are how many failures of that class are retried;
    the next one raises RetryExhausted. PERMANENT and LOCAL failures are never retried.
    """

    max_retryable: int = 6
    max_integrity: int = 3
    base_delay: float = 0.2
    max_delay: float = 20.0
    history: tuple[Attempt, ...] = ()

    def __post_init__(self) -> None:
        if self.max_retryable < 0 or self.max_integrity < 0:
            raise ValueError("retry budgets must not be negative")
        if self.base_delay < 0 or self.max_delay < 0:
            raise ValueError("retry delays must not be negative")

    @property
    def attempts(self) -> int:
        """Failed attempts so far."""
        return len(self.history)

    def failures(self, failure: FailureClass) -> int:
        """Failed attempts of one class so far."""
        return sum(1 for attempt in self.history if attempt.failure is failure)

    def increment(self, failure: FailureClass, reason: str) -> RetryPolicy:
        """Record one failure; raise RetryExhausted when it must not be retried."""
        policy = replace(self, history=(*self.history, Attempt(failure, reason)))
        budget = {
            FailureClass.RETRYABLE: self.max_retryable,
            FailureClass.INTEGRITY: self.max_integrity,
        }.get(failure, 0)
        if policy.failures(failure) > budget:
            raise RetryExhausted(policy, failure)
        return policy

    def backoff(self, rng: Random) -> float:
        """Seconds to wait before the next attempt: full jitter over an exponential cap.

        The first retry waits up to ``base_delay``, each further one doubles the cap, up to
        ``max_delay``. Full jitter spreads many workers hit by the same SlowDown apart.
        """
        if not self.history:
            return 0.0
        retries_before = len(self.history) - 1
        # 2 ** n grows past any float for a long history; the cap is reached far earlier.
        cap = min(self.max_delay, self.base_delay * 2 ** min(retries_before, 64))
        return rng.uniform(0.0, cap)

    def summary(self, max_chars: int = SUMMARY_MAX_CHARS) -> str:
        """One line for a queue row's last_error: "3 attempts: 503 SlowDown x2; reset".

        Runs of the same reason are folded; when still too long the oldest reasons give way,
        since the latest failure is the one an operator acts on.
        """
        count = len(self.history)
        head = f"{count} attempt{'' if count == 1 else 's'}"
        groups: list[str] = []
        previous: str | None = None
        repeat = 0
        for attempt in self.history:
            reason = _shorten(" ".join(attempt.reason.split()), _REASON_MAX_CHARS)
            if reason == previous:
                repeat += 1
                groups[-1] = f"{reason} x{repeat}"
                continue
            previous, repeat = reason, 1
            groups.append(reason)
        if not groups:
            return _shorten(head, max_chars)
        elided = False
        while len(groups) > 1 and len(_join(head, groups, elided)) > max_chars:
            groups.pop(0)
            elided = True
        return _shorten(_join(head, groups, elided), max_chars)


def _join(head: str, groups: list[str], elided: bool) -> str:
    return f"{head}: {'...; ' if elided else ''}{'; '.join(groups)}"


def _shorten(text: str, max_chars: int) -> str:
    return text if len(text) <= max_chars else text[: max(0, max_chars - 3)] + "..."


class RetryExhausted(IdcSyncError):
    """No more attempts for this object: ``failure`` is the class of the last one."""

    def __init__(self, policy: RetryPolicy, failure: FailureClass) -> None:
        super().__init__(f"{failure.value}: {policy.summary()}")
        self.policy = policy
        self.failure = failure

    def __reduce__(self) -> tuple[type[RetryExhausted], tuple[RetryPolicy, FailureClass]]:
        # Exception pickling replays self.args, which here is the message, not our arguments.
        return (type(self), (self.policy, self.failure))
