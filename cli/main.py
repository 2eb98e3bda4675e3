"""The ``vigil`` command: operators look at users and act on them, newcomers run it all.

Commands only parse options and call services; see ``cli.common`` for the exit codes.
"""

from __future__ import annotations

import typer

from cli import (
    admin,
    attribution,
    bond,
    deadletters,
    demo,
    history,
    metrics,
    migration,
    ops,
    streams,
    top,
)
from cli.common import VigilGroup

app = typer.Typer(
    cls=VigilGroup,
    help="vigil: chat-safety task queue. Operator tools and a one-command demo.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

app.add_typer(bond.app, name="bond")
app.command("events")(bond.events)
app.add_typer(history.app, name="history")
app.add_typer(attribution.app, name="attribution")
app.add_typer(admin.cap_app, name="cap")
app.add_typer(admin.note_app, name="note")
app.command("erase")(admin.erase)
app.add_typer(deadletters.app, name="deadletters")
app.command("tail")(streams.tail)
app.add_typer(streams.app, name="streams")
app.command("health")(ops.health)
app.add_typer(ops.schema_app, name="schema")
app.command("migrate")(ops.migrate)
app.command("migrate-state")(migration.migrate_state)
app.command("up")(ops.up)
app.command("flower")(ops.flower)
app.command("demo")(demo.demo)
app.add_typer(metrics.app, name="metrics")
app.command("top")(top.top)

if __name__ == "__main__":
    app()
