"""The benchmark harness end to end with tiny numbers: every contender runs on a
real worker and leaves all its effects; counts are checked, never timings."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.slow


def test_harness_smoke(service_urls, tmp_path):
    out = tmp_path / "results"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.run",
            "--smoke",
            "--out",
            str(out),
            "--pg-url",
            service_urls["database_admin"],
            "--database",
            f"vigil_bench_smoke_{os.getpid()}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((out / "latest.json").read_text())
    assert (out / "latest.md").read_text().startswith("# vigil benchmark")

    events = result["events_ab"]
    for mode in ("per_request", "per_buffer"):
        assert len(events[mode]["msgs_per_s_runs"]) == events["rounds"]
    assert events["per_buffer_to_per_request"] > 0
    assert "## Task events of the buffered path" in (out / "latest.md").read_text()

    contenders = result["contenders"]
    assert set(contenders) == {
        "bare_noop",
        "ceiling",
        "seed_single",
        "vigil_single",
        "seed_batch",
        "vigil_batch",
    }
    for c in contenders.values():
        assert c["msgs_per_s"] > 0
        if c["key"] != "bare_noop":  # it publishes nothing to wait for
            assert c["latency"]["seen"] == c["latency"]["messages"], c
        if c["key"] not in ("ceiling", "bare_noop"):
            done, total = map(int, c["verified"].split("/"))
            assert done == total > 0, c

    # Round trips are counts, not timings: vigil's two per batch is the design.
    batch = contenders["vigil_batch"]["batch"]
    # Buffered: two per buffer of single-message requests, so at most two per message.
    assert contenders["vigil_single"]["round_trips_per_msg"] <= 2.0
    assert contenders["vigil_single"]["latency_1ps"]["seen"] > 0
    assert contenders["vigil_batch"]["round_trips_per_msg"] == round(2 / batch, 3)
    assert contenders["seed_single"]["round_trips_per_msg"] >= 10
    assert contenders["bare_noop"]["round_trips_per_msg"] == 0

    corr = result["correlator"]
    assert corr["rows"] == result["sizes"]["correlator_rows"]
    assert any("ix_attribution_state_multi_actor" in line for line in corr["plan_summary"])
    assert {t["target"] for t in result["targets"]} >= {
        "vigil single (buffered) vs bare Celery no-op"
    }


def test_flush_interval_smoke(service_urls, tmp_path):
    out = tmp_path / "flush.json"
    proc = subprocess.run(
        [
            sys.executable, "-m", "benchmarks.flush_interval", "--intervals", "0.01,0.05",
            "--rounds", "1", "--messages", "200", "--out", str(out),
            "--pg-url", service_urls["database_admin"],
            "--database", f"vigil_bench_flush_smoke_{os.getpid()}",
        ],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert [row["interval_s"] for row in result["rows"]] == [0.01, 0.05]
    for row in result["rows"]:
        assert row["msgs_per_s"] > 0
        assert row["latency"]["seen"] == row["latency"]["messages"] > 0
    assert "| 0.05 |" in proc.stdout


def test_topologies_smoke(tmp_path):
    """Every topology x WAIT x path runs, every message is accepted, and each
    master's share of messages and CPU is accounted for; no timing is checked."""
    out = tmp_path / "topologies.json"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.topologies", "--quick", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    rows = {(r["topology"], r["wait_replicas"], r["path"]): r for r in result["rows"]}
    assert set(rows) == {
        (topology, wait, path)
        for topology in ("redis", "sentinel", "cluster")
        for wait in (0, 1)
        for path in ("single", "batch")
    }
    for (topology, _, _), row in rows.items():
        measured = row["measured"]
        assert row["statuses"] == {"accepted": row["messages"]}, row
        per_run = row["messages"] // result["config"]["repeats"]
        assert sum(measured["messages_per_master_per_run"]) == per_run
        assert len(measured["messages_per_master_per_run"]) == (3 if topology == "cluster" else 1)
        assert all(n > 0 for n in measured["messages_per_master_per_run"])
        assert all(us > 0 for us in measured["redis_cpu_us_per_msg_per_master"])
        assert row["projected"]["ceiling_messages_per_s"] > 0
    vs = result["messages_per_s_vs_masters"]
    assert [line["masters"] for line in vs] == [1, 1, 1, 3, 3, 6, 12]
    assert {line["kind"] for line in vs if line["masters"] in (6, 12)} == {"projected"}
    assert "| cluster | 1 | batch (100) |" in proc.stdout
