"""What every command group shares: clients, output, exit codes, admin tasks.

Exit codes: 0 ok, 1 not found or unhealthy, 2 usage error (click's own),
3 a store or the broker is unreachable.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from typing import Annotated, Any, NoReturn

import click
import redis
import typer
from celery import Celery
from celery.exceptions import TimeoutError as ResultTimeout
from kombu.exceptions import OperationalError as BrokerError
from redis.exceptions import ClusterError, RedisClusterException
from rich.console import Console
from sqlalchemy.exc import OperationalError as DatabaseError
from sqlalchemy.orm import Session, sessionmaker
from typer.core import TyperGroup

from services.core.clients import (
    broker_transport_options,
    broker_url,
    configure_results,
    get_redis,
    result_backend,
    session_factory,
)
from services.core.settings import (
    DEFAULT_DATABASE_URL,
    DEFAULT_REDIS_URL,
    Settings,
    get_settings,
)
from stack.discovery import answers, app_database_url
from tasks.names import QUEUE_ADMIN, QUEUES
from vigil_client import is_amqp, sender_app
from worker import queues
from worker.redact import redact_kwargs

EXIT_OK = 0
EXIT_NOT_FOUND = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3

ADMIN_TIMEOUT_S = 60.0

console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)

UNREACHABLE_ERRORS: tuple[type[BaseException], ...] = (
    redis.ConnectionError,
    redis.TimeoutError,
    ClusterError,
    RedisClusterException,
    DatabaseError,
    BrokerError,
    ConnectionError,
)


class VigilGroup(TyperGroup):
    """Root group: an unreachable store ends the command with exit code 3 and one
    line naming it, not a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except UNREACHABLE_ERRORS as exc:
            err_console.print(f"[red]unreachable:[/red] {_describe(exc)}")
            raise typer.Exit(EXIT_UNREACHABLE) from None


class DefaultGroup(TyperGroup):
    """A group whose first argument, when it names no subcommand, goes to ``show``:
    ``vigil history USER`` and ``vigil history clear USER`` side by side."""

    default_command = "show"

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ctx.help_option_names:
            args = [self.default_command, *args]
        return super().parse_args(ctx, args)


def _describe(exc: BaseException) -> str:
    kind = {
        redis.ConnectionError: "Redis",
        redis.TimeoutError: "Redis",
        DatabaseError: "PostgreSQL",
        BrokerError: "broker",
    }
    for cls, name in kind.items():
        if isinstance(exc, cls):
            first = str(exc).splitlines()[0][:200] if str(exc) else ""
            return f"{name}: {type(exc).__name__}: {first}"
    return f"{type(exc).__name__}: {str(exc)[:200]}"


def load_settings() -> Settings:
    """This process's settings; with nothing configured and nothing on the default
    ports, the embedded servers a running ``vigil up`` started, if they answer."""
    return find_running(get_settings())


def find_running(settings: Settings) -> Settings:
    update: dict[str, str] = {}
    embedded_redis = f"redis://127.0.0.1:{settings.embedded_redis_port}"
    if (
        settings.redis_url is None
        and not settings.redis_sentinels
        and not answers(DEFAULT_REDIS_URL)
        and answers(embedded_redis)
    ):
        # The same databases stack.runner.resolve gives an embedded Redis.
        update["redis_url"] = f"{embedded_redis}/0"
        update["broker_url"] = settings.broker_url or f"{embedded_redis}/1"
    embedded_pg = (
        f"postgresql+psycopg://postgres@127.0.0.1:{settings.embedded_postgres_port}/postgres"
    )
    if settings.database_url is None and not answers(DEFAULT_DATABASE_URL) and answers(embedded_pg):
        update["database_url"] = app_database_url(embedded_pg, "vigil")
    return settings.model_copy(update=update) if update else settings


def state_redis(settings: Settings | None = None) -> redis.Redis:
    return get_redis(settings or load_settings())


def sessions(settings: Settings | None = None) -> sessionmaker[Session]:
    return session_factory(settings or load_settings())


@functools.cache
def _sender(broker: str, results: str, settings: Settings) -> Celery:
    app = sender_app(
        broker,
        results,
        name="vigil-cli",
        broker_transport_options=broker_transport_options(settings),
    )
    configure_results(app, settings)
    if is_amqp(broker):
        # Publish to the queues as they exist (an upgraded vhost's earlier quorum
        # queues on topic exchanges), as workers do, never redeclaring them.
        queues.adopt(app, QUEUES)
    return app


def cli_app(settings: Settings | None = None) -> Celery:
    """The CLI's own Celery app, built from resolved settings: it sends admin tasks
    and pings workers, and never touches the worker's app."""
    settings = settings or load_settings()
    return _sender(broker_url(settings), result_backend(settings), settings)


def print_json(data: Any) -> None:
    # Plain print: rich would wrap long lines and break the JSON for pipes.
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def emit(data: Any, as_json: bool, render: Callable[[Any], None]) -> None:
    if as_json:
        print_json(data)
    else:
        render(data)


def fail(message: str, code: int = EXIT_NOT_FOUND) -> NoReturn:
    err_console.print(message)
    raise typer.Exit(code)


def truncate(text: str, chars: int = 80) -> str:
    text = " ".join(text.split())
    return text if len(text) <= chars else text[: chars - 1] + "\u2026"


def send_admin(name: str, kwargs: dict[str, Any], timeout: float = ADMIN_TIMEOUT_S) -> dict:
    """Send an admin task by name and wait for its stored JSON outcome.

    Exits 1 when the task rejected the request, failed or did not answer in
    time (no worker on the ``admin`` queue)."""
    result = cli_app().send_task(
        name,
        kwargs=kwargs,
        queue=QUEUE_ADMIN,
        ignore_result=False,
        argsrepr="()",
        kwargsrepr=redact_kwargs(kwargs),
    )
    try:
        outcome = result.get(timeout=timeout, propagate=False)
    except ResultTimeout:
        result.forget()
        fail(f"no answer from a worker on the admin queue within {timeout:.0f}s ({name})")
    if result.failed():
        print_json({"status": "failed", "task": name, "error": type(outcome).__name__})
        raise typer.Exit(EXIT_NOT_FOUND)
    print_json(outcome)
    if not isinstance(outcome, dict) or outcome.get("status") not in ("ok", "erased"):
        raise typer.Exit(EXIT_NOT_FOUND)
    return outcome


AsJson = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]
