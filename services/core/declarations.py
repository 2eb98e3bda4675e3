"""vigil's queues on RabbitMQ: declared as plain clients declare them, and
adopted as found when a vhost already holds them in another form.

Why this form. A frontend's Celery app configured with the broker URL alone
declares the queue it sends to as Celery does by default: a durable queue with
no ``x-queue-type`` on a durable *direct* exchange of the same name, bound with
the queue's name as routing key. celery-node declares the same queue (durable,
no arguments) and publishes through the default exchange. RabbitMQ refuses a
declaration that differs from what exists (406 PRECONDITION_FAILED, closing
the channel), so vigil declares exactly that form too: whichever side starts
first, every later declaration is equivalent.

The queue type is then the vhost's default queue type (DQT). RabbitMQ adds the
vhost's ``default_queue_type`` to a declaration that names no type (3.10 and
later, rabbitmq-server #5305), so in a vhost made with ``rabbitmqctl add_vhost
NAME --default-queue-type quorum`` the queues are quorum queues and plain
clients still agree with them. On 3.13 and 4.x a declaration without a type
takes the vhost's default, else the node's ``default_queue_type``, else classic
(#11541, #12114): redeclaring a queue of that type without naming it is
accepted, a queue of another type is refused as before. Without a DQT the
queues are classic queues.

Why adoption. Upgrading users (and the test vhosts) hold vigil's earlier
quorum queues on topic exchanges; an operator may have made a queue a stream.
At worker start each queue and exchange is probed on a connection of its own
(a refused declaration closes only that channel), created in the plain form
when missing, and otherwise taken as it is: the kombu entities are marked
``no_declare`` so neither Celery's consumer nor a publish redeclares them, and
a quorum queue says so in ``queue_arguments`` so that Celery's
``worker_detect_quorum_queues`` turns off global QoS (quorum queues refuse it).
A queue vigil cannot consume (a stream, an exclusive queue, unknown arguments)
is left alone and reported with the commands that fix it; the other queues
are served.

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
from collections.abc import Callable, Iterable
from dataclasses import dataclass
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

from vigil_client import plain_queue

log = logging.getLogger(__name__)


# What a probe can find.
MISSING = "missing"
CLASSIC = "classic"
QUORUM = "quorum"
STREAM = "stream"
EXCLUSIVE = "exclusive"
UNMATCHED = "unmatched"  # exists, but no declaration vigil knows is equivalent
USABLE_QUEUES = frozenset({CLASSIC, QUORUM})
# Exchanges that route routing key == queue name to a queue bound with it.
ROUTING_EXCHANGES = ("direct", "topic", "fanout")
EXCHANGE_TYPES = (*ROUTING_EXCHANGES, "headers")
DELAY_TOP_EXCHANGE = level_name(27)


@dataclass(frozen=True)
class Found:
    """What the vhost holds for one of vigil's queue names."""

    name: str
    queue: str
    exchange: str
    vhost: str

    @property
    def usable(self) -> bool:
        return self.queue in USABLE_QUEUES

    @property
    def problem(self) -> str | None:
        """What is wrong and the commands that fix it, or None."""
        ctl = f"rabbitmqctl -p {self.vhost}"
        redeclare = "then restart the workers, which declare it as plain Celery clients do"
        if self.queue == STREAM:
            return (
                f"queue {self.name!r} is a stream queue, which Celery cannot consume: move its "
                f"messages elsewhere, `{ctl} delete_queue {self.name}`, {redeclare}"
            )
        if self.queue == EXCLUSIVE:
            return (
                f"queue {self.name!r} is an exclusive queue of another connection: close that "
                f"connection (`{ctl} list_queues name owner_pid`, then `rabbitmqctl "
                f"close_connection ...`), {redeclare}"
            )
        if self.queue == UNMATCHED:
            return (
                f"queue {self.name!r} exists in a form vigil cannot match (transient, "
                f"auto-delete, or with arguments beyond x-queue-type): `{ctl} list_queues name "
                f"durable auto_delete arguments` shows it; drain it, `{ctl} delete_queue "
                f"{self.name}`, {redeclare}"
            )
        if self.exchange not in (MISSING, *ROUTING_EXCHANGES):
            what = (
                "a headers exchange"
                if self.exchange == "headers"
                else "in a form vigil cannot match (transient, auto-delete, or another type)"
            )
            return (
                f"exchange {self.name!r} is {what} and may not route routing key "
                f"{self.name!r} to its queue, so publishes to it may be lost (through the "
                f"default exchange they still arrive): `{ctl} delete_exchange {self.name}`, "
                f"{redeclare}"
            )
        return None


class Probe:
    """Equivalence probes on one connection, a fresh channel each, since a
    refused declaration closes its channel."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.refused = tuple(conn.channel_errors)

    def _try(self, call: Callable[[Any], object]) -> BaseException | None:
        channel = self.conn.channel()
        try:
            call(channel)
        except self.refused as exc:
            return exc
        finally:
            if channel.is_open:  # a refusal has closed it already
                channel.close()
        return None

    def queue(self, name: str) -> str:
        exc = self._try(lambda ch: ch.queue_declare(queue=name, passive=True))
        if exc is not None:
            return EXCLUSIVE if getattr(exc, "code", None) == 405 else MISSING
        for kind, arguments in (
            (QUORUM, {"x-queue-type": "quorum"}),
            (CLASSIC, None),
            (CLASSIC, {"x-queue-type": "classic"}),
            (STREAM, {"x-queue-type": "stream"}),
        ):
            if not self._try(
                lambda ch, a=arguments: ch.queue_declare(
                    queue=name, durable=True, auto_delete=False, arguments=a
                )
            ):
                return kind
        return UNMATCHED

    def exchange(self, name: str) -> str:
        if self._try(lambda ch: ch.exchange_declare(exchange=name, type="direct", passive=True)):
            return MISSING
        for kind in EXCHANGE_TYPES:
            if not self._try(
                lambda ch, k=kind: ch.exchange_declare(
                    exchange=name, type=k, durable=True, auto_delete=False
                )
            ):
                return kind
        return UNMATCHED


def vhost_of(conn: Connection) -> str:
    return conn.virtual_host or "/"


def probe(conn: Connection, names: Iterable[str]) -> list[Found]:
    """What the vhost holds; declares nothing (health, the exporter)."""
    check = Probe(conn)
    return [Found(n, check.queue(n), check.exchange(n), vhost_of(conn)) for n in names]


def ensure(conn: Connection, names: Iterable[str]) -> list[Found]:
    """Create what is missing in the plain form and bind each usable queue to
    its exchange, then say what is there (the worker, at start)."""
    found = []
    check = Probe(conn)
    for name in names:
        queue_form, exchange_form = check.queue(name), check.exchange(name)
        channel = conn.channel()
        try:
            plain = plain_queue(name)
            if exchange_form == MISSING:
                plain.exchange.declare(channel=channel)
                exchange_form = "direct"
            if queue_form == MISSING:
                plain.queue_declare(channel=channel)
                queue_form = check.queue(name)  # the vhost's default type decides
            if queue_form in USABLE_QUEUES and exchange_form in ROUTING_EXCHANGES:
                channel.queue_bind(queue=name, exchange=name, routing_key=name)
        finally:
            channel.close()
        found.append(Found(name, queue_form, exchange_form, vhost_of(conn)))
    return found


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
