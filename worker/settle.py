"""Where an outcome becomes what operators keep: the one place that decides
what is dead-lettered, and under which task name.

The domain (``services/``) answers each item with an outcome and sets aside
what it rejected, with reasons; it knows no task names. Here a rejected
payload is kept under the task that takes one such payload (so a replay sends
each where it can succeed), and a task that failed for good keeps its payload
with the error's type. The tasks, the buffered task and the admin tasks all
dead-letter through these functions.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import redis
from sqlalchemy.orm import Session, sessionmaker

from services.core.clients import get_redis, session_factory
from services.core.settings import Settings, get_settings
from services.deadletters import store
from services.ingest.service import Batch, IngestService
from services.metrics import counters
from vigil_client import names


def reject(
    task_name: str,
    rejected: Sequence[tuple[Any, list[str]]],
    *,
    family: str | None = None,
    sessions: sessionmaker[Session] | None = None,
    redis_client: redis.Redis | None = None,
    settings: Settings | None = None,
) -> None:
    """Keep payloads that can never succeed, with their reasons, under
    ``task_name``; with ``family`` (a pipeline counter family) count them."""
    if not rejected:
        return
    settings = settings or get_settings()
    counter = None
    if family is not None:
        counter = counters.counter(
            redis_client or get_redis(settings), settings, counters.outcome(family, "rejected")
        )
    store.reject(sessions or session_factory(settings), task_name, rejected, counter=counter)


def fail(
    task_name: str, task_id: str | None, reason: str, exc: BaseException, payload: Any
) -> bool:
    """Keep the payload of a task that failed for good (``retries_exhausted``,
    ``error``, ``worker_lost``); False when the store itself is away."""
    return store.keep_failed(session_factory(), task_name, task_id, reason, exc, payload)


class Ingest:
    """The ingest pipeline as the tasks run it: the domain's outcomes, then what
    it rejected dead-lettered under the single-item task (a message rejected
    from a ``vigil.ingest.messages`` batch replays as one ``vigil.ingest.message``)."""

    def __init__(self, service: IngestService) -> None:
        self.service = service

    def _reject(self, task_name: str, batch: Batch, family: str) -> Batch:
        reject(
            task_name,
            batch.rejected,
            family=family,
            sessions=self.service.sessions,
            redis_client=self.service.redis_client,
            settings=self.service.settings,
        )
        return batch

    def messages(self, raws: Sequence[Any], now: float | None = None) -> Batch:
        batch = self.service.messages(raws, now)
        return self._reject(names.INGEST_MESSAGE, batch, counters.MESSAGES)

    def detections(self, raws: Sequence[Any], now: float | None = None) -> Batch:
        batch = self.service.detections(raws, now)
        return self._reject(names.INGEST_DETECTION, batch, counters.DETECTIONS)
