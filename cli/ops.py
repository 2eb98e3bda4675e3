"""Running vigil: ``health``, ``schema export``, ``migrate``, ``up``, ``flower``."""

from __future__ import annotations

import json
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import redis
import typer
from rich.table import Table

from cli.common import (
    EXIT_NOT_FOUND,
    EXIT_UNREACHABLE,
    UNREACHABLE_ERRORS,
    AsJson,
    cli_app,
    console,
    emit,
    err_console,
    load_settings,
    print_json,
    state_redis,
)
from services.core.settings import Settings, get_settings

schema_app = typer.Typer(
    help="JSON Schemas of the envelope streams and the tasks' kwargs.", no_args_is_help=True
)


def worker_replies(timeout: float = 2.0) -> dict[str, Any]:
    """Workers that answer a control ping, by node name."""
    replies = cli_app().control.ping(timeout=timeout)
    return {name: reply for by_worker in replies for name, reply in by_worker.items()}


def beat_runs(redis_client: redis.Redis, settings: Settings) -> dict[str, str | None]:
    """Last run of each periodic job, from redbeat's entries in Redis
    (``<vigil_prefix>redbeat:<job name>``, field ``meta``)."""
    from redbeat.decoder import RedBeatJSONDecoder

    import celeryconfig

    out: dict[str, str | None] = {}
    for name in sorted(celeryconfig.beat_schedule):
        raw = redis_client.hget(f"{celeryconfig.redbeat_key_prefix}{name}", "meta")
        last = json.loads(raw, cls=RedBeatJSONDecoder).get("last_run_at") if raw else None
        out[name] = last.astimezone(UTC).isoformat() if isinstance(last, datetime) else None
    return out


def health(as_json: AsJson = False) -> None:
    """Broker, Redis (and how it keeps data), PostgreSQL, workers and beat.
    Exit 1 unhealthy, 3 unreachable."""
    from services.core import health as checks

    settings = load_settings()
    report: dict[str, Any] = dict(checks.store_checks(settings))
    if report["broker"]["ok"]:
        try:
            workers = worker_replies()
        except UNREACHABLE_ERRORS as exc:
            report["workers"] = {"ok": False, "error": type(exc).__name__, "nodes": []}
        else:
            report["workers"] = {"ok": bool(workers), "nodes": sorted(workers)}
    else:
        report["workers"] = {"ok": False, "error": "broker unreachable", "nodes": []}
    if report["redis"]["ok"]:
        runs = beat_runs(state_redis(settings), settings)
        report["beat"] = {"ok": any(runs.values()), "last_runs": runs}
    emit(report, as_json, _render_health)
    if not all(report[k]["ok"] for k in ("broker", "redis", "postgres")):
        raise typer.Exit(EXIT_UNREACHABLE)
    if not report["workers"]["ok"] or any(report[k].get("problems") for k in ("broker", "redis")):
        raise typer.Exit(EXIT_NOT_FOUND)


def _render_health(report: dict[str, Any]) -> None:
    table = Table(title="vigil health")
    for col in ("part", "ok", "detail"):
        table.add_column(col)
    for name in ("broker", "redis", "postgres"):
        part = report[name]
        notes = ("problems", "warnings")
        detail = part.get("error") or ", ".join(
            f"{k} {v}" for k, v in part.items() if k not in ("ok", *notes) and v is not None
        )
        ok = _ok(part["ok"] and not part.get("problems"))
        table.add_row(name, ok, detail)
        for problem in part.get("problems", ()):
            table.add_row("", "[red]FAIL[/red]", problem)
        for warning in part.get("warnings", ()):
            table.add_row("", "[yellow]warn[/yellow]", warning)
    workers = report["workers"]
    table.add_row(
        "workers", _ok(workers["ok"]), ", ".join(workers["nodes"]) or workers.get("error", "none")
    )
    if "beat" in report:
        runs = report["beat"]["last_runs"]
        # Beat has no heartbeat of its own: a job that never ran is shown, not failed.
        table.add_row("beat", _ok(report["beat"]["ok"], soft=True), "")
        for job, last in runs.items():
            table.add_row(f"  {job}", "", f"last run {last}" if last else "not run yet")
    console.print(table)


def _ok(ok: bool, soft: bool = False) -> str:
    if ok:
        return "[green]ok[/green]"
    return "[yellow]?[/yellow]" if soft else "[red]FAIL[/red]"


@schema_app.command("export")
def schema_export(
    directory: Annotated[
        Path | None, typer.Argument(help="Where to write (default: the repo's schemas/).")
    ] = None,
) -> None:
    """Write one JSON Schema file per envelope stream, and one per public task's
    kwargs (under tasks/)."""
    from services.envelopes import schemas
    from tasks import contract

    target = directory or schemas.DEFAULT_DIR
    written = schemas.export(target) + contract.export(target / "tasks")
    print_json({"status": "ok", "written": [str(p) for p in written]})


def migrate() -> None:
    """Create the database if needed and upgrade it to the newest migration."""
    from services.core import clients
    from stack import discovery

    url = clients.database_url(load_settings())
    created = discovery.ensure_database(url)
    discovery.migrate(url)
    print_json({"status": "ok", "created_database": created, "revision": "head"})


def up(
    demo: Annotated[bool, typer.Option("--demo/--no-demo", help="Feed the demo once up.")] = True,
    exit_after_demo: Annotated[
        bool, typer.Option("--exit-after-demo", help="Stop everything after the demo.")
    ] = False,
    flower: Annotated[bool, typer.Option("--flower/--no-flower")] = True,
    flower_local_only: Annotated[
        bool, typer.Option("--flower-local-only", help="Flower without a login, loopback only.")
    ] = False,
    users: Annotated[int, typer.Option(min=4, max=1000, help="Demo users.")] = 40,
    messages: Annotated[int, typer.Option(min=20, max=100_000, help="Demo messages.")] = 600,
) -> None:
    """Run worker, beat and Flower (starting Redis/PostgreSQL if none), then the demo."""
    from stack import runner

    def then(running: runner.Stack) -> None:
        if demo:
            from cli.demo import run_and_report

            run_and_report(
                running.settings,
                users=users,
                messages=messages,
                flower_url=running.flower_url,
                flower_open=flower_local_only,
            )
        if exit_after_demo:
            return
        console.print("vigil keeps running; Ctrl-C to stop")
        while True:
            running.check_children()
            time.sleep(0.5)

    try:
        runner.run_stack(
            get_settings(),  # run_stack resolves (and may start) the services itself
            then=then,
            flower=flower,
            flower_local_only=flower_local_only,
        )
    except runner.StackError as exc:
        err_console.print(f"[red]vigil up failed:[/red] {exc}")
        raise typer.Exit(EXIT_NOT_FOUND) from None


def flower(
    local_only: Annotated[
        bool, typer.Option("--local-only", help="No login; only allowed on loopback.")
    ] = False,
) -> None:
    """Run Flower alone, with a login (the one `vigil up` generated, or your own)."""
    from stack import runner

    settings = load_settings()
    try:
        auth = runner.flower_auth(
            settings, Path(settings.data_dir).resolve(), generate=not local_only
        )
        argv, extra = runner.flower_command(settings, basic_auth=auth, local_only=local_only)
    except runner.FlowerAuthError as exc:
        err_console.print(f"[red]{exc}[/red]")
        raise typer.Exit(EXIT_NOT_FOUND) from None
    console.print(f"Flower on http://{settings.flower_address}:{settings.flower_port}")
    code = subprocess.run(argv, env=runner.child_env(extra), cwd=runner.ROOT, check=False)
    raise typer.Exit(code.returncode)
