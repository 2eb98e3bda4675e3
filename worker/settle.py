"""Where a task's outcome becomes what senders, operators and Flower see: the
one settle path of the worker runtime.

- **Retries**: one policy (:data:`RETRY`) for every vigil task, Celery's own
  exponential backoff with full jitter. Plain tasks retry through Celery's
  ``autoretry_for`` with it (worker/base.py); buffered requests are
  re-published with it (:class:`RequestSettler`).
- **Dead letters**: the domain (``services/``) answers each item with an
  outcome and sets aside what it rejected, with reasons; it knows no task
  names. Here a rejected payload is kept under the task that takes one such
  payload (so a replay sends each where it can succeed), and a task that failed
  for good keeps its payload with the error's type.
- **Results and events**: a plain task's go through Celery's tracer. A buffered
  request runs outside it, so :class:`RequestSettler` stores its result through
  the backend's own ``store_result`` (the same meta and waiter notification)
  and sends the ``task-succeeded`` event the tracer would, ids only.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import redis
from celery import Task, states
from celery.events import EventDispatcher
from celery.utils.time import get_exponential_backoff_interval
from celery.worker.request import Request
from celery_batches import SimpleRequest
from sqlalchemy.orm import Session, sessionmaker

from models.outcomes import Outcome
from services.core.clients import get_redis, session_factory
from services.core.errors import TransientError
from services.core.settings import Settings, get_settings
from services.deadletters import store
from services.ingest.service import Batch, IngestService
from services.metrics import counters
from vigil_client import names
from worker.redact import safe_redact

logger = logging.getLogger(__name__)

AnyRequest = SimpleRequest | Request

# Marks a request re-published after its buffer was lost in the pool: it runs
# in a buffer of its own (worker/batching.py).
ISOLATE_HEADER = "vigil_isolate"


@dataclass(frozen=True)
class RetryPolicy:
    """How a vigil task retries a transient failure (a store briefly away).

    ``maximum`` is VIGIL_RETRY_BACKOFF_MAX, which the settings check keeps,
    with the task time limit, under the visibility timeout: on a Redis broker a
    retry waits out its countdown unacked in a worker."""

    factor: int
    maximum: int
    max_retries: int

    def countdown(self, retries: int) -> int:
        """Seconds before retry number ``retries + 1``: Celery's helper, as
        ``autoretry_for`` computes it for a plain task."""
        return get_exponential_backoff_interval(
            factor=self.factor, retries=retries, maximum=self.maximum, full_jitter=True
        )

    def exhausted(self, retries: int) -> bool:
        return retries >= self.max_retries


def _policy(settings: Settings) -> RetryPolicy:
    return RetryPolicy(
        factor=2, maximum=settings.retry_backoff_max, max_retries=settings.retry_max_retries
    )


RETRY = _policy(get_settings())


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


# -- requests settled outside Celery's tracer ------------------------------------


def retries_of(request: AnyRequest) -> int:
    """How often this request was re-published (absent on a raw protocol-2 message)."""
    try:
        return int((request.request_dict or {}).get("retries") or 0)
    except (TypeError, ValueError):
        return 0


def isolated(request: AnyRequest) -> bool:
    """Whether this request must run in a buffer of its own."""
    return bool((request.request_dict or {}).get(ISOLATE_HEADER))


def kwargs_of(request: AnyRequest) -> dict[str, Any]:
    kwargs = request.kwargs
    return kwargs if isinstance(kwargs, dict) else {}


class RequestSettler:
    """Settles the requests of one buffered task: each ends with its result
    (when the sender asked), its event, a re-published retry or a dead letter.

    The pool child settles what its buffer ran; the parent settles a buffer the
    pool lost. Holds only the child's event dispatcher, made on first use."""

    def __init__(
        self, task: Task, policy: RetryPolicy = RETRY, events: str = "per_request"
    ) -> None:
        self.task = task
        self.policy = policy
        self.events = events
        self._dispatcher: EventDispatcher | None = None

    @property
    def name(self) -> str:
        return str(self.task.name)

    def wants_result(self, request: AnyRequest) -> bool:
        """The sender's ``ignore_result`` header, else the task's default."""
        flag = (request.request_dict or {}).get("ignore_result")
        return not (self.task.ignore_result if flag is None else flag)

    def succeeded(
        self,
        requests: Sequence[SimpleRequest],
        outcomes: Mapping[str, Outcome],
        runtime: float,
    ) -> None:
        """Each wanted result through the backend's own store path, as a plain
        task's is; then the buffer's events."""
        backend = self.task.app.backend
        for request in requests:
            if self.wants_result(request):
                backend.store_result(
                    request.id, outcomes[request.id], states.SUCCESS, request=request
                )
        self._send_events(requests, runtime)

    def retry_all(self, requests: Sequence[SimpleRequest], exc: BaseException) -> None:
        """A buffer that failed as a whole for a transient reason: each request
        again after the policy's countdown, or dead-lettered past its budget."""
        # TransientError's text is vigil's own (which store, why), never a payload's.
        reason = str(exc)[:200] if isinstance(exc, TransientError) else type(exc).__name__
        logger.warning(
            "%s: buffer of %d failed (%s); retrying each request", self.name, len(requests), reason
        )
        for request in requests:
            countdown = self.policy.countdown(retries_of(request))
            if not self.retry_or_dead_letter(request, exc, countdown):
                # The broker is down too: raising would ack the buffer (lost);
                # exiting the child leaves every request to the parent's
                # re-publish, or unacked for the visibility timeout to redeliver.
                raise SystemExit(f"{self.name}: cannot re-publish a failed buffer")

    def retry_or_dead_letter(
        self, request: AnyRequest, exc: BaseException, countdown: float, isolate: bool = False
    ) -> bool:
        """Re-publish with ``retries + 1`` (same task id; with ``isolate``, marked
        to run alone), or dead-letter past ``max_retries``. False when neither
        could be done (leave it unacked)."""
        retries = retries_of(request)
        if self.policy.exhausted(retries):
            return self.dead_letter(request, "retries_exhausted", exc)
        kwargs = kwargs_of(request)
        try:
            self.task.apply_async(
                args=list(request.args or ()),
                kwargs=kwargs,
                task_id=request.id,
                countdown=countdown or None,
                retries=retries + 1,
                ignore_result=not self.wants_result(request),
                argsrepr="()",
                kwargsrepr=safe_redact(kwargs),
                add_to_parent=False,
                headers={ISOLATE_HEADER: True} if isolate else None,
            )
        except Exception as publish_exc:
            logger.error(
                "%s[%s]: could not re-publish (%s)",
                self.name,
                request.id,
                type(publish_exc).__name__,
            )
            return False
        return True

    def failed(self, request: SimpleRequest, exc: BaseException) -> None:
        """One request that fails on its own for a reason retrying will not fix."""
        logger.error("%s[%s] failed: %s", self.name, request.id, type(exc).__name__)
        self.dead_letter(request, "error", exc)
        if not self.wants_result(request):
            return
        try:
            # The error's type only: its message may quote the payload.
            self.task.app.backend.store_result(
                request.id, RuntimeError(type(exc).__name__), states.FAILURE, request=request
            )
        except Exception as store_exc:
            logger.error(
                "%s[%s]: result not stored (%s)", self.name, request.id, type(store_exc).__name__
            )

    def dead_letter(self, request: AnyRequest, reason: str, exc: BaseException) -> bool:
        return fail(self.name, request.id, reason, exc, request.kwargs)

    def _send_events(self, requests: Sequence[SimpleRequest], runtime: float) -> None:
        """``task-succeeded`` events, published together, with ids only (never
        text): one per request, so Flower shows each message as its own task,
        or with ``events = "per_buffer"`` one per buffer, under an id of its
        own, naming how many requests it ran and the first one's id."""
        if not self.task.app.conf.worker_send_task_events or not requests:
            return
        if self.events == "per_buffer":
            events = [
                {
                    "uuid": str(uuid.uuid4()),
                    "args": "()",
                    "kwargs": f"<buffer of {len(requests)}, first {requests[0].id}>",
                    "retries": 0,
                }
            ]
        else:
            events = [
                {
                    "uuid": request.id,
                    "args": "()",
                    "kwargs": safe_redact(request.kwargs),
                    "retries": retries_of(request),
                }
                for request in requests
            ]
        try:
            dispatcher = self._dispatcher_for(requests[0].hostname)
            for event in events:
                dispatcher.send(
                    "task-succeeded",
                    name=self.name,
                    runtime=runtime,
                    result="<buffered>",
                    buffered=len(requests),
                    **event,
                )
            dispatcher.flush()
        except Exception as exc:  # events are best effort; the work is done
            logger.warning("%s: task events not sent (%s)", self.name, type(exc).__name__)
            self._dispatcher = None

    def _dispatcher_for(self, hostname: str | None) -> EventDispatcher:
        if self._dispatcher is None:
            self._dispatcher = self.task.app.events.Dispatcher(
                self.task.app.connection_for_write(),
                hostname=hostname,
                buffer_group=["task"],
                buffer_limit=10**9,
            )
        return self._dispatcher
