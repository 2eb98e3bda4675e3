"""``vigil demo``: feed the demo communities, show a progress bar, then a summary.

The feed itself lives in ``stack.demo``; this module only draws it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table

from cli.common import EXIT_NOT_FOUND, AsJson, console, err_console, load_settings, print_json
from services.core.settings import Settings
from stack import demo as feed


def run_and_report(
    settings: Settings,
    *,
    users: int,
    messages: int,
    seed: int | None = None,
    as_json: bool = False,
    flower_url: str | None = None,
    flower_open: bool = False,
) -> feed.DemoReport:
    columns = (TextColumn("{task.description:<11}"), BarColumn(), MofNCompleteColumn())
    with Progress(*columns, console=err_console if as_json else console) as bar:
        tasks: dict[str, int] = {}

        def progress(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task(stage, total=total)
            bar.update(tasks[stage], completed=done, total=total)

        report = feed.run(settings, users=users, messages=messages, seed=seed, progress=progress)
    if as_json:
        print_json(report.model_dump(mode="json"))
    else:
        render(report, settings, flower_url=flower_url, flower_open=flower_open)
    return report


def render(
    report: feed.DemoReport,
    settings: Settings,
    *,
    flower_url: str | None = None,
    flower_open: bool = False,
) -> None:
    table = Table(title=f"demo run {report.run_id}: {report.users} users, 4 communities")
    table.add_column("what")
    table.add_column("count", justify="right")
    table.add_row("messages sent", str(report.messages_sent))
    for status in ("accepted", "rate_limited", "rejected", "duplicate"):
        table.add_row(f"  {status.replace('_', '-')}", str(report.outcomes.get(status, 0)))
    for status, n in report.outcomes.items():
        if status not in ("accepted", "rate_limited", "rejected", "duplicate"):
            table.add_row(f"  {status}", str(n))
    table.add_row("detections sent", str(report.detections_sent))
    for status, n in report.detection_outcomes.items():
        table.add_row(f"  {status}", str(n))
    table.add_row("phase transitions", str(report.phase_transitions))
    for topic, n in report.envelopes.items():
        table.add_row(f"envelopes {topic}", str(n))
    table.add_row("flagged identities", str(len(report.flagged_identities)))
    if report.unfinished_tasks:
        table.add_row("[red]tasks without an answer[/red]", str(report.unfinished_tasks))
    console.print(table)
    for f in report.flagged_identities:
        console.print(f"  multi-actor suspect {f['identity_id']} ({', '.join(f['user_ids'])})")
    _where_next(report, settings, flower_url, flower_open)


def _where_next(
    report: feed.DemoReport, settings: Settings, flower_url: str | None, flower_open: bool
) -> None:
    from stack import runner

    password_file = Path(settings.data_dir).resolve() / runner.FLOWER_SECRET_FILE
    if flower_open:
        login = "no login: local-only"
    elif settings.flower_basic_auth:
        login = "user and password from VIGIL_FLOWER_BASIC_AUTH"
    else:
        login = f"user {runner.FLOWER_USER}, password in {password_file}"
    flower_url = flower_url or f"http://{settings.flower_address}:{settings.flower_port}"
    escalating = report.escalating_users[0] if report.escalating_users else "USER_ID"
    console.print("\nwhere to look next:")
    console.print(f"  Flower      {flower_url} ({login})")
    console.print("  envelopes   vigil tail bond --from-start --count 20")
    console.print("  bonds       vigil bond list")
    console.print(f"  one user    vigil bond show {escalating}; vigil events {escalating}")
    console.print("  suspects    vigil attribution flagged")
    console.print("  rejected    vigil deadletters list")


def demo(
    users: Annotated[int, typer.Option(min=4, max=1000, help="How many users.")] = 40,
    messages: Annotated[int, typer.Option(min=20, max=100_000, help="How many messages.")] = 600,
    seed: Annotated[int | None, typer.Option(help="Same seed, same feed.")] = None,
    as_json: AsJson = False,
) -> None:
    """Feed demo communities through running workers and summarise what happened."""
    try:
        report = run_and_report(
            load_settings(), users=users, messages=messages, seed=seed, as_json=as_json
        )
    except feed.NoWorker as exc:
        err_console.print(str(exc))
        raise typer.Exit(EXIT_NOT_FOUND) from None
    if report.unfinished_tasks:
        raise typer.Exit(EXIT_NOT_FOUND)
