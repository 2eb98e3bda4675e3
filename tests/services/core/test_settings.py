"""Settings: env prefix, secret files, URL checks that name the setting."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from services.core.clients import redis_url
from services.core.settings import Settings

ROOT = Path(__file__).resolve().parents[3]


def test_env_prefix_and_tls_urls(monkeypatch):
    monkeypatch.setenv("VIGIL_REDIS_URL", "rediss://cache.example:6380/2")
    monkeypatch.setenv("VIGIL_DATABASE_URL", "postgresql://u@db.example/vigil?sslmode=require")
    s = Settings()
    assert s.redis_url == "rediss://cache.example:6380/2"
    assert s.database_url.startswith("postgresql+psycopg://")


def test_secret_from_file(monkeypatch, tmp_path):
    secret = tmp_path / "redis_password"
    secret.write_text("s3cret\n")
    monkeypatch.setenv("VIGIL_REDIS_PASSWORD_FILE", str(secret))
    monkeypatch.setenv("VIGIL_REDIS_URL", "redis://127.0.0.1:6379/0")
    s = Settings()
    assert s.redis_password == "s3cret"
    assert "s3cret" not in repr(s)
    assert redis_url(s) == "redis://:s3cret@127.0.0.1:6379/0"


@pytest.mark.parametrize(
    ("env", "value"),
    [
        ("VIGIL_REDIS_URL", "http://127.0.0.1:6379"),
        ("VIGIL_DATABASE_URL", "mysql://root@127.0.0.1/x"),
        ("VIGIL_HISTORY_MIN_SEVERITY", "loud"),
        ("VIGIL_BOND_PREFIX", "abl*"),
    ],
)
def test_invalid_settings_name_the_setting(monkeypatch, env, value):
    monkeypatch.setenv(env, value)
    with pytest.raises(ValidationError) as err:
        Settings()
    assert env.removeprefix("VIGIL_").lower() in str(err.value).lower()


def test_missing_secret_file_names_the_variable(monkeypatch, tmp_path):
    monkeypatch.setenv("VIGIL_DATABASE_PASSWORD_FILE", str(tmp_path / "nope"))
    with pytest.raises(ValidationError, match="VIGIL_DATABASE_PASSWORD_FILE"):
        Settings()


def test_worker_refuses_to_start_on_invalid_settings():
    proc = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "tasks", "worker", "--pool", "solo"],
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", "VIGIL_REDIS_URL": "ftp://nowhere"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0
    assert "redis_url" in (proc.stdout + proc.stderr).lower()


def test_shipped_delivery_settings_hold_the_bounds(monkeypatch):
    """Defaults (no env): a killed worker's tasks come back within 120 s on a
    Redis broker, and nothing running or waiting to retry outlives the
    visibility timeout (which would deliver it twice)."""
    for name in list(os.environ):
        if name.startswith("VIGIL_"):
            monkeypatch.delenv(name)
    s = Settings()
    assert s.redelivery_bound_s <= 120
    assert s.dead_worker_redelivery_bound_s <= 20
    assert s.unacked_restore_period_s <= 10
    assert s.unacked_mutex_expire < s.visibility_timeout
    assert s.task_soft_time_limit < s.task_time_limit
    assert s.task_time_limit + s.retry_backoff_max <= s.visibility_timeout


def test_celeryconfig_uses_the_delivery_settings():
    """What the worker is configured with is what the settings checked."""
    import celeryconfig

    s = Settings()
    if celeryconfig.broker_url.startswith(("amqp", "pyamqp")):
        pytest.skip("the Redis options apply to a Redis broker only")
    options = celeryconfig.broker_transport_options
    assert options["visibility_timeout"] == s.visibility_timeout
    assert options["unacked_restore_interval"] * options["unacked_restore_throttle"] == (
        s.unacked_restore_period_s
    )
    assert options["unacked_mutex_expire"] == s.unacked_mutex_expire
    assert options["vigil_heartbeat_interval"] == s.broker_heartbeat_interval
    assert options["vigil_owner_timeout"] == s.broker_owner_timeout
    assert celeryconfig.task_time_limit == s.task_time_limit
    assert celeryconfig.task_default_delivery_mode == "persistent"


def test_every_task_time_limit_fits_under_the_visibility_timeout():
    from tasks.app import app
    from worker.base import VigilTask

    s = Settings()
    for name, task in app.tasks.items():
        if not name.startswith("vigil."):
            continue
        limit = task.time_limit or s.task_time_limit
        assert limit + s.retry_backoff_max <= s.visibility_timeout, name
        if isinstance(task, VigilTask):
            assert task.retry_backoff_max <= s.retry_backoff_max, name


EFFECTIVE_LIMITS = """
import json
import celeryconfig
from tasks.app import app
conf = (celeryconfig.task_time_limit, celeryconfig.task_soft_time_limit)
print(json.dumps({
    name: [task.time_limit or conf[0], task.soft_time_limit or conf[1], task.retry_backoff_max]
    for name, task in app.tasks.items() if name.startswith("vigil.")
}))
"""


def test_the_settings_govern_every_tasks_time_limits_and_backoff(test_env):
    """Lowered limits reach every task, buffered ones included: no task keeps
    a literal of its own that the settings check does not see."""
    env = {
        **os.environ,
        **test_env,
        "VIGIL_TASK_TIME_LIMIT": "20",
        "VIGIL_TASK_SOFT_TIME_LIMIT": "15",
        "VIGIL_RETRY_BACKOFF_MAX": "10",
        "VIGIL_VISIBILITY_TIMEOUT": "40",
    }
    run = subprocess.run(
        [sys.executable, "-c", EFFECTIVE_LIMITS],
        cwd=Path(__file__).resolve().parents[3],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    limits = json.loads(run.stdout.strip().splitlines()[-1])
    assert limits and all(value == [20, 15, 10] for value in limits.values()), limits


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"VIGIL_VISIBILITY_TIMEOUT": "50"}, "VIGIL_TASK_TIME_LIMIT"),
        ({"VIGIL_RETRY_BACKOFF_MAX": "120"}, "VIGIL_RETRY_BACKOFF_MAX"),
        ({"VIGIL_TASK_TIME_LIMIT": "80"}, "VIGIL_RETRY_BACKOFF_MAX"),
        ({"VIGIL_UNACKED_MUTEX_EXPIRE": "600"}, "VIGIL_UNACKED_MUTEX_EXPIRE"),
        ({"VIGIL_TASK_SOFT_TIME_LIMIT": "60"}, "VIGIL_TASK_SOFT_TIME_LIMIT"),
    ],
)
def test_delivery_limits_over_the_visibility_timeout_name_the_setting(monkeypatch, env, named):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError) as err:
        Settings()
    assert named in str(err.value)
    assert "VIGIL_VISIBILITY_TIMEOUT" in str(err.value) or "SOFT" in named


def test_owner_timeout_must_outlast_three_heartbeats():
    """One late heartbeat must not get a live worker's tasks delivered again."""
    with pytest.raises(ValidationError, match="VIGIL_BROKER_OWNER_TIMEOUT"):
        Settings(broker_heartbeat_interval=5, broker_owner_timeout=10)
    assert Settings(broker_heartbeat_interval=2, broker_owner_timeout=6).broker_owner_timeout == 6
