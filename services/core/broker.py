"""vigil's Redis broker transport: kombu's Redis transport with five changes.

Selected in ``celeryconfig`` with ``broker_transport = "services.core.broker:Transport"``
when the broker URL is Redis; the URL keeps its ``redis://`` scheme because kombu
>= 5.7 refuses ``.``/``:`` in a transport name taken from the scheme (kombu #2641).

Changes relative to ``kombu.transport.redis`` (kombu 5.7.0, redis-py 8.x):

1. One synchronous redis-py client per channel. Stock kombu builds a new
   ``redis.Redis`` on every ``conn_or_acquire``/``pipe_or_acquire`` (two per
   message for get + ack), and each build rebuilds redis-py's response-callback
   table (redis-py #3624, PR #4124). The reused client wraps the same pool, so
   every command still checks a connection out of it; the BRPOP/pub-sub clients
   keep their own pool.
2. Unacked bookkeeping as one pipelined round trip without MULTI/EXEC
   (transport option ``vigil_transactional_unacked=True`` restores stock).
   Redis never rolls back a transaction, so MULTI/EXEC only adds isolation;
   the write orders below make every interleaving and every half-applied
   write harmless (see ``QoS.append``/``QoS.ack``), and ``restore_by_tag``
   keeps its WATCH/MULTI transaction.
3. Detached-channel safety. After a broker connection loss Celery calls
   ``Connection.collect()``, which drops the channel's pools and its
   connection; a late ack on that channel then raised AttributeError, which
   Celery's ``ack_log_error`` does not catch, so the worker exited (kombu #582,
   #970, #1552; celery #9054). Restoring through such a channel deleted the
   unacked entry without requeueing it.
4. Messages fetched in bulk. Stock kombu pays one BRPOP round trip plus one
   unacked write per message. After each BRPOP that delivers, this channel
   takes up to ``vigil_fetch_many - 1`` more (within the prefetch limit) with
   ``broker_fetch.lua``, which pops them and records them as unacked in one
   atomic step: one round trip for all of them, and no window in which a
   killed worker loses one. The BRPOP itself keeps kombu's window for its
   one message (kombu #305). Off with ``vigil_fetch_many=1`` or a
   ``global_keyprefix`` (kombu prefixes only the first key of an EVALSHA).
5. Acks together. ``QoS.acks_together()`` writes every ack made inside it in
   one round trip: a buffer of 100 requests (tasks/batching.py) is acked with
   one HDEL and one ZREM instead of 100 pipelines.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any

import redis
from kombu.log import get_logger
from kombu.transport import redis as kombu_redis
from kombu.transport import virtual
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import dumps, loads

from services.core import scripts

__all__ = ["Channel", "QoS", "Transport"]

logger = get_logger(__name__)


class QoS(kombu_redis.QoS):
    """Ack emulation whose unacked bookkeeping is one non-transactional round trip."""

    channel: Channel

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Per thread: the tags acked inside acks_together(), written when it
        # ends (kombu allows acks from other threads; theirs are not held).
        self._held = threading.local()

    @property
    def _transactional(self) -> bool:
        return bool(self.channel.vigil_transactional_unacked)

    def append(self, message: Any, delivery_tag: str) -> None:
        if self.channel._recorded_unacked.pop(delivery_tag, False):
            # broker_fetch.lua recorded it already, atomically with the pop.
            virtual.QoS.append(self, message, delivery_tag)
            return
        if self._transactional:
            super().append(message, delivery_tag)
            return
        delivery = message.delivery_info
        payload = dumps([message._raw, delivery["exchange"], delivery["routing_key"]])
        with self.channel.conn_or_acquire() as client:
            # Payload before index: restore_visible scans the index, so it never
            # sees a tag whose payload is not written yet.
            pipe = client.pipeline(transaction=False)
            pipe.hset(self.unacked_key, delivery_tag, payload)
            pipe.zadd(self.unacked_index_key, {delivery_tag: kombu_redis.time()})
            pipe.execute()
        # Local prefetch bookkeeping only (skips kombu_redis.QoS.append's Redis I/O).
        virtual.QoS.append(self, message, delivery_tag)

    def ack(self, delivery_tag: str) -> None:
        if self._transactional:
            super().ack(delivery_tag)
            return
        held = getattr(self._held, "tags", None)
        if held is not None:
            held.append(delivery_tag)
            return
        self.forget([delivery_tag])
        virtual.QoS.ack(self, delivery_tag)

    @contextmanager
    def acks_together(self) -> Iterator[None]:
        """Acks made inside the block are written in one round trip at its end.

        If that write fails (broker away), the messages stay unacked locally
        and in Redis, so they are restored or redelivered like any message
        whose ack was lost; the error is logged, not raised."""
        if self._transactional or getattr(self._held, "tags", None) is not None:
            yield
            return
        self._held.tags = []
        try:
            yield
        finally:
            tags, self._held.tags = self._held.tags, None
            if tags:
                self._ack_many(tags)

    def _ack_many(self, tags: list[str]) -> None:
        try:
            self.forget(tags)
        except self.channel.connection_errors as exc:
            logger.warning(
                "could not ack %d message(s) (%r); they will be redelivered", len(tags), exc
            )
            return
        for tag in tags:
            virtual.QoS.ack(self, tag)

    def forget(self, tags: list[str]) -> None:
        """Delete the unacked entries of ``tags`` in Redis. Payload before index: a
        half-applied delete leaves an index entry without payload, which
        restore_by_tag just drops."""
        with self.channel.conn_or_acquire() as client:
            pipe = client.pipeline(transaction=False)
            pipe.hdel(self.unacked_key, *tags)
            pipe.zrem(self.unacked_index_key, *tags)
            pipe.execute()

    def restore_unacked(self, client: redis.Redis | None = None) -> None:
        """Restore every locally unacked message, each independently.

        Stock kombu stops at the first error; here a tag that cannot be restored
        (broker down) stays in the unacked hash and restore_visible redelivers it
        after visibility_timeout.
        """
        self._flush()
        delivered: Any = self._delivered
        failed = 0
        first_error: BaseException | None = None
        with self.channel.conn_or_acquire(client) as acquired:
            for tag in list(delivered):
                try:
                    self.restore_by_tag(tag, client=acquired)
                except self.channel.connection_errors as exc:
                    failed += 1
                    first_error = first_error or exc
        delivered.clear()
        if failed:
            logger.warning(
                "could not restore %d unacked message(s) (%r); they stay in the "
                "unacked hash and are redelivered after visibility_timeout",
                failed,
                first_error,
            )


class Channel(kombu_redis.Channel):
    """Redis channel with a reused client and safe acks after detachment."""

    QoS = QoS

    #: Transport option: keep stock MULTI/EXEC around unacked bookkeeping.
    vigil_transactional_unacked: bool = False
    #: Transport option: most messages one BRPOP cycle delivers (1: stock).
    vigil_fetch_many: int = 100

    from_transport_options = (
        *kombu_redis.Channel.from_transport_options,
        "vigil_transactional_unacked",
        "vigil_fetch_many",
    )

    _sync_client: redis.Redis | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._sync_client_lock = threading.Lock()
        # Connection params saved while attached, keyed "sync"/"async", so a
        # pool can still be built after Connection.collect() detached us.
        self._saved_connparams: dict[str, dict[str, Any]] = {}
        # Tags broker_fetch.lua already recorded as unacked (QoS.append skips them).
        self._recorded_unacked: dict[str, bool] = {}
        self._no_ack_queues: set[str] = set()
        super().__init__(*args, **kwargs)

    def _create_client(self, asynchronous: bool = False) -> redis.Redis:
        if asynchronous:
            # BRPOP / pub-sub: stock (kombu caches these itself, separate pool).
            return super()._create_client(asynchronous=True)
        pool = self.pool
        client = self._sync_client
        if client is None or client.connection_pool is not pool:
            with self._sync_client_lock:
                client = self._sync_client
                # Keyed on the pool: after _disconnect_pools (fork, close) a new
                # pool gets a new client.
                if client is None or client.connection_pool is not pool:
                    client = super()._create_client(asynchronous=False)
                    self._sync_client = client
        return client

    @contextmanager
    def conn_or_acquire(self, client: redis.Redis | None = None) -> Iterator[redis.Redis]:
        yield client if client else self._create_client()

    def _connparams(self, asynchronous: bool = False) -> dict[str, Any]:
        key = "async" if asynchronous else "sync"
        transport = self.connection
        if transport is not None and getattr(transport, "client", None) is not None:
            params = super()._connparams(asynchronous=asynchronous)
            self._saved_connparams[key] = dict(params)
            return params
        saved = self._saved_connparams.get(key)
        if saved is None:
            # A ConnectionError is what Celery's ack_log_error logs and survives.
            raise redis.ConnectionError("channel is detached from its kombu connection")
        return dict(saved)

    def _get_pool(self, asynchronous: bool = False) -> redis.ConnectionPool:
        pool = super()._get_pool(asynchronous=asynchronous)
        # A consumer may only ever have built the async pool while attached;
        # save the sync params too so a late ack can build its pool later.
        if asynchronous and "sync" not in self._saved_connparams:
            with suppress(redis.ConnectionError):
                self._connparams(asynchronous=False)
        return pool

    def basic_consume(self, queue: str, *args: Any, **kwargs: Any) -> Any:
        no_ack = kwargs.get("no_ack", args[0] if args else False)
        # No-ack consumers never call QoS.append, so nothing would remove an
        # unacked entry broker_fetch.lua wrote: their queues are not fetched in bulk.
        if no_ack:
            self._no_ack_queues.add(queue)
        else:
            self._no_ack_queues.discard(queue)
        return super().basic_consume(queue, *args, **kwargs)

    def _brpop_read(self, **options: Any) -> bool:
        delivered = super()._brpop_read(**options)
        if delivered and self._fetches_many():
            self._fetch_more()
        return delivered

    def _fetches_many(self) -> bool:
        qos = self.qos
        return (
            int(self.vigil_fetch_many) > 1
            and bool(self.ack_emulation)
            and isinstance(qos, QoS)
            and not self.global_keyprefix
            and not self.vigil_transactional_unacked
            # Celery's worker_disable_prefetch replaces can_consume on the
            # instance to take one message at a time: keep to that.
            and "can_consume" not in vars(qos)
        )

    def _fetch_more(self) -> None:
        """Up to ``vigil_fetch_many - 1`` more messages in one round trip, within
        the prefetch limit, drained from the queues in the consume order."""
        room = self.qos.can_consume_max_estimate()
        limit = int(self.vigil_fetch_many) - 1
        want = limit if room is None else min(room, limit)
        queues = [
            queue
            for queue in self._queue_cycle.consume(len(self.active_queues))
            if queue not in self._no_ack_queues
        ]
        if want <= 0 or not queues:
            return
        pairs = [
            (queue, self._q_for_pri(queue, pri)) for pri in self.priority_steps for queue in queues
        ]
        keys = [key for _, key in pairs] + [self.qos.unacked_key, self.qos.unacked_index_key]
        with self.conn_or_acquire() as client:
            reply = scripts.run(client, "broker_fetch", keys, [want, time.time()])
        fetched: list[tuple[str, str, Any]] = []
        unreadable: list[tuple[str, str, bytes]] = []
        for i in range(0, len(reply), 3):
            queue, key = pairs[int(reply[i]) - 1]
            tag, raw = bytes_to_str(reply[i + 1]), reply[i + 2]
            try:
                fetched.append((queue, tag, loads(bytes_to_str(raw))))
            except ValueError:
                unreadable.append((key, tag, raw))
        if unreadable:
            self._give_back(unreadable)
        for position, (queue, tag, payload) in enumerate(fetched):
            self._recorded_unacked[tag] = True
            try:
                self.connection._deliver(payload, queue)
            except Exception:
                # Recorded as unacked but not taken here: put them back now rather
                # than after the visibility timeout.
                rest = [later for _, later, _ in fetched[position + 1 :]]
                if self._recorded_unacked.pop(tag, False):
                    rest.insert(0, tag)
                for untaken in rest:
                    self.qos.restore_by_tag(untaken)
                raise
            if self._recorded_unacked.pop(tag, False):
                # Delivered without QoS.append (taken as no-ack): nothing would
                # ever ack its entry.
                self.qos.forget([tag])

    def _give_back(self, unreadable: list[tuple[str, str, bytes]]) -> None:
        """Messages the script could read but Python's JSON cannot: back where
        they were, unrecorded, so kombu's own path meets them as it would."""
        with self.conn_or_acquire() as client:
            pipe = client.pipeline(transaction=False)
            for key, tag, raw in unreadable:
                pipe.hdel(self.qos.unacked_key, tag)
                pipe.zrem(self.qos.unacked_index_key, tag)
                pipe.rpush(key, raw)
            pipe.execute()

    def _do_restore_message(
        self,
        payload: Any,
        exchange: str,
        routing_key: str,
        pipe: Any,
        leftmost: bool = False,
    ) -> None:
        # Detached, the exchange lookup fails and stock kombu only logs it while
        # the transaction deletes the unacked entry: the message is lost. A
        # connection error aborts the transaction and keeps the entry.
        if self.connection is None or self.exchange_types is None:
            raise redis.ConnectionError("cannot restore on a detached channel")
        super()._do_restore_message(payload, exchange, routing_key, pipe, leftmost)

    def close(self) -> None:
        try:
            super().close()
        finally:
            self._sync_client = None


class Transport(kombu_redis.Transport):
    """kombu's Redis transport using :class:`Channel`."""

    Channel = Channel
