"""``vigil tail`` and ``vigil streams latest``: envelopes on the Redis streams."""

from __future__ import annotations

import json
import os
import socket
import sys
from enum import StrEnum
from typing import Annotated, Any

import redis
import typer
from rich.table import Table

from cli.common import AsJson, console, emit, err_console, fail, load_settings, state_redis
from models.envelopes import Envelope
from services.core.settings import Settings
from services.envelopes import consumers, streams

app = typer.Typer(help="Envelope streams.", no_args_is_help=True)


class StreamName(StrEnum):
    bond = "bond"
    attribution = "attribution"
    user = "user"


def as_dict(entry_id: str, envelope: Envelope) -> dict[str, Any]:
    return {"entry_id": entry_id, **envelope.model_dump(mode="json")}


def one_line(data: dict[str, Any]) -> str:
    payload = " ".join(
        f"{field}={json.dumps(value, sort_keys=True) if isinstance(value, (dict, list)) else value}"
        for field, value in data["payload"].items()
        if value is not None
    )
    return (
        f"{data['entry_id']}  {data['published_at'][:19]}  [bold]{data['topic']}[/bold]  {payload}"
    )


@app.command("latest")
def latest(
    stream: StreamName,
    count: Annotated[int, typer.Option(min=1, max=10_000)] = 20,
    as_json: AsJson = False,
) -> None:
    """The newest envelopes of a stream, newest first."""
    settings = load_settings()
    rows = [
        as_dict(entry_id, envelope)
        for entry_id, envelope in streams.read_latest(
            state_redis(settings), settings, stream, count
        )
    ]
    emit(rows, as_json, _render_latest)


def _render_latest(rows: list[dict[str, Any]]) -> None:
    table = Table(title="newest first")
    for col in ("entry", "published", "topic", "payload"):
        table.add_column(col)
    for row in rows:
        table.add_row(
            row["entry_id"],
            row["published_at"][:19],
            row["topic"],
            json.dumps(row["payload"], sort_keys=True),
        )
    console.print(table)


def _show(entry_id: str, envelope: Envelope, as_json: bool) -> None:
    data = as_dict(entry_id, envelope)
    if as_json:
        sys.stdout.write(json.dumps(data, sort_keys=True) + "\n")
        sys.stdout.flush()
    else:
        console.print(one_line(data))


def tail(
    stream: StreamName,
    consumer_group: Annotated[
        str | None,
        typer.Option("--group", help="Consume as a member of this consumer group (acks)."),
    ] = None,
    consumer: Annotated[
        str | None, typer.Option(help="Consumer name in the group (default: host-pid).")
    ] = None,
    count: Annotated[
        int | None, typer.Option(min=1, help="Exit after this many envelopes.")
    ] = None,
    from_start: Annotated[
        bool, typer.Option("--from-start", help="Begin at the oldest entry, not new ones.")
    ] = False,
    as_json: AsJson = False,
) -> None:
    """Print envelopes as they arrive (Ctrl-C to stop)."""
    if consumer and not consumer_group:
        fail("--consumer needs --group", 2)
    settings = load_settings()
    redis_client = state_redis(settings)
    shard_keys = streams.stream_keys(settings, stream)
    key = shard_keys[0] if len(shard_keys) == 1 else f"{stream} ({len(shard_keys)} shards)"
    if consumer_group:
        where = (
            "from its oldest entry if the group is new"
            if from_start
            else "at new entries if the group is new (--from-start: from the oldest)"
        )
        note = f"consuming {key} as group {consumer_group}, {where}; Ctrl-C stops"
    elif from_start:
        note = f"reading {key} from its oldest entry, then waiting for new ones; Ctrl-C stops"
    else:
        note = f"waiting for new entries on {key} (--from-start: from the oldest); Ctrl-C stops"
    err_console.print(f"[dim]{note}[/dim]")
    try:
        if consumer_group:
            _tail_consumer_group(
                redis_client,
                settings,
                stream,
                consumer_group,
                consumer,
                count,
                from_start,
                as_json,
            )
        else:
            follow = streams.follow(
                redis_client, settings, stream, last_id="0" if from_start else "$"
            )
            for seen, (entry_id, envelope) in enumerate(follow, start=1):
                _show(entry_id, envelope, as_json)
                if count is not None and seen >= count:
                    return
    except KeyboardInterrupt:
        return


def _tail_consumer_group(
    redis_client: redis.Redis,
    settings: Settings,
    stream: StreamName,
    consumer_group: str,
    consumer: str | None,
    count: int | None,
    from_start: bool,
    as_json: bool,
) -> None:
    """At-least-once: each envelope is acked only after it was printed."""
    name = consumer or f"{socket.gethostname()}-{os.getpid()}"
    member = consumers.Consumer(
        redis_client,
        settings,
        stream,
        consumer_group,
        name,
        lambda entry_id, envelope: _show(entry_id, envelope, as_json),
        start_id="0" if from_start else "$",
    )
    handled = 0
    while count is None or handled < count:
        if count is not None:
            member.count = min(10, count - handled)
        handled += member.step()["handled"]
