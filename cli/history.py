"""``vigil history``: a user's stored messages in one community (operators may see them)."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Table

from cli.common import (
    AsJson,
    DefaultGroup,
    console,
    emit,
    fail,
    load_settings,
    send_admin,
    state_redis,
    truncate,
)
from services.bonds import history
from services.core import keys
from tasks import names

app = typer.Typer(
    cls=DefaultGroup,
    help="Per-(guild, user) message history. `vigil history USER_ID` shows it.",
    no_args_is_help=True,
)

Guild = Annotated[str | None, typer.Option("--guild", help="Guild (community) id.")]
Dm = Annotated[bool, typer.Option("--dm", help="Direct messages instead of a guild.")]


def _where(guild: str | None, dm: bool, *, required: bool) -> tuple[bool, str | None]:
    """(chosen, guild_id): history is per guild, so say which one, or --dm."""
    if guild and dm:
        fail("give --guild or --dm, not both", 2)
    if required and not (guild or dm):
        fail("say which history: --guild GUILD_ID or --dm", 2)
    return bool(guild or dm), guild


def _guild_of(settings, key: str, user_id: str) -> str | None:
    return keys.history_guild(settings, key, user_id)


@app.command("show")
def show(
    user_id: str,
    guild: Guild = None,
    dm: Dm = False,
    limit: Annotated[int, typer.Option(min=1, max=100)] = 20,
    stats: Annotated[bool, typer.Option("--stats", help="Severity counts instead.")] = False,
    chars: Annotated[int, typer.Option(min=10, help="Truncate message text to this.")] = 80,
    as_json: AsJson = False,
) -> None:
    """Stored messages of one guild, newest first (text truncated), or their stats.

    Without --guild or --dm: which guilds hold history of the user."""
    chosen, guild = _where(guild, dm, required=False)
    settings = load_settings()
    redis_client = state_redis(settings)
    if not chosen:
        found = [
            {
                "guild_id": _guild_of(settings, key, user_id),
                "messages": history.count(
                    redis_client, settings, _guild_of(settings, key, user_id), user_id
                ),
            }
            for key in sorted(history.guild_keys(redis_client, settings, user_id))
        ]
        if not found:
            fail(f"no history for user {user_id}")
        emit(found, as_json, _render_guilds)
        return
    if not history.exists(redis_client, settings, guild, user_id):
        fail(f"no history for user {user_id} in {'guild ' + guild if guild else 'direct messages'}")
    if stats:
        emit(
            history.stats(redis_client, settings, guild, user_id).model_dump(mode="json"),
            as_json,
            _render_stats,
        )
        return
    items = [
        {**m.model_dump(mode="json"), "message": truncate(m.message, chars)}
        for m in history.get(redis_client, settings, guild, user_id, limit=limit)
    ]
    emit(items, as_json, _render_items)


def _render_items(items: list[dict[str, Any]]) -> None:
    table = Table(title="history (newest first)")
    for col in ("time", "severity", "score", "message"):
        table.add_column(col)
    for m in items:
        score = "-" if m.get("crisis_score") is None else f"{m['crisis_score']:.2f}"
        table.add_row(m["timestamp"], m["severity"], score, m["message"])
    console.print(table)


def _render_guilds(rows: list[dict[str, Any]]) -> None:
    table = Table(title="history by guild")
    table.add_column("guild")
    table.add_column("messages")
    for row in rows:
        table.add_row(row["guild_id"] or "(direct messages)", str(row["messages"]))
    console.print(table)
    console.print("show one: vigil history USER_ID --guild GUILD_ID (or --dm)")


def _render_stats(data: dict[str, Any]) -> None:
    table = Table(title="history stats", show_header=False)
    table.add_row("messages", str(data["total"]))
    for sev, n in data["by_severity"].items():
        table.add_row(sev, str(n))
    if data["max_crisis_score"] is not None:
        table.add_row("max score", f"{data['max_crisis_score']:.2f}")
    table.add_row("first", data["first_at"] or "-")
    table.add_row("last", data["last_at"] or "-")
    console.print(table)


@app.command("clear")
def clear(user_id: str, guild: Guild = None, dm: Dm = False) -> None:
    """Clear one guild's history of a user (through the admin queue)."""
    _, guild = _where(guild, dm, required=True)
    send_admin(names.ADMIN_CLEAR_HISTORY, {"user_id": user_id, "guild_id": guild})
