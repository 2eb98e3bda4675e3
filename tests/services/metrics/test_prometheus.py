"""A real Prometheus server scrapes the exporter and answers a PromQL query."""

from __future__ import annotations

import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

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


@pytest.fixture
def prometheus(exporter_url: str, tmp_path: Path) -> Iterator[str]:
    target = exporter_url.removeprefix("http://").removesuffix("/metrics")
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n"
        "scrape_configs:\n"
        f"  - job_name: vigil\n    static_configs:\n      - targets: ['{target}']\n"
    )
    port = _free_port()
    log = tmp_path / "prometheus.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [
                PROMETHEUS,
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp_path / 'data'}",
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
    sent_at = "2026-11-22T10:00:00+00:00"
    ingest_service.messages(
        [
            {"message_id": f"p{i}", "user_id": "601", "text": "hello", "sent_at": sent_at}
            for i in range(7)
        ]
    )
    wait_for(
        lambda: _query(prometheus, 'vigil_messages_total{job="vigil",outcome="accepted"}') == 7,
        timeout=60,
        what="Prometheus to scrape 7 accepted messages",
    )
