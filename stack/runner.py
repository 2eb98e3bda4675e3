"""Run the whole system on one machine: services, migrations, worker, beat, Flower.

``run_stack`` is what ``vigil up`` calls. It resolves Redis and PostgreSQL
(configured, local, or embedded), migrates the database, starts the Celery
worker, beat and Flower as child processes with their logs under
``<data_dir>/logs/``, and the metrics exporter (``vigil metrics serve``),
waits until the worker answers a ping, and on the way
out (Ctrl-C, SIGTERM, a child dying, or ``then`` returning) stops them in
reverse order, then the embedded servers it started.

Children run in their own sessions so a Ctrl-C in the terminal reaches only
this supervisor, which then shuts them down in order: Flower and beat first
so nothing new is scheduled, the worker last so it finishes what it holds.
"""

from __future__ import annotations

import _thread
import argparse
import contextlib
import logging
import os
import secrets
import signal
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TypeVar

import httpx
from celery import Celery

from services.core import clients, health
from services.core.network import is_loopback
from services.core.settings import Settings, get_settings
from services.metrics.exporter import ExporterAuthError, check_bind
from stack.discovery import (
    Found,
    ServiceUnavailable,
    app_database_url,
    ensure_database,
    ensure_services,
    migrate,
)
from stack.embedded import EmbeddedError
from stack.processes import (
    VIGIL_QUEUES,
    NotReady,
    Process,
    ProcessExited,
    WorkerProcess,
    celery_command,
)
from vigil_client import sender_app

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[1]
FLOWER_USER = "vigil"
FLOWER_SECRET_FILE = "flower-password"  # noqa: S105 - a file name
READY_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 60.0

ResultT = TypeVar("ResultT")


class StackError(RuntimeError):
    """The stack could not start, or one of its processes died."""


class FlowerAuthError(StackError):
    """Flower would have been reachable without a login."""


def _check_basic_auth(value: str, source: str) -> str:
    for pair in value.split(","):
        user, sep, password = pair.partition(":")
        if not (sep and user and password):
            raise FlowerAuthError(f"{source} must be user:password (comma-separated for several)")
    return value


def flower_auth(
    settings: Settings, data_dir: Path, *, generate: bool = True, out: IO[str] | None = None
) -> str | None:
    """Flower's ``user:password``: from settings, else the saved generated one.

    A generated password is written once to ``<data_dir>/flower-password``
    (mode 0600) and printed once, when it is created; later runs reuse it."""
    if settings.flower_basic_auth:
        return _check_basic_auth(settings.flower_basic_auth, "VIGIL_FLOWER_BASIC_AUTH")
    path = Path(data_dir) / FLOWER_SECRET_FILE
    if path.exists():
        if path.stat().st_mode & 0o077:
            raise FlowerAuthError(f"{path} is readable by other users; chmod 600 it")
        return _check_basic_auth(path.read_text().strip(), str(path))
    if not generate:
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    value = f"{FLOWER_USER}:{secrets.token_urlsafe(18)}"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        # Another start won the race; use what it wrote.
        return _check_basic_auth(path.read_text().strip(), str(path))
    with os.fdopen(fd, "w") as handle:
        handle.write(value + "\n")
    user, _, password = value.partition(":")
    print(
        f"Flower login (generated, shown once, saved in {path}): user {user} password {password}",
        file=out or sys.stderr,
        flush=True,
    )
    return value


def flower_command(
    settings: Settings, *, basic_auth: str | None, local_only: bool = False
) -> tuple[list[str], dict[str, str]]:
    """Command line and extra environment for Flower; refuses an open Flower.

    The credentials travel in ``FLOWER_BASIC_AUTH`` (which Flower reads like
    ``--basic-auth``) so they do not show in ``ps``. Without credentials it
    starts only when ``local_only`` is set and it binds to loopback."""
    address = settings.flower_address
    if basic_auth:
        _check_basic_auth(basic_auth, "Flower basic auth")
    elif not local_only:
        raise FlowerAuthError(
            "Flower refuses to start without authentication: set "
            "VIGIL_FLOWER_BASIC_AUTH=user:password (or VIGIL_FLOWER_BASIC_AUTH_FILE), "
            "let vigil generate a password, or say explicitly that it is local-only"
        )
    elif not is_loopback(address):
        raise FlowerAuthError(
            f"a local-only Flower without authentication must bind to loopback, "
            f"not {address} (VIGIL_FLOWER_ADDRESS)"
        )
    argv = celery_command(
        "tasks", "flower", f"--address={address}", f"--port={settings.flower_port}"
    )
    # Without a login this is local-only on loopback (checked above): say so to
    # the guard in worker/flower_guard.py, which refuses an anonymous Flower otherwise.
    env = {"FLOWER_BASIC_AUTH": basic_auth} if basic_auth else {"VIGIL_FLOWER_LOCAL_ONLY": "1"}
    return argv, env


def child_env(extra: dict[str, str]) -> dict[str, str]:
    """This process's environment for a child, minus inherited Flower options.

    A stray ``FLOWER_UNAUTHENTICATED_API`` or ``FLOWER_BASIC_AUTH`` in the
    operator's shell must not silently change what the Flower we start
    allows."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWER_")}
    env.update(extra)
    return env


@dataclass
class Stack:
    """A running stack, as handed to the ``then`` callback."""

    settings: Settings
    found: Found
    env: dict[str, str]
    log_dir: Path
    worker_name: str
    flower_url: str | None
    children: dict[str, Process] = field(default_factory=dict)
    failure: str | None = None
    metrics_url: str | None = None

    def client(self) -> Celery:
        """A Celery client on the stack's broker, for sending tasks and pings."""
        app = sender_app(
            clients.broker_url(self.settings),
            clients.result_backend(self.settings),
            name="vigil-stack",
            broker_transport_options=clients.broker_transport_options(self.settings),
        )
        clients.configure_results(app, self.settings)
        return app

    def log_path(self, name: str) -> Path:
        return self.log_dir / f"{name}.log"

    def start(self, name: str, argv: list[str], extra_env: dict[str, str] | None = None) -> Process:
        """Start a supervised child (beat, Flower) logging to ``<log_dir>/<name>.log``."""
        child = Process(
            argv,
            log_path=self.log_path(name),
            env=child_env({**self.env, **(extra_env or {})}),
            label=name,
        )
        return self.add(name, child)

    def add(self, name: str, child: Process) -> Process:
        self.children[name] = child.start()
        return child

    def check_children(self) -> None:
        for child in self.children.values():
            try:
                child.check_alive()
            except ProcessExited as err:
                raise StackError(str(err)) from None

    def stop(self) -> None:
        for name in reversed(list(self.children)):
            child = self.children[name]
            if not child.stop(STOP_TIMEOUT_S):
                log.warning("%s did not stop in %ss; killed it", name, STOP_TIMEOUT_S)
        self.found.stop_started()


class _Shutdown(Exception):
    pass


@dataclass
class _SignalState:
    stopping: bool = False


@contextlib.contextmanager
def _signals_raise() -> Iterator[_SignalState]:
    """SIGINT/SIGTERM/SIGHUP end the run, so ``finally`` stops the children.

    Once the shutdown has begun, further signals (an impatient second Ctrl-C)
    are ignored so the children still stop in order."""
    state = _SignalState()
    if threading.current_thread() is not threading.main_thread():
        yield state
        return

    def handler(signum, _frame):
        if not state.stopping:
            raise _Shutdown(signal.Signals(signum).name)

    sigs = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {sig: signal.signal(sig, handler) for sig in sigs}
    try:
        yield state
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _watch(stack: Stack, stop: threading.Event) -> None:
    """Interrupt the main thread when a child dies while ``then`` runs."""
    while not stop.wait(0.5):
        try:
            stack.check_children()
        except StackError as err:
            stack.failure = str(err)
            _thread.interrupt_main()
            return


def resolve(settings: Settings) -> tuple[Settings, Found]:
    """Services for this run and the settings every child will share."""
    found = ensure_services(
        redis_url=settings.redis_url,
        database_url=settings.database_url,
        data_dir=settings.data_dir,
        embedded=settings.embedded,
        redis_port=settings.embedded_redis_port,
        postgres_port=settings.embedded_postgres_port,
    )
    if settings.redis_url:
        state, broker = settings.redis_url, settings.broker_url or settings.redis_url
    else:
        # Broker and state apart, so flushing one for a reset never loses the other.
        state, broker = f"{found.redis_url}/0", settings.broker_url or f"{found.redis_url}/1"
    database = settings.database_url or app_database_url(found.database_url, "vigil")
    resolved = settings.model_copy(
        update={
            "redis_url": state,
            "broker_url": broker,
            "database_url": database,
            "data_dir": Path(settings.data_dir).resolve(),
        }
    )
    return resolved, found


def run_stack(
    settings: Settings | None = None,
    *,
    then: Callable[[Stack], ResultT] | None = None,
    flower: bool = True,
    flower_local_only: bool = False,
    beat: bool = True,
    metrics: bool = True,
    concurrency: int = 2,
    ready_timeout: float = READY_TIMEOUT_S,
    out: IO[str] | None = None,
) -> ResultT | None:
    """Start everything, run ``then(stack)`` (or wait for a signal), stop everything.

    Returns what ``then`` returned; raises StackError when a process fails to
    start or dies, after stopping the rest."""
    out = out or sys.stderr
    settings = settings or get_settings()
    data_dir = Path(settings.data_dir).resolve()
    auth = None
    if flower:
        # Decided before anything starts: a refusal must not leave servers behind.
        auth = flower_auth(settings, data_dir, generate=not flower_local_only, out=out)
        flower_command(settings, basic_auth=auth, local_only=flower_local_only)
    if metrics:
        try:
            check_bind(settings.metrics_address, settings.metrics_token)
        except ExporterAuthError as err:
            raise StackError(str(err)) from None

    with _signals_raise() as signals:
        try:
            settings, found = resolve(settings)
        except (ServiceUnavailable, EmbeddedError) as err:
            raise StackError(str(err)) from err
        log_dir = data_dir / "logs"
        log_dir.mkdir(parents=True, exist_ok=True)
        env = {
            "VIGIL_REDIS_URL": settings.redis_url or "",
            "VIGIL_BROKER_URL": settings.broker_url or "",
            "VIGIL_DATABASE_URL": settings.database_url or "",
            "VIGIL_DATA_DIR": str(data_dir),
            # The children use what was resolved here, never start servers of their own.
            "VIGIL_EMBEDDED": "never",
        }
        if settings.redis_password:
            env["VIGIL_REDIS_PASSWORD"] = settings.redis_password
        if settings.database_password:
            env["VIGIL_DATABASE_PASSWORD"] = settings.database_password
        worker_name = f"vigil-{uuid.uuid4().hex[:6]}"
        flower_url = f"http://{settings.flower_address}:{settings.flower_port}" if flower else None
        stack = Stack(settings, found, env, log_dir, worker_name, flower_url)
        if metrics:
            stack.metrics_url = f"http://{settings.metrics_address}:{settings.metrics_port}/metrics"
        stop_watch = threading.Event()
        try:
            db_url = clients.database_url(settings)
            if ensure_database(db_url):
                print("created database", settings.database_url.rsplit("/", 1)[-1], file=out)
            migrate(db_url)
            _start_children(stack, beat, concurrency)
            _wait_ready(stack, ready_timeout, auth, flower_local_only)
            _announce(stack, out)
            if then is None:
                while True:
                    stack.check_children()
                    time.sleep(0.5)
            watcher = threading.Thread(target=_watch, args=(stack, stop_watch), daemon=True)
            watcher.start()
            return then(stack)
        except (KeyboardInterrupt, _Shutdown):
            if stack.failure:
                raise StackError(stack.failure) from None
            print("stopping vigil", file=out, flush=True)
            return None
        finally:
            signals.stopping = True
            stop_watch.set()
            stack.stop()


def _start_children(stack: Stack, beat: bool, concurrency: int) -> None:
    """The worker, beat and the exporter; Flower waits for the worker (_wait_ready)."""
    stack.add(
        "worker",
        WorkerProcess(
            log_path=stack.log_path("worker"),
            env=child_env(stack.env),
            concurrency=concurrency,
            queues=VIGIL_QUEUES,
            node_name=f"{stack.worker_name}@%h",
            gossip=True,
            mingle=True,
        ),
    )
    if beat:
        stack.start("beat", celery_command("tasks", "beat", "-l", "INFO"))
    if stack.metrics_url:
        settings = stack.settings
        extra = {
            "VIGIL_METRICS_ADDRESS": settings.metrics_address,
            "VIGIL_METRICS_PORT": str(settings.metrics_port),
        }
        if settings.metrics_token:
            extra["VIGIL_METRICS_TOKEN"] = settings.metrics_token
        stack.start("metrics", [sys.executable, "-m", "cli.main", "metrics", "serve"], extra)


def _wait_ready(stack: Stack, timeout: float, auth: str | None, local_only: bool) -> None:
    """The worker first; then Flower, which asks the workers for their state as
    it starts and would log a failed inspection for each it asked too soon."""
    deadline = time.monotonic() + timeout
    worker = stack.children["worker"]
    assert isinstance(worker, WorkerProcess)
    client = stack.client()
    try:
        stack.check_children()
        worker.wait_ready(client, timeout)
    except (ProcessExited, NotReady) as err:
        raise StackError(str(err)) from None
    finally:
        client.close()
    if stack.flower_url:
        argv, extra = flower_command(stack.settings, basic_auth=auth, local_only=local_only)
        stack.start("flower", argv, extra)
    if stack.metrics_url:
        _wait_metrics(stack, deadline)
    if stack.flower_url:
        while True:
            stack.check_children()
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{stack.flower_url}/healthcheck", timeout=2).status_code == 200:
                    return
            if time.monotonic() > deadline:
                raise StackError(f"Flower did not come up; see {stack.log_path('flower')}")
            time.sleep(0.2)


def _wait_metrics(stack: Stack, deadline: float) -> None:
    token = stack.settings.metrics_token
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    while True:
        stack.check_children()
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(stack.metrics_url, headers=headers, timeout=5).status_code == 200:
                return
        if time.monotonic() > deadline:
            raise StackError(
                f"the metrics exporter did not come up; see {stack.log_path('metrics')}"
            )
        time.sleep(0.2)


def _announce(stack: Stack, out: IO[str]) -> None:
    lines = ["vigil is running"]
    redis_check = health.check_redis(stack.settings)
    for note in (*redis_check.get("problems", ()), *redis_check.get("warnings", ())):
        lines.append(f"  warning:  {note}")
    if stack.found.started:
        lines.append("  embedded: " + ", ".join(service.url for service in stack.found.started))
    if stack.flower_url:
        lines.append(f"  Flower:   {stack.flower_url}")
    if stack.metrics_url:
        lines.append(f"  metrics:  {stack.metrics_url}")
    lines.append(f"  logs:     {stack.log_dir}")
    lines.append("  Ctrl-C to stop")
    print("\n".join(lines), file=out, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stack.runner", description=__doc__)
    parser.add_argument(
        "--flower-local-only",
        action="store_true",
        help="run Flower without a login (loopback only)",
    )
    parser.add_argument("--no-flower", action="store_true")
    parser.add_argument("--no-beat", action="store_true")
    parser.add_argument("--no-metrics", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("alembic", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        run_stack(
            flower=not args.no_flower,
            flower_local_only=args.flower_local_only,
            beat=not args.no_beat,
            metrics=not args.no_metrics,
        )
    except StackError as err:
        print(f"vigil: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
