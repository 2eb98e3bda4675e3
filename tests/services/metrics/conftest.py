"""An exporter on a free loopback port over the test stores, and a scrape helper."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from services.ingest.detector import LexiconDetector
from services.ingest.service import IngestService
from services.metrics import collector, exporter
from tasks.names import QUEUES
from worker.settle import Ingest

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> Samples:
    """Every sample of a scrape, by (sample name, sorted labels)."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


@pytest.fixture
def exporter_url(settings, state_redis, db) -> Iterator[str]:
    registry = collector.registry(collector.for_settings(settings, QUEUES))
    server, thread = exporter.start(registry, "127.0.0.1", 0, None)
    try:
        yield f"http://127.0.0.1:{server.server_port}/metrics"
    finally:
        server.shutdown()
        thread.join(timeout=5)


@pytest.fixture
def scrape(exporter_url) -> Callable[[], Samples]:
    def scrape_once() -> Samples:
        response = httpx.get(exporter_url, timeout=10)
        response.raise_for_status()
        return parse(response.text)

    return scrape_once


@pytest.fixture
def ingest_service(state_redis, db, settings):
    """The real pipeline, in process."""
    return Ingest(IngestService(state_redis, settings, db, LexiconDetector()))
