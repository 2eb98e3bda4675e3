"""The Celery app's task class: explicit names, redacted reprs, retries, dead letters."""

from __future__ import annotations

import logging
from typing import Any

import redis
from celery import Celery, Task
from celery.exceptions import MaxRetriesExceededError, Reject
from celery.worker import request as _request
from celery.worker.consumer import consumer as _consumer
from sqlalchemy.exc import DBAPIError, OperationalError

from services.core.clients import session_factory
from services.core.errors import TransientError
from services.deadletters import store

logger = logging.getLogger(__name__)

# Errors worth retrying: the store is briefly away, not the payload is wrong.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    redis.ConnectionError,
    redis.TimeoutError,
    redis.BusyLoadingError,
    OperationalError,
    TransientError,
)

_ID_KEYS = ("message_id", "detection_id", "platform", "guild_id", "user_id", "severity")


def redact_kwargs(kwargs: Any) -> str:
    """What Flower and logs may show of a task's kwargs: ids and sizes, never text."""
    if not isinstance(kwargs, dict):
        return "<redacted>"
    shown: dict[str, str] = {}
    for key, value in list(kwargs.items())[:20]:
        name = str(key)[:40]
        if name in _ID_KEYS and isinstance(value, (str, int)) and not isinstance(value, bool):
            shown[name] = str(value)[:64]
        elif isinstance(value, list):
            shown[name] = f"<list of {len(value)}>"
        elif isinstance(value, dict):
            shown[name] = f"<object with {len(value)} keys>"
        else:
            shown[name] = f"<{type(value).__name__}>"
    return repr(shown)


class RedactedRequest(_request.Request):
    """Replace the sender's argsrepr/kwargsrepr: frontends in other languages send
    none (and Celery would then show the raw kwargs, message text included)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._argsrepr = "()"
        try:
            self._kwargsrepr = redact_kwargs(self.kwargs)
        except Exception:  # a hostile body must not stop the worker
            self._kwargsrepr = "<redacted>"


def _redacted_body(message: Any, body: Any) -> str:
    raw = message.body if body is None else body
    return f"<body redacted: {len(raw) if hasattr(raw, '__len__') else '?'} bytes>"


# Celery logs the raw body of undecodable or unknown messages; that body may hold
# message text. Replace its formatter for this process.
_consumer.dump_body = _redacted_body


class VigilTask(Task):
    """Base for every vigil task."""

    Request = "tasks.base:RedactedRequest"
    typing = False
    autoretry_for = TRANSIENT_ERRORS
    retry_backoff = 2
    retry_backoff_max = 300
    retry_jitter = True
    max_retries = 8
    acks_late = True
    reject_on_worker_lost = True

    def on_failure(self, exc, task_id, args, kwargs, einfo) -> None:
        """A task that failed for good leaves its payload in the dead-letter store."""
        if isinstance(exc, Reject):
            return

        reason = (
            "retries_exhausted"
            if isinstance(exc, (*TRANSIENT_ERRORS, MaxRetriesExceededError))
            else "error"
        )
        try:
            with session_factory()() as session, session.begin():
                store.add(
                    session,
                    task_name=self.name,
                    reason=reason,
                    details=[f"{type(exc).__name__}: {_safe_exc(exc)}"],
                    payload=kwargs,
                )
        except (OperationalError, DBAPIError):
            logger.error(
                "dead-letter store unavailable; task %s[%s] payload not kept", self.name, task_id
            )


def _safe_exc(exc: BaseException) -> str:
    # Exception messages from our own code carry no text; foreign ones are cut short.
    return str(exc)[:300]


class VigilCelery(Celery):
    """Celery app that refuses a task without an explicit, stable name."""

    def task(self, *args: Any, **opts: Any):  # type: ignore[override]
        if (args and callable(args[0])) or "name" not in opts:
            raise TypeError("vigil tasks need an explicit name=: names are the wire contract")
        if str(opts["name"]).startswith("celery."):
            return super().task(*args, **opts)  # Celery's own built-ins
        if not str(opts["name"]).startswith("vigil."):
            raise TypeError(f"task name {opts['name']!r} must start with 'vigil.'")
        opts.setdefault("base", VigilTask)
        return super().task(*args, **opts)
