"""Fault-injection harness: private Redis and PostgreSQL servers this package
starts, kills and restarts itself, and worker/beat processes in their own
process groups so a ``kill -9`` takes the pool children with the parent.

Nothing here touches the machine's shared Redis or PostgreSQL: other test runs
may be using them while these servers are being killed.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import redis
from celery import Celery
from kombu import Connection
from sqlalchemy import create_engine, text

from stack.embedded import EmbeddedPostgres, redis_server_binary, spare_port
from tests.helpers import wait_for

ROOT = Path(__file__).resolve().parents[2]
HOST = "127.0.0.1"
STATE_DB, BROKER_DB, REFERENCE_DB = 0, 1, 2
# Short enough that a message held by a killed worker comes back within seconds.
VISIBILITY_TIMEOUT_S = 8


def _redis_binary() -> str:
    return shutil.which("redis-server") or str(redis_server_binary())


class RedisServer:
    """A redis-server with an append-only file, so a restart (SIGTERM: the file is flushed) on the
    same port keeps every acknowledged write (broker included)."""

    def __init__(self, root: Path, port: int | None = None, password: str | None = None) -> None:
        self.root = root
        self.port = port or spare_port()
        self.password = password
        self.proc: subprocess.Popen | None = None
        root.mkdir(parents=True, exist_ok=True)

    def url(self, db: int, with_password: bool = True) -> str:
        auth = f":{self.password}@" if self.password and with_password else ""
        return f"redis://{auth}{HOST}:{self.port}/{db}"

    def client(self, db: int = STATE_DB) -> redis.Redis:
        return redis.Redis(
            host=HOST, port=self.port, db=db, password=self.password, decode_responses=True
        )

    def start(self) -> RedisServer:
        argv = [
            _redis_binary(),
            "--bind", HOST,
            "--port", str(self.port),
            "--dir", str(self.root),
            "--save", "",
            "--appendonly", "yes",
            "--appendfsync", "everysec",
            "--daemonize", "no",
            "--logfile", str(self.root / "redis.log"),
        ]  # fmt: skip
        if self.password:
            argv += ["--requirepass", self.password]
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        wait_for(self._answers, timeout=30, what=f"redis-server on port {self.port}")
        return self

    def _answers(self) -> bool:
        try:
            return bool(self.client().ping())
        except redis.RedisError:
            return False

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(30)

    def restart(self) -> None:
        self.stop()
        self.start()


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
            "VIGIL_VISIBILITY_TIMEOUT": str(VISIBILITY_TIMEOUT_S),
            "VIGIL_UNACKED_RESTORE_INTERVAL": "1",
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
    """What a frontend has: a Celery client that knows task names and JSON."""
    app = Celery(f"faults-{uuid.uuid4().hex[:6]}", broker=broker_url, backend=backend_url)
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        broker_transport_options={"visibility_timeout": VISIBILITY_TIMEOUT_S},
        broker_connection_retry_on_startup=True,
    )
    return app


@pytest.fixture
def app(fresh: Stack) -> Iterator[Celery]:
    client = make_app(fresh.broker_url, fresh.state_url)
    yield client
    client.close()


class Proc:
    """A celery worker or beat in its own process group, output to a log file."""

    def __init__(self, argv: list[str], env: dict[str, str], log_path: Path) -> None:
        self.log_path = log_path
        self._log = open(log_path, "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "tasks", *argv],
            cwd=ROOT,
            env={**os.environ, **env},
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def kill9(self) -> None:
        """SIGKILL the whole group: the parent and every pool child, mid-task."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(30)

    def stop(self) -> None:
        if self.alive:
            self.proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(30)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # stragglers of this group only
        self.proc.wait(30)
        self._log.close()


class Worker(Proc):
    def __init__(
        self, env: dict[str, str], log_path: Path, concurrency: int = 2, loglevel: str = "INFO"
    ) -> None:
        self.name = f"f{uuid.uuid4().hex[:6]}@%h"
        super().__init__(
            [
                "worker",
                "-P",
                "prefork",
                "-c",
                str(concurrency),
                "-Q",
                "ingest,admin,periodic",
                "-n",
                self.name,
                "-l",
                loglevel,
                "--without-gossip",
                "--without-mingle",
                "-E",
            ],
            env,
            log_path,
        )

    def ping(self, app: Celery) -> bool:
        try:
            replies = app.control.ping(timeout=1.0)
        except redis.ConnectionError:
            return False  # a pooled connection from before a Redis restart; ask again
        return any(self.name.split("@")[0] in next(iter(r)) for r in replies)

    def wait_ready(self, app: Celery, timeout: float = 60) -> Worker:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive:
                raise RuntimeError(f"worker exited: {self.log()[-3000:]}")
            if self.ping(app):
                return self
        raise TimeoutError(f"worker not ready: {self.log()[-3000:]}")


@dataclass
class Procs:
    stack: Stack
    tmp: Path
    started: list[Proc] = field(default_factory=list)

    def worker(self, app: Celery | None = None, env: dict[str, str] | None = None, **kw) -> Worker:
        w = Worker(env or self.stack.env(), self.tmp / f"worker{len(self.started)}.log", **kw)
        self.started.append(w)
        if app is not None:
            w.wait_ready(app)
        return w

    def beat(self, env: dict[str, str] | None = None) -> Proc:
        n = len(self.started)
        b = Proc(
            ["beat", "-l", "INFO", "-s", str(self.tmp / f"beat{n}.schedule")],
            env or self.stack.env(),
            self.tmp / f"beat{n}.log",
        )
        self.started.append(b)
        return b


@pytest.fixture
def procs(fresh: Stack, tmp_path: Path) -> Iterator[Procs]:
    p = Procs(fresh, tmp_path)
    yield p
    for proc in p.started:
        proc.stop()


def broker_drained(stack: Stack) -> bool:
    """Nothing queued and nothing delivered-but-unacked on the broker."""
    b = stack.redis.client(BROKER_DB)
    return all(b.llen(q) == 0 for q in ("ingest", "admin", "periodic")) and b.hlen("unacked") == 0


# -- the two brokers vigil supports ------------------------------------------------

AMQP_URL = os.environ.get("VIGIL_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")


def _amqp_answers() -> bool:
    parts = urlsplit(AMQP_URL)
    try:
        with socket.create_connection((parts.hostname, parts.port or 5672), 1):
            return True
    except OSError:
        return False


def _amqp_drained() -> bool:
    with Connection(AMQP_URL) as conn:
        channel = conn.default_channel
        return all(
            channel.queue_declare(queue=q, passive=True).message_count == 0
            for q in ("ingest", "admin", "periodic")
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
    from celeryconfig import task_queues

    with Connection(AMQP_URL) as conn:
        for queue in task_queues:  # declared as the worker declares them, then emptied
            bound = queue(conn.default_channel)
            bound.declare()
            bound.purge()
    return {"kind": "amqp", "url": AMQP_URL, "drained": _amqp_drained}
