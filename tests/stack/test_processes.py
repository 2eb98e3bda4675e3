"""The worker and redis-server launchers, with real processes."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from celery import Celery

from stack.processes import (
    VIGIL_QUEUES,
    ProcessExited,
    RedisServer,
    WorkerProcess,
)
from tests.helpers import wait_for


def _gone(pid: int) -> bool:
    """Not running any more (a zombie waiting for init to reap it counts as gone)."""
    try:
        return psutil.Process(pid).status() in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD)
    except psutil.NoSuchProcess:
        return True


def test_default_queues_are_the_task_contract_queues() -> None:
    from tasks.names import QUEUES

    assert tuple(VIGIL_QUEUES) == tuple(QUEUES)


def test_worker_command_line_from_options(tmp_path: Path) -> None:
    worker = WorkerProcess(
        log_path=tmp_path / "w.log",
        pool="solo",
        concurrency=1,
        queues=["bench.idle"],
        node_name="bench1@localhost",
        loglevel="WARNING",
        include=["benchmarks.bench_tasks"],
        events=False,
    )
    argv = worker.argv
    assert argv[1:5] == ["-m", "celery", "-A", "tasks"]
    joined = " ".join(argv)
    for part in ("worker", "-P solo", "-c 1", "-Q bench.idle", "-n bench1@localhost",
                 "-l WARNING", "-I benchmarks.bench_tasks", "--without-gossip",
                 "--without-mingle"):  # fmt: skip
        assert part in joined, part
    assert "-E" not in argv
    assert worker.node == "bench1@localhost"
    default = WorkerProcess(log_path=tmp_path / "d.log", gossip=True, mingle=True)
    assert "-E" in default.argv and "--without-gossip" not in default.argv
    assert default.argv[default.argv.index("-Q") + 1] == ",".join(VIGIL_QUEUES)
    assert "%h" not in default.node and default.node.startswith("w")


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[RedisServer]:
    """A private broker, so these workers never meet the shared test worker's queues."""
    server = RedisServer(tmp_path / "broker").start()
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture
def worker_env(test_env, migrated, broker: RedisServer) -> dict[str, str]:
    return {
        **os.environ,
        **test_env,
        "VIGIL_BROKER_URL": broker.url(0),
        "VIGIL_REDIS_URL": broker.url(1),
    }


@pytest.fixture
def sender(broker: RedisServer) -> Iterator[Celery]:
    app = Celery("launcher-test", broker=broker.url(0))
    yield app
    app.close()


def test_worker_starts_answers_and_stops_warm(worker_env, sender, tmp_path: Path) -> None:
    worker = WorkerProcess(log_path=tmp_path / "worker.log", env=worker_env, concurrency=2)
    worker.start()
    try:
        assert worker.wait_ready(sender, timeout=90) is worker
        assert worker.ping(sender)
        children = wait_for(
            lambda: psutil.Process(worker.pid).children(), timeout=30, what="pool children"
        )
        assert len(children) >= 2
        assert os.getpgid(worker.pid) == worker.pid  # its own group
        assert worker.stop(60) is True  # warm shutdown, no kill needed
        assert worker.returncode == 0
        assert all(_gone(child.pid) for child in children)
        assert "Warm shutdown" in worker.log() or "warm shutdown" in worker.log().lower()
    finally:
        worker.kill()


def test_worker_kill_takes_the_pool_children(worker_env, sender, tmp_path: Path) -> None:
    worker = WorkerProcess(log_path=tmp_path / "worker.log", env=worker_env, concurrency=2)
    worker.start()
    try:
        worker.wait_ready(sender, timeout=90)
        children = psutil.Process(worker.pid).children()
        assert children
        worker.kill()
        assert not worker.alive and worker.returncode == -9
        wait_for(
            lambda: all(_gone(child.pid) for child in children), timeout=10, what="children gone"
        )
    finally:
        worker.kill()


def test_wait_ready_fails_fast_with_the_log_when_the_worker_exits(
    worker_env, sender, tmp_path: Path
) -> None:
    worker = WorkerProcess(
        log_path=tmp_path / "worker.log", env=worker_env, app="no_such_module_for_vigil"
    )
    worker.start()
    started = time.monotonic()
    with pytest.raises(ProcessExited, match="no_such_module_for_vigil"):
        worker.wait_ready(sender, timeout=120)
    assert time.monotonic() - started < 60


def test_redis_restart_on_the_same_port_keeps_data_with_appendonly(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "redis", appendonly=True, password="pw-1").start()
    try:
        port, first_pid = server.port, server.pid
        client = server.client(3)
        client.set("kept", "yes")
        client.close()
        server.restart()
        assert server.port == port and server.pid != first_pid
        client = server.client(3)
        assert client.get("kept") == "yes"
        client.close()
        assert server.url(3) == f"redis://:pw-1@127.0.0.1:{port}/3"
        assert server.url(3, with_password=False) == f"redis://127.0.0.1:{port}/3"
        assert (tmp_path / "redis" / "redis.log").exists()
    finally:
        server.kill()
    assert not server.alive


def test_redis_stop_and_kill(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "plain").start()
    assert server.ping() and "--appendonly" in server.argv
    assert server.argv[server.argv.index("--appendonly") + 1] == "no"
    server.stop()
    assert not server.alive and server.proc is not None and server.proc.returncode == 0
    server.start()
    pid = server.pid
    server.kill()
    assert not server.alive and _gone(pid)


def test_redis_start_fails_fast_when_the_port_is_taken(tmp_path: Path) -> None:
    first = RedisServer(tmp_path / "first").start()
    try:
        # Another Redis answers on the port, but it is not the one we started.
        second = RedisServer(tmp_path / "second", first.port)
        with pytest.raises(ProcessExited, match="redis-server"):
            second.start(timeout=30)
        assert not second.alive
    finally:
        first.kill()
