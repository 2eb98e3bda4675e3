"""``vigil deadletters``: payloads that could never succeed. Listings never show
payloads (they may hold message text): ids, reasons and sizes only."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Table

from cli.common import AsJson, console, emit, fail, print_json, send_admin, sessions
from services.deadletters import store
from tasks import names

app = typer.Typer(help="Dead-lettered task payloads.", no_args_is_help=True)

REPLAY_BATCH = 1000  # ReplayIn's bound


@app.command("list")
def list_(
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 50,
    task: Annotated[str | None, typer.Option(help="Only this task name.")] = None,
    pending: Annotated[bool, typer.Option("--pending", help="Only not yet replayed.")] = False,
    as_json: AsJson = False,
) -> None:
    """Dead letters, newest first."""
    with sessions()() as session:
        rows = [
            store.summary(row)
            for row in store.list_rows(session, limit=limit, task_name=task, pending_only=pending)
        ]
    emit(rows, as_json, _render)


def _render(rows: list[dict[str, Any]]) -> None:
    table = Table(title="dead letters (newest first)")
    for col in ("id", "task", "reason", "user", "chars", "created", "replayed", "details"):
        table.add_column(col)
    for row in rows:
        table.add_row(
            str(row["id"]),
            row["task_name"],
            row["reason"],
            row["user_id"] or "-",
            str(row["payload_chars"]) + (" (cut)" if row["payload_truncated"] else ""),
            row["created_at"][:19],
            f"{row['replay_count']}x" if row["replayed_at"] else "-",
            "; ".join(row["details"])[:120],
        )
    console.print(table)


@app.command("replay")
def replay(
    ids: Annotated[list[int] | None, typer.Argument(help="Dead-letter ids.")] = None,
    all_: Annotated[bool, typer.Option("--all", help="Every one not yet replayed.")] = False,
) -> None:
    """Send dead-lettered payloads again under their task names (admin queue)."""
    if bool(ids) == all_:
        fail("give dead-letter ids or --all", 2)
    if all_:
        with sessions()() as session:
            ids = [
                row.id for row in store.list_rows(session, limit=REPLAY_BATCH, pending_only=True)
            ]
        if not ids:
            print_json({"status": "ok", "replayed": []})
            return
    send_admin(names.ADMIN_REPLAY_DEAD_LETTERS, {"ids": ids})


@app.command("purge")
def purge(
    ids: Annotated[list[int] | None, typer.Argument(help="Dead-letter ids.")] = None,
    older_than_days: Annotated[int | None, typer.Option(min=0)] = None,
) -> None:
    """Delete dead letters by id, or all older than N days."""
    if bool(ids) == (older_than_days is not None):
        fail("give dead-letter ids or --older-than-days N", 2)
    with sessions()() as session, session.begin():
        purged = store.purge(session, ids=ids or None, older_than_days=older_than_days)
    print_json({"status": "ok", "purged": purged})
