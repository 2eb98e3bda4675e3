"""vigil's queues on RabbitMQ, as the worker uses them: what the vhost holds
(services/core/declarations.py finds it and creates what is missing) is
adopted as it is, and countdowns reach quorum queues on direct exchanges.

Adoption: the kombu entities for what exists are marked ``no_declare`` so
neither Celery's consumer nor a publish redeclares them, and a quorum queue
says so in ``queue_arguments`` so that Celery's ``worker_detect_quorum_queues``
turns off global QoS (quorum queues refuse it). A queue vigil cannot consume
is kept for publishing but not consumed; the other queues are served.

Retry countdowns per form: a classic queue: Celery holds the task in the
worker until due, unacked (acks_late), so a killed worker loses nothing. A
quorum queue on a topic exchange: Celery's native delayed delivery. A quorum
queue on a direct exchange (what a quorum DQT gives): Celery refuses native
delayed delivery there and would hold the task in the worker, which on a
quorum queue's per-consumer prefetch can stall the consumer; vigil binds the
queue itself to Celery's delivery exchange and publishes the countdown through
Celery's delay queues (``delayed_publish``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from celery import Celery
from celery.utils.time import maybe_make_aware
from kombu import Connection, Exchange, Queue
from kombu.transport.native_delayed_delivery import (
    CELERY_DELAYED_DELIVERY_EXCHANGE,
    calculate_routing_key,
    declare_native_delayed_delivery_exchanges_and_queues,
    level_name,
)
from kombu.transport.native_delayed_delivery import (
    logger as native_delayed_logger,
)

from services.core.declarations import QUORUM, ROUTING_EXCHANGES, Found, ensure, probe

log = logging.getLogger(__name__)

DELAY_TOP_EXCHANGE = level_name(27)


def as_found(found: Found) -> Queue:
    """A kombu Queue for what exists, never redeclared. Celery publishes to a
    queue on a direct exchange through the default exchange, and to one on a
    topic or fanout exchange through that exchange."""
    exchange_type = found.exchange if found.exchange in ROUTING_EXCHANGES else "direct"
    return Queue(
        found.name,
        Exchange(found.name, type=exchange_type, durable=True, no_declare=True),
        routing_key=found.name,
        durable=True,
        queue_arguments={"x-queue-type": "quorum"} if found.queue == QUORUM else None,
        no_declare=True,
    )


def needs_vigil_delay(queue: Queue | None) -> bool:
    """A quorum queue on a direct exchange: Celery's native delayed delivery
    refuses it, so vigil routes its countdowns (see the module docstring)."""
    return (
        queue is not None
        and (queue.queue_arguments or {}).get("x-queue-type") == "quorum"
        and queue.exchange is not None
        and queue.exchange.type == "direct"
    )


class _SkipHandledDirectExchanges(logging.Filter):
    """kombu warns that countdowns on a direct exchange block the worker; for
    the queues vigil binds itself that is not so."""

    def __init__(self, names: Iterable[str]) -> None:
        super().__init__()
        self.names = frozenset(names)

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        return not any(f"Exchange {name} is a direct exchange" in text for name in self.names)


def bind_delayed_delivery(conn: Connection, app: Celery, names: Iterable[str]) -> None:
    """Declare Celery's delay queues and bind each named queue straight to
    the delivery exchange with ``#.<queue>``, as the routing key of a delayed
    publish ends in the queue's name."""
    names = list(names)
    if not names:
        return
    declare_native_delayed_delivery_exchanges_and_queues(
        conn, app.conf.broker_native_delayed_delivery_queue_type
    )
    channel = conn.channel()
    try:
        for name in names:
            channel.queue_bind(
                queue=name, exchange=CELERY_DELAYED_DELIVERY_EXCHANGE, routing_key=f"#.{name}"
            )
    finally:
        channel.close()
    native_delayed_logger.addFilter(_SkipHandledDirectExchanges(names))


def adopt(app: Celery, names: Iterable[str], *, create: bool = True) -> list[Found]:
    """Probe the named queues on RabbitMQ and configure the app to use what is
    there: usable queues ``no_declare`` (quorum ones marked so), unusable ones
    kept for publishing (never declared) but not consumed. Returns what was found."""
    queues = app.amqp.queues
    names = [name for name in names if name in queues]
    with app.connection_for_write() as conn:
        conn.ensure_connection(max_retries=app.conf.broker_connection_max_retries)
        found = ensure(conn, names) if create else probe(conn, names)
        adopted = {f.name: as_found(f) for f in found}
        if create:
            bind_delayed_delivery(
                conn,
                app,
                [f.name for f in found if f.usable and needs_vigil_delay(adopted[f.name])],
            )
    consumed = list(queues.consume_from)
    for name, queue in adopted.items():
        queues[name] = queue
    keep = [name for name in consumed if name not in adopted or adopted_usable(found, name)]
    if not keep:
        raise SystemExit(
            "vigil: no queue to consume: " + "; ".join(f.problem or f.name for f in found)
        )
    # select() takes the new entities for the queues consumed before.
    queues.select(keep)
    app.conf.task_queues = tuple(queues[name] for name in queues)
    return found


def adopted_usable(found: list[Found], name: str) -> bool:
    return any(f.name == name and f.usable for f in found)


def delayed_publish(app: Celery, queue: Queue | None, countdown: float | None, eta: Any) -> dict:
    """Options that send a countdown through Celery's delay queues to a quorum
    queue on a direct exchange ({} when it needs none: Celery's own handling)."""
    if not needs_vigil_delay(queue):
        return {}
    if eta is not None:
        due = eta if isinstance(eta, datetime) else datetime.fromisoformat(str(eta))
        countdown = (maybe_make_aware(due) - app.now()).total_seconds()
    if countdown is None or int(countdown) < 1:
        return {}
    assert queue is not None
    return {
        "exchange": DELAY_TOP_EXCHANGE,
        "routing_key": calculate_routing_key(int(countdown), queue.name),
    }
