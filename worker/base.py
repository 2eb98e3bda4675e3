"""The Celery app's task class: explicit names, redacted reprs, retries, dead letters."""

from __future__ import annotations

import logging
import warnings
from typing import Any

import redis
from celery import Celery, Task
from celery.exceptions import MaxRetriesExceededError, Reject
from celery.worker import request as _request
from celery.worker.consumer import consumer as _consumer
from redis.exceptions import ClusterError, RedisClusterException
from sqlalchemy.exc import OperationalError

from services.core.errors import TransientError
from services.core.settings import get_settings
from worker import queues, settle
from worker.redact import safe_redact

logger = logging.getLogger(__name__)

# Errors worth retrying: the store is briefly away, not the payload is wrong.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    redis.ConnectionError,
    redis.TimeoutError,
    redis.BusyLoadingError,
    # A cluster mid-failover, or none of its nodes answering yet.
    ClusterError,
    RedisClusterException,
    OperationalError,
    TransientError,
)


class RedactedRequest(_request.Request):
    """Replace the sender's argsrepr/kwargsrepr: frontends in other languages send
    none (and Celery would then show the raw kwargs, message text included)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._argsrepr = "()"
        self._kwargsrepr = safe_redact(self.kwargs)


def _redacted_body(message: Any, body: Any) -> str:
    raw = message.body if body is None else body
    return f"<body redacted: {len(raw) if hasattr(raw, '__len__') else '?'} bytes>"


# Celery logs the raw body of undecodable or unknown messages; that body may hold
# message text. Replace its formatter for this process.
_consumer.dump_body = _redacted_body


class VigilTask(Task):
    """Base for every vigil task."""

    Request = "worker.base:RedactedRequest"
    typing = False
    autoretry_for = TRANSIENT_ERRORS
    # The one retry policy (worker/settle.py), which Celery's autoretry applies
    # with the same helper the buffered tasks use.
    retry_backoff = settle.RETRY.factor
    retry_backoff_max = settle.RETRY.maximum
    retry_jitter = True
    max_retries = settle.RETRY.max_retries
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
        settle.fail(self.name, task_id, reason, exc, kwargs)


class TimeLimitWarning(RuntimeWarning):
    """A task's own time limit does not fit under the visibility timeout."""


def time_limit_problem(task_name: str, time_limit: float | None) -> str | None:
    """Why a task's own hard limit is too long, or None when it fits.

    It must leave room for the longest retry countdown under the visibility
    timeout, as ``VIGIL_TASK_TIME_LIMIT`` must (settings)."""
    if time_limit is None:
        return None
    settings = get_settings()
    if time_limit + settings.retry_backoff_max <= settings.visibility_timeout:
        return None
    return (
        f"task {task_name}: time_limit={time_limit} s + VIGIL_RETRY_BACKOFF_MAX "
        f"({settings.retry_backoff_max} s) exceed VIGIL_VISIBILITY_TIMEOUT "
        f"({settings.visibility_timeout} s); on a Redis broker it would be delivered "
        "a second time while it still runs"
    )


class VigilCelery(Celery):
    """Celery app that refuses a task without an explicit, stable name, and warns
    about a task time limit a Redis broker's visibility timeout cannot cover."""

    def task(self, *args: Any, **opts: Any):  # type: ignore[override]
        if (args and callable(args[0])) or "name" not in opts:
            raise TypeError("vigil tasks need an explicit name=: names are the wire contract")
        if str(opts["name"]).startswith("celery."):
            return super().task(*args, **opts)  # Celery's own built-ins
        if not str(opts["name"]).startswith("vigil."):
            raise TypeError(f"task name {opts['name']!r} must start with 'vigil.'")
        problem = time_limit_problem(opts["name"], opts.get("time_limit"))
        if problem:
            warnings.warn(problem, TimeLimitWarning, stacklevel=2)
        opts.setdefault("base", VigilTask)
        return super().task(*args, **opts)

    def send_task(  # type: ignore[override]
        self,
        name: str,
        args: Any = None,
        kwargs: Any = None,
        countdown: float | None = None,
        eta: Any = None,
        **options: Any,
    ):
        """A countdown to a quorum queue on a direct exchange goes through
        Celery's delay queues (worker/queues.py says why)."""
        if countdown or eta:
            queue = self.amqp.router.route(dict(options), name, args, kwargs).get("queue")
            delayed = queues.delayed_publish(self, queue, countdown, eta)
            if delayed:
                options.update(delayed, queue=queue)
                countdown = eta = None
        return super().send_task(name, args, kwargs, countdown=countdown, eta=eta, **options)
