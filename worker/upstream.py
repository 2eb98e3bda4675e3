"""Every private internal of Celery, kombu, celery-batches and Flower that vigil's
worker runtime relies on, in one list.

Each entry names the upstream object, what vigil expects of it and where vigil
uses it. ``tests/worker/test_upstream.py`` checks every entry against the
installed libraries; an upgrade that changes one fails there with the entry's
text, before a worker misbehaves. Each of these libraries is pinned to the
minor version the list was checked against (pyproject.toml). To upgrade one:
raise its pin, run ``make test ARGS=tests/worker/test_upstream.py``, and for
each failure read the upstream change and adapt the code the entry names.

kombu (the Redis transport, ``worker/broker.py``):
- ``Channel._create_client``, ``_connparams``, ``_get_pool``: one reused client
  per channel, and connection parameters kept for a detached channel.
- ``Channel._brpop_start`` / ``_brpop_read``, ``_in_poll``, ``_brpop_sent_at``,
  ``_flush_brpop_reauth``, the ``'BRPOP'`` handler: the poller sends the
  channel's command and reads its reply through these; vigil's fetch script and
  its blocking wait travel on them.
- ``Channel._queue_cycle``, ``_q_for_pri``, ``priority_steps``: the lists a
  consumer drains, in kombu's fair order.
- ``Channel._do_restore_message``: refuses a restore through a detached channel.
- ``QoS._remove_from_indices``, ``restore_visible``, ``restore_by_tag`` and the
  poller's ``maybe_restore_messages``: the sweep that now starts with dead
  consumers' tasks.
- ``virtual.QoS.append`` / ``ack``, ``_flush``, ``_delivered``, ``_dirty``,
  ``can_consume_max_estimate``: the local prefetch bookkeeping, called on the
  base class to skip the Redis write a fetch already made.
- ``virtual.Transport._deliver``: hands a fetched message to its consumer.
- ``SentinelChannel._get_pool`` calling ``_sentinel_managed_pool(asynchronous)``,
  ``from_transport_options``, ``connection_class`` and ``SentinelTransport``;
  ``Channel._disconnect_pools`` closing ``_sentinel_manager`` /
  ``_async_sentinel_manager``: vigil's Sentinel channel builds those pools
  itself, from sentinels it keeps for a detached channel.
- ``native_delayed_delivery``'s warning for direct exchanges
  (``worker/queues.py`` filters it for queues it binds itself).

Celery (``worker/base.py``):
- ``worker.request.Request._argsrepr`` / ``_kwargsrepr``: what events and
  Flower show, replaced by a redacted form.
- ``worker.consumer.consumer.dump_body``: the formatter of bodies Celery logs
  for unknown or undecodable messages, replaced so no message text is logged.
- ``utils.time.get_exponential_backoff_interval`` (``worker/settle.py``): the
  backoff of the one retry policy, the helper ``autoretry_for`` uses, so plain
  and buffered tasks wait alike.

celery-batches (``worker/batching.py``):
- ``Batches.__init__()``, ``_tref``, ``_buffer``, ``_pending``, ``_pool``,
  ``_do_flush``, ``flush(requests)`` and ``celery_batches.trace.apply_batches_task``:
  the flush timer re-armed after a reconnect, buffers settled per request.

Flower (``worker/flower_guard.py``):
- ``flower.command`` parses the command line, then its config file, then the
  command line again; the guard acts on the last parse.
"""

from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Internal:
    """One upstream internal: ``target`` is ``module:qualified.name``.

    ``params``: the parameter names a callable must have, in order;
    ``source_has``: text the target's source must contain (an attribute set in
    ``__init__``, a call vigil relies on); ``used_by``: where vigil relies on it."""

    target: str
    used_by: str
    params: tuple[str, ...] | None = None
    source_has: tuple[str, ...] = ()

    def resolve(self) -> Any:
        module_name, _, qualname = self.target.partition(":")
        obj: Any = importlib.import_module(module_name)
        for part in qualname.split(".") if qualname else ():
            obj = getattr(obj, part)
        return obj

    def problems(self) -> list[str]:
        """What no longer holds, as sentences naming the target; [] when all does."""
        try:
            obj = self.resolve()
        except (ImportError, AttributeError) as exc:
            return [f"{self.target} is gone ({exc}); used by {self.used_by}"]
        found: list[str] = []
        if self.params is not None:
            names = tuple(inspect.signature(obj).parameters)
            if names != self.params:
                found.append(
                    f"{self.target} takes {names}, vigil expects {self.params}; "
                    f"used by {self.used_by}"
                )
        if self.source_has:
            source = inspect.getsource(obj)
            for text in self.source_has:
                if text not in source:
                    found.append(
                        f"{self.target} no longer contains {text!r}; used by {self.used_by}"
                    )
        return found


_BROKER = "worker/broker.py"
_REDIS = "kombu.transport.redis"
_VIRTUAL = "kombu.transport.virtual.base"

INTERNALS: tuple[Internal, ...] = (
    # kombu's Redis transport.
    Internal(f"{_REDIS}:Channel._create_client", _BROKER, ("self", "asynchronous")),
    Internal(f"{_REDIS}:Channel._connparams", _BROKER, ("self", "asynchronous")),
    Internal(f"{_REDIS}:Channel._get_pool", _BROKER, ("self", "asynchronous")),
    Internal(
        f"{_REDIS}:Channel._brpop_start",
        _BROKER,
        ("self", "timeout"),
        ("self._in_poll = self.client.connection", "self._brpop_sent_at = monotonic()"),
    ),
    Internal(
        f"{_REDIS}:Channel._brpop_read",
        _BROKER,
        ("self", "options"),
        ("self._in_poll = None", "self._flush_brpop_reauth()"),
    ),
    Internal(f"{_REDIS}:Channel._flush_brpop_reauth", _BROKER, ("self",)),
    Internal(f"{_REDIS}:Channel._q_for_pri", _BROKER, ("self", "queue", "pri")),
    Internal(
        f"{_REDIS}:Channel.__init__",
        _BROKER,
        source_has=(
            "self._queue_cycle = cycle_by_name(",
            "'BRPOP': self._brpop_read",
        ),
    ),
    Internal(
        f"{_REDIS}:Channel._do_restore_message",
        _BROKER,
        ("self", "payload", "exchange", "routing_key", "pipe", "leftmost"),
    ),
    Internal(f"{_REDIS}:QoS._remove_from_indices", _BROKER, ("self", "delivery_tag", "pipe")),
    Internal(f"{_REDIS}:QoS.restore_visible", _BROKER, ("self", "start", "num", "interval")),
    Internal(f"{_REDIS}:QoS.restore_by_tag", _BROKER, ("self", "tag", "client", "leftmost")),
    Internal(
        f"{_REDIS}:MultiChannelPoller.maybe_restore_messages",
        _BROKER,
        ("self",),
        ("channel.qos.restore_visible(",),
    ),
    Internal(
        f"{_REDIS}:MultiChannelPoller._register_BRPOP",
        _BROKER,
        ("self", "channel"),
        ("if not channel._in_poll:", "channel._brpop_start()"),
    ),
    # kombu's Redis transport behind Sentinel.
    Internal(
        f"{_REDIS}:SentinelChannel._get_pool",
        _BROKER,
        ("self", "asynchronous"),
        ("self._sentinel_managed_pool(asynchronous)",),
    ),
    Internal(f"{_REDIS}:SentinelChannel._sentinel_managed_pool", _BROKER, ("self", "asynchronous")),
    Internal(f"{_REDIS}:SentinelChannel.from_transport_options", _BROKER),
    Internal(f"{_REDIS}:SentinelChannel.connection_class", _BROKER),
    Internal(f"{_REDIS}:SentinelTransport", _BROKER, source_has=("Channel = SentinelChannel",)),
    Internal(
        f"{_REDIS}:Channel._disconnect_pools",
        _BROKER,
        ("self",),
        ("self._sentinel_manager", "self._async_sentinel_manager", ".close()"),
    ),
    # kombu's virtual transport: local prefetch bookkeeping.
    Internal(f"{_VIRTUAL}:QoS.append", _BROKER, ("self", "message", "delivery_tag")),
    Internal(f"{_VIRTUAL}:QoS.ack", _BROKER, ("self", "delivery_tag")),
    Internal(f"{_VIRTUAL}:QoS._flush", _BROKER, ("self",)),
    Internal(f"{_VIRTUAL}:QoS.can_consume_max_estimate", _BROKER, ("self",)),
    Internal(
        f"{_VIRTUAL}:QoS.__init__",
        _BROKER,
        source_has=("self._delivered = OrderedDict()", "self._dirty = set()"),
    ),
    Internal(f"{_VIRTUAL}:Transport._deliver", _BROKER, ("self", "message", "queue")),
    Internal(
        "kombu.transport.native_delayed_delivery:bind_queue_to_native_delayed_delivery_exchange",
        "worker/queues.py (the warning it filters)",
        source_has=("is a direct exchange",),
    ),
    # Celery.
    Internal(
        "celery.worker.request:Request.__init__",
        "worker/base.py (RedactedRequest)",
        source_has=("self._argsrepr", "self._kwargsrepr"),
    ),
    Internal(
        "celery.worker.request:Request",
        "worker/base.py (RedactedRequest)",
        source_has=("return self._argsrepr", "return self._kwargsrepr", "self._argsrepr,"),
    ),
    Internal(
        "celery.utils.time:get_exponential_backoff_interval",
        "worker/settle.py (RetryPolicy)",
        ("factor", "retries", "maximum", "full_jitter"),
    ),
    Internal(
        "celery.app.autoretry:add_autoretry_behaviour",
        "worker/settle.py (RetryPolicy: plain tasks retry through the same helper)",
        source_has=("get_exponential_backoff_interval(", "full_jitter=retry_jitter"),
    ),
    # The module, not the attribute: worker/base.py has replaced the attribute.
    Internal(
        "celery.worker.consumer.consumer:",
        "worker/base.py (no message text in logs)",
        source_has=("def dump_body(m, body):", "dump_body(message, body)"),
    ),
    # celery-batches.
    Internal(
        "celery_batches:Batches",
        "worker/batching.py",
        source_has=("self._tref", "self._buffer", "self._pending", "self._pool"),
    ),
    Internal("celery_batches:Batches.__init__", "worker/batching.py", ("self",)),
    Internal("celery_batches:Batches._do_flush", "worker/batching.py", ("self",)),
    Internal("celery_batches:Batches.flush", "worker/batching.py", ("self", "requests")),
    Internal(
        "celery_batches.trace:apply_batches_task",
        "worker/batching.py",
        ("task", "args", "loglevel", "logfile"),
    ),
    # Flower.
    Internal(
        "flower.command:apply_options",
        "worker/flower_guard.py (acts on the last of three parses)",
        source_has=("parse_command_line", "parse_config_file"),
    ),
)
