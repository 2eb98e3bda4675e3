"""``vigil bond show|list`` and ``vigil events``: the bond ledger as operators see it."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

import typer
from rich.table import Table

from cli.common import AsJson, console, emit, fail, load_settings, state_redis
from services.bonds import ledger

app = typer.Typer(help="Per-user bond ledger.", no_args_is_help=True)


def when(ts: float | None) -> str:
    if not ts:
        return "-"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S")


@app.command("show")
def show(user_id: str, as_json: AsJson = False) -> None:
    """One user's bond and today's cap."""
    settings = load_settings()
    redis_client = state_redis(settings)
    bond = ledger.load(redis_client, settings, user_id)
    if bond is None:
        fail(f"no bond for user {user_id}")
    data = bond.model_dump(mode="json")
    data["rate_limit"] = ledger.check_rate_limit(redis_client, settings, user_id).model_dump()
    emit(data, as_json, _render_bond)


def _render_bond(data: dict[str, Any]) -> None:
    table = Table(title=f"bond {data['user_id']}", show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value")
    limit = data["rate_limit"]
    cap = "unlimited" if limit["cap"] == 0 else f"{limit['count']}/{limit['cap']} today"
    rows = [
        ("phase", f"{data['phase']} (was {data['prev_phase']})"),
        ("since", when(data["phase_entered_at"])),
        ("risk", data["risk_level"]),
        ("archetype", data["archetype"]),
        ("turns", str(data["turn_count"])),
        ("egg", data["egg_status"]),
        ("daily cap", cap),
        ("peak nodes", ", ".join(f"{k}={v:g}" for k, v in data["peak_nodes"].items()) or "-"),
        ("updated", when(data["last_updated"])),
    ]
    for name, value in rows:
        table.add_row(name, value)
    for note in data["notes"]:
        table.add_row("note", note)
    console.print(table)


@app.command("list")
def list_(
    limit: Annotated[int, typer.Option(min=1, max=1000, help="Bonds per page.")] = 50,
    cursor: Annotated[int, typer.Option(min=0, help="Cursor from the previous page.")] = 0,
    as_json: AsJson = False,
) -> None:
    """Bonds one page at a time; pass --cursor back until it is 0."""
    settings = load_settings()
    next_cursor, page = ledger.list_bonds(
        state_redis(settings), settings, cursor=cursor, count=limit
    )
    data = {
        "cursor": next_cursor,
        "bonds": [
            {
                "user_id": b.user_id,
                "phase": b.phase,
                "risk_level": b.risk_level,
                "turn_count": b.turn_count,
                "daily_msg_cap": b.daily_msg_cap,
                "daily_msg_count": b.daily_msg_count,
                "last_updated": b.last_updated,
            }
            for b in sorted(page, key=lambda b: b.user_id)
        ],
    }
    emit(data, as_json, _render_list)


def _render_list(data: dict[str, Any]) -> None:
    table = Table(title="bonds")
    for col in ("user", "phase", "risk", "turns", "cap", "updated"):
        table.add_column(col)
    for b in data["bonds"]:
        cap = "-" if b["daily_msg_cap"] == 0 else f"{b['daily_msg_count']}/{b['daily_msg_cap']}"
        table.add_row(
            b["user_id"],
            b["phase"],
            b["risk_level"],
            str(b["turn_count"]),
            cap,
            when(b["last_updated"]),
        )
    console.print(table)
    if data["cursor"]:
        console.print(f"more: vigil bond list --cursor {data['cursor']}")


def events(
    user_id: str,
    limit: Annotated[int, typer.Option(min=1, max=500)] = 50,
    as_json: AsJson = False,
) -> None:
    """A user's bond events, newest first."""
    settings = load_settings()
    redis_client = state_redis(settings)
    found = ledger.get_events(redis_client, settings, user_id, limit=limit)
    if not found and ledger.load(redis_client, settings, user_id) is None:
        fail(f"no bond for user {user_id}")
    emit([e.model_dump(mode="json") for e in found], as_json, _render_events)


def _render_events(data: list[dict[str, Any]]) -> None:
    table = Table(title="events (newest first)")
    for col in ("time", "type", "detail"):
        table.add_column(col)
    for e in data:
        table.add_row(when(e["timestamp"]), e["event_type"], e["detail"])
    console.print(table)
