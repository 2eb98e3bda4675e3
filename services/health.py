"""Health checks for broker, state Redis and PostgreSQL."""

from __future__ import annotations

import time
from typing import Any

import redis
from kombu import Connection
from sqlalchemy import text

from services.runtime import broker_url, get_engine, get_redis
from services.settings import Settings


def _timed(check) -> dict[str, Any]:
    started = time.perf_counter()
    try:
        detail = check()
    except Exception as exc:  # a health check reports failures, it does not raise
        return {"ok": False, "error": f"{type(exc).__name__}: {str(exc)[:200]}"}
    return {"ok": True, "ms": round((time.perf_counter() - started) * 1000, 1), **(detail or {})}


def check_redis(settings: Settings) -> dict[str, Any]:
    def run() -> dict[str, Any]:
        client: redis.Redis = get_redis(settings)
        client.ping()
        return {"version": client.info("server").get("redis_version")}

    return _timed(run)


def check_postgres(settings: Settings) -> dict[str, Any]:
    def run() -> dict[str, Any]:
        with get_engine(settings).connect() as conn:
            version = conn.execute(text("SHOW server_version")).scalar()
            head = conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
        return {"version": version, "migration": head}

    return _timed(run)


def check_broker(settings: Settings) -> dict[str, Any]:
    def run() -> None:
        with Connection(broker_url(settings), connect_timeout=5) as conn:
            conn.ensure_connection(max_retries=1)

    return _timed(run)


def store_checks(settings: Settings) -> dict[str, Any]:
    return {
        "broker": check_broker(settings),
        "redis": check_redis(settings),
        "postgres": check_postgres(settings),
    }
