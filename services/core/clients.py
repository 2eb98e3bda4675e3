"""Per-process clients: one Redis pool and one SQLAlchemy engine per process.

Both are built lazily and dropped after ``fork`` so a prefork child never
shares a socket with its parent.
"""

from __future__ import annotations

import os
import threading
from urllib.parse import quote, urlsplit, urlunsplit

import redis
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

from services.core.settings import DEFAULT_DATABASE_URL, DEFAULT_REDIS_URL, Settings, get_settings

_lock = threading.Lock()
_redis: dict[str, redis.Redis] = {}
_engines: dict[str, Engine] = {}


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
    return _with_password(
        settings.broker_url or settings.redis_url or DEFAULT_REDIS_URL, settings.redis_password
    )


def database_url(settings: Settings) -> str:
    return _with_password(settings.database_url or DEFAULT_DATABASE_URL, settings.database_password)


def get_redis(settings: Settings | None = None) -> redis.Redis:
    """The process-wide client for vigil's state Redis (str responses)."""
    url = redis_url(settings or get_settings())
    client = _redis.get(url)
    if client is None:
        with _lock:
            client = _redis.get(url)
            if client is None:
                client = redis.Redis.from_url(
                    url,
                    decode_responses=True,
                    socket_timeout=10,
                    socket_connect_timeout=5,
                    health_check_interval=30,
                    retry_on_timeout=False,
                )
                _redis[url] = client
    return client


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
