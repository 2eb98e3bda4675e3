"""Buffered tasks: many single-item requests, one pipeline run per buffer.

Frontends send one ``vigil.ingest.message`` (or ``.detection``) per item. The
worker's parent holds those requests (celery-batches) and hands a buffer of
them to one pool job, so Celery's per-task cost in the pool and the pipeline's
round trips are paid per buffer instead of per message. Each request still
behaves as its own task:

- its outcome is stored as its result when the sender asked for one;
- a rejected item is dead-lettered under its own task name with its own payload;
- it is acked (late) only after its buffer's state and results are written;
- a buffer that fails as a whole (a store down, the soft time limit) is
  re-published request by request with the same task id and ``retries + 1``,
  after a backoff, and the originals are acked: every step is idempotent per
  item, so nothing counts twice; past ``max_retries`` each is dead-lettered;
- a pool child that dies or hits the hard time limit mid-buffer: the parent
  re-publishes each request marked ``vigil_isolate``, and a marked request
  runs in a buffer of its own; one that is lost again, alone, is the cause
  (an item that kills its process) and is dead-lettered as ``worker_lost``.
  So a poison item costs two pool processes and fails no other request, and
  no request is stranded until a restore.

The interval flush waits while every pool process is running one of this
task's buffers (up to ``MAX_FLUSH_DEFER_S``): such a buffer could not start
before one of them returns anyway, and holding it lets it grow, so under load
buffers fill by count and the per-buffer cost is paid fewer times. A returning
buffer flushes what waited. At light load nothing waits: a process is idle.

Stock ``celery_batches.Batches.flush`` acks every request when the body raises
and strands them when the child dies; :meth:`BufferedTask.flush` replaces it.
"""

from __future__ import annotations

import logging
import random
import time
import uuid
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from typing import Any

from billiard.einfo import ExceptionInfo
from celery import states
from celery.events import EventDispatcher
from celery.exceptions import SoftTimeLimitExceeded
from celery.worker.request import Request
from celery_batches import Batches, SimpleRequest
from celery_batches.trace import apply_batches_task

from worker import settle
from worker.base import TRANSIENT_ERRORS, VigilTask, redact_kwargs

logger = logging.getLogger(__name__)

# The longest an interval flush waits for a pool process to come free. It only
# bounds a miscount: a buffer handed over sooner would queue for a process anyway.
MAX_FLUSH_DEFER_S = 0.5

# The pipeline a buffered task runs: payloads in, one outcome per payload out.
Pipeline = Callable[[list[Any]], Sequence[dict[str, Any]]]

# A buffer that fails as a whole for one of these is retried, not dead-lettered.
RETRYABLE_ERRORS: tuple[type[BaseException], ...] = (*TRANSIENT_ERRORS, SoftTimeLimitExceeded)


# Marks a request re-published after its buffer was lost in the pool.
ISOLATE_HEADER = "vigil_isolate"


def isolated(request: SimpleRequest | Request) -> bool:
    """Whether this request must run in a buffer of its own."""
    return bool((request.request_dict or {}).get(ISOLATE_HEADER))


def retries_of(request: SimpleRequest | Request) -> int:
    """How often this request was re-published (absent on a raw protocol-2 message)."""
    try:
        return int((request.request_dict or {}).get("retries") or 0)
    except (TypeError, ValueError):
        return 0


class BufferedTask(Batches):
    """A celery-batches task with per-request results, retries, dead letters and
    events. The task body calls :meth:`handle` with its pipeline."""

    Request = "worker.base:RedactedRequest"
    acks_late = True
    reject_on_worker_lost = True
    # The same retry budget as every other vigil task.
    max_retries = VigilTask.max_retries
    # The cap of every other vigil task (VIGIL_RETRY_BACKOFF_MAX, which the
    # settings check keeps under the visibility timeout).
    retry_backoff_max = VigilTask.retry_backoff_max
    # "per_request": one task-succeeded per request; "per_buffer": one per buffer.
    task_events = "per_request"

    _event_dispatcher: EventDispatcher | None = None
    # Parent: this task's buffers handed to the pool and not yet returned, and
    # since when an interval flush has been waiting for a free process.
    _in_pool = 0
    _deferred_since: float | None = None

    # -- parent process ---------------------------------------------------------

    def Strategy(self, task: Batches, app: Any, consumer: Any) -> Any:
        """Celery clears the hub's timers when it reconnects to the broker, then
        builds the strategies again: drop the dead flush timer so buffering
        goes on (clokep/celery-batches#107), and re-arm it for what is held."""
        if self._tref is not None:
            self._tref.cancel()
            self._tref = None
        strategy = super().Strategy(task, app, consumer)
        if not self._buffer.empty() or not self._pending.empty():
            self._tref = consumer.timer.call_repeatedly(self.flush_interval, self._do_flush)
        return strategy

    def _do_flush(self) -> None:
        """The interval (and count) flush, held while the pool is busy with this
        task's buffers and the buffer is not full (see the module docstring)."""
        if 0 < self._buffer.qsize() < self.flush_every and self._pool_busy():
            now = time.monotonic()
            if self._deferred_since is None:
                self._deferred_since = now
            if now - self._deferred_since < MAX_FLUSH_DEFER_S:
                return
        self._deferred_since = None
        super()._do_flush()

    def _pool_busy(self) -> bool:
        processes = getattr(self._pool, "limit", None) or 1
        return self._in_pool >= processes

    def _returned(self) -> None:
        """A buffer left the pool: flush what waited for it."""
        self._in_pool = max(0, self._in_pool - 1)
        if self._deferred_since is not None:
            self._do_flush()

    def flush(self, requests: Sequence[Request]) -> Any:
        """Hand the buffer to the pool (each isolated request as a job of its own);
        ack on return, re-publish if the child dies."""
        together = [request for request in requests if not isolated(request)]
        if together:
            self._run_in_pool(together)
        for request in requests:
            if isolated(request):
                self._run_in_pool([request])

    def _run_in_pool(self, requests: list[Request]) -> None:
        simple = ([SimpleRequest.from_request(request) for request in requests],)

        def on_return(_result: Any) -> None:
            acknowledge_together(requests)
            self._returned()

        def on_error(exc_info: ExceptionInfo) -> None:
            self._returned()
            # WorkerLostError (child killed) or TimeLimitExceeded (hard limit).
            exc = getattr(exc_info, "exception", None) or RuntimeError("pool job lost")
            logger.warning(
                "%s: buffer of %d lost in the pool (%s); re-publishing each request alone",
                self.name,
                len(requests),
                type(exc).__name__,
            )
            for request in requests:
                if isolated(request) and len(requests) == 1:
                    # Lost twice, the second time alone: this item is the cause.
                    settled = self._dead_letter(request, "worker_lost", exc)
                else:
                    settled = self._retry_or_dead_letter(request, exc, countdown=0.0, isolate=True)
                if settled:
                    request.acknowledge()

        # Counted before the hand-over: a solo pool returns within apply_async.
        self._in_pool += 1
        try:
            self._pool.apply_async(
                apply_batches_task,
                (self, simple, 0, None),
                callback=on_return,
                error_callback=on_error,
                timeout=self.time_limit,
                soft_timeout=self.soft_time_limit,
            )
        except BaseException:
            self._in_pool = max(0, self._in_pool - 1)
            raise

    # -- pool child -------------------------------------------------------------

    def handle(self, requests: Sequence[SimpleRequest], pipeline: Pipeline) -> None:
        """Run ``pipeline`` once over the buffer and settle every request.

        Never raises: whatever happens, each request ends with a result, a
        dead letter or a re-published copy before the buffer is acked."""
        started = time.monotonic()
        requests = list(requests)
        payloads = [self._payload_of(request) for request in requests]
        try:
            outcomes = list(pipeline(payloads))
        except RETRYABLE_ERRORS as exc:
            self._retry_all(requests, exc)
            return
        except Exception as exc:
            if len(requests) > 1:
                # Something in one item broke the whole run: isolate it.
                logger.warning(
                    "%s: buffer of %d failed (%s); running its requests one by one",
                    self.name,
                    len(requests),
                    type(exc).__name__,
                )
                for request in requests:
                    self.handle([request], pipeline)
                return
            self._fail(requests[0], exc)
            return
        by_id = {
            request.id: _own(outcome) for request, outcome in zip(requests, outcomes, strict=True)
        }
        self._store_results(requests, by_id)
        self._send_events(requests, time.monotonic() - started)

    def _payload_of(self, request: SimpleRequest) -> Any:
        """What the pipeline validates: the kwargs. Positional arguments are not
        part of the contract; the pipeline rejects the marker in their place."""
        if request.args:
            return {"__positional_args__": len(request.args), **_as_dict(request.kwargs)}
        return request.kwargs

    def wants_result(self, request: SimpleRequest | Request) -> bool:
        """The sender's ``ignore_result`` header, else the task's default."""
        flag = (request.request_dict or {}).get("ignore_result")
        return not (self.ignore_result if flag is None else flag)

    def _store_results(
        self, requests: Sequence[SimpleRequest], outcomes: dict[str, dict[str, Any]]
    ) -> None:
        """Each wanted result through the backend's own store path, as a plain
        task's is (the same meta, the same notification of its waiter)."""
        backend = self.app.backend
        for request in requests:
            if self.wants_result(request):
                backend.store_result(
                    request.id, outcomes[request.id], states.SUCCESS, request=request
                )

    def _store_failure(self, request: SimpleRequest, exc: BaseException) -> None:
        if not self.wants_result(request):
            return
        # The error's type only: its message may quote the payload.
        self.app.backend.store_result(
            request.id, RuntimeError(type(exc).__name__), states.FAILURE, request=request
        )

    def _retry_all(self, requests: Sequence[SimpleRequest], exc: BaseException) -> None:
        logger.warning(
            "%s: buffer of %d failed (%s); retrying each request",
            self.name,
            len(requests),
            type(exc).__name__,
        )
        for request in requests:
            retries = retries_of(request)
            countdown = min(self.retry_backoff_max, 2.0**retries) * random.uniform(0.5, 1.0)
            if not self._retry_or_dead_letter(request, exc, countdown):
                # The broker is down too: raising would ack the buffer (lost);
                # exiting the child leaves every request to on_error's re-publish,
                # or unacked for the visibility timeout to redeliver.
                raise SystemExit(f"{self.name}: cannot re-publish a failed buffer")

    def _retry_or_dead_letter(
        self,
        request: SimpleRequest | Request,
        exc: BaseException,
        countdown: float,
        isolate: bool = False,
    ) -> bool:
        """Re-publish with ``retries + 1`` (same task id; with ``isolate``, marked
        to run alone), or dead-letter past ``max_retries``. False when neither
        could be done (leave it unacked)."""
        retries = retries_of(request)
        if retries >= self.max_retries:
            return self._dead_letter(request, "retries_exhausted", exc)
        kwargs = _as_dict(request.kwargs)
        try:
            self.apply_async(
                args=list(request.args or ()),
                kwargs=kwargs,
                task_id=request.id,
                countdown=countdown or None,
                retries=retries + 1,
                ignore_result=not self.wants_result(request),
                argsrepr="()",
                kwargsrepr=redact_kwargs(kwargs),
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

    def _fail(self, request: SimpleRequest, exc: BaseException) -> None:
        """One request that fails on its own for a reason retrying will not fix."""
        logger.error("%s[%s] failed: %s", self.name, request.id, type(exc).__name__)
        self._dead_letter(request, "error", exc)
        try:
            self._store_failure(request, exc)
        except Exception as store_exc:
            logger.error(
                "%s[%s]: result not stored (%s)", self.name, request.id, type(store_exc).__name__
            )

    def _dead_letter(
        self, request: SimpleRequest | Request, reason: str, exc: BaseException
    ) -> bool:
        return settle.fail(self.name, request.id, reason, exc, request.kwargs)

    def _send_events(self, requests: Sequence[SimpleRequest], runtime: float) -> None:
        """``task-succeeded`` events, published together, with ids only (never
        text): one per request, so Flower shows each message as its own task,
        or with ``task_events = "per_buffer"`` one per buffer, under an id of
        its own, naming how many requests it ran and the first one's id."""
        if not self.app.conf.worker_send_task_events or not requests:
            return
        if self.task_events == "per_buffer":
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
                    "kwargs": _safe_repr(request.kwargs),
                    "retries": retries_of(request),
                }
                for request in requests
            ]
        try:
            dispatcher = self._dispatcher(requests[0].hostname)
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
            self._event_dispatcher = None

    def _dispatcher(self, hostname: str | None) -> EventDispatcher:
        dispatcher = self._event_dispatcher
        if dispatcher is None:
            dispatcher = self.app.events.Dispatcher(
                self.app.connection_for_write(),
                hostname=hostname,
                buffer_group=["task"],
                buffer_limit=10**9,
            )
            self._event_dispatcher = dispatcher
        return dispatcher


def acknowledge_together(requests: Sequence[Request]) -> None:
    """Ack a settled buffer: in one round trip per channel when the transport
    can (vigil's Redis transport, worker/broker.py), else one by one."""
    with ExitStack() as stack:
        joined: set[int] = set()
        for request in requests:
            qos = getattr(getattr(request.message, "channel", None), "qos", None)
            together = getattr(qos, "acks_together", None)
            if together is not None and id(qos) not in joined:
                joined.add(id(qos))
                stack.enter_context(together())
            request.acknowledge()


def _own(outcome: dict[str, Any]) -> dict[str, Any]:
    """A request's own answer: positions refer to its own single item."""
    if "index" in outcome:
        return {**outcome, "index": 0}
    return outcome


def _as_dict(kwargs: Any) -> dict[str, Any]:
    return kwargs if isinstance(kwargs, dict) else {}


def _safe_repr(kwargs: Any) -> str:
    try:
        return redact_kwargs(kwargs)
    except Exception:  # a hostile body must not stop the events
        return "<redacted>"
