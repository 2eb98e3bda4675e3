"""The synchronous client for Python frontends.

Sends by task name only, so a frontend needs nothing of vigil but this package
and Celery; batches go out through one producer connection. Frontends in other
languages publish the same JSON kwargs (see README, "Task contract").

The queue declarations live here too (``task_queues``), because a sender
declares the queue it publishes to and RabbitMQ refuses (PRECONDITION_FAILED)
a declaration that differs from the existing queue. They are what a Celery app
configured with the broker URL alone declares, so vigil, plain Celery
frontends and celery-node agree whichever starts first (the worker's
services/core/declarations.py says why). vigil's ``celeryconfig`` takes them
from here.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from datetime import datetime
from itertools import islice
from typing import Any
from urllib.parse import urlsplit

from celery import Celery
from celery.result import AsyncResult
from kombu import Exchange, Queue

from vigil_client import names

AMQP_SCHEMES = frozenset({"amqp", "amqps", "pyamqp"})

MESSAGE_TASK = names.INGEST_MESSAGE
BATCH_TASK = names.INGEST_MESSAGES
DETECTION_TASK = names.INGEST_DETECTION


def _jsonable(payload: dict[str, Any]) -> dict[str, Any]:
    return {k: v.isoformat() if isinstance(v, datetime) else v for k, v in payload.items()}


def _chunks(items: Iterable[dict[str, Any]], size: int) -> Iterator[list[dict[str, Any]]]:
    it = iter(items)
    while chunk := list(islice(it, size)):
        yield chunk


def is_amqp(broker_url: str) -> bool:
    """True for a RabbitMQ (AMQP 0-9-1) broker URL."""
    return urlsplit(broker_url).scheme in AMQP_SCHEMES


def is_sentinel(broker_url: str) -> bool:
    """True for kombu's Redis-behind-Sentinel URL (``sentinel://h1:p1;sentinel://h2:p2``)."""
    return urlsplit(broker_url.split(";", 1)[0].strip()).scheme == "sentinel"


def plain_queue(name: str) -> Queue:
    """The queue as a Celery client configured with the broker URL alone declares it."""
    return Queue(name, Exchange(name, type="direct", durable=True), routing_key=name, durable=True)


def task_queues() -> tuple[Queue, ...]:
    """vigil's queues as workers and senders declare them, on either broker.

    What plain Celery declares (durable, no x-queue-type, on a durable direct
    exchange named like the queue): on RabbitMQ the vhost's default queue type
    decides quorum or classic, and workers adopt queues that exist in another
    form.
    """
    return tuple(plain_queue(queue) for queue in names.QUEUES)


def publish_transport_options(broker_url: str) -> dict[str, Any]:
    """Transport options for publishing: on RabbitMQ, wait for the broker's
    publisher confirm, so a send returns only once the broker has the message."""
    return {"confirm_publish": True} if is_amqp(broker_url) else {}


def sender_app(
    broker_url: str,
    result_url: str | None = None,
    *,
    name: str = "vigil-client",
    cls: type[Celery] = Celery,
    broker_transport_options: Mapping[str, Any] | None = None,
) -> Celery:
    """A Celery app that only sends vigil tasks by name: JSON both ways, persistent
    messages, vigil's queue declarations and, on RabbitMQ, publisher confirms.

    ``broker_transport_options`` are kombu's, added to those: a ``sentinel://``
    broker needs ``{"master_name": ...}`` (and ``"sentinel_kwargs":
    {"password": ...}`` if the sentinels have one)."""
    options = {**publish_transport_options(broker_url), **(broker_transport_options or {})}
    if is_sentinel(broker_url) and not options.get("master_name"):
        raise ValueError(
            "a sentinel:// broker URL needs the master's name: "
            "broker_transport_options={'master_name': ...}"
        )
    app = cls(name, set_as_current=False)
    app.conf.update(
        broker_url=broker_url,
        result_backend=result_url,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
        task_queues=task_queues(),
        task_default_queue=names.QUEUE_INGEST,
        task_default_delivery_mode="persistent",
        broker_transport_options=options,
        broker_connection_retry_on_startup=True,
    )
    return app


def answer(result: AsyncResult, timeout: float | None = None) -> Any:
    """A task's answer (or its exception), at once when it has already arrived.

    Celery's Redis result consumer reads the answers of every task the sender
    is subscribed to as they come. An answer read while the sender waited on
    another task is set aside, and a later ``get()`` on it still waits one
    drain interval (1 s) for a notification that already came, plain and
    buffered tasks alike. ``ready()`` reads the stored answer first, so a
    sender collecting answers in another order than they finish waits for
    none of them twice."""
    if result.ready():
        return result.get(propagate=False)
    return result.get(timeout=timeout, propagate=False)


class VigilClient:
    """Sends messages and detections by task name.

    Ingest answers are not kept unless ``keep_results``: Celery stores a result
    for every task whose sender does not say ``ignore_result``, and a frontend
    that never reads them would fill the result backend with one key per message.
    ``broker_transport_options`` go to kombu (``{"master_name": ...}`` for a
    ``sentinel://`` broker).
    """

    def __init__(
        self,
        broker_url: str | None = None,
        app: Celery | None = None,
        *,
        keep_results: bool = False,
        broker_transport_options: Mapping[str, Any] | None = None,
    ) -> None:
        self.app = app or sender_app(
            broker_url or "redis://127.0.0.1:6379/0",
            broker_transport_options=broker_transport_options,
        )
        self.keep_results = keep_results

    def connect(self) -> None:
        """Connect to the broker and declare vigil's queues now (what the first
        send would do), rather than on the first send."""
        with self.app.producer_or_acquire() as producer:
            producer.connection.ensure_connection(max_retries=3)
            for queue in self.app.amqp.queues.values():
                producer.maybe_declare(queue)
        # Built lazily on the first send otherwise: the router and the result backend.
        _ = self.app.amqp.router, self.app.backend

    def _send(self, name: str, kwargs: dict[str, Any], producer=None):
        shown = {k: kwargs[k] for k in ("message_id", "detection_id", "user_id") if k in kwargs}
        return self.app.send_task(
            name,
            kwargs=kwargs,
            queue="ingest",
            argsrepr="()",
            kwargsrepr=repr(shown) if name != BATCH_TASK else f"<{len(kwargs['messages'])} msgs>",
            producer=producer,
            ignore_result=not self.keep_results,
        )

    def message(self, **fields: Any):
        """Enqueue one message (``message_id`` is the idempotency key)."""
        return self._send(MESSAGE_TASK, _jsonable(fields))

    def detection(self, **fields: Any):
        return self._send(DETECTION_TASK, _jsonable(fields))

    def messages(self, items: Iterable[dict[str, Any]], batch_size: int = 200) -> list:
        """Enqueue many messages as batch tasks over one producer connection."""
        results = []
        with self.app.producer_or_acquire() as producer:
            for chunk in _chunks((_jsonable(m) for m in items), batch_size):
                results.append(self._send(BATCH_TASK, {"messages": chunk}, producer=producer))
        return results
