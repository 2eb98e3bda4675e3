"""Test harness: real Redis, real PostgreSQL (migrated once with Alembic) and a
real Celery worker process.

Services come from ``VIGIL_TEST_REDIS_URL`` / ``VIGIL_TEST_DATABASE_URL`` when
set, else the defaults on 127.0.0.1, else embedded ones started for the run.
"""

from __future__ import annotations

import gc
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest
import redis
from alembic.config import Config
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from alembic import command
from stack.processes import RedisServer, WorkerProcess
from stack.topologies import ClusterSetup, SentinelSetup, free_ports

ROOT = Path(__file__).resolve().parents[1]
# Overridable so two test runs on one machine do not share a database.
TEST_DB = os.environ.get("VIGIL_TEST_PG_DB", "vigil_test")
STATE_DB = int(os.environ.get("VIGIL_TEST_STATE_DB", "15"))
BROKER_DB = int(os.environ.get("VIGIL_TEST_BROKER_DB", "14"))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Quick tests first, then the slow ones (benchmark smoke runs), then the
    fault-injection suite: a run shows steady progress and fails fast."""

    def weight(item: pytest.Item) -> int:
        if item.get_closest_marker("faults"):
            return 2
        return 1 if item.get_closest_marker("slow") else 0

    items.sort(key=weight)  # stable: file order within each group


def _resolve_services():
    """Redis and PostgreSQL for the run: configured, the defaults, or embedded."""
    from stack.discovery import ensure_services

    return ensure_services(
        redis_url=os.environ.get("VIGIL_TEST_REDIS_URL"),
        database_url=os.environ.get("VIGIL_TEST_DATABASE_URL"),
        data_dir=ROOT / ".vigil" / "test-services",
    )


@pytest.fixture(scope="session")
def service_urls() -> Iterator[dict[str, str]]:
    found = _resolve_services()
    redis_base, pg_url = found.redis_url, found.database_url
    redis_base = redis_base.rsplit("/", 1)[0] if redis_base.count("/") > 2 else redis_base
    pg = make_url(pg_url).set(drivername="postgresql+psycopg")
    admin = create_engine(pg.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(
            text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :d"),
            {"d": TEST_DB},
        )
        conn.execute(text(f'DROP DATABASE IF EXISTS "{TEST_DB}"'))
        conn.execute(text(f'CREATE DATABASE "{TEST_DB}"'))
    admin.dispose()
    urls = {
        "redis": f"{redis_base}/{STATE_DB}",
        "broker": f"{redis_base}/{BROKER_DB}",
        "database": pg.set(database=TEST_DB).render_as_string(hide_password=False),
        "database_admin": pg.set(database="postgres").render_as_string(hide_password=False),
    }
    yield urls
    from services.core.clients import close_all

    # Results the tests waited on unsubscribe from their answers when they are
    # collected: collect them now, while the Redis they talk to still runs.
    gc.collect()
    close_all()
    found.stop_started()  # embedded servers this run started, if any


@pytest.fixture(scope="session")
def test_env(service_urls: dict[str, str], tmp_path_factory) -> dict[str, str]:
    """Environment for this process and every worker the tests start."""
    env = {
        "VIGIL_REDIS_URL": service_urls["redis"],
        "VIGIL_BROKER_URL": service_urls["broker"],
        "VIGIL_DATABASE_URL": service_urls["database"],
        "VIGIL_EMBEDDED": "never",
        "VIGIL_DATA_DIR": str(tmp_path_factory.mktemp("vigil-data")),
    }
    os.environ.update(env)
    from services.core.settings import get_settings

    get_settings.cache_clear()
    return env


@pytest.fixture(scope="session")
def settings(test_env):
    from services.core.settings import Settings

    return Settings()


@pytest.fixture(scope="session")
def migrated(settings, service_urls) -> str:
    cfg = alembic_config(service_urls["database"])
    command.upgrade(cfg, "head")
    return service_urls["database"]


def alembic_config(url: str) -> Config:
    cfg = Config(str(ROOT / "alembic.ini"))
    cfg.set_main_option("script_location", str(ROOT / "alembic"))
    cfg.attributes["url"] = url
    cfg.attributes["configure_logging"] = False
    return cfg


@pytest.fixture
def state_redis(settings) -> Iterator[redis.Redis]:
    """The state Redis, emptied before each test."""
    from services.core.clients import get_redis

    client = get_redis(settings)
    client.flushdb()
    yield client


@pytest.fixture
def db(settings, migrated):
    """A session factory on the migrated test database, emptied before each test.

    Tests that run workers need committed data, so isolation is TRUNCATE rather
    than a rolled-back outer transaction."""
    from models.tables import Base
    from services.core.clients import get_engine, session_factory

    engine = get_engine(settings)
    names = ", ".join(f'"{t.name}"' for t in Base.metadata.sorted_tables)
    with engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))
    return session_factory(settings)


@pytest.fixture(scope="session")
def celery_app(test_env):
    from tasks import app

    app.conf.broker_url = test_env["VIGIL_BROKER_URL"]
    app.conf.result_backend = test_env["VIGIL_REDIS_URL"]
    return app


def start_test_worker(env: dict[str, str], log_path: Path, app, **options: Any) -> WorkerProcess:
    """A ``celery worker`` on the test services, started and answering pings."""
    worker = WorkerProcess(log_path=log_path, env={**os.environ, **env}, **options)
    worker.start()
    try:
        return worker.wait_ready(app)
    except BaseException:
        worker.stop()
        raise


@pytest.fixture(scope="session")
def worker(celery_app, test_env, migrated, tmp_path_factory) -> Iterator[WorkerProcess]:
    """One shared worker (2 prefork processes) for integration tests."""
    redis.Redis.from_url(test_env["VIGIL_BROKER_URL"]).flushdb()
    log_path = tmp_path_factory.mktemp("worker") / "worker.log"
    shared = start_test_worker(test_env, log_path, celery_app)
    try:
        yield shared
    finally:
        shared.stop()


@pytest.fixture
def start_worker(celery_app, test_env, migrated, tmp_path):
    """Factory for extra workers a test starts (and may kill) itself."""
    started: list[WorkerProcess] = []

    def start(**options: Any) -> WorkerProcess:
        log_path = tmp_path / f"worker{len(started)}.log"
        extra = start_test_worker(test_env, log_path, celery_app, **options)
        started.append(extra)
        return extra

    yield start
    for extra in started:
        extra.stop()


@pytest.fixture(scope="session")
def sentinel_setup(tmp_path_factory) -> Iterator[SentinelSetup]:
    """A master, a replica and three sentinels on loopback, agreed on the master."""
    setup = SentinelSetup(tmp_path_factory.mktemp("sentinel")).start()
    try:
        yield setup
    finally:
        setup.stop()


class State(NamedTuple):
    """Where a topology-parametrized test keeps state: its settings and client."""

    client: Any
    settings: Any


@pytest.fixture(params=["redis", "sentinel", "cluster"])
def state(request, settings, test_env) -> Iterator[State]:
    """The state store on each topology, emptied: the suite's Redis, a master
    behind Sentinel, a 3-master cluster (the deployments start on first use)."""
    from services.core.clients import get_redis
    from services.core.scan import master_clients

    topology = request.param
    if topology == "redis":
        target = settings
    elif topology == "sentinel":
        setup = request.getfixturevalue("sentinel_setup")
        target = settings.model_copy(
            update={
                "redis_url": None,
                "redis_sentinels": setup.sentinel_setting,
                "redis_sentinel_master": setup.master_name,
            }
        )
    else:
        setup = request.getfixturevalue("cluster_setup")
        target = settings.model_copy(
            update={"redis_url": None, "redis_cluster_nodes": setup.nodes_setting}
        )
    client = get_redis(target)
    for master in master_clients(client):
        master.flushdb()
    yield State(client, target)


@pytest.fixture(scope="session")
def cluster_setup(tmp_path_factory) -> Iterator[ClusterSetup]:
    """A Redis Cluster of three masters with a replica each, on loopback."""
    setup = ClusterSetup(tmp_path_factory.mktemp("cluster")).start()
    try:
        yield setup
    finally:
        setup.stop()


@pytest.fixture(scope="session")
def private_broker(tmp_path_factory) -> Iterator[RedisServer]:
    """A Redis broker of its own, for workers whose state is elsewhere than the
    shared test Redis (no other worker of the run consumes its queues)."""
    (port,) = free_ports(1)
    server = RedisServer(tmp_path_factory.mktemp("broker"), port, appendonly=True).start()
    try:
        yield server
    finally:
        server.stop()
