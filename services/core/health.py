"""Health checks for broker, state Redis and PostgreSQL."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import redis
from kombu import Connection
from redis.cluster import RedisCluster
from sqlalchemy import text

from services.core import declarations
from services.core.clients import (
    broker_redis,
    broker_transport_options,
    broker_url,
    get_engine,
    get_redis,
)
from services.core.scan import master_clients
from services.core.settings import Settings
from vigil_client import names

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
        refused = bool(auth_hint) and _is_auth_error(exc)
        if refused:
            # Name the setting to fix, not just the server's complaint.
            error = f"{auth_hint} ({error})"
        # auth_failed: a wrong password never heals by retrying (workers stop on it).
        return {"ok": False, "error": error, "auth_failed": refused}
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


@dataclass(frozen=True)
class RedisDurability:
    """What the state Redis does with vigil's data under memory pressure and on
    a restart, read from INFO (which managed services answer even where they
    refuse CONFIG)."""

    maxmemory_policy: str | None
    aof: bool | None
    rdb_snapshots: bool | None  # None: CONFIG GET save refused

    @property
    def evicts(self) -> bool:
        return self.maxmemory_policy not in (None, "noeviction")

    @property
    def keeps_nothing_on_disk(self) -> bool:
        return self.aof is False and self.rdb_snapshots is False


def redis_durability(client: redis.Redis | RedisCluster) -> RedisDurability:
    """The state Redis's durability; on a cluster, its worst master's (one that
    evicts, else one that keeps nothing on disk)."""
    found = []
    for master in master_clients(client):
        pipe = master.pipeline(transaction=False)
        durability_reads(pipe)
        found.append(durability_from(*pipe.execute(raise_on_error=False)))
    return min(found, key=lambda d: (not d.evicts, not d.keeps_nothing_on_disk))


def durability_reads(pipe: redis.client.Pipeline) -> None:
    """Queue the three reads ``durability_from`` takes, in its order."""
    pipe.info("memory")
    pipe.info("persistence")
    pipe.config_get("save")


def durability_from(memory: Any, persistence: Any, save: Any) -> RedisDurability:
    """From INFO memory, INFO persistence and CONFIG GET save (an error where
    CONFIG is refused)."""
    for reply in (memory, persistence):
        if isinstance(reply, Exception):
            raise reply
    snapshots = None if isinstance(save, Exception) else bool(str(save.get("save") or "").strip())
    aof = persistence.get("aof_enabled")
    return RedisDurability(
        maxmemory_policy=memory.get("maxmemory_policy"),
        aof=None if aof is None else bool(int(aof)),
        rdb_snapshots=snapshots,
    )


def eviction_problem(settings: Settings, durability: RedisDurability) -> str | None:
    """Why vigil refuses this state Redis, or None."""
    if not durability.evicts or settings.redis_allow_eviction:
        return None
    return (
        f"the state Redis has maxmemory-policy {durability.maxmemory_policy}: under memory "
        "pressure it deletes bonds, caps and dedupe state, and messages count twice. Set "
        "maxmemory-policy noeviction (redis.conf, or CONFIG SET maxmemory-policy noeviction), "
        "or set VIGIL_REDIS_ALLOW_EVICTION=1 to run with it anyway"
    )


def persistence_warning(durability: RedisDurability) -> str | None:
    if not durability.keeps_nothing_on_disk:
        return None
    return (
        "the state Redis keeps nothing on disk: a restart loses every bond, cap, history and "
        "envelope; turn on appendonly yes with appendfsync everysec"
    )


def check_redis(settings: Settings) -> dict[str, Any]:
    """Reachable, its version, and what is wrong with its configuration:
    ``problems`` (vigil refuses to run on it) and ``warnings``."""

    def run() -> dict[str, Any]:
        client = get_redis(settings)
        masters = master_clients(client)
        for master in masters:
            master.ping()
        durability = redis_durability(client)
        setting, limit = compact_hash_limit(masters[0])
        problems = [p for p in (eviction_problem(settings, durability),) if p]
        warnings = [
            w
            for w in (
                persistence_warning(durability),
                dedupe_hash_advice(settings, setting, limit),
            )
            if w
        ]
        found = {}
        if settings.redis_sentinels:
            host, port = client.connection_pool.get_master_address()
            found["sentinel_master"] = f"{host}:{port}"
        if settings.redis_cluster_nodes:
            found["cluster_masters"] = len(masters)
        return {
            "topology": settings.state_topology,
            **found,
            "version": masters[0].info("server").get("redis_version"),
            "maxmemory_policy": durability.maxmemory_policy,
            "problems": problems,
            "warnings": warnings,
        }

    return _timed(run, REDIS_AUTH_HINT)


def check_postgres(settings: Settings) -> dict[str, Any]:
    def run() -> dict[str, Any]:
        with get_engine(settings).connect() as conn:
            version = conn.execute(text("SHOW server_version")).scalar()
            head = conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
        return {"version": version, "migration": head}

    return _timed(run, DATABASE_AUTH_HINT)


def check_broker(settings: Settings) -> dict[str, Any]:
    """Reachable and, on RabbitMQ, ``problems``: a vigil queue the vhost holds
    in a form the workers cannot consume (probed, nothing declared). Behind
    Sentinel, reached through the sentinels as workers reach it, and
    ``sentinel_master`` names the master they chose."""

    def run() -> dict[str, Any] | None:
        url, options = broker_url(settings), broker_transport_options(settings)
        if settings.broker_sentinel_addresses:
            return _sentinel_broker(url, options)
        with Connection(url, connect_timeout=5, transport_options=options) as conn:
            conn.ensure_connection(max_retries=1)
            if conn.transport.driver_type != "amqp":
                return None
            found = declarations.probe(conn, names.QUEUES)
            return {"problems": [f.problem for f in found if f.problem]}

    return _timed(run, REDIS_AUTH_HINT)


def _sentinel_broker(url: str, options: dict[str, Any]) -> dict[str, Any]:
    client = broker_redis(url, options, socket_timeout=5, socket_connect_timeout=5)
    try:
        client.ping()
        host, port = client.connection_pool.get_master_address()
        role = client.info("replication").get("role")
    finally:
        client.close()
    problems = [] if role == "master" else [f"the master the sentinels name answers as {role}"]
    return {"sentinel_master": f"{host}:{port}", "problems": problems}


def store_checks(settings: Settings) -> dict[str, Any]:
    return {
        "broker": check_broker(settings),
        "redis": check_redis(settings),
        "postgres": check_postgres(settings),
    }
