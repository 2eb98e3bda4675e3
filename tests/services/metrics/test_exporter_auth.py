"""Off loopback the exporter needs a token, and then every request must carry it."""

from __future__ import annotations

import httpx
import pytest

from services.metrics import collector, exporter
from tasks.names import QUEUES

TOKEN = "t0ken-long-enough-for-settings"


def test_refuses_a_public_bind_without_a_token():
    with pytest.raises(exporter.ExporterAuthError, match="VIGIL_METRICS_TOKEN"):
        exporter.check_bind("0.0.0.0", None)
    exporter.check_bind("127.0.0.1", None)
    exporter.check_bind("0.0.0.0", TOKEN)


def test_token_is_required_when_set(settings, state_redis, db):
    registry = collector.registry(collector.for_settings(settings, QUEUES))
    server, thread = exporter.start(registry, "127.0.0.1", 0, TOKEN)
    url = f"http://127.0.0.1:{server.server_port}/metrics"
    try:
        assert httpx.get(url, timeout=10).status_code == 401
        wrong = httpx.get(url, headers={"Authorization": "Bearer nope"}, timeout=10)
        assert wrong.status_code == 401
        assert "vigil_" not in wrong.text
        bearer = httpx.get(url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
        assert bearer.status_code == 200
        assert "vigil_messages_total" in bearer.text
        assert httpx.get(url, auth=("prometheus", TOKEN), timeout=10).status_code == 200
    finally:
        server.shutdown()
        thread.join(timeout=5)
