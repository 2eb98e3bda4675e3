"""``vigil top``: a live view of the pipeline, refreshed every second.

Ids only: users appear by id when their risk rose to high or critical in the
last hour, identities by id when suspected multi-actor; never message text.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Annotated

import typer
from rich.console import Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from cli.common import console, load_settings, sessions, state_redis
from services.core.clients import broker_transport_options, broker_url
from services.metrics import counters
from services.metrics.frames import Frame, Frames
from services.metrics.snapshot import BrokerQueues
from tasks.names import QUEUES


def top(
    once: Annotated[
        bool, typer.Option("--once", help="Print one frame (rates over --interval) and exit.")
    ] = False,
    interval: Annotated[float, typer.Option(min=0.2, max=60.0, help="Seconds per frame.")] = 1.0,
) -> None:
    """Rates per outcome, queue depths, stream lag, dead letters, risk alerts, suspects."""
    settings = load_settings()
    broker = BrokerQueues(broker_url(settings), QUEUES, broker_transport_options(settings))
    frames = Frames(state_redis(settings), settings, sessions(settings), broker)
    try:
        if once:
            frames.next()
            time.sleep(interval)
            console.print(render(frames.next()))
            return
        with Live(render(frames.next()), console=console, auto_refresh=False) as live:
            while True:
                time.sleep(interval)
                live.update(render(frames.next()), refresh=True)
    except KeyboardInterrupt:
        pass
    finally:
        broker.close()


def render(frame: Frame) -> Group:
    snap = frame.snap
    taken = datetime.fromtimestamp(snap.taken_at, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    stores = "  ".join(
        f"{name} {'[green]up[/green]' if ok else '[red]DOWN[/red]'}"
        for name, ok in sorted(snap.up.items())
    )
    parts: list = [Text.from_markup(f"[bold]vigil top[/bold]  {taken}  {stores}")]
    parts.append(_outcomes(frame))
    parts.append(_queues_and_streams(frame))
    parts.append(_backlog(frame))
    parts.append(_alerts(frame))
    return Group(*parts)


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f}"


def _outcomes(frame: Frame) -> Table:
    table = Table(title="ingest outcomes", title_justify="left")
    for col in ("family", "outcome", "per s", "total"):
        table.add_column(col, justify="right" if col in ("per s", "total") else "left")
    for family, outcomes in (
        (counters.MESSAGES, counters.MESSAGE_OUTCOMES),
        (counters.DETECTIONS, counters.DETECTION_OUTCOMES),
    ):
        for name in outcomes:
            field = counters.outcome(family, name)
            total = frame.snap.counters.get(field, 0)
            table.add_row(family, name, _rate(frame.rates.get(field)), f"{total:,}")
    return table


def _queues_and_streams(frame: Frame) -> Table:
    table = Table(title="queues and streams", title_justify="left")
    for col in ("what", "name", "length", "pending", "lag"):
        table.add_column(col, justify="left" if col in ("what", "name") else "right")
    for queue, depth in sorted(frame.snap.queue_depths.items()):
        table.add_row("queue", queue, f"{depth:,}", "", "")
    for stream, info in sorted(frame.snap.streams.items()):
        table.add_row("stream", stream, f"{info.length:,}", "", "")
        if info.quarantined:
            table.add_row("", f"{stream} quarantine", f"{info.quarantined:,}", "", "")
        for group in info.groups:
            lag = "?" if group.lag is None else f"{group.lag:,}"
            table.add_row("", f"group {group.name}", "", f"{group.pending:,}", lag)
    return table


def _backlog(frame: Frame) -> Table:
    table = Table(title="dead letters and outbox", title_justify="left")
    table.add_column("what")
    table.add_column("name")
    table.add_column("rows", justify="right")
    gauges = frame.snap.gauges
    if gauges is None:
        table.add_row("postgres", "unreadable", "")
        return table
    for task, reason, n in gauges.dead_letters:
        table.add_row("dead letters", f"{task} ({reason})", f"{n:,}")
    if not gauges.dead_letters:
        table.add_row("dead letters", "none", "0")
    age = f", oldest {gauges.outbox_oldest_age_s:,.0f} s" if gauges.outbox_pending else ""
    table.add_row("outbox", f"pending{age}", f"{gauges.outbox_pending:,}")
    return table


def _alerts(frame: Frame) -> Table:
    table = Table(
        title="last hour: high/critical risk users; multi-actor suspects", title_justify="left"
    )
    for col in ("kind", "id", "detail"):
        table.add_column(col)
    now = frame.snap.taken_at
    for alert in frame.alerts:
        table.add_row("risk", alert.user_id, f"{alert.to_risk}, {now - alert.at:,.0f} s ago")
    for identity in frame.suspects:
        table.add_row("multi-actor", str(identity), "")
    if not frame.alerts and not frame.suspects:
        table.add_row("none", "", "")
    return table
