"""Tests of idc_sync.core.retry: failure classification (including exceptions raised by real local
sockets and a real full disk), per-class budgets, jittered backoff and the summary line."""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import pickle
import socket
from pathlib import Path
from random import Random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from idc_sync.core.errors import (
    BodyTooLarge,
    ConfigurationError,
    IdcSyncError,
    IntegrityError,
    ListingTooLong,
    LocalStorageError,
    PermanentError,
    ProtocolError,
    ProxyError,
    RetryableError,
    StalledError,
    StateError,
    TlsError,
    UnsafePathError,
)
from idc_sync.core.retry import (
    Attempt,
    FailureClass,
    RetryExhausted,
    RetryPolicy,
    classify_exception,
    classify_status,
)

R = FailureClass.RETRYABLE
P = FailureClass.PERMANENT

# --- classify_status --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "code", "failure"),
    [
        (500, "InternalError", R),
        (502, None, R),
        (503, "SlowDown", R),
        (503, "ServiceUnavailable", R),
        (504, None, R),
        (507, None, R),
        (599, None, R),
        (429, None, R),
        (408, None, R),
        (400, "RequestTimeout", R),  # S3 sends its idle-socket timeout as a 400
        (412, "PreconditionFailed", R),  # the object changed: re-list, do not give up
        (400, None, P),
        (400, "InvalidArgument", P),
        (401, None, P),
        (403, "AccessDenied", P),
        (404, "NoSuchKey", P),
        (404, "NoSuchBucket", P),
        (405, None, P),
        (410, None, P),
        (416, "InvalidRange", P),
        (418, None, P),
        (451, None, P),
        (501, "NotImplemented", P),
        (301, "PermanentRedirect", P),
        (307, "TemporaryRedirect", R),
    ],
)
def test_status_classification(status: int, code: str | None, failure: FailureClass) -> None:
    assert classify_status(status, code) is failure


@given(st.integers(min_value=500, max_value=599).filter(lambda status: status != 501))
def test_every_5xx_but_501_is_retryable(status: int) -> None:
    assert classify_status(status) is R


@given(st.integers(min_value=400, max_value=499), st.sampled_from(["SlowDown", "InternalError"]))
def test_a_retryable_error_code_wins_over_a_4xx_status(status: int, code: str) -> None:
    assert classify_status(status, code) is R


# --- classify_exception -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("exc", "failure"),
    [
        (RetryableError("503"), R),
        (IntegrityError("md5"), FailureClass.INTEGRITY),
        (PermanentError("404"), P),
        (LocalStorageError("ENOSPC"), FailureClass.LOCAL),
        (StateError("locked"), FailureClass.LOCAL),
        (ConfigurationError("bad"), P),
        (UnsafePathError("../"), P),
        (StalledError("1 byte in 30 s"), R),
        (ProtocolError("header block over 64 KiB"), R),
        (ListingTooLong("series x: endless"), P),
        (TlsError("certificate not trusted"), FailureClass.SETUP),
        (ProxyError("proxy refuses"), FailureClass.SETUP),
        (BodyTooLarge(10, None), R),
        (TimeoutError(), R),  # asyncio.TimeoutError is this class since 3.11
        (ConnectionResetError(), R),
        (BrokenPipeError(), R),
        (ConnectionRefusedError(), R),
        (socket.gaierror(socket.EAI_AGAIN, "temporary failure in name resolution"), R),
        (OSError(errno.ENOSPC, "No space left on device"), FailureClass.LOCAL),
        (OSError(errno.EDQUOT, "Disk quota exceeded"), FailureClass.LOCAL),
        (OSError(errno.EIO, "Input/output error"), FailureClass.LOCAL),
        (OSError(errno.EROFS, "Read-only file system"), FailureClass.LOCAL),
        (RuntimeError("something new"), R),
        (ValueError("odd response"), R),
        (TypeError("bug"), P),
        (AttributeError("bug"), P),
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, BaseException) else str(value),
)
def test_exception_classification(exc: Exception, failure: FailureClass) -> None:
    assert classify_exception(exc) is failure


def test_exhausted_retries_keep_the_class_of_the_last_failure() -> None:
    with pytest.raises(RetryExhausted) as caught:
        RetryPolicy().increment(FailureClass.LOCAL, "ENOSPC")
    assert classify_exception(caught.value) is FailureClass.LOCAL


@pytest.mark.parametrize("exc", [asyncio.CancelledError(), KeyboardInterrupt(), SystemExit(1)])
def test_cancellation_is_raised_again_not_classified(exc: BaseException) -> None:
    with pytest.raises(type(exc)):
        classify_exception(exc)


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_a_real_full_disk_is_local() -> None:
    with (
        pytest.raises(OSError, match="No space") as caught,
        open("/dev/full", "wb", buffering=0) as full,
    ):
        full.write(b"x")
    assert caught.value.errno == errno.ENOSPC
    assert classify_exception(caught.value) is FailureClass.LOCAL


def test_a_real_refused_connection_is_retryable() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        port = listener.getsockname()[1]
    # nothing listens on the port any more
    with pytest.raises(ConnectionRefusedError) as caught:
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    assert classify_exception(caught.value) is R


async def _get_from_raw_server(reply: bytes) -> BaseException:
    """What our own client raises for ``reply``: the edge maps it into our tree."""
    from idc_sync.net.http import HttpClient
    from idc_sync.net.options import NetOptions

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(reply)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with HttpClient(NetOptions()) as client:
            try:
                await client.get(f"http://127.0.0.1:{port}/x/y.dcm", {}, 1000)
            except Exception as error:
                return error
        raise AssertionError("the request did not fail")
    finally:
        server.close()
        await server.wait_closed()


def test_a_real_truncated_body_is_retryable() -> None:
    reply = b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"x" * 10
    error = asyncio.run(_get_from_raw_server(reply))
    assert isinstance(error, ProtocolError)
    assert "10 of 1000" in str(error)
    assert classify_exception(error) is R


def test_a_real_server_disconnect_is_retryable() -> None:
    error = asyncio.run(_get_from_raw_server(b""))
    assert isinstance(error, ProtocolError)
    assert classify_exception(error) is R


# --- RetryPolicy budgets ----------------------------------------------------------------------


def test_retryable_failures_are_retried_max_retryable_times() -> None:
    policy = RetryPolicy(max_retryable=3)
    for n in range(3):
        policy = policy.increment(R, f"503 SlowDown #{n}")
    assert policy.attempts == 3
    with pytest.raises(RetryExhausted) as caught:
        policy.increment(R, "reset")
    assert caught.value.failure is R
    assert caught.value.policy.attempts == 4
    assert caught.value.policy.history[-1] == Attempt(R, "reset")


def test_integrity_and_retryable_budgets_are_separate() -> None:
    policy = RetryPolicy(max_retryable=2, max_integrity=1)
    policy = policy.increment(FailureClass.INTEGRITY, "md5 mismatch")
    policy = policy.increment(R, "reset").increment(R, "reset")
    with pytest.raises(RetryExhausted) as caught:
        policy.increment(FailureClass.INTEGRITY, "md5 mismatch")
    assert caught.value.failure is FailureClass.INTEGRITY


@pytest.mark.parametrize("failure", [P, FailureClass.LOCAL])
def test_permanent_and_local_failures_are_never_retried(failure: FailureClass) -> None:
    with pytest.raises(RetryExhausted) as caught:
        RetryPolicy(max_retryable=100, max_integrity=100).increment(failure, "404 NoSuchKey")
    assert caught.value.failure is failure
    assert caught.value.policy.history == (Attempt(failure, "404 NoSuchKey"),)


@given(
    st.lists(st.sampled_from(list(FailureClass)), max_size=30),
    st.integers(min_value=0, max_value=5),
    st.integers(min_value=0, max_value=5),
)
def test_a_policy_raises_exactly_when_a_class_exceeds_its_budget(
    failures: list[FailureClass], max_retryable: int, max_integrity: int
) -> None:
    budget = {R: max_retryable, FailureClass.INTEGRITY: max_integrity, P: 0}
    budget |= {FailureClass.LOCAL: 0, FailureClass.SETUP: 0}
    policy = RetryPolicy(max_retryable=max_retryable, max_integrity=max_integrity)
    seen = dict.fromkeys(FailureClass, 0)
    for failure in failures:
        seen[failure] += 1
        if seen[failure] > budget[failure]:
            with pytest.raises(RetryExhausted):
                policy.increment(failure, failure.value)
            return
        policy = policy.increment(failure, failure.value)
    assert policy.attempts == len(failures)
    assert policy.attempts <= max_retryable + max_integrity


def test_increment_leaves_the_policy_unchanged() -> None:
    original = RetryPolicy()
    later = original.increment(R, "reset")
    assert original.history == ()
    assert later.history == (Attempt(R, "reset"),)
    assert later.max_retryable == original.max_retryable
    with pytest.raises(dataclasses.FrozenInstanceError):
        later.history = ()  # type: ignore[misc]


def test_negative_budgets_are_refused() -> None:
    with pytest.raises(ValueError, match="negative"):
        RetryPolicy(max_retryable=-1)
    with pytest.raises(ValueError, match="negative"):
        RetryPolicy(base_delay=-0.1)


# --- backoff ----------------------------------------------------------------------------------


def _after(failures: int, **kwargs: float) -> RetryPolicy:
    policy = RetryPolicy(max_retryable=10_000, **kwargs)  # type: ignore[arg-type]
    return dataclasses.replace(policy, history=(Attempt(R, "503"),) * failures)


def test_backoff_caps_double_from_base_delay_up_to_max_delay() -> None:
    rng = Random(25)
    for failures, cap in [(1, 0.2), (2, 0.4), (3, 0.8), (5, 3.2), (7, 12.8), (8, 20.0), (50, 20.0)]:
        delays = [_after(failures).backoff(rng) for _ in range(2000)]
        assert all(0.0 <= delay <= cap for delay in delays)
        # full jitter: the whole range is used, not just the top or the bottom
        assert max(delays) > 0.95 * cap
        assert min(delays) < 0.05 * cap


@given(
    st.integers(min_value=0, max_value=5000),
    st.floats(min_value=0.0, max_value=10.0),
    st.floats(min_value=0.0, max_value=600.0),
    st.integers(),
)
def test_backoff_never_exceeds_max_delay(
    failures: int, base_delay: float, max_delay: float, seed: int
) -> None:
    policy = _after(failures, base_delay=base_delay, max_delay=max_delay)
    delay = policy.backoff(Random(seed))
    assert 0.0 <= delay <= max_delay
    # the exponent only needs to be large enough to pass any max_delay here
    assert delay <= base_delay * 2 ** min(max(0, failures - 1), 64)


def test_backoff_is_reproducible_with_the_same_seed() -> None:
    policy = _after(4)
    assert [policy.backoff(Random(7)) for _ in range(3)] == [policy.backoff(Random(7))] * 3
    rng = Random(7)
    first, second = policy.backoff(rng), policy.backoff(rng)
    assert first != second


def test_no_failure_no_wait() -> None:
    assert RetryPolicy().backoff(Random(1)) == 0.0


# --- summary and RetryExhausted ---------------------------------------------------------------


def test_summary_lists_reasons_in_order_and_folds_repeats() -> None:
    policy = RetryPolicy()
    for reason in ["503 SlowDown", "503 SlowDown", "reset", "md5 mismatch"]:
        failure = FailureClass.INTEGRITY if reason.startswith("md5") else R
        policy = policy.increment(failure, reason)
    assert policy.summary() == "4 attempts: 503 SlowDown x2; reset; md5 mismatch"


def test_summary_of_one_and_of_none() -> None:
    assert RetryPolicy().summary() == "0 attempts"
    assert RetryPolicy().increment(R, "reset").summary() == "1 attempt: reset"


def test_summary_is_bounded_and_keeps_the_latest_reason() -> None:
    policy = RetryPolicy(max_retryable=100)
    for n in range(60):
        policy = policy.increment(R, f"HTTP 503 SlowDown for key number {n}\n" + "x" * 500)
    summary = policy.summary()
    assert len(summary) <= 300
    assert summary.startswith("60 attempts: ...; ")
    assert "key number 59" in summary
    assert "key number 0 " not in summary
    assert "\n" not in summary
    assert len(policy.summary(max_chars=40)) <= 40


def test_retry_exhausted_is_an_idc_sync_error_that_survives_pickling() -> None:
    with pytest.raises(RetryExhausted) as caught:
        RetryPolicy(max_integrity=0).increment(FailureClass.INTEGRITY, "md5 mismatch")
    error = caught.value
    assert isinstance(error, IdcSyncError)
    assert str(error) == "integrity: 1 attempt: md5 mismatch"
    copy = pickle.loads(pickle.dumps(error))
    assert copy.policy == error.policy
    assert copy.failure is FailureClass.INTEGRITY
    assert str(copy) == str(error)
