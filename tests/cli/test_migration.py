"""``vigil migrate-state``: from the test Redis into the test cluster."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from cli.main import app
from services.core import clients, keys
from services.core.scan import master_clients
from services.core.settings import Settings, get_settings
from services.envelopes import streams
from services.migration.service import progress_key


@pytest.fixture
def on_cluster(cluster_setup, test_env, monkeypatch) -> Iterator[Settings]:
    """The CLI's settings name the cluster (emptied) as the state."""
    monkeypatch.setenv("VIGIL_REDIS_CLUSTER_NODES", cluster_setup.nodes_setting)
    get_settings.cache_clear()
    cluster = get_settings()
    for master in master_clients(clients.get_redis(cluster)):
        master.flushdb()
    yield cluster
    monkeypatch.undo()
    get_settings.cache_clear()


@pytest.fixture
def source(state_redis, settings):
    """A few keys of each kind in the seed layout."""
    for user in ("501", "502", "503"):
        state_redis.set(keys.bond(settings, user), f'{{"user_id": "{user}"}}')
        state_redis.zadd(keys.history(settings, None, user), {"{}": 1})
        state_redis.expire(keys.history(settings, None, user), 3600)
    state_redis.hset(keys.metrics(settings), mapping={"messages:accepted": 7})
    state_redis.xadd(streams.stream_key(settings, "bond"), {"data": "{}"})
    state_redis.hset(f"{settings.vigil_prefix}redbeat:reset-daily-caps", "meta", "{}")
    return state_redis


def test_copies_and_verifies(vigil, test_env, source, on_cluster):
    url = test_env["VIGIL_REDIS_URL"]
    report = vigil.json("migrate-state", "--from-url", url, "--yes")
    assert report["status"] == "ok" and report["copied"]["bond"] == 3
    assert report["not_copied"]["redbeat"] == 1
    assert all(check["ok"] for check in report["checks"])
    out = vigil("migrate-state", "--from-url", url, "--verify-only").stdout
    assert "every count matches" in out and "501" not in out
    out = vigil("migrate-state", "--from-url", url, "--yes").stdout
    assert "already added by an earlier run" in out and "beat recreates it" in out
    target = clients.get_redis(on_cluster)
    assert target.ttl(keys.history(on_cluster, None, "501")) > 3500
    target.delete(keys.bond(on_cluster, "502"))
    result = vigil("migrate-state", "--from-url", url, "--verify-only", code=1)
    assert "counts differ" in result.stdout


def test_asks_first_naming_what_to_stop(vigil, test_env, source, on_cluster):
    result = vigil.runner.invoke(
        app, ["migrate-state", "--from-url", test_env["VIGIL_REDIS_URL"]], input="n\n"
    )
    assert result.exit_code == 1
    assert "every vigil worker and beat" in result.stderr and "Aborted" in result.stderr
    assert not clients.get_redis(on_cluster).exists(progress_key(on_cluster))


def test_refused_without_a_cluster(vigil, test_env, source):
    result = vigil("migrate-state", "--from-url", test_env["VIGIL_REDIS_URL"], "--yes", code=2)
    assert "VIGIL_REDIS_CLUSTER_NODES" in result.stderr
