"""Shared CLI plumbing: finding a running stack's embedded servers."""

from __future__ import annotations

import pytest

from cli import common
from services.core.settings import Settings


@pytest.fixture
def app_conf(celery_app):
    saved = (celery_app.conf.broker_url, celery_app.conf.result_backend)
    yield celery_app.conf
    celery_app.conf.broker_url, celery_app.conf.result_backend = saved


def test_configured_settings_are_used_as_they_are(settings):
    assert common.find_running(settings) is settings


def test_embedded_servers_of_a_running_stack_are_found(monkeypatch, app_conf):
    # Nothing on the default ports, the embedded ones answer (a `vigil up` elsewhere).
    monkeypatch.setattr(
        "stack.discovery.answers", lambda url, timeout=1.0: ":6391" in url or ":5441" in url
    )
    found = common.find_running(Settings(redis_url=None, database_url=None, broker_url=None))
    assert found.redis_url == "redis://127.0.0.1:6391/0"
    assert found.broker_url == "redis://127.0.0.1:6391/1"
    assert found.database_url == "postgresql+psycopg://postgres@127.0.0.1:5441/vigil"
    assert app_conf.broker_url == "redis://127.0.0.1:6391/1"


def test_nothing_running_leaves_the_defaults(monkeypatch, app_conf):
    monkeypatch.setattr("stack.discovery.answers", lambda url, timeout=1.0: False)
    bare = Settings(redis_url=None, database_url=None, broker_url=None)
    assert common.find_running(bare) is bare
