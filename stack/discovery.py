"""Find Redis and PostgreSQL: configured, else the defaults, else embedded ones.

A configured URL is a promise: when it does not answer, vigil stops with an
error naming the setting rather than quietly starting something else. Only
when nothing is configured and nothing answers on the usual local ports does
vigil start embedded servers (unless told ``embedded="never"``).
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol
from urllib.parse import urlsplit

from alembic.config import Config
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from alembic import command
from services.core.settings import get_settings
from stack.embedded import EmbeddedPostgres, EmbeddedRedis

ROOT = Path(__file__).resolve().parents[1]

Embedded = Literal["auto", "never", "always"]


class Stoppable(Protocol):
    url: str

    def stop(self) -> None: ...


class ServiceUnavailable(RuntimeError):
    """A configured (or required) service does not answer."""


@dataclass
class Found:
    """Base Redis URL (no db number), PostgreSQL server URL, and what was started.

    ``started`` lists the embedded servers this call started (not the ones it
    found already running), so whoever called it knows what to stop."""

    redis_url: str
    database_url: str
    started: list[Stoppable] = field(default_factory=list)

    def stop_started(self) -> None:
        for service in reversed(self.started):
            service.stop()
        self.started.clear()


def answers(url: str, timeout: float = 1.0) -> bool:
    """True when something accepts a connection at the URL's host and port."""
    parts = urlsplit(url)
    if parts.scheme in ("unix", "redis+socket"):
        return Path(parts.path).exists()
    default_port = 6379 if parts.scheme.startswith("redis") else 5432
    try:
        with socket.create_connection(
            (parts.hostname or "127.0.0.1", parts.port or default_port), timeout
        ):
            return True
    except OSError:
        return False


def _redact(url: str) -> str:
    parts = urlsplit(url)
    if parts.password:
        return url.replace(f":{parts.password}@", ":***@", 1)
    return url


def ensure_services(
    *,
    redis_url: str | None,
    database_url: str | None,
    data_dir: Path,
    embedded: Embedded | str = "auto",
    default_redis_url: str | None = None,
    default_database_url: str | None = None,
    redis_port: int | None = None,
    postgres_port: int | None = None,
) -> Found:
    """Resolve both services, starting embedded ones where allowed and needed.

    Where "the usual local servers" are and which ports embedded ones take come
    from the settings (``VIGIL_DEFAULT_REDIS_URL``, ``VIGIL_EMBEDDED_REDIS_PORT``,
    ...) unless given here."""
    settings = get_settings()
    if embedded not in ("auto", "never", "always"):
        raise ValueError(f"VIGIL_EMBEDDED must be auto, never or always, not {embedded!r}")
    found = Found("", "")
    try:
        found.redis_url = _resolve(
            "Redis",
            "VIGIL_REDIS_URL",
            redis_url,
            default_redis_url or settings.default_redis_url,
            embedded,
            lambda: _start_redis(data_dir, redis_port or settings.embedded_redis_port),
            found,
        )
        found.database_url = _resolve(
            "PostgreSQL",
            "VIGIL_DATABASE_URL",
            database_url,
            default_database_url or settings.default_database_url,
            embedded,
            lambda: _start_postgres(data_dir, postgres_port or settings.embedded_postgres_port),
            found,
        )
    except BaseException:
        found.stop_started()
        raise
    return found


def _resolve(name, setting, configured, default, embedded, start, found: Found) -> str:
    if configured:
        if not answers(configured):
            raise ServiceUnavailable(
                f"{name} does not answer at {_redact(configured)} (from {setting}); "
                f"start it, fix {setting}, or unset it to use a local or embedded {name}"
            )
        return configured
    if embedded != "always" and answers(default):
        return default
    if embedded == "never":
        raise ServiceUnavailable(
            f"{name} does not answer at {_redact(default)} and embedded services are off "
            f"(VIGIL_EMBEDDED=never); set {setting} or allow embedded services"
        )
    service, started = start()
    if started:
        found.started.append(service)
    return service.url


def _start_redis(data_dir: Path, port: int):
    server = EmbeddedRedis(Path(data_dir), port)
    server.start()
    return server, server.started


def _start_postgres(data_dir: Path, port: int):
    server = EmbeddedPostgres(Path(data_dir), port)
    server.start()
    return server, server.started


def ensure_database(database_url: str) -> bool:
    """Create the URL's database when missing; True when it was created.

    Connects to the server's ``postgres`` database to do so, which needs the
    CREATEDB privilege; a managed database that already exists needs none."""
    url = make_url(database_url).set(drivername="postgresql+psycopg")
    name = url.database or "vigil"
    engine = create_engine(
        url.set(database="postgres"),
        isolation_level="AUTOCOMMIT",
        connect_args={"connect_timeout": 5},
    )
    try:
        with engine.connect() as conn:
            exists = conn.execute(
                text("SELECT 1 FROM pg_database WHERE datname = :name"), {"name": name}
            ).scalar()
            if exists:
                return False
            quoted = conn.dialect.identifier_preparer.quote(name)
            conn.execute(text(f"CREATE DATABASE {quoted}"))
            return True
    finally:
        engine.dispose()


def migrate(database_url: str, revision: str = "head") -> None:
    """``alembic upgrade`` with the repository's alembic.ini, on the given URL."""
    cfg = Config(str(ROOT / "alembic.ini"))
    cfg.set_main_option("script_location", str(ROOT / "alembic"))
    cfg.attributes["url"] = database_url
    cfg.attributes["configure_logging"] = False
    command.upgrade(cfg, revision)


def app_database_url(server_url: str, name: str = "vigil") -> str:
    """The application database on the server a discovered URL points at."""
    url = make_url(server_url).set(drivername="postgresql+psycopg", database=name)
    return url.render_as_string(hide_password=False)
