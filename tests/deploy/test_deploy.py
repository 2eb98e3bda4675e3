"""deploy/: the dashboard asks only for series the exporter serves, and the
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


@pytest.mark.skipif(shutil.which("promtool") is None, reason="no promtool on PATH")
def test_prometheus_config_checks():
    subprocess.run(["promtool", "check", "config", str(DEPLOY / "prometheus.yml")], check=True)
