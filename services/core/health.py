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


# The server's limit on a compact hash's entries: listpack since Redis 7.0,
# ziplist before (7.x still answers to the old name as an alias).
COMPACT_HASH_SETTINGS = ("hash-max-listpack-entries", "hash-max-ziplist-entries")


def compact_hash_limit(client: redis.Redis) -> tuple[str, int | None]:
    """The running server's own name for the compact-hash entry limit, and its
    value (None where CONFIG is refused, as on some managed services)."""
    for name in COMPACT_HASH_SETTINGS:
        try:
            value = client.config_get(name).get(name)
        except redis.ResponseError:
            return name, None
        if value is not None:
            return name, int(value)
    return COMPACT_HASH_SETTINGS[0], None


def dedupe_hash_advice(settings: Settings, setting: str, limit: int | None) -> str | None:
    """Why a user's dedupe hash would leave its compact encoding, or None."""
    wanted = settings.dedupe_max_per_user + settings.dedupe_max_per_user // 4
    if limit is None or limit >= wanted:
        return None
    return (
        f"{setting} is {limit}: a user's dedupe hash holds up to {wanted} ids "
        f"(VIGIL_DEDUPE_MAX_PER_USER x 1.25) and takes about 5x the memory past the limit; "
        f"raise {setting} to {wanted} or lower VIGIL_DEDUPE_MAX_PER_USER"
    )


def check_redis(settings: Settings) -> dict[str, Any]:
    def run() -> dict[str, Any]:
        client: redis.Redis = get_redis(settings)
        client.ping()
        detail: dict[str, Any] = {"version": client.info("server").get("redis_version")}
        setting, limit = compact_hash_limit(client)
        advice = dedupe_hash_advice(settings, setting, limit)
        if advice:
            detail["warning"] = advice
        return detail

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
