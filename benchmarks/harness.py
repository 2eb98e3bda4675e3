"""Private servers and a worker for one benchmark run.

The broker and the state Redis are two ``redis-server`` processes of our own on
spare loopback ports, so the state server's command counts and memory are the
contenders' alone, and nothing touches anybody else's data. PostgreSQL is a
database of our own (``vigil_bench`` by default) on the configured server.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import redis
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"


def redis_binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    from stack.embedded import redis_server_binary

    return str(redis_server_binary())


_REDIS_OPTS = ("--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--daemonize", "no")


class RedisServer:
    """A throwaway ``redis-server`` with no persistence, stopped by ``stop``."""

    def __init__(self, workdir: Path, name: str) -> None:
        from stack.embedded import spare_port

        self.port = spare_port()
        self.dir = workdir / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self._log = open(self.dir / "redis.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [redis_binary(), *_REDIS_OPTS, "--port", str(self.port), "--dir", str(self.dir)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self.url = f"redis://127.0.0.1:{self.port}/0"
        client = redis.Redis(port=self.port, socket_connect_timeout=1)
        deadline = time.monotonic() + 15
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server on {self.port} did not start") from None
                time.sleep(0.05)
        client.close()

    def client(self, **kwargs) -> redis.Redis:
        return redis.Redis(port=self.port, **kwargs)

    def version(self) -> str:
        return str(self.client().info("server").get("redis_version"))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()


def fresh_database(admin_url: str, name: str) -> str:
    """Drop and create ``name``, migrate it with Alembic; returns its URL."""
    from alembic.config import Config

    from alembic import command

    admin = make_url(admin_url).set(drivername="postgresql+psycopg")
    drop_database(admin_url, name)
    engine = create_engine(admin, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    engine.dispose()
    url = admin.set(database=name).render_as_string(hide_password=False)
    cfg = Config(str(ROOT / "alembic.ini"))
    cfg.set_main_option("script_location", str(ROOT / "alembic"))
    cfg.attributes["url"] = url
    cfg.attributes["configure_logging"] = False
    command.upgrade(cfg, "head")
    return url


def drop_database(admin_url: str, name: str) -> None:
    admin = make_url(admin_url).set(drivername="postgresql+psycopg")
    engine = create_engine(admin, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(
            text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :d"),
            {"d": name},
        )
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
    engine.dispose()


class Worker:
    """``celery worker`` with the production app and settings, plus the benchmark
    tasks (``-I``). It starts on an idle queue; the harness switches the ``ingest``
    queue on and off with remote control, so a run drains a pre-filled queue."""

    IDLE_QUEUE = "bench.idle"

    def __init__(
        self, env: dict[str, str], log_path: Path, pool: str = "prefork", concurrency: int = 2
    ) -> None:
        self.name = f"bench{uuid.uuid4().hex[:6]}@localhost"
        self.log_path = log_path
        self._log = open(log_path, "ab")  # noqa: SIM115
        self.argv = [
            *(sys.executable, "-m", "celery", "-A", "tasks", "worker"),
            *("-I", "benchmarks.bench_tasks", "-P", pool, "-c", str(concurrency)),
            *("-Q", self.IDLE_QUEUE, "-n", self.name, "-l", "WARNING"),
            *("--without-gossip", "--without-mingle", "-E"),
        ]
        self.proc = subprocess.Popen(
            self.argv,
            cwd=ROOT,
            env={**os.environ, **env},
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def wait_ready(self, app, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited: {self.log_path.read_text()[-3000:]}")
            if app.control.ping(destination=[self.name], timeout=1.0):
                return
        raise TimeoutError(f"worker not ready: {self.log_path.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()  # warm shutdown: lets the profiler dump its stats
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()
