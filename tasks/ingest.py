"""Ingest tasks (queue ``ingest``): messages and detection results from frontends.

Kwargs are the JSON contract in README.md. Each task answers with a small JSON
dict (``accepted``, ``duplicate``, ``rate_limited``, ``rejected`` with reasons);
nothing in it, in logs or in Flower carries message text.

``vigil.ingest.message`` and ``vigil.ingest.detection`` are buffered
(worker/batching.py): the worker runs the pipeline once per buffer of requests,
each request keeping its own result, dead letter and late ack.
"""

from __future__ import annotations

from typing import Any

from celery_batches import SimpleRequest

from models.outcomes import Outcome
from services.core.clients import get_redis, session_factory
from services.core.settings import get_settings
from services.ingest import detector
from services.ingest.service import IngestService
from tasks import names
from tasks.app import app
from worker import settle
from worker.batching import BufferedTask

_settings = get_settings()
# Per buffered task: flush at this many requests, or this long after the first.
_BUFFER = {
    "base": BufferedTask,
    "bind": True,
    "flush_every": _settings.ingest_flush_every,
    "flush_interval": _settings.ingest_flush_interval_s,
    "task_events": _settings.ingest_task_events,
    # Per buffer, from the settings, whose check keeps them under the
    # visibility timeout with room for the longest retry countdown.
    "time_limit": _settings.task_time_limit,
    "soft_time_limit": _settings.task_soft_time_limit,
}


def _service() -> settle.Ingest:
    settings = get_settings()
    return settle.Ingest(
        IngestService(
            get_redis(settings),
            settings,
            session_factory(settings),
            detector.for_process(settings),
        )
    )


def _message_pipeline(payloads: list[Any]) -> list[Outcome]:
    return _service().messages(payloads).outcomes


def _detection_pipeline(payloads: list[Any]) -> list[Outcome]:
    return _service().detections(payloads).outcomes


@app.task(name=names.INGEST_MESSAGE, **_BUFFER)
def message(self: BufferedTask, requests: list[SimpleRequest]) -> None:
    """One chat message per request; a buffer of them runs the batch pipeline once."""
    self.handle(requests, _message_pipeline)


@app.task(name=names.INGEST_MESSAGES)
def messages(messages: Any = None, **extra: Any) -> dict[str, Any]:
    """A bounded list of messages: the fast path for busy frontends."""
    settings = get_settings()
    reasons = []
    if extra:
        reasons.append(f"unexpected kwargs: {sorted(map(str, extra))[:10]}")
    if not isinstance(messages, list):
        reasons.append("messages: expected a list")
    elif not 1 <= len(messages) <= settings.max_batch:
        reasons.append(f"messages: expected 1 to {settings.max_batch} items, got {len(messages)}")
    if reasons:
        settle.reject(names.INGEST_MESSAGES, [({"messages": messages, **extra}, reasons)])
        return {"status": "rejected", "reasons": reasons}
    return _service().messages(messages).summary()


@app.task(name=names.INGEST_DETECTION, **_BUFFER)
def detection(self: BufferedTask, requests: list[SimpleRequest]) -> None:
    """A detection result per request from an external detector service, buffered."""
    self.handle(requests, _detection_pipeline)
