"""Shared CLI plumbing: finding a running stack's embedded servers, the CLI's own app."""

from __future__ import annotations

from cli import common
from services.core.settings import Settings


def test_configured_settings_are_used_as_they_are(settings):
    assert common.find_running(settings) is settings


def test_embedded_servers_of_a_running_stack_are_found(monkeypatch, celery_app):
    # Nothing on the default ports, the embedded ones answer (a `vigil up` elsewhere).
    monkeypatch.setattr(
        "cli.common.answers", lambda url, timeout=1.0: ":6391" in url or ":5441" in url
    )
    worker_broker = celery_app.conf.broker_url
    found = common.find_running(Settings(redis_url=None, database_url=None, broker_url=None))
    assert found.redis_url == "redis://127.0.0.1:6391/0"
    assert found.broker_url == "redis://127.0.0.1:6391/1"
    assert found.database_url == "postgresql+psycopg://postgres@127.0.0.1:5441/vigil"
    # The CLI sends through its own app, built from what it found ...
    assert common.cli_app(found).conf.broker_url == "redis://127.0.0.1:6391/1"
    assert common.cli_app(found).conf.result_backend == "redis://127.0.0.1:6391/0"
    # ... and the worker's app is left as it was.
    assert celery_app.conf.broker_url == worker_broker
    assert common.cli_app(found) is not celery_app


def test_nothing_running_leaves_the_defaults(monkeypatch):
    monkeypatch.setattr("cli.common.answers", lambda url, timeout=1.0: False)
    bare = Settings(redis_url=None, database_url=None, broker_url=None)
    assert common.find_running(bare) is bare
