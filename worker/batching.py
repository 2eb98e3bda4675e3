"""Buffered tasks: many single-item requests, one pipeline run per buffer.

Frontends send one ``vigil.ingest.message`` (or ``.detection``) per item. The
worker's parent holds those requests (celery-batches) and hands a buffer of
them to one pool job, so Celery's per-task cost in the pool and the pipeline's
round trips are paid per buffer instead of per message. Each request still
behaves as its own task, settled by worker/settle.py's :class:`RequestSettler`:

- its outcome is stored as its result when the sender asked for one;
- a rejected item is dead-lettered under its own task name with its own payload;
- it is acked (late) only after its buffer's state and results are written;
- a buffer that fails as a whole (a store down, the soft time limit) is
  re-published request by request with the same task id and ``retries + 1``,
  after the one retry policy's countdown, and the originals are acked: every
  step is idempotent per item, so nothing counts twice; past ``max_retries``
  each is dead-lettered;
- a pool child that dies or hits the hard time limit mid-buffer: the parent
  re-publishes each request marked ``vigil_isolate``, and a marked request
  runs in a buffer of its own; one that is lost again, alone, is the cause
  (an item that kills its process) and is dead-lettered as ``worker_lost``.
  So a poison item costs two pool processes and fails no other request, and
  no request is stranded until a restore.

Two sides. In the parent, :class:`FlushScheduler` decides when a buffer goes to
the pool: the interval flush waits while every pool process is running one of
this task's buffers (up to ``MAX_FLUSH_DEFER_S``), since such a buffer could
not start before one of them returns anyway, and holding it lets it grow, so
under load buffers fill by count and the per-buffer cost is paid fewer times.
A returning buffer flushes what waited; at light load nothing waits. In the
pool child, :meth:`BufferedTask.handle` runs the pipeline and settles.

Stock ``celery_batches.Batches.flush`` acks every request when the body raises
and strands them when the child dies; :meth:`BufferedTask.flush` replaces it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

from billiard.einfo import ExceptionInfo
from celery.exceptions import SoftTimeLimitExceeded
from celery.worker.request import Request
from celery_batches import Batches, SimpleRequest
from celery_batches.trace import apply_batches_task

from models.outcomes import Outcome
from worker.base import TRANSIENT_ERRORS
from worker.settle import RETRY, RequestSettler, isolated, kwargs_of

logger = logging.getLogger(__name__)

# The longest an interval flush waits for a pool process to come free. It only
# bounds a miscount: a buffer handed over sooner would queue for a process anyway.
MAX_FLUSH_DEFER_S = 0.5

# The pipeline a buffered task runs: payloads in, one outcome per payload out.
Pipeline = Callable[[list[Any]], Sequence[Outcome]]

# A buffer that fails as a whole for one of these is retried, not dead-lettered.
RETRYABLE_ERRORS: tuple[type[BaseException], ...] = (*TRANSIENT_ERRORS, SoftTimeLimitExceeded)


@dataclass
class FlushScheduler:
    """Parent side: this task's buffers handed to the pool and not yet
    returned, and since when an interval flush has been waiting for a process."""

    max_defer_s: float = MAX_FLUSH_DEFER_S
    in_pool: int = 0
    deferred_since: float | None = None

    def hold(self, held: int, flush_every: int, processes: int, now: float) -> bool:
        """Whether a flush of ``held`` requests should wait for a free process."""
        if 0 < held < flush_every and self.in_pool >= processes:
            if self.deferred_since is None:
                self.deferred_since = now
            if now - self.deferred_since < self.max_defer_s:
                return True
        self.deferred_since = None
        return False

    def handed_over(self) -> None:
        self.in_pool += 1

    def returned(self) -> bool:
        """A buffer left the pool; True when a flush waited for it."""
        self.in_pool = max(0, self.in_pool - 1)
        return self.deferred_since is not None


class BufferedTask(Batches):
    """A celery-batches task whose requests keep their own results, retries,
    dead letters and events. The task body calls :meth:`handle` with its pipeline."""

    Request = "worker.base:RedactedRequest"
    acks_late = True
    reject_on_worker_lost = True
    # The one retry policy (worker/settle.py).
    max_retries = RETRY.max_retries
    retry_backoff_max = RETRY.maximum
    # "per_request": one task-succeeded per request; "per_buffer": one per buffer.
    task_events = "per_request"

    def __init__(self) -> None:
        super().__init__()
        self.scheduler = FlushScheduler()
        self._settler: RequestSettler | None = None

    @property
    def settler(self) -> RequestSettler:
        if self._settler is None:
            self._settler = RequestSettler(self, RETRY, self.task_events)
        return self._settler

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
        task's buffers and the buffer is not full."""
        processes = getattr(self._pool, "limit", None) or 1
        if self.scheduler.hold(self._buffer.qsize(), self.flush_every, processes, time.monotonic()):
            return
        super()._do_flush()

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

        def returned() -> None:
            if self.scheduler.returned():
                self._do_flush()

        def on_return(_result: Any) -> None:
            acknowledge_together(requests)
            returned()

        def on_error(exc_info: ExceptionInfo) -> None:
            returned()
            # WorkerLostError (child killed) or TimeLimitExceeded (hard limit).
            exc = getattr(exc_info, "exception", None) or RuntimeError("pool job lost")
            self._lost(requests, exc)

        # Counted before the hand-over: a solo pool returns within apply_async.
        self.scheduler.handed_over()
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
            self.scheduler.returned()
            raise

    def _lost(self, requests: list[Request], exc: BaseException) -> None:
        """A buffer the pool lost: each request again, alone; one lost alone is the cause."""
        logger.warning(
            "%s: buffer of %d lost in the pool (%s); re-publishing each request alone",
            self.name,
            len(requests),
            type(exc).__name__,
        )
        for request in requests:
            if isolated(request) and len(requests) == 1:
                settled = self.settler.dead_letter(request, "worker_lost", exc)
            else:
                settled = self.settler.retry_or_dead_letter(
                    request, exc, countdown=0.0, isolate=True
                )
            if settled:
                request.acknowledge()

    # -- pool child -------------------------------------------------------------

    def handle(self, requests: Sequence[SimpleRequest], pipeline: Pipeline) -> None:
        """Run ``pipeline`` once over the buffer and settle every request.

        Never raises: whatever happens, each request ends with a result, a
        dead letter or a re-published copy before the buffer is acked."""
        started = time.monotonic()
        requests = list(requests)
        try:
            outcomes = list(pipeline([payload_of(request) for request in requests]))
        except RETRYABLE_ERRORS as exc:
            self.settler.retry_all(requests, exc)
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
            self.settler.failed(requests[0], exc)
            return
        by_id = {
            request.id: _own(outcome) for request, outcome in zip(requests, outcomes, strict=True)
        }
        self.settler.succeeded(requests, by_id, time.monotonic() - started)


def payload_of(request: SimpleRequest) -> Any:
    """What the pipeline validates: the kwargs. Positional arguments are not
    part of the contract; the pipeline rejects the marker in their place."""
    if request.args:
        return {"__positional_args__": len(request.args), **kwargs_of(request)}
    return request.kwargs


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


def _own(outcome: Outcome) -> Outcome:
    """A request's own answer: positions refer to its own single item."""
    if "index" in outcome:
        return {**outcome, "index": 0}
    return outcome
