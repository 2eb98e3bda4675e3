"""Enqueue helper for Python frontends.

Sends by task name only, so a frontend needs nothing of vigil but this module
and Celery; batches go out through one producer connection. Frontends in other
languages publish the same JSON kwargs (see README, "Task contract").
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from datetime import datetime
from itertools import islice
from typing import Any

from celery import Celery

from tasks import names

MESSAGE_TASK = names.INGEST_MESSAGE
BATCH_TASK = names.INGEST_MESSAGES
DETECTION_TASK = names.INGEST_DETECTION


def _jsonable(payload: dict[str, Any]) -> dict[str, Any]:
    return {k: v.isoformat() if isinstance(v, datetime) else v for k, v in payload.items()}


def _chunks(items: Iterable[dict[str, Any]], size: int) -> Iterator[list[dict[str, Any]]]:
    it = iter(items)
    while chunk := list(islice(it, size)):
        yield chunk


def sender_app(
    broker_url: str,
    result_url: str | None = None,
    *,
    name: str = "vigil-client",
    cls: type[Celery] = Celery,
) -> Celery:
    """A Celery app that only sends vigil tasks by name: JSON both ways."""
    app = cls(name, set_as_current=False)
    app.conf.update(
        broker_url=broker_url,
        result_backend=result_url,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
        broker_connection_retry_on_startup=True,
    )
    return app


class VigilClient:
    def __init__(self, broker_url: str | None = None, app: Celery | None = None) -> None:
        self.app = app or sender_app(broker_url or "redis://127.0.0.1:6379/0")

    def _send(self, name: str, kwargs: dict[str, Any], producer=None):
        shown = {k: kwargs[k] for k in ("message_id", "detection_id", "user_id") if k in kwargs}
        return self.app.send_task(
            name,
            kwargs=kwargs,
            queue="ingest",
            argsrepr="()",
            kwargsrepr=repr(shown) if name != BATCH_TASK else f"<{len(kwargs['messages'])} msgs>",
            producer=producer,
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
