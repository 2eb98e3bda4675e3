"""``vigil migrate-state``: copy a single Redis's state into the configured Redis Cluster."""

from __future__ import annotations

from typing import Annotated, Any

import redis
import typer
from rich.table import Table

from cli.common import (
    EXIT_NOT_FOUND,
    EXIT_USAGE,
    AsJson,
    console,
    emit,
    err_console,
    fail,
    load_settings,
    state_redis,
)
from services.core.clients import STATE_CLIENT_OPTIONS
from services.migration.service import (
    DEFAULT_BATCH,
    KINDS,
    NOT_COPIED_NOTE,
    STOP_FIRST,
    MigrationError,
    Report,
    describe,
    migrate,
    verify,
)


def migrate_state(
    from_url: Annotated[
        str,
        typer.Option(
            "--from-url", help="The single Redis the state is on now: redis://host:port/db."
        ),
    ],
    yes: Annotated[
        bool, typer.Option("--yes", "-y", help="Do not ask: what must be stopped is stopped.")
    ] = False,
    batch: Annotated[
        int, typer.Option(min=1, max=10_000, help="Keys or stream entries per round trip.")
    ] = DEFAULT_BATCH,
    verify_only: Annotated[
        bool, typer.Option("--verify-only", help="Copy nothing; compare the counts only.")
    ] = False,
    as_json: AsJson = False,
) -> None:
    """Copy a single Redis's vigil state into the Redis Cluster of
    VIGIL_REDIS_CLUSTER_NODES, then compare counts. Run it again after an
    interruption. Exit 1 when counts differ."""
    settings = load_settings()
    if not settings.redis_cluster_nodes:
        fail(
            "migrate-state copies into a Redis Cluster: set VIGIL_REDIS_CLUSTER_NODES "
            "(and VIGIL_BROKER_URL) to the cluster the state moves to",
            EXIT_USAGE,
        )
    try:
        source = redis.Redis.from_url(from_url, **STATE_CLIENT_OPTIONS)
    except ValueError as exc:
        fail(f"--from-url: {exc}", EXIT_USAGE)
    target = state_redis(settings)
    try:
        if verify_only:
            report = Report(checks=verify(source, target, settings))
        else:
            if not yes:
                _confirm(describe(source), str(settings.redis_cluster_nodes))
            with err_console.status("copying") as status:
                report = migrate(
                    source,
                    target,
                    settings,
                    batch=batch,
                    progress=lambda phase, done: status.update(f"copying {phase}: {done}"),
                )
    except MigrationError as exc:
        fail(f"[red]migrate-state:[/red] {exc}")
    data = report.as_dict()
    emit(data, as_json, _render_checks if verify_only else _render)
    if not report.ok:
        raise typer.Exit(EXIT_NOT_FOUND)


def _confirm(source: str, nodes: str) -> None:
    """What must be stopped first, and a last chance to go and stop it."""
    err_console.print(f"Copy vigil's state on {source} into the Redis Cluster at {nodes}.")
    err_console.print("Stop first:")
    for step in STOP_FIRST:
        err_console.print(f"  - {step}")
    err_console.print(f"Not copied: {NOT_COPIED_NOTE['redbeat']}.")
    typer.confirm("Are they stopped? Continue", abort=True, err=True)


def _render(data: dict[str, Any]) -> None:
    copied = Table(title="copied keys, TTLs kept")
    copied.add_column("kind")
    copied.add_column("keys", justify="right")
    for kind in KINDS:
        copied.add_row(kind, str(data["copied"][kind]))
    if data["vanished"]:
        copied.add_row("expired meanwhile", str(data["vanished"]))
    console.print(copied)
    for why, note in NOT_COPIED_NOTE.items():
        count = data["not_copied"][why]
        if count or why == "redbeat":
            console.print(f"not copied ({count}): {note}")
    console.print(
        "counters: added to shard 0's counters"
        if data["counters_added"]
        else "counters: already added by an earlier run (not added again)"
    )
    table = Table(title="streams (entries to their envelope's shard, same ids)")
    for column in ("stream", "entries", "added", "already there", "groups", "pending", "dropped"):
        table.add_column(column, justify="left" if column in ("stream", "groups") else "right")
    for stream in data["streams"]:
        table.add_row(
            stream["key"],
            str(stream["entries"]),
            str(stream["added"]),
            str(stream["already_there"]),
            ", ".join(stream["groups"]) or "-",
            str(stream["pending_restored"]),
            str(stream["pending_dropped"]),
        )
    console.print(table)
    console.print(
        "pending: entries a group had delivered but not acked, put back in its pending list "
        "(same consumer, delivery count, idle time); dropped: pending entries whose entry the "
        "stream no longer held"
    )
    _render_checks(data)


def _render_checks(data: dict[str, Any]) -> None:
    table = Table(title="verification")
    for column in ("count", "source", "cluster", "ok"):
        table.add_column(column, justify="left" if column == "count" else "right")
    for check in data["checks"]:
        ok = "[green]ok[/green]" if check["ok"] else "[red]DIFFERS[/red]"
        table.add_row(check["what"], str(check["source"]), str(check["target"]), ok)
    console.print(table)
    if data["status"] == "ok":
        console.print(
            "[green]every count matches[/green]: start workers, beat and stream readers "
            "with VIGIL_REDIS_CLUSTER_NODES"
        )
    else:
        console.print(
            "[red]counts differ[/red]: was something still writing? Keys with a TTL may also "
            "have expired between the two counts: run again with --verify-only"
        )
