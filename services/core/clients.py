"""Per-process clients: one Redis pool and one SQLAlchemy engine per process.

Both are built lazily and dropped after ``fork`` so a prefork child never
shares a socket with its parent. Every state Redis client is built by
``get_redis``: one Redis from ``VIGIL_REDIS_URL``, or the master that the
sentinels of ``VIGIL_REDIS_SENTINELS`` name (redis-py's ``Sentinel``, which
asks them again after a failover), or a Redis Cluster from the seed nodes of
``VIGIL_REDIS_CLUSTER_NODES`` (redis-py's ``RedisCluster``). A Redis broker behind Sentinel
(``sentinel://`` in ``VIGIL_BROKER_URL``) is reached the same way: kombu is
given ``broker_transport_options``, plain redis-py clients ``broker_redis``.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import redis
from redis.cluster import ClusterNode, RedisCluster
from redis.connection import parse_url
from redis.sentinel import Sentinel
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

from services.core.settings import (
    DEFAULT_DATABASE_URL,
    DEFAULT_REDIS_URL,
    Settings,
    get_settings,
    is_sentinel_url,
    sentinel_url_addresses,
)

_lock = threading.Lock()
_redis: dict[tuple[str | int | None, ...], redis.Redis] = {}

# Every state client's options, on one Redis or behind Sentinel: a dead server
# fails a command within seconds (and the task retries) instead of hanging a slot.
STATE_CLIENT_OPTIONS: dict[str, object] = {
    "decode_responses": True,
    "socket_timeout": 10,
    "socket_connect_timeout": 5,
    "health_check_interval": 30,
    "retry_on_timeout": False,
}
# The sentinels are asked only where the master is; they answer at once or not at all.
SENTINEL_TIMEOUT_S = 2.0
_engines: dict[str, Engine] = {}
# URL schemes of a Redis (one server, or behind Sentinel) in Celery's terms.
REDIS_SCHEMES = frozenset({"redis", "rediss", "unix", "sentinel"})


def _with_password(url: str, password: str | None) -> str:
    if not password:
        return url
    parts = urlsplit(url)
    if parts.password or parts.scheme == "unix":
        return url
    user = quote(parts.username or "", safe="")
    netloc = f"{user}:{quote(password, safe='')}@{parts.hostname}"
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def redis_url(settings: Settings) -> str:
    return _with_password(settings.redis_url or DEFAULT_REDIS_URL, settings.redis_password)


def broker_url(settings: Settings) -> str:
    url = settings.broker_url or settings.redis_url or DEFAULT_REDIS_URL
    if is_sentinel_url(url):
        # kombu reads the master's password and db from the first sentinel:// URL.
        return ";".join(
            _with_password(part.strip(), settings.redis_password) for part in url.split(";")
        )
    return _with_password(url, settings.redis_password)


def broker_transport_options(settings: Settings) -> dict[str, object]:
    """What kombu needs besides the broker URL: behind Sentinel, the master's
    name and how to talk to the sentinels (empty for any other broker)."""
    if not settings.broker_sentinel_addresses:
        return {}
    return {
        "master_name": settings.broker_master_name,
        "sentinel_kwargs": _sentinel_options(settings.broker_sentinels_password),
        # A master that vanished (its machine lost, not its process) never
        # closes its sockets: bound connects and replies, as for the state
        # clients, so acks and reconnects fail over instead of hanging.
        "socket_timeout": STATE_CLIENT_OPTIONS["socket_timeout"],
        "socket_connect_timeout": STATE_CLIENT_OPTIONS["socket_connect_timeout"],
        "socket_keepalive": True,
    }


def broker_redis(
    url: str, transport_options: Mapping[str, Any] | None = None, **options: Any
) -> redis.Redis:
    """A redis-py client on a Redis broker (queue depths, health): the URL's
    server, or behind Sentinel the master the sentinels name, found as kombu
    finds it (``master_name`` and ``sentinel_kwargs`` transport options)."""
    if not is_sentinel_url(url):
        return redis.Redis.from_url(url, **options)
    transport_options = transport_options or {}
    first = parse_url("redis://" + url.split(";", 1)[0].strip()[len("sentinel://") :])
    sentinel = Sentinel(
        sentinel_url_addresses(url, "the broker URL"),
        sentinel_kwargs=transport_options.get("sentinel_kwargs"),
    )
    return sentinel.master_for(
        str(transport_options["master_name"]),
        redis_class=redis.Redis,
        db=int(first.get("db") or 0),
        username=first.get("username"),
        password=first.get("password"),
        **options,
    )


def database_url(settings: Settings) -> str:
    return _with_password(settings.database_url or DEFAULT_DATABASE_URL, settings.database_password)


def master_params(settings: Settings) -> dict[str, str | int | None]:
    """Behind Sentinel or on a cluster, what of ``VIGIL_REDIS_URL`` still applies
    to the master(s): its db number, user name and password
    (``VIGIL_REDIS_PASSWORD`` wins)."""
    parsed = parse_url(redis_url(settings))
    return {
        "db": int(parsed.get("db") or 0),
        "username": parsed.get("username"),
        "password": parsed.get("password"),
    }


def sentinel_kwargs(settings: Settings) -> dict[str, object]:
    """How to talk to the state's sentinels themselves (their own password, if any)."""
    return _sentinel_options(settings.redis_sentinel_password)


def _sentinel_options(password: str | None) -> dict[str, object]:
    options: dict[str, object] = {
        "socket_timeout": SENTINEL_TIMEOUT_S,
        "socket_connect_timeout": SENTINEL_TIMEOUT_S,
    }
    if password:
        options["password"] = password
    return options


def _state_key(settings: Settings) -> tuple[str | int | None, ...]:
    if settings.redis_cluster_nodes:
        master = master_params(settings)
        return ("cluster", settings.redis_cluster_nodes, master["username"], master["password"])
    if not settings.redis_sentinels:
        return ("url", redis_url(settings))
    master = master_params(settings)
    return (
        "sentinel",
        settings.redis_sentinels,
        settings.redis_sentinel_master,
        master["db"],
        master["username"],
        master["password"],
        settings.redis_sentinel_password,
    )


def _state_client(settings: Settings) -> redis.Redis:
    if settings.redis_cluster_nodes:
        # RedisCluster's retries are its own: MOVED and ASK are followed, and a
        # master that stops answering makes it ask the cluster for the new
        # slot map (a task then retries under its backoff, as on one Redis).
        master = master_params(settings)
        return RedisCluster(  # type: ignore[return-value]
            startup_nodes=[ClusterNode(host, port) for host, port in settings.cluster_addresses],
            username=master["username"],
            password=master["password"],
            **STATE_CLIENT_OPTIONS,
        )
    if not settings.redis_sentinels:
        return redis.Redis.from_url(redis_url(settings), **STATE_CLIENT_OPTIONS)
    sentinel = Sentinel(settings.sentinel_addresses, sentinel_kwargs=sentinel_kwargs(settings))
    return sentinel.master_for(
        str(settings.redis_sentinel_master),
        redis_class=redis.Redis,
        **master_params(settings),
        **STATE_CLIENT_OPTIONS,
    )


def get_redis(settings: Settings | None = None) -> redis.Redis:
    """The process-wide client for vigil's state Redis (str responses); the one
    place a state client is built."""
    settings = settings or get_settings()
    key = _state_key(settings)
    client = _redis.get(key)
    if client is None:
        with _lock:
            client = _redis.get(key)
            if client is None:
                client = _state_client(settings)
                _redis[key] = client
    return client


def _url_auth(master: Mapping[str, Any]) -> str:
    """``user:password@`` of ``master_params`` for a URL (empty without a password)."""
    if not master["password"]:
        return ""
    user = quote(str(master["username"] or ""), safe="")
    return f"{user}:{quote(str(master['password']), safe='')}@"


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def result_backend(settings: Settings) -> str:
    """Where Celery keeps the results a sender asks for: ``VIGIL_RESULT_BACKEND``,
    else the state Redis (its master behind Sentinel, through Celery's
    ``sentinel://`` backend). Celery's Redis backends cannot use a cluster: with
    state on one, results go to the broker when it is a Redis (or behind
    Sentinel), else to ``rpc://`` (replies on the broker, to the sender only)."""
    if settings.result_backend:
        return settings.result_backend
    if settings.redis_cluster_nodes:
        url = broker_url(settings)
        return url if urlsplit(url.split(";", 1)[0]).scheme in REDIS_SCHEMES else "rpc://"
    if not settings.redis_sentinels:
        return redis_url(settings)
    master = master_params(settings)
    auth = _url_auth(master)
    return ";".join(
        f"sentinel://{auth}{_url_host(host)}:{port}/{master['db']}"
        for host, port in settings.sentinel_addresses
    )


def result_backend_transport_options(settings: Settings) -> dict[str, object]:
    options: dict[str, object] = {"visibility_timeout": settings.visibility_timeout}
    if settings.result_backend:
        return options
    if settings.redis_cluster_nodes:
        return {**options, **broker_transport_options(settings)}
    if settings.redis_sentinels:
        options["master_name"] = settings.redis_sentinel_master
        options["sentinel_kwargs"] = sentinel_kwargs(settings)
    return options


def configure_results(app: Any, settings: Settings) -> None:
    """Point a sender's Celery app at the results the workers store, before it
    first reads one."""
    app.conf.result_backend = result_backend(settings)
    app.conf.result_backend_transport_options = result_backend_transport_options(settings)


def redbeat_redis(settings: Settings) -> tuple[str, dict[str, object] | None]:
    """celery-redbeat's ``redbeat_redis_url`` and, behind Sentinel or on a
    cluster, its ``redbeat_redis_options`` (redbeat builds its own ``Sentinel``
    or ``RedisCluster`` from them; on a cluster its keys share one hash tag,
    ``celeryconfig.redbeat_key_prefix``)."""
    if settings.redis_cluster_nodes:
        # redbeat's ``cluster`` option: RedisCluster.from_url on one seed node.
        host, port = settings.cluster_addresses[0]
        master = master_params(settings)
        return f"redis://{_url_auth(master)}{_url_host(host)}:{port}/0", {
            "cluster": True,
            "decode_responses": True,
            "socket_timeout": STATE_CLIENT_OPTIONS["socket_timeout"],
        }
    if not settings.redis_sentinels:
        return redis_url(settings), None
    master = master_params(settings)
    options: dict[str, object] = {
        "sentinels": settings.sentinel_addresses,
        "service_name": settings.redis_sentinel_master,
        "db": master["db"],
        "password": master["password"],
        "socket_timeout": STATE_CLIENT_OPTIONS["socket_timeout"],
        "sentinel_kwargs": sentinel_kwargs(settings),
    }
    if master["username"]:
        options["username"] = master["username"]
    return "redis-sentinel://", options


def get_engine(settings: Settings | None = None) -> Engine:
    url = database_url(settings or get_settings())
    engine = _engines.get(url)
    if engine is None:
        with _lock:
            engine = _engines.get(url)
            if engine is None:
                engine = create_engine(
                    url,
                    pool_size=5,
                    max_overflow=5,
                    pool_pre_ping=True,
                    pool_recycle=1800,
                    connect_args={"connect_timeout": 5},
                )
                _set_timeouts(engine)
                _engines[url] = engine
    return engine


def _set_timeouts(engine: Engine) -> None:
    # A stuck lock must fail the task (and retry), not hang a worker slot forever.
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record) -> None:
        with dbapi_conn.cursor() as cur:
            cur.execute("SET lock_timeout = '10s'; SET statement_timeout = '60s'")
        dbapi_conn.commit()


def session_factory(settings: Settings | None = None) -> sessionmaker[Session]:
    return sessionmaker(bind=get_engine(settings), expire_on_commit=False)


def reset_after_fork() -> None:
    """Forget the parent's connections; the child builds its own on first use."""
    for engine in _engines.values():
        engine.dispose(close=False)
    _engines.clear()
    _redis.clear()


def close_all() -> None:
    for client in _redis.values():
        client.close()
    for engine in _engines.values():
        engine.dispose()
    _redis.clear()
    _engines.clear()


os.register_at_fork(after_in_child=reset_after_fork)
