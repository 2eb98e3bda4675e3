"""``vigil attribution``: behavioural attribution states from PostgreSQL."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

import typer
from rich.table import Table

from cli.common import AsJson, console, emit, fail, sessions
from services.attribution import service

app = typer.Typer(help="Attribution identities and their states.", no_args_is_help=True)


@app.command("user")
def user(
    user_id: str,
    platform: Annotated[str, typer.Option(help="Platform of the account.")] = "discord",
    as_json: AsJson = False,
) -> None:
    """The identity of an account and the state of each primitive."""
    with sessions()() as session:
        data = service.identity_of(session, platform, user_id)
    if data is None:
        fail(f"no attribution for {platform} user {user_id}")
    emit(data, as_json, _render_identity)


@app.command("identity")
def identity(identity_id: str, as_json: AsJson = False) -> None:
    """The states of one identity."""
    try:
        parsed = uuid.UUID(identity_id)
    except ValueError:
        fail(f"not an identity id (a UUID): {identity_id!r}", 2)
    with sessions()() as session:
        states = service.states_of_identity(session, parsed)
    if not states:
        fail(f"no attribution states for identity {identity_id}")
    emit({"identity_id": str(parsed), "states": states}, as_json, _render_identity)


@app.command("flagged")
def flagged(as_json: AsJson = False) -> None:
    """Identities suspected of being shared (2+ primitives in multi_actor)."""
    with sessions()() as session:
        rows = service.flagged_identities(session)
    emit(rows, as_json, _render_flagged)


def _render_identity(data: dict[str, Any]) -> None:
    actors = ", ".join(f"{a['platform']}:{a['user_id']}" for a in data.get("actors", []))
    title = f"identity {data['identity_id']}" + (f" ({actors})" if actors else "")
    table = Table(title=title)
    for col in ("primitive", "kind", "state", "value", "confidence", "observations", "changed"):
        table.add_column(col)
    for st in data["states"]:
        style = "red" if st["state"] in ("multi_actor", "conflicted") else None
        table.add_row(
            st["primitive"],
            st["kind"],
            st["state"],
            st["current_value"] or "-",
            f"{st['confidence']:.2f}",
            str(st["observation_count"]),
            (st["last_change_ts"] or "-")[:19],
            style=style,
        )
    console.print(table)


def _render_flagged(rows: list[dict[str, Any]]) -> None:
    table = Table(title="multi-actor suspects")
    for col in ("identity", "accounts", "primitives", "announced"):
        table.add_column(col)
    for row in rows:
        table.add_row(
            row["identity_id"],
            ", ".join(f"{a['platform']}:{a['user_id']}" for a in row["actors"]),
            ", ".join(row["primitives"]),
            row["announced_at"] or "not yet",
        )
    console.print(table)
    if not rows:
        console.print("no identity is flagged")
