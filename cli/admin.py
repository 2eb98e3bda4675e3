"""Operator actions, each sent as an admin task: ``vigil cap set``, ``vigil note add``,
``vigil erase``. They print the task's JSON outcome."""

from __future__ import annotations

from typing import Annotated

import typer

from cli.common import fail, send_admin
from tasks import names

cap_app = typer.Typer(help="Daily message caps.", no_args_is_help=True)
note_app = typer.Typer(help="Operator notes on a bond.", no_args_is_help=True)


@cap_app.command("set")
def set_cap(
    user_id: str, cap: Annotated[int, typer.Argument(min=0, help="0 means unlimited.")]
) -> None:
    """Set a user's daily message cap."""
    send_admin(names.ADMIN_SET_CAP, {"user_id": user_id, "cap": cap})


@note_app.command("add")
def add_note(user_id: str, text: str) -> None:
    """Add a note to a user's bond (the last 20 are kept)."""
    send_admin(names.ADMIN_ADD_NOTE, {"user_id": user_id, "note": text})


def erase(
    user_id: str,
    platform: Annotated[str, typer.Option(help="Platform of the account.")] = "discord",
    yes: Annotated[bool, typer.Option("--yes", help="Confirm: this cannot be undone.")] = False,
) -> None:
    """Erase a user everywhere: history, bond, events, attribution, dead letters."""
    if not yes:
        fail("erase deletes everything vigil keeps about the user; add --yes to confirm", 2)
    send_admin(names.ADMIN_ERASE_USER, {"user_id": user_id, "platform": platform}, timeout=600)
