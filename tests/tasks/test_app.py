"""The Celery application's process hooks."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from services.core import health
from services.core.settings import Settings
from stack.processes import RedisServer
from tests.conftest import ROOT

FREEZE_CHECK = """
import gc
from celery.signals import worker_init, worker_process_init, worker_ready
import tasks.app
before = len(gc.get_objects())
worker_init.send(sender=None)
after_init = gc.get_freeze_count()
kept = [[i] for i in range(50_000)]  # lists are always tracked
worker_ready.send(sender=None)
worker_process_init.send(sender=None)
print(before, after_init, gc.get_freeze_count(), len(gc.get_objects()))
"""


def test_a_worker_freezes_what_start_up_built(test_env):
    """worker_init (before the pool forks), worker_ready and worker_process_init
    each move the process's objects out of the collector's reach, so a full
    collection walks only what tasks create."""
    run = subprocess.run(
        [sys.executable, "-c", FREEZE_CHECK],
        env={**os.environ, **test_env},
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    before, after_init, after_ready, still_tracked = map(int, run.stdout.split())
    assert after_init >= 0.9 * before
    assert after_ready >= after_init + 50_000  # what was built after start-up, frozen too
    assert still_tracked < 0.01 * after_ready


def test_a_worker_refuses_a_state_redis_that_evicts_and_health_names_it(
    test_env, migrated, tmp_path
):
    """maxmemory-policy allkeys-lru loses bonds and dedupe state silently: the
    worker exits at start-up naming the setting and the override, and
    ``vigil health`` names it too; with the override the start-up check passes."""
    server = RedisServer(tmp_path / "redis").start()
    try:
        server.client().config_set("maxmemory-policy", "allkeys-lru")
        env = {**os.environ, **test_env, "VIGIL_REDIS_URL": server.url(0)}
        worker = subprocess.run(
            [sys.executable, "-m", "celery", "-A", "tasks", "worker", "-P", "solo"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert worker.returncode != 0
        said = worker.stdout + worker.stderr
        assert "maxmemory-policy allkeys-lru" in said and "VIGIL_REDIS_ALLOW_EVICTION" in said
        health_cli = subprocess.run(
            [sys.executable, "-m", "cli.main", "health", "--json"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        report = json.loads(health_cli.stdout)
        assert health_cli.returncode == 1
        assert any("maxmemory-policy" in p for p in report["redis"]["problems"])
        assert report["redis"]["maxmemory_policy"] == "allkeys-lru"
        allowed = Settings(redis_url=server.url(0), redis_allow_eviction=True)
        assert health.check_redis(allowed)["problems"] == []
    finally:
        server.stop()
