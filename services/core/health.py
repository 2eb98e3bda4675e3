"""Health checks for broker, state Redis and PostgreSQL."""

from __future__ import annotations

import time
from typing import Any

import redis
from kombu import Connection
from sqlalchemy import text

from services.core.clients import broker_url, get_engine, get_redis
from services.core.settings import Settings

REDIS_AUTH_HINT = (
    "authentication failed: check VIGIL_REDIS_PASSWORD (or VIGIL_REDIS_PASSWORD_FILE) "
    "and any password in VIGIL_REDIS_URL / VIGIL_BROKER_URL"
)
DATABASE_AUTH_HINT = (
    "authentication failed: check VIGIL_DATABASE_PASSWORD (or VIGIL_DATABASE_PASSWORD_FILE) "
    "and any password in VIGIL_DATABASE_URL"
)
_AUTH_WORDS = ("authentication", "invalid username-password", "noauth", "wrongpass")


def _is_auth_error(exc: BaseException) -> bool:
    # kombu wraps redis-py's AuthenticationError in its own OperationalError.
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, redis.AuthenticationError):
            return True
        seen = seen.__cause__ or seen.__context__
    return any(word in str(exc).lower() for word in _AUTH_WORDS)


def _timed(check, auth_hint: str | None = None) -> dict[str, Any]:
    started = time.perf_counter()
    try:
        detail = check()
    except Exception as exc:  # a health check reports failures, it does not raise
        error = f"{type(exc).__name__}: {str(exc)[:200]}"
        if auth_hint and _is_auth_error(exc):
            # Name the setting to fix, not just the server's complaint.
            error = f"{auth_hint} ({error})"
        return {"ok": False, "error": error}
    return {"ok": True, "ms": round((time.perf_counter() - started) * 1000, 1), **(detail or {})}


def check_redis(settings: Settings) -> dict[str, Any]:
    def run() -> dict[str, Any]:
        client: redis.Redis = get_redis(settings)
        client.ping()
        return {"version": client.info("server").get("redis_version")}

    return _timed(run, REDIS_AUTH_HINT)


def check_postgres(settings: Settings) -> dict[str, Any]:
    def run() -> dict[str, Any]:
        with get_engine(settings).connect() as conn:
            version = conn.execute(text("SHOW server_version")).scalar()
            head = conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
        return {"version": version, "migration": head}

    return _timed(run, DATABASE_AUTH_HINT)


def check_broker(settings: Settings) -> dict[str, Any]:
    def run() -> None:
        with Connection(broker_url(settings), connect_timeout=5) as conn:
            conn.ensure_connection(max_retries=1)

    return _timed(run, REDIS_AUTH_HINT)


def store_checks(settings: Settings) -> dict[str, Any]:
    return {
        "broker": check_broker(settings),
        "redis": check_redis(settings),
        "postgres": check_postgres(settings),
    }
