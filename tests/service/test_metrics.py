"""The metrics' names follow Prometheus' conventions, and the metrics an alert reads tell the
truth against a real daemon: the newest IDC release known, when the mirror was last
complete (across a restart), what the selection holds by state."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from idc_sync.core.retry import FailureClass
from idc_sync.service.freshness import LAST_COMPLETE_FILE
from idc_sync.service.metrics import FILE_STATES, Metrics, SelectionState
from tests.service.test_httpapi import samples
from tests.support import dataset
from tests.support.daemon import Running, daemon_settings, make_daemon, wait_for
from tests.support.s3server import S3TestServer

UNITS = ("seconds", "bytes")


def _exercised() -> Metrics:
    """A registry in which every metric has at least one sample."""
    metrics = Metrics()
    metrics.bytes_received(10)
    metrics.file_finished(10, fetched=True, ok=True)
    metrics.attempt_failed(FailureClass.RETRYABLE)
    metrics.retrying(FailureClass.RETRYABLE)
    metrics.latency.labels("get", "ok").observe(0.2)
    return metrics


def convention_problems(exposition: str) -> list[str]:
    """What https://prometheus.io/docs/practices/naming/ would object to in our families."""
    problems = []
    for family in text_string_to_metric_families(exposition):
        if not family.name.startswith("idc_sync_"):
            continue
        names = {sample.name for sample in family.samples} - {f"{family.name}_created"}
        if family.type == "counter" and names != {f"{family.name}_total"}:
            problems.append(f"counter {family.name}: samples {sorted(names)} lack _total")
        # the unit, when there is one, is the last word (before _total / histogram suffixes)
        words = family.name.split("_")
        for unit in UNITS:
            if unit in words and words[-1] != unit:
                problems.append(f"{family.name}: unit {unit} is not the suffix")
        if "timestamp" in words and not family.name.endswith("_timestamp_seconds"):
            problems.append(f"{family.name}: a timestamp is in seconds")
        if family.name.endswith("_info") and any(s.value != 1 for s in family.samples):
            problems.append(f"{family.name}: an info metric is always 1")
    return problems


def test_every_metric_name_follows_the_prometheus_conventions() -> None:
    assert convention_problems(_exercised().exposition().decode()) == []


def test_the_convention_check_would_catch_the_old_names() -> None:
    old = (
        "# TYPE idc_sync_bytes_fetched counter\nidc_sync_bytes_fetched_total 1\n"
        "# TYPE idc_sync_plan_timestamp gauge\nidc_sync_plan_timestamp 1\n"
    )
    problems = convention_problems(old)
    assert any("idc_sync_bytes_fetched: unit bytes" in p for p in problems)
    assert any("idc_sync_plan_timestamp: a timestamp" in p for p in problems)


def test_the_exposition_carries_the_process_collector_and_one_build_info() -> None:
    metrics = _exercised()
    metrics.planned(25)
    metrics.planned(25)
    found = samples(metrics.exposition().decode())
    builds = [labels for name, labels in found if name == "idc_sync_build_info"]
    assert len(builds) == 1, builds
    for name in ("process_cpu_seconds_total", "process_resident_memory_bytes",
                 "process_open_fds", "process_start_time_seconds"):  # fmt: skip
        assert (name, ()) in found, name
    assert found[("idc_sync_idc_release", ())] == 25
    assert abs(found[("idc_sync_last_plan_timestamp_seconds", ())] - time.time()) < 60


def test_selection_state_sums_to_the_selection_and_is_complete_only_when_all_is_verified() -> None:
    overall = {"series_total": 3, "series_complete": 1, "series_failed": 1, "series_pending": 1,
               "files_expected": 10, "files_done": 6, "files_failed": 1, "files_quarantined": 1,
               "files_pending": 2, "bytes_expected": 100, "bytes_done": 60,
               "bytes_pending": 40}  # fmt: skip
    selection = SelectionState.of(overall)
    assert sum(selection.files.values()) == overall["files_expected"]
    assert sum(selection.series.values()) == overall["series_total"]
    assert sum(selection.bytes.values()) == overall["bytes_expected"]
    assert not selection.complete
    metrics = Metrics()
    metrics.set_selection(selection)
    found = samples(metrics.exposition().decode())
    by_state = {
        state: found[("idc_sync_selected_files", (("state", state),))] for state in FILE_STATES
    }
    assert by_state == {"done": 6, "failed": 1, "quarantined": 1, "pending": 2}
    done = {**overall, "series_complete": 3, "series_failed": 0, "series_pending": 0,
            "files_done": 10, "files_failed": 0, "files_quarantined": 0, "files_pending": 0,
            "bytes_done": 100, "bytes_pending": 0}  # fmt: skip
    assert SelectionState.of(done).complete
    for key in ("series_failed", "files_quarantined", "files_pending"):
        assert not SelectionState.of({**done, key: 1}).complete, key


def test_the_latest_release_shows_in_status_and_metrics_and_unknown_is_null_and_0(
    tmp_path: Path, s3_server: S3TestServer
) -> None:
    rows = dataset.selection("two")
    uploaded = dataset.populate(s3_server, rows)
    settings = daemon_settings(tmp_path, s3_server.endpoint, rows)
    daemon = make_daemon(settings)
    with Running(daemon) as running:
        running.wait_mirrored(len(uploaded))
        assert running.status()["latest_release"] is None
        running.call(daemon.metrics.set_latest_release, 99)
        wait_for(lambda: running.status()["latest_release"] == 99, 10)
        newer = samples(running.get("/metrics")[1].decode())
        running.call(daemon.metrics.set_latest_release, None)
        wait_for(lambda: running.status()["latest_release"] is None, 10)
        unknown = samples(running.get("/metrics")[1].decode())
        assert running.stop() == 0
    assert newer[("idc_sync_latest_idc_release", ())] == 99
    assert unknown[("idc_sync_latest_idc_release", ())] == 0


def test_last_complete_survives_a_restart_and_stands_still_while_the_mirror_is_incomplete(
    tmp_path: Path, s3_server: S3TestServer
) -> None:
    first, second = dataset.selection("two"), dataset.selection("single_instance")
    uploaded = dataset.populate(s3_server, first + second)
    settings = daemon_settings(tmp_path, s3_server.endpoint, first)

    def files_of(rows: list[dict[str, object]]) -> list[str]:
        uuids = {str(row["crdc_series_uuid"]) for row in rows}
        return [key for _, key in uploaded if key.split("/")[0] in uuids]

    with Running(make_daemon(settings)) as running:
        before = time.time()
        seen = running.wait_mirrored(len(files_of(first)))
        completed = seen["last_complete_at"]
        assert completed is not None
        assert completed >= before - 1
        assert running.stop() == 0
        stopped = time.time()
    # the stop wrote the last moment the daemon saw the mirror complete
    stored = float((settings.state_path / LAST_COMPLETE_FILE).read_text())
    assert round(completed, 3) <= stored <= stopped

    # the selection grows by a series whose only file is refused for good: never complete
    (refused,) = files_of(second)
    s3_server.faults.add("status_500", keys=[refused], on=["GET"])
    grown = daemon_settings(tmp_path, s3_server.endpoint, first + second, max_attempts=1)
    with Running(make_daemon(grown)) as running:
        found: dict[str, Any] = {}

        def given_up() -> bool:
            nonlocal found
            found = running.status()
            return bool(found["phase"] == "idle" and found["overall"]["files_failed"] == 1)

        wait_for(given_up, 60, lambda: str(found))
        metrics = samples(running.get("/metrics")[1].decode())
        assert running.stop() == 0
    assert found["last_complete_at"] == stored
    assert metrics[("idc_sync_last_complete_timestamp_seconds", ())] == stored
    assert metrics[("idc_sync_selected_files", (("state", "failed"),))] == 1
