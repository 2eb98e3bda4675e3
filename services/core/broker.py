"""vigil's Redis broker transport: kombu's Redis transport with three fixes.

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
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any

import redis
from kombu.log import get_logger
from kombu.transport import redis as kombu_redis
from kombu.transport import virtual
from kombu.utils.json import dumps

__all__ = ["Channel", "QoS", "Transport"]

logger = get_logger(__name__)


class QoS(kombu_redis.QoS):
    """Ack emulation whose unacked bookkeeping is one non-transactional round trip."""

    channel: Channel

    @property
    def _transactional(self) -> bool:
        return bool(self.channel.vigil_transactional_unacked)

    def append(self, message: Any, delivery_tag: str) -> None:
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
        with self.channel.conn_or_acquire() as client:
            # Payload before index: a half-applied ack leaves an index entry
            # without payload, which restore_by_tag just drops.
            pipe = client.pipeline(transaction=False)
            pipe.hdel(self.unacked_key, delivery_tag)
            pipe.zrem(self.unacked_index_key, delivery_tag)
            pipe.execute()
        virtual.QoS.ack(self, delivery_tag)

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

    from_transport_options = (
        *kombu_redis.Channel.from_transport_options,
        "vigil_transactional_unacked",
    )

    _sync_client: redis.Redis | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._sync_client_lock = threading.Lock()
        # Connection params saved while attached, keyed "sync"/"async", so a
        # pool can still be built after Connection.collect() detached us.
        self._saved_connparams: dict[str, dict[str, Any]] = {}
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
