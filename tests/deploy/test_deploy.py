"""deploy/: the dashboard and the alerting rules ask only for series the exporter
serves, every alert is unit-tested and has a runbook entry, and the
Prometheus configuration is valid for promtool when it is installed."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from prometheus_client import generate_latest

from services.metrics import collector
from tasks.names import QUEUES

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def _dashboard_metrics() -> set[str]:
    dashboard = json.loads((DEPLOY / "grafana" / "vigil-dashboard.json").read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    return {
        name for expr in exprs for name in re.findall(r"\b(vigil_[a-z_]+|flower_[a-z_]+)", expr)
    }


def test_dashboard_uses_only_served_series(settings, state_redis, db):
    served = generate_latest(collector.registry(collector.for_settings(settings, QUEUES))).decode()
    wanted = {m for m in _dashboard_metrics() if m.startswith("vigil_")}
    declared = set(re.findall(r"^# TYPE (\S+) ", served, re.MULTILINE))
    # A counter's TYPE line names the family without its _total suffix.
    missing = {m for m in wanted if m not in declared and m.removesuffix("_total") not in declared}
    assert not missing
    flower = {m for m in _dashboard_metrics() if m.startswith("flower_")}
    assert flower <= {
        "flower_events_total",
        "flower_worker_online",
        "flower_worker_number_of_currently_executing_tasks",
    }


PROMTOOL = pytest.mark.skipif(
    shutil.which("promtool") is None,
    reason="no promtool on PATH (Debian: apt-get install prometheus)",
)
RUNBOOK = DEPLOY.parent / "docs" / "runbook.md"


def _alerts() -> list[str]:
    return re.findall(r"^\s+- alert: (\w+)$", (DEPLOY / "alerts.yml").read_text(), re.MULTILINE)


def _rule_cases() -> list[tuple[str, bool]]:
    """(alert name, expects it firing) for each case of alerts.test.yml."""
    text = (DEPLOY / "alerts.test.yml").read_text()
    cases = re.split(r"^\s+- eval_time: ", text, flags=re.MULTILINE)[1:]
    return [
        (re.search(r"alertname: (\w+)", case).group(1), "exp_alerts:" in case) for case in cases
    ]


@PROMTOOL
def test_prometheus_config_checks():
    subprocess.run(["promtool", "check", "config", str(DEPLOY / "prometheus.yml")], check=True)


@PROMTOOL
def test_alerting_rules_check_and_pass_their_unit_tests():
    subprocess.run(["promtool", "check", "rules", str(DEPLOY / "alerts.yml")], check=True)
    subprocess.run(
        ["promtool", "test", "rules", "alerts.test.yml"], cwd=DEPLOY, check=True, timeout=120
    )


def test_every_alert_has_a_firing_and_a_quiet_case_and_a_runbook_entry():
    alerts = _alerts()
    assert len(alerts) >= 10
    cases = _rule_cases()
    runbook = RUNBOOK.read_text()
    rules = (DEPLOY / "alerts.yml").read_text()
    for alert in alerts:
        assert (alert, True) in cases, f"{alert}: no case where it fires"
        assert (alert, False) in cases, f"{alert}: no case where it stays quiet"
        assert f"\n## {alert}\n" in runbook, f"{alert}: no runbook entry"
        assert f"docs/runbook.md#{alert.lower()}" in rules


def test_alerts_use_only_served_series(settings, state_redis, db):
    served = generate_latest(collector.registry(collector.for_settings(settings, QUEUES))).decode()
    declared = set(re.findall(r"^# TYPE (\S+) ", served, re.MULTILINE))
    used = set(re.findall(r"\b(vigil_[a-z_]+)", (DEPLOY / "alerts.yml").read_text()))
    missing = {m for m in used if m not in declared and m.removesuffix("_total") not in declared}
    assert not missing


def test_dashboard_shows_the_alert_states_of_vigils_rules():
    dashboard = json.loads((DEPLOY / "grafana" / "vigil-dashboard.json").read_text())
    [panel] = [p for p in dashboard["panels"] if p["title"] == "Alert states"]
    [target] = panel["targets"]
    pattern = re.search(r'alertname=~"([^"]+)"', target["expr"]).group(1)
    assert target["expr"].startswith("ALERTS{")
    assert all(re.fullmatch(pattern, alert) for alert in _alerts())
