"""Lanes (idc_sync/lanes.py): worker threads for short blocking jobs, answered on the
event loop with one call_soon_threadsafe, on real threads and a real loop."""

from __future__ import annotations

import asyncio
import functools
import threading
import time

import pytest

from idc_sync.disk.lanes import Lane, report


def test_run_returns_results_and_raises_errors_on_the_loop() -> None:
    lane = Lane(2, "test")
    try:

        async def body() -> None:
            assert await lane.run(lambda a, b: a + b, 2, 3) == 5
            names = await asyncio.gather(
                *(lane.run(lambda: threading.current_thread().name) for _ in range(20))
            )
            assert set(names) <= {"test-0", "test-1"}
            assert threading.current_thread().name not in names

            def fails() -> None:
                raise OSError(28, "No space left on device")

            with pytest.raises(OSError, match="No space left"):
                await lane.run(fails)

        asyncio.run(body())
    finally:
        lane.close()


def test_a_cancelled_caller_stops_waiting_but_the_job_runs_to_its_end() -> None:
    lane = Lane(1, "test")
    started, release = threading.Event(), threading.Event()
    finished: list[str] = []

    def slow() -> str:
        started.set()
        release.wait(5)
        finished.append("done")
        return "late"

    async def body() -> None:
        task = asyncio.ensure_future(lane.run(slow))
        await asyncio.to_thread(started.wait, 5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        release.set()
        # the lane is still usable, and the late answer to the cancelled future is dropped
        assert await lane.run(lambda: "next") == "next"

    asyncio.run(body())
    lane.close()
    assert finished == ["done"]


def test_close_finishes_queued_jobs_then_refuses_new_ones() -> None:
    lane = Lane(1, "test")
    done: list[int] = []

    def job(number: int) -> None:
        time.sleep(0.01)
        done.append(number)

    for number in range(5):
        lane.submit(functools.partial(job, number))
    lane.close()
    assert done == [0, 1, 2, 3, 4]
    assert not any(thread.name.startswith("test-") for thread in threading.enumerate())
    with pytest.raises(RuntimeError, match="closed"):
        lane.submit(lambda: None)
    lane.close()  # twice is fine


def test_an_answer_for_a_closed_loop_is_dropped_quietly() -> None:
    loop = asyncio.new_event_loop()
    future: asyncio.Future[int] = loop.create_future()
    loop.close()
    report(loop, future, 1, None)  # must not raise in the worker thread
    assert not future.done()


def test_a_lane_needs_a_thread() -> None:
    with pytest.raises(ValueError, match="at least one thread"):
        Lane(0, "test")


def test_a_job_that_raises_does_not_stop_its_thread(caplog: pytest.LogCaptureFixture) -> None:
    lane = Lane(1, "test")
    done = threading.Event()

    def broken() -> None:
        raise RuntimeError("a bug in a job")

    lane.submit(broken)
    lane.submit(done.set)  # queued behind the broken job, on the same single thread
    assert done.wait(5)
    lane.close()
    assert "a storage job failed without reporting it" in caplog.text
    assert "a bug in a job" in caplog.text
