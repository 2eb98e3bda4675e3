"""``vigil health``, ``schema export``, ``migrate``, ``flower``, ``up``, and exit code 3."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from datetime import UTC, datetime

import pytest
import redis
from redbeat.decoder import RedBeatJSONEncoder

from services.core import health
from services.core.settings import get_settings
from tasks import contract


@pytest.fixture
def env_override(test_env) -> Iterator[Callable[..., None]]:
    """Change VIGIL_* variables for one test; the settings cache follows."""
    saved: dict[str, str | None] = {}

    def set_env(**values: str) -> None:
        for key, value in values.items():
            saved.setdefault(key, os.environ.get(key))
            os.environ[key] = value
        get_settings.cache_clear()

    yield set_env
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    get_settings.cache_clear()


def test_health_reports_stores_workers_and_beat(vigil, state_redis, db, settings, worker):
    last = datetime(2026, 11, 22, 9, 30, tzinfo=UTC)
    state_redis.hset(
        f"{settings.vigil_prefix}redbeat:correlate-multi-actor",
        "meta",
        json.dumps({"last_run_at": last, "total_run_count": 3}, cls=RedBeatJSONEncoder),
    )
    report = vigil.json("health")
    assert all(report[k]["ok"] for k in ("broker", "redis", "postgres", "workers"))
    assert worker.node in report["workers"]["nodes"]
    runs = report["beat"]["last_runs"]
    assert datetime.fromisoformat(runs["correlate-multi-actor"]) == last
    assert runs["reset-daily-caps"] is None
    out = vigil("health").stdout
    assert "correlate-multi-actor" in out and "not run yet" in out


def test_unreachable_stores_exit_3(vigil, env_override, db):
    env_override(VIGIL_REDIS_URL="redis://127.0.0.1:1/0")
    result = vigil("bond", "show", "501", code=3)
    assert "unreachable" in result.stderr and "Redis" in result.stderr
    assert vigil.json("health", code=3)["redis"]["ok"] is False
    env_override(
        VIGIL_REDIS_URL=os.environ["VIGIL_BROKER_URL"],
        VIGIL_DATABASE_URL="postgresql+psycopg://postgres@127.0.0.1:1/nope",
    )
    assert "PostgreSQL" in vigil("deadletters", "list", code=3).stderr


def test_schema_export(vigil, tmp_path):
    out = json.loads(vigil("schema", "export", str(tmp_path)).stdout)
    written = sorted(os.path.relpath(p, tmp_path) for p in out["written"])
    streams = ["attribution.v1.json", "bond.v1.json", "user.v1.json"]
    tasks = sorted(f"tasks/{name}.json" for name in contract.TASKS)
    assert written == sorted(streams + tasks)
    assert json.loads((tmp_path / "bond.v1.json").read_text())["$id"].startswith("urn:vigil")
    message = json.loads((tmp_path / "tasks" / "vigil.ingest.message.json").read_text())
    assert message["$id"] == "urn:vigil:task:vigil.ingest.message" and message["examples"]


def test_migrate_is_idempotent(vigil, db):
    assert json.loads(vigil("migrate").stdout) == {
        "status": "ok",
        "created_database": False,
        "revision": "head",
    }


def test_flower_refuses_an_open_public_flower(vigil, env_override):
    env_override(VIGIL_FLOWER_ADDRESS="0.0.0.0")
    assert "loopback" in vigil("flower", "--local-only", code=1).stderr


def test_up_runs_the_stack_and_the_demo(vigil, state_redis, db, env_override, tmp_path):
    from stack.embedded import spare_port

    env_override(VIGIL_FLOWER_PORT=str(spare_port()), VIGIL_DATA_DIR=str(tmp_path))
    out = vigil(
        "up", "--exit-after-demo", "--users", "6", "--messages", "30", "--flower-local-only"
    ).stdout
    assert "messages sent" in out and "vigil tail bond" in out
    assert (tmp_path / "logs" / "worker.log").exists()


def test_health_names_the_compact_hash_setting_the_server_has(state_redis, settings):
    """The advice names the running server's own setting (listpack on Redis 7,
    ziplist on 6.2), and appears only when the limit is too small."""
    setting, limit = health.compact_hash_limit(state_redis)
    version = int(state_redis.info("server")["redis_version"].split(".")[0])
    assert setting == ("hash-max-listpack-entries" if version >= 7 else "hash-max-ziplist-entries")
    assert limit is not None and health.dedupe_hash_advice(settings, setting, limit) is None
    try:
        state_redis.config_set(setting, 16)
    except redis.ResponseError:
        pytest.skip("this Redis refuses CONFIG SET")
    try:
        assert any(setting in w for w in health.check_redis(settings)["warnings"])
    finally:
        state_redis.config_set(setting, limit)
