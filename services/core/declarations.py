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

What the worker does with what it finds (adopting it, binding delay queues)
is the runtime's: worker/queues.py.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from kombu import Connection

from vigil_client import plain_queue

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
