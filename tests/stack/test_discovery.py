"""Service discovery: configured URLs, the local defaults, else embedded servers."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import redis
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.engine import make_url

from services.core.settings import get_settings
from stack.discovery import (
    ServiceUnavailable,
    app_database_url,
    ensure_database,
    ensure_services,
    migrate,
)
from stack.embedded import port_answers, spare_port

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def data_dir() -> Iterator[Path]:
    path = ROOT / ".vigil" / "test-discovery" / uuid.uuid4().hex[:8]
    path.mkdir(parents=True)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _dead() -> tuple[str, str]:
    """Defaults at which nothing answers: a bare machine, without stopping anything."""
    return (
        f"redis://127.0.0.1:{spare_port()}",
        f"postgresql+psycopg://postgres@127.0.0.1:{spare_port()}/postgres",
    )


def test_configured_url_that_does_not_answer_names_the_setting(tmp_path: Path) -> None:
    dead_redis, _ = _dead()
    with pytest.raises(ServiceUnavailable, match="VIGIL_REDIS_URL"):
        ensure_services(redis_url=dead_redis, database_url=None, data_dir=tmp_path)


def test_configured_database_password_is_not_echoed(tmp_path: Path, service_urls) -> None:
    dead = f"postgresql+psycopg://app:s3cret@127.0.0.1:{spare_port()}/vigil"
    with pytest.raises(ServiceUnavailable, match="VIGIL_DATABASE_URL") as err:
        ensure_services(redis_url=service_urls["redis"], database_url=dead, data_dir=tmp_path)
    assert "s3cret" not in str(err.value)


def test_never_means_no_embedded_servers(tmp_path: Path) -> None:
    dead_redis, dead_pg = _dead()
    with pytest.raises(ServiceUnavailable, match="VIGIL_EMBEDDED=never"):
        ensure_services(
            redis_url=None,
            database_url=None,
            data_dir=tmp_path,
            embedded="never",
            default_redis_url=dead_redis,
            default_database_url=dead_pg,
        )
    assert not (tmp_path / "redis").exists()


def test_answering_defaults_are_used(tmp_path: Path, service_urls) -> None:
    redis_base = service_urls["redis"].rsplit("/", 1)[0]
    found = ensure_services(
        redis_url=None,
        database_url=None,
        data_dir=tmp_path,
        default_redis_url=redis_base,
        default_database_url=service_urls["database_admin"],
    )
    assert found.redis_url == redis_base
    assert found.database_url == service_urls["database_admin"]
    assert found.started == []


def test_defaults_from_the_environment(tmp_path: Path, monkeypatch) -> None:
    dead_redis, dead_pg = _dead()
    monkeypatch.setenv("VIGIL_DEFAULT_REDIS_URL", dead_redis)
    monkeypatch.setenv("VIGIL_DEFAULT_DATABASE_URL", dead_pg)
    get_settings.cache_clear()  # the defaults are settings, read once
    try:
        with pytest.raises(ServiceUnavailable, match=dead_redis):
            ensure_services(redis_url=None, database_url=None, data_dir=tmp_path, embedded="never")
    finally:
        get_settings.cache_clear()


def test_bare_machine_starts_embedded_servers_then_stops_them(data_dir: Path) -> None:
    dead_redis, dead_pg = _dead()
    redis_port, pg_port = spare_port(), spare_port()
    found = ensure_services(
        redis_url=None,
        database_url=None,
        data_dir=data_dir,
        default_redis_url=dead_redis,
        default_database_url=dead_pg,
        redis_port=redis_port,
        postgres_port=pg_port,
    )
    try:
        assert found.redis_url == f"redis://127.0.0.1:{redis_port}"
        assert make_url(found.database_url).port == pg_port
        assert make_url(found.database_url).database == "postgres"
        assert len(found.started) == 2

        client = redis.Redis.from_url(f"{found.redis_url}/0")
        assert client.ping()
        client.close()

        app_url = app_database_url(found.database_url)
        assert ensure_database(app_url) is True
        assert ensure_database(app_url) is False
        migrate(app_url)
        engine = create_engine(app_url)
        try:
            assert "alembic_version" in inspect(engine).get_table_names()
        finally:
            engine.dispose()

        # A second resolution adopts the running servers and owns none of them.
        again = ensure_services(
            redis_url=None,
            database_url=None,
            data_dir=data_dir,
            default_redis_url=dead_redis,
            default_database_url=dead_pg,
            redis_port=redis_port,
            postgres_port=pg_port,
        )
        assert again.started == []
        assert again.redis_url == found.redis_url
    finally:
        found.stop_started()
    assert not port_answers(redis_port)
    assert not port_answers(pg_port)


def test_always_starts_embedded_even_when_defaults_answer(data_dir: Path, service_urls) -> None:
    redis_port, pg_port = spare_port(), spare_port()
    found = ensure_services(
        redis_url=None,
        database_url=None,
        data_dir=data_dir,
        embedded="always",
        default_redis_url=service_urls["redis"].rsplit("/", 1)[0],
        default_database_url=service_urls["database_admin"],
        redis_port=redis_port,
        postgres_port=pg_port,
    )
    try:
        assert found.redis_url.endswith(f":{redis_port}")
        with psycopg.connect(host="127.0.0.1", port=pg_port, user="postgres") as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
    finally:
        found.stop_started()


def test_ensure_database_on_the_test_server(service_urls) -> None:
    name = f"vigil_probe_{uuid.uuid4().hex[:8]}"
    url = make_url(service_urls["database_admin"]).set(database=name)
    rendered = url.render_as_string(hide_password=False)
    admin = create_engine(service_urls["database_admin"], isolation_level="AUTOCOMMIT")
    try:
        assert ensure_database(rendered) is True
        assert ensure_database(rendered) is False
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
        admin.dispose()
