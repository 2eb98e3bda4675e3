"""A real Prometheus server scrapes the exporter and answers a PromQL query."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis
from celery import Celery

from services.core.settings import Settings
from services.metrics import collector, exporter
from tasks.names import INGEST_MESSAGE, QUEUES
from tests.builders import OMIT, message
from tests.conftest import start_test_worker
from tests.helpers import wait_for

PROMETHEUS = shutil.which("prometheus")

pytestmark = pytest.mark.skipif(
    PROMETHEUS is None,
    reason="no prometheus binary on PATH (Debian: apt-get install prometheus)",
)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def running_prometheus(
    targets: dict[str, str], workdir: Path, rule_files: tuple[Path, ...] = ()
) -> Iterator[str]:
    """A Prometheus scraping ``targets`` (job name: exporter URL) every second,
    evaluating ``rule_files`` every second; yields its URL."""
    config = workdir / "prometheus.yml"
    lines = ["global:", "  scrape_interval: 1s", "  evaluation_interval: 1s"]
    if rule_files:
        lines += ["rule_files:", *(f"  - '{path}'" for path in rule_files)]
    lines.append("scrape_configs:")
    for job, url in targets.items():
        target = url.removeprefix("http://").removesuffix("/metrics")
        lines += [f"  - job_name: {job}", "    static_configs:", f"      - targets: ['{target}']"]
    config.write_text("\n".join(lines) + "\n")
    port = _free_port()
    log = workdir / "prometheus.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [
                PROMETHEUS,
                f"--config.file={config}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _ready(url), timeout=60, what=f"Prometheus ready ({log})")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def prometheus(exporter_url: str, tmp_path: Path) -> Iterator[str]:
    with running_prometheus({"vigil": exporter_url}, tmp_path) as url:
        yield url


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/-/ready", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _query(url: str, promql: str) -> float | None:
    body = httpx.get(f"{url}/api/v1/query", params={"query": promql}, timeout=5).json()
    result = body["data"]["result"]
    return float(result[0]["value"][1]) if result else None


def test_prometheus_scrapes_the_exporter(ingest_service, prometheus):
    ingest_service.messages(
        [message(text="hello", id=f"p{i}", user="601", guild=OMIT) for i in range(7)]
    )
    wait_for(
        lambda: _query(prometheus, 'vigil_messages_total{job="vigil",outcome="accepted"}') == 7,
        timeout=60,
        what="Prometheus to scrape 7 accepted messages",
    )


DEPLOY = Path(__file__).resolve().parents[3] / "deploy"
# A broker database of this test's own: the suite's shared worker must not
# drain the queue this test stalls.
ALERT_BROKER_DB = 12


def _alert_state(url: str, name: str) -> str | None:
    """``pending``/``firing`` for the alert, None when it is inactive."""
    body = httpx.get(f"{url}/api/v1/alerts", timeout=5).json()
    states = [a["state"] for a in body["data"]["alerts"] if a["labels"]["alertname"] == name]
    return states[0] if states else None


@pytest.mark.slow
def test_ingest_stalled_fires_when_the_worker_stops_and_clears_when_one_is_back(
    test_env, settings, state_redis, db, migrated, tmp_path
):
    """The shipped rules (deploy/alerts.yml) on a real Prometheus: messages keep
    arriving while no worker runs, and VigilIngestStalled fires within its
    windows (1 m of no progress, then ``for: 1m``); a worker back clears it."""
    broker = test_env["VIGIL_BROKER_URL"].rsplit("/", 1)[0] + f"/{ALERT_BROKER_DB}"
    redis.Redis.from_url(broker).flushdb()
    env = {**test_env, "VIGIL_BROKER_URL": broker}
    on_alert_broker = Settings(broker_url=broker)
    registry = collector.registry(collector.for_settings(on_alert_broker, QUEUES))
    server, thread = exporter.start(registry, "127.0.0.1", 0, None)
    exporter_url = f"http://127.0.0.1:{server.server_port}/metrics"
    frontend = Celery("frontend", broker=broker)
    stop_sending = threading.Event()

    def send() -> None:
        i = 0
        while not stop_sending.wait(0.2):
            kwargs = message(
                text="anyone up for ranked tonight?",
                id=f"stall{i}",
                user=f"{900 + i % 5}",
                guild=OMIT,
            )
            frontend.send_task(INGEST_MESSAGE, kwargs=kwargs, queue="ingest", ignore_result=True)
            i += 1

    sender = threading.Thread(target=send, daemon=True)
    first = start_test_worker(env, tmp_path / "worker1.log", frontend)
    second = None
    try:
        with running_prometheus(
            {"vigil": exporter_url}, tmp_path, (DEPLOY / "alerts.yml",)
        ) as prom:
            sender.start()
            wait_for(
                lambda: (_query(prom, "sum(vigil_messages_total)") or 0) >= 10,
                timeout=60,
                what="Prometheus to see messages processed",
            )
            assert _alert_state(prom, "VigilIngestStalled") is None
            stopping = time.monotonic()
            first.stop()
            stopped_in = time.monotonic() - stopping
            wait_for(
                lambda: _alert_state(prom, "VigilIngestStalled") == "firing",
                timeout=180,
                what="VigilIngestStalled to fire",
            )
            # Not before its for-window, and within 1 m window + 1 m for, plus
            # scrape and evaluation intervals (measured: 118 s).
            fired_after = time.monotonic() - stopping
            assert 60 <= fired_after < 150, (fired_after, stopped_in)
            second = start_test_worker(env, tmp_path / "worker2.log", frontend)
            wait_for(
                lambda: _alert_state(prom, "VigilIngestStalled") is None,
                timeout=60,
                what="VigilIngestStalled to clear",
            )
    finally:
        stop_sending.set()
        sender.join(timeout=5)
        for started in (first, second):
            if started is not None:
                started.stop()
        frontend.close()
        server.shutdown()
        thread.join(timeout=5)
