"""Ingest tasks (queue ``ingest``): messages and detection results from frontends.

Kwargs are the JSON contract in README.md. Each task answers with a small JSON
dict (``accepted``, ``duplicate``, ``rate_limited``, ``rejected`` with reasons);
nothing in it, in logs or in Flower carries message text.
"""

from __future__ import annotations

from typing import Any

from services.core.clients import get_redis, session_factory
from services.core.settings import get_settings
from services.deadletters import store
from services.ingest import detector
from services.ingest.service import IngestService
from tasks import names
from tasks.app import app


def _service() -> IngestService:
    settings = get_settings()
    return IngestService(
        get_redis(settings),
        settings,
        session_factory(settings),
        detector.for_process(settings),
        message_task=names.INGEST_MESSAGE,
        detection_task=names.INGEST_DETECTION,
    )


@app.task(name=names.INGEST_MESSAGE, time_limit=60, soft_time_limit=50)
def message(**payload: Any) -> dict[str, Any]:
    """One chat message; the same pipeline as the batch form."""
    return _service().messages([payload]).outcomes[0]


@app.task(name=names.INGEST_MESSAGES, time_limit=300, soft_time_limit=240)
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
        store.reject(
            session_factory(settings),
            names.INGEST_MESSAGES,
            [({"messages": messages, **extra}, reasons)],
        )
        return {"status": "rejected", "reasons": reasons}
    return _service().messages(messages).summary()


@app.task(name=names.INGEST_DETECTION, time_limit=60, soft_time_limit=50)
def detection(**payload: Any) -> dict[str, Any]:
    """A detection result from an external detector service."""
    return _service().detections([payload]).outcomes[0]
