"""Private servers, a worker and a database for one benchmark run, and the Bench
that drives them.

The broker and the state Redis are two ``redis-server`` processes of our own on
spare loopback ports, so the state server's command counts and memory are the
contenders' alone, and nothing touches anybody else's data. PostgreSQL is a
database of our own (``vigil_bench`` by default) on the configured server.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from celery import Celery
from kombu import Exchange, Queue
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from benchmarks.counters import read_counts
from benchmarks.names import IDLE_QUEUE
from stack.processes import RedisServer, WorkerProcess
from tasks.names import QUEUE_INGEST

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
POLL_S = 0.01
WORKER_STOP_TIMEOUT_S = 60.0


# -- servers, worker, database --------------------------------------------------------


def private_redis(workdir: Path, name: str) -> RedisServer:
    """A throwaway ``redis-server`` with no persistence, in ``workdir/name``."""
    return RedisServer(workdir / name).start()


def bench_worker(
    env: dict[str, str],
    log_path: Path,
    pool: str = "prefork",
    concurrency: int = 2,
    bare: bool = False,
) -> WorkerProcess:
    """``celery worker`` with the production app and settings, plus the benchmark
    tasks (``-I``). It starts on an idle queue; the bench switches the ``ingest``
    queue on and off with remote control, so a run drains a pre-filled queue."""
    if bare:
        # Celery's defaults plus late acks, no events, stock kombu transport.
        return WorkerProcess(
            log_path=log_path,
            env={**os.environ, **env},
            app="benchmarks.bare_app",
            pool=pool,
            concurrency=concurrency,
            queues=[IDLE_QUEUE],
            node_name=f"bare{uuid.uuid4().hex[:6]}@localhost",
            loglevel="WARNING",
            events=False,
            label="bare bench worker",
        ).start()
    return WorkerProcess(
        log_path=log_path,
        env={**os.environ, **env},
        pool=pool,
        concurrency=concurrency,
        queues=[IDLE_QUEUE],
        node_name=f"bench{uuid.uuid4().hex[:6]}@localhost",
        loglevel="WARNING",
        include=["benchmarks.bench_tasks"],
        label="bench worker",
    ).start()


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


# -- CPU accounting -------------------------------------------------------------------

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_seconds(pid: int, with_children: bool = False) -> float:
    """user + system CPU of a process (and of its live children), from /proc."""
    pids = [pid]
    if with_children:
        try:
            for task in Path(f"/proc/{pid}/task").iterdir():
                pids += [int(child) for child in (task / "children").read_text().split()]
        except OSError:
            pass
    total = 0.0
    for each in pids:
        try:
            fields = Path(f"/proc/{each}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / _TICK
    return total


# -- the bench ------------------------------------------------------------------------


class Bench:
    """The servers, database, worker and sending app of one run, and what the
    contenders measure with: queue control, drain detection and counters."""

    def __init__(self, workdir: Path, pg_admin_url: str, db_name: str) -> None:
        self.workdir = workdir
        self.pg_admin_url = pg_admin_url
        self.db_name = db_name
        self.count_dir = workdir / "counts"
        self.count_dir.mkdir()
        self.broker = private_redis(workdir, "broker")
        self.state = private_redis(workdir, "state")
        self.database_url = fresh_database(pg_admin_url, db_name)
        self.env = {
            "VIGIL_REDIS_URL": self.state.url(0),
            "VIGIL_BROKER_URL": self.broker.url(0),
            "VIGIL_DATABASE_URL": self.database_url,
            "VIGIL_EMBEDDED": "never",
            "VIGIL_DATA_DIR": str(workdir / "data"),
            "VIGIL_BENCH_COUNT_DIR": str(self.count_dir),
            "VIGIL_BENCH_STATE_PORT": str(self.state.port),
        }
        os.environ.update(self.env)
        # Read only now: the settings come from the environment just set.
        from services.core.settings import Settings, get_settings

        get_settings.cache_clear()
        self.settings = Settings()
        self.app = Celery("vigil-bench", broker=self.broker.url(0))
        self.app.conf.update(
            task_serializer="json", accept_content=["json"], broker_connection_retry=True
        )
        self.broker_client = self.broker.client()
        self.state_client = self.state.client()
        self.worker: WorkerProcess | None = None
        self.bare = False
        self.worker_env: dict[str, str] = {}
        self._declare_queue()

    def _declare_queue(self) -> None:
        with self.app.connection_for_write() as conn:
            queue = Queue(QUEUE_INGEST, Exchange(QUEUE_INGEST), routing_key=QUEUE_INGEST)
            queue(conn.default_channel).declare()

    def start_worker(
        self, extra_env: dict[str, str] | None = None, tag: str = "worker", bare: bool = False
    ) -> None:
        self.stop_worker()
        env = {**self.env, **(extra_env or {})}
        self.worker = bench_worker(env, self.workdir / f"{tag}.log", bare=bare)
        self.worker.wait_ready(self.app)
        self.bare = bare
        self.worker_env = dict(extra_env or {})

    def stop_worker(self) -> None:
        if self.worker is not None:
            # Warm shutdown: lets the profiler dump its stats.
            self.worker.stop(WORKER_STOP_TIMEOUT_S)
            self.worker = None

    def close(self) -> None:
        self.stop_worker()
        self.broker.stop()
        self.state.stop()
        drop_database(self.pg_admin_url, self.db_name)

    # -- queue control --

    def consume(self, on: bool) -> None:
        """Switch the worker's consumer of the ingest queue on or off."""
        assert self.worker is not None
        control = self.app.control
        switch = control.add_consumer if on else control.cancel_consumer
        replies = switch(QUEUE_INGEST, destination=[self.worker.node], reply=True, timeout=10)
        if not replies:
            raise RuntimeError(f"worker did not answer {'add' if on else 'cancel'}_consumer")

    def _broker_busy(self) -> int:
        pipe = self.broker_client.pipeline(transaction=False)
        pipe.llen(QUEUE_INGEST)
        pipe.hlen("unacked")
        return sum(pipe.execute())

    def wait_drained(self, timeout: float = 600) -> float:
        """Time at which the queue and the unacked set were both empty twice in a
        row (a message is briefly in neither between BRPOP and the unacked write)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._broker_busy() == 0:
                empty_at = time.perf_counter()
                time.sleep(POLL_S)
                if self._broker_busy() == 0:
                    return empty_at
            time.sleep(POLL_S)
        raise TimeoutError("queue did not drain")

    def drain(self) -> tuple[float, float]:
        """Consume until the queue is empty, then stop consuming; returns when
        the worker took its first message and when the queue was empty.

        The clock starts at the first take, not at the switch: a worker that
        is told to add a queue does so when its blocking BRPOP on the others
        returns (up to kombu's 1 s BRPOP timeout), a wait that is the
        benchmark's, not the contender's."""
        queued = self.broker_client.llen(QUEUE_INGEST)
        self.consume(True)
        started = self._first_take(queued)
        empty_at = self.wait_drained()
        self.consume(False)
        return started, empty_at

    def wait_taken(self, timeout: float = 30) -> None:
        """Until the worker has taken everything queued (it is consuming)."""
        deadline = time.monotonic() + timeout
        while self.broker_client.llen(QUEUE_INGEST):
            if time.monotonic() > deadline:
                raise TimeoutError("the worker took nothing from the queue")
            time.sleep(0.001)

    def _first_take(self, queued: int, timeout: float = 30) -> float:
        """The last moment the queue still held all ``queued`` messages."""
        deadline = time.monotonic() + timeout
        full_at = time.perf_counter()
        while time.monotonic() < deadline:
            if self.broker_client.llen(QUEUE_INGEST) < queued:
                return full_at
            full_at = time.perf_counter()
            time.sleep(0.0005)
        raise TimeoutError("the worker took nothing from the queue")

    def send_one(self, task: str, kwargs: dict[str, Any], producer) -> None:
        self.app.send_task(
            task,
            kwargs=kwargs,
            queue=QUEUE_INGEST,
            producer=producer,
            argsrepr="()",
            kwargsrepr="<bench>",
            ignore_result=True,  # as VigilClient sends: a frontend reads no answers
        )

    def send(self, task: str, kwargs_list: Iterable[dict[str, Any]]) -> None:
        with self.app.producer_or_acquire() as producer:
            for kwargs in kwargs_list:
                self.send_one(task, kwargs, producer)

    # -- measurements --

    def commands(self) -> int:
        stats = self.state_client.info("commandstats")
        return sum(value["calls"] for name, value in stats.items() if name != "cmdstat_info")

    def memory(self) -> int:
        return int(self.state_client.info("memory")["used_memory"])

    def cpu(self) -> dict[str, float]:
        assert self.worker is not None
        return {
            "worker": cpu_seconds(self.worker.pid, with_children=True),
            "broker_redis": cpu_seconds(self.broker.pid),
            "state_redis": cpu_seconds(self.state.pid),
        }

    def round_trips(self) -> int:
        return read_counts(self.count_dir)

    def verify(self, messages: list[dict[str, Any]], timeout: float = 30) -> int:
        """How many messages were applied (waiting a little if needed): vigil's
        per-user dedupe hash says ``done``, or the seed-style marker key does."""
        from services.core import dedupe, keys

        deadline = time.monotonic() + timeout
        while True:
            pipe = self.state_client.pipeline(transaction=False)
            for message in messages:
                pipe.get(keys.message_marker(self.settings, "bench", message["message_id"]))
                pipe.hget(
                    keys.message_dedupe(self.settings, "bench", message["user_id"]),
                    keys.dedupe_field(message["message_id"]),
                )
            replies = pipe.execute()
            done = sum(
                legacy == "done" or dedupe.decode(packed, self.settings) == "done"
                for legacy, packed in zip(replies[::2], replies[1::2], strict=True)
            )
            if done == len(messages) or time.monotonic() > deadline:
                return done
            time.sleep(0.2)
