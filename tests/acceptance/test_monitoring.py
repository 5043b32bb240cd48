"""What operators install next to the daemon (monitoring/): the Prometheus alert rules pass
`promtool check rules`, and `promtool test rules` shows every alert firing and staying
quiet; the Grafana dashboard is valid JSON whose every expression parses (promtool again)
and names only metrics a real daemon exports, as a real /metrics scrape shows."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.service.test_httpapi import samples
from tests.support import dataset
from tests.support.daemon import Running, daemon_settings, make_daemon
from tests.support.s3server import S3TestServer
from tests.support.tools import require

ROOT = Path(__file__).resolve().parents[2]
MONITORING = ROOT / "monitoring"
ALERTS = MONITORING / "alerts.yml"
ALERT_TESTS = MONITORING / "alerts.test.yml"
DASHBOARD = MONITORING / "grafana-dashboard.json"
# Prometheus' own series, there for every target
PROMETHEUS_SERIES = {"up"}


def promtool(*arguments: str, cwd: Path = MONITORING) -> subprocess.CompletedProcess[str]:
    return subprocess.run([require("promtool", package="prometheus"), *arguments],
                          capture_output=True, text=True, timeout=300, check=False,
                          cwd=cwd)  # fmt: skip


def _rules() -> list[dict[str, Any]]:
    return [rule for group in yaml.safe_load(ALERTS.read_text())["groups"]
            for rule in group["rules"]]  # fmt: skip


def _dashboard() -> dict[str, Any]:
    dashboard: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return dashboard


def _panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


def _dashboard_expressions() -> list[str]:
    return [
        target["expr"] for panel in _panels(_dashboard()) for target in panel.get("targets", [])
    ]


def concrete(expr: str) -> str:
    """A dashboard expression with Grafana's variables replaced, as Grafana sends it."""
    return expr.replace("$__rate_interval", "5m").replace("$instance", ".+")


# -- alert rules ----------------------------------------------------------------------


def test_promtool_accepts_the_alert_rules() -> None:
    result = promtool("check", "rules", str(ALERTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(_rules())} rules found" in result.stdout


def test_promtool_check_would_reject_a_broken_rule(tmp_path: Path) -> None:
    broken = tmp_path / "alerts.yml"
    broken.write_text(ALERTS.read_text().replace("idc_sync_ready == 0", "idc_sync_ready == ("))
    result = promtool("check", "rules", str(broken))
    assert result.returncode != 0
    assert "IdcSyncNotReady" in result.stdout + result.stderr


@pytest.mark.slow
def test_every_alert_is_shown_to_fire_and_to_stay_quiet_by_promtool_unit_tests() -> None:
    tests = yaml.safe_load(ALERT_TESTS.read_text())
    assert tests["rule_files"] == [ALERTS.name]
    cases = [case for group in tests["tests"] for case in group["alert_rule_test"]]
    alerts = {rule["alert"] for rule in _rules()}
    fires = {case["alertname"] for case in cases if case["exp_alerts"]}
    quiet = {case["alertname"] for case in cases if not case["exp_alerts"]}
    assert fires == alerts, alerts ^ fires
    assert quiet == alerts, alerts ^ quiet
    result = promtool("test", "rules", str(ALERT_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_the_unit_tests_notice_a_threshold_that_moved(tmp_path: Path) -> None:
    """promtool test rules can fail: a disk alert at 1% instead of 10% no longer fires
    where the tests expect it to (the disk tests alone, against the changed rules)."""
    tests = yaml.safe_load(ALERT_TESTS.read_text())
    tests["tests"] = [group for group in tests["tests"] if group["name"].startswith("disks")]
    assert tests["tests"]
    (tmp_path / ALERT_TESTS.name).write_text(yaml.safe_dump(tests))
    text = ALERTS.read_text()
    moved = text.replace(
        "/ idc_sync_filesystem_size_bytes < 0.10", "/ idc_sync_filesystem_size_bytes < 0.01"
    )
    assert moved != text
    (tmp_path / ALERTS.name).write_text(moved)
    result = promtool("test", "rules", ALERT_TESTS.name, cwd=tmp_path)
    assert result.returncode != 0
    assert "IdcSyncDiskNearlyFull" in result.stdout + result.stderr
    (tmp_path / ALERTS.name).write_text(text)
    unchanged = promtool("test", "rules", ALERT_TESTS.name, cwd=tmp_path)
    assert unchanged.returncode == 0, unchanged.stdout + unchanged.stderr


def test_every_alert_says_what_is_wrong_and_how_bad() -> None:
    for rule in _rules():
        assert rule["alert"].startswith("IdcSync"), rule["alert"]
        assert rule["labels"]["severity"] in {"warning", "critical"}, rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]
        assert rule["annotations"]["description"], rule["alert"]


# -- the dashboard ----------------------------------------------------------------------


def test_the_dashboard_is_a_grafana_dashboard_with_one_id_per_panel_and_no_overlaps() -> None:
    dashboard = _dashboard()
    assert dashboard["uid"] == "idc-sync"
    assert isinstance(dashboard["schemaVersion"], int)
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    panels = list(_panels(dashboard))
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids))
    cells: dict[tuple[int, int], str] = {}
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] >= 0, panel["title"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = panel["title"]
        if panel["type"] == "row":
            continue
        # every query goes to the data source the viewer picks
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == panel["datasource"]
            assert target["expr"].strip(), panel["title"]


def test_every_dashboard_expression_parses_as_promql(tmp_path: Path) -> None:
    """promtool parses each expression (made concrete as Grafana would) as a recording rule."""
    rules = [{"record": f"dashboard:expression_{n}", "expr": concrete(expr)}
             for n, expr in enumerate(_dashboard_expressions())]  # fmt: skip
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = promtool("check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    broken = tmp_path / "broken.yml"
    rules[0]["expr"] = concrete(_dashboard_expressions()[0]) + " +"
    broken.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    assert promtool("check", "rules", str(broken)).returncode != 0


_FUNCTIONS = re.compile(r"\b[a-zA-Z_][a-zA-Z0-9_]*\s*\(")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_KEYWORDS = {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring",
             "group_left", "group_right", "inf", "nan"}  # fmt: skip


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects: what is left once label matchers,
    grouping labels, ranges, strings, functions, keywords and numbers are taken out."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = _GROUPING.sub(" ", text)
    text = _FUNCTIONS.sub("(", text)
    words = re.findall(r"\b[a-zA-Z_:][a-zA-Z0-9_:]*\b", text)
    return {word for word in words if word.lower() not in _KEYWORDS}


def test_metric_names_finds_the_selected_metrics_only() -> None:
    expr = (
        'histogram_quantile(0.95, sum by (instance, le) (rate(idc_sync_x_bucket{state="a b",'
        ' kind=~"get|list"}[5m]))) / on(instance) group_left idc_sync_y > bool 1e3 unless up'
    )
    assert metric_names(expr) == {"idc_sync_x_bucket", "idc_sync_y", "up"}


@pytest.fixture(scope="module")
def scraped(tmp_path_factory: pytest.TempPathFactory) -> set[str]:
    """Every sample name a real daemon exports after mirroring a series."""
    tmp_path = tmp_path_factory.mktemp("scraped")
    with S3TestServer("s3") as server:
        rows = dataset.selection("two")
        uploaded = dataset.populate(server, rows)
        settings = daemon_settings(tmp_path, server.endpoint, rows)
        with Running(make_daemon(settings)) as running:
            running.wait_mirrored(len(uploaded))
            code, body = running.get("/metrics")
            assert running.stop() == 0
    assert code == 200
    return {name for name, _ in samples(body.decode())}


@pytest.mark.slow
def test_the_dashboard_names_only_metrics_a_real_daemon_exports(scraped: set[str]) -> None:
    used = set().union(*(metric_names(concrete(e)) for e in _dashboard_expressions()))
    assert {"idc_sync_fetched_bytes_total", "process_resident_memory_bytes"} <= used
    assert used - scraped - PROMETHEUS_SERIES == set()


@pytest.mark.slow
def test_the_alerts_name_only_metrics_a_real_daemon_exports(scraped: set[str]) -> None:
    used = set().union(*(metric_names(rule["expr"]) for rule in _rules()))
    assert "idc_sync_last_complete_timestamp_seconds" in used
    assert used - scraped - PROMETHEUS_SERIES == set()


@pytest.mark.slow
def test_a_dashboard_naming_an_old_metric_would_be_caught(scraped: set[str]) -> None:
    old = metric_names("rate(idc_sync_bytes_fetched_total[5m])")
    assert old - scraped == {"idc_sync_bytes_fetched_total"}
