"""Fault-injection harness: private Redis and PostgreSQL servers this package
starts, kills and restarts itself, and worker/beat processes in their own
process groups so a ``kill -9`` takes the pool children with the parent.

Nothing here touches the machine's shared Redis or PostgreSQL: other test runs
may be using them while these servers are being killed. On RabbitMQ the tests
use a vhost of their own (``vigil-faults``, or ``VIGIL_TEST_AMQP_URL``'s),
re-created each session, since a shared vhost may hold queues named
``ingest``/``admin``/``periodic`` declared differently.

Workers run with the shipped delivery settings (visibility timeout, restore
sweep, time limits): nothing here shortens them.
"""

from __future__ import annotations

import os
import shutil
import socket
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from celery import Celery
from kombu import Connection
from sqlalchemy import create_engine, text

from stack import processes
from stack.embedded import EmbeddedPostgres, spare_port
from tests.helpers import recreate_vhost, wait_for
from vigil_client import sender_app, task_queues

__all__ = ["wait_for"]  # the fault tests import it from here

ROOT = Path(__file__).resolve().parents[2]
HOST = "127.0.0.1"
STATE_DB, BROKER_DB, REFERENCE_DB = 0, 1, 2


class RedisServer(processes.RedisServer):
    """A private redis-server with an append-only file, so a restart (SIGTERM: the
    file is flushed) on the same port keeps every acknowledged write (broker included)."""

    def __init__(self, root: Path, port: int | None = None, password: str | None = None) -> None:
        super().__init__(root, port, password=password, appendonly=True)


@dataclass
class Stack:
    """Private servers and the URLs and environment that point processes at them."""

    redis: RedisServer
    pg: EmbeddedPostgres
    database_url: str
    data_dir: Path

    @property
    def state_url(self) -> str:
        return self.redis.url(STATE_DB)

    @property
    def broker_url(self) -> str:
        return self.redis.url(BROKER_DB)

    def env(self, **extra: str) -> dict[str, str]:
        """Environment for workers and beat; VIGIL_* values inherited from the
        test process are overridden so no process reaches the shared servers."""
        return {
            "VIGIL_REDIS_URL": self.state_url,
            "VIGIL_BROKER_URL": self.broker_url,
            "VIGIL_DATABASE_URL": self.database_url,
            "VIGIL_EMBEDDED": "never",
            "VIGIL_DATA_DIR": str(self.data_dir),
            **extra,
        }

    def settings(self, db: int = STATE_DB, **overrides: Any):
        from services.core.settings import Settings

        return Settings(
            redis_url=self.redis.url(db),
            broker_url=self.broker_url,
            database_url=self.database_url,
            embedded="never",
            **overrides,
        )

    def sessions(self):
        from services.core.clients import session_factory

        return session_factory(self.settings())

    def reset(self) -> None:
        for db in (STATE_DB, BROKER_DB, REFERENCE_DB):
            self.redis.client(db).flushdb()
        from models.tables import Base

        names = ", ".join(f'"{t.name}"' for t in Base.metadata.sorted_tables)
        engine = create_engine(self.database_url)
        with engine.begin() as conn:
            conn.execute(text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))
        engine.dispose()


@pytest.fixture(scope="session")
def stack(tmp_path_factory) -> Iterator[Stack]:
    # PostgreSQL as root runs under an unprivileged account that must reach its
    # data dir, so the cluster lives inside the project (see stack/embedded.py).
    data = ROOT / ".vigil" / "faults" / uuid.uuid4().hex[:8]
    server = RedisServer(data / "redis").start()
    pg = EmbeddedPostgres(data_dir=data, port=spare_port()).start()
    admin = create_engine(
        f"postgresql+psycopg://postgres@{HOST}:{pg.port}/postgres", isolation_level="AUTOCOMMIT"
    )
    with admin.connect() as conn:
        conn.execute(text('CREATE DATABASE "vigil"'))
    admin.dispose()
    url = f"postgresql+psycopg://postgres@{HOST}:{pg.port}/vigil"
    from alembic import command
    from tests.conftest import alembic_config

    command.upgrade(alembic_config(url), "head")
    try:
        yield Stack(server, pg, url, tmp_path_factory.mktemp("vigil-faults-data"))
    finally:
        from services.core.clients import close_all

        close_all()
        server.kill()
        pg.stop()
        shutil.rmtree(data, ignore_errors=True)


@pytest.fixture
def fresh(stack: Stack) -> Stack:
    """The private stack, emptied: Redis databases flushed, tables truncated."""
    stack.reset()
    return stack


def make_app(broker_url: str, backend_url: str | None = None) -> Celery:
    """What a Python frontend has: ``services.client``'s sender app (queues as the
    workers declare them, persistent messages, publisher confirms on RabbitMQ)."""
    return sender_app(broker_url, backend_url, name=f"faults-{uuid.uuid4().hex[:6]}")


@pytest.fixture
def app(fresh: Stack) -> Iterator[Celery]:
    client = make_app(fresh.broker_url, fresh.state_url)
    yield client
    client.close()


class Worker(processes.WorkerProcess):
    """A worker in its own process group; ``kill9`` takes the pool children too."""

    def kill9(self) -> None:
        """SIGKILL the whole group: the parent and every pool child, mid-task."""
        self.kill()


@dataclass
class Procs:
    stack: Stack
    tmp: Path
    started: list[processes.Process] = field(default_factory=list)

    def worker(
        self,
        app: Celery | None = None,
        env: dict[str, str] | None = None,
        concurrency: int = 2,
        loglevel: str = "INFO",
    ) -> Worker:
        worker = Worker(
            log_path=self.tmp / f"worker{len(self.started)}.log",
            env={**os.environ, **(env or self.stack.env())},
            concurrency=concurrency,
            loglevel=loglevel,
            node_name=f"f{uuid.uuid4().hex[:6]}@%h",
        )
        self.started.append(worker.start())
        if app is not None:
            worker.wait_ready(app)
        return worker

    def beat(self, env: dict[str, str] | None = None) -> processes.Process:
        index = len(self.started)
        schedule = self.tmp / f"beat{index}.schedule"
        beat = processes.Process(
            processes.celery_command("tasks", "beat", "-l", "INFO", "-s", str(schedule)),
            log_path=self.tmp / f"beat{index}.log",
            env={**os.environ, **(env or self.stack.env())},
            label="beat",
        )
        self.started.append(beat.start())
        return beat


@pytest.fixture
def procs(fresh: Stack, tmp_path: Path) -> Iterator[Procs]:
    started = Procs(fresh, tmp_path)
    yield started
    for process in started.started:
        process.stop()


def broker_drained(stack: Stack) -> bool:
    """Nothing queued and nothing delivered-but-unacked on the broker."""
    broker = stack.redis.client(BROKER_DB)
    return (
        all(broker.llen(queue) == 0 for queue in processes.VIGIL_QUEUES)
        and broker.hlen("unacked") == 0
    )


# -- the two brokers vigil supports ------------------------------------------------

AMQP_VHOST = "vigil-faults"
AMQP_URL = os.environ.get("VIGIL_TEST_AMQP_URL", f"amqp://guest:guest@127.0.0.1:5672/{AMQP_VHOST}")


def _amqp_answers() -> bool:
    parts = urlsplit(AMQP_URL)
    try:
        with socket.create_connection((parts.hostname, parts.port or 5672), 1):
            return True
    except OSError:
        return False


@pytest.fixture(scope="session")
def amqp_vhost() -> str:
    """The tests' vhost, deleted and re-created once a session with a quorum
    default queue type (the README's production setup), so no queue declared
    in another form by an earlier run or version is left in it."""
    vhost = urlsplit(AMQP_URL).path.lstrip("/") or "/"
    recreate_vhost(vhost)
    return vhost


def _amqp_drained() -> bool:
    with Connection(AMQP_URL) as conn:
        channel = conn.default_channel
        return all(
            channel.queue_declare(queue=queue, passive=True).message_count == 0
            for queue in processes.VIGIL_QUEUES
        )


@pytest.fixture(params=["redis", "amqp"])
def broker(request, fresh):
    """The broker a fault test runs on: the private Redis, or RabbitMQ if one answers."""
    if request.param == "redis":
        return {
            "kind": "redis",
            "url": fresh.broker_url,
            "drained": lambda: broker_drained(fresh),
        }
    if not _amqp_answers():
        pytest.skip(f"no RabbitMQ at {AMQP_URL}")
    request.getfixturevalue("amqp_vhost")
    with Connection(AMQP_URL) as conn:
        # Declared as the worker and plain Celery declare them, then emptied.
        for queue in task_queues():
            bound = queue(conn.default_channel)
            bound.declare()
            bound.purge()
    return {"kind": "amqp", "url": AMQP_URL, "drained": _amqp_drained}
