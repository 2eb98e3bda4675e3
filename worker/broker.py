"""vigil's Redis broker transport: kombu's Redis transport with six changes.

Selected in ``celeryconfig`` with ``broker_transport = "worker.broker:Transport"``
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
4. Fetches that never leave a task only in the worker. Stock kombu BRPOPs a
   message and records it as unacked in a second step, so a worker killed in
   between loses it (kombu #305). This channel sends ``broker_fetch.lua`` on
   kombu's BRPOP connection instead: it pops up to ``vigil_fetch_many``
   messages (within the prefetch limit) and records each as unacked, and as
   owned by this consumer, in one atomic step; one round trip for all of
   them. When a fetch finds nothing, the next command blocks without popping
   (``BLMOVE key key RIGHT RIGHT``, which leaves the list as it was) on the
   list most messages came from, and the fetch follows when it wakes. Lists
   it does not block on are read within ``brpop_timeout`` (1 s). Messages
   that are not kombu's go to the ``vigil_unreadable_key`` list with their
   reason. Off (kombu's BRPOP) with ``vigil_fetch_many=1``, a
   ``global_keyprefix`` (kombu prefixes only the first key of an EVALSHA),
   without ack emulation, for no-ack consumers, or with prefetch disabled.
5. Recovery in seconds. Each consumer beats every ``vigil_heartbeat_interval``
   seconds from a thread of its own; every sweep (``unacked_restore_interval``)
   first puts back, with ``broker_orphans.lua``, everything held by consumers
   silent for ``vigil_owner_timeout`` seconds, on the server's clock. A live
   worker's long task is never put back; the visibility timeout stays as the
   backstop for entries no consumer owns.
6. Acks together. ``QoS.acks_together()`` writes every ack made inside it in
   one round trip: a buffer of 100 requests (worker/batching.py) is acked with
   one HDEL and one ZREM instead of 100 pipelines.

Behind Redis Sentinel, ``SentinelTransport`` (``worker.broker:SentinelTransport``
for a ``sentinel://`` URL) is the same transport with kombu's Sentinel channel
underneath: the channel's client, the BRPOP connection and the heartbeat's own
client all reach the master the sentinels name, and ask them again after a
failover. It takes the sentinels from the ``vigil_sentinels`` transport option,
so ``celeryconfig`` gives kombu a single ``sentinel://`` URL: with several,
kombu switches to the next after a connection error by re-reading it, which
replaces the configured transport with kombu's own (``Connection.switch``).
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from queue import Empty
from typing import Any
from urllib.parse import urlsplit

import redis
from kombu.log import get_logger
from kombu.transport import redis as kombu_redis
from kombu.transport import virtual
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import dumps, loads
from redis.sentinel import Sentinel

from services.core import keys, scripts

__all__ = ["Channel", "QoS", "SentinelChannel", "SentinelTransport", "Transport"]

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
            pipe.hdel(self.channel._owned_key(self.channel.consumer_id), *tags)
            pipe.hdel(self.channel._owner_of_key, *tags)
            pipe.execute()

    def _remove_from_indices(self, delivery_tag: str, pipe: Any = None) -> Any:
        # kombu's restore and reject paths: the ownership record goes with them.
        pipe = super()._remove_from_indices(delivery_tag, pipe)
        pipe.hdel(self.channel._owner_of_key, delivery_tag)
        return pipe.hdel(self.channel._owned_key(self.channel.consumer_id), delivery_tag)

    def restore_visible(self, start: int = 0, num: int = 10, interval: int = 10) -> None:
        """Each sweep first puts back what dead consumers held (their heartbeats
        stopped), then, at kombu's throttle, anything unacked for longer than
        the visibility timeout, the backstop."""
        if self.channel._fetches_many():
            self.channel.restore_orphans()
        super().restore_visible(start, num, interval)

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
    """Redis channel: a reused client, safe acks after detachment, fetches that
    record what they take atomically, and heartbeats that let other workers
    put back what a dead one held."""

    QoS = QoS

    #: Transport option: keep stock MULTI/EXEC around unacked bookkeeping.
    vigil_transactional_unacked: bool = False
    #: Transport option: most messages one fetch takes (1: kombu's BRPOP).
    vigil_fetch_many: int = 100
    #: Transport option: seconds between a consumer's heartbeats.
    vigil_heartbeat_interval: float = 2.0
    #: Transport option: seconds of silence after which a consumer is dead and
    #: what it held goes back to its queues.
    vigil_owner_timeout: float = 10.0
    #: Transport option: the list that keeps messages that are not kombu's.
    vigil_unreadable_key: str = keys.BROKER_UNREADABLE

    from_transport_options = (
        *kombu_redis.Channel.from_transport_options,
        "vigil_transactional_unacked",
        "vigil_fetch_many",
        "vigil_heartbeat_interval",
        "vigil_owner_timeout",
        "vigil_unreadable_key",
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
        # The command outstanding on the BRPOP connection: ("fetch" | "wait", lists).
        self._pending: tuple[str, list[tuple[str, str]]] | None = None
        # True when the last fetch found nothing: the next command waits.
        self._idle = False
        self._fetched_from: dict[str, int] = {}
        #: Names this channel's unacked messages in Redis; readable in redis-cli.
        self.consumer_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._heart = _Heart(self)
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
        # unacked entry broker_fetch.lua wrote: a channel with one keeps
        # kombu's BRPOP.
        if no_ack:
            self._no_ack_queues.add(queue)
        else:
            self._no_ack_queues.discard(queue)
        consumer = super().basic_consume(queue, *args, **kwargs)
        if self._fetches_many():
            self._heart.start()
        return consumer

    def _fetches_many(self) -> bool:
        qos = self.qos
        return (
            int(self.vigil_fetch_many) > 1
            and bool(self.ack_emulation)
            and isinstance(qos, QoS)
            and not self.global_keyprefix
            and not self.vigil_transactional_unacked
            and not self._no_ack_queues
            # Celery's worker_disable_prefetch replaces can_consume on the
            # instance to take one message at a time: keep to that.
            and "can_consume" not in vars(qos)
        )

    # -- fetching: never a moment when a task is only in this process ---------

    def _brpop_start(self, timeout: float | None = None) -> None:
        """Send this cycle's command on kombu's BRPOP connection: the fetch
        script, or, when the last fetch found every list empty, a blocking
        wait that pops nothing (``BLMOVE key key RIGHT RIGHT`` leaves the list
        as it was and returns once it holds a message)."""
        if not self._fetches_many():
            self._pending = None
            super()._brpop_start(timeout)
            return
        queues = self._queue_cycle.consume(len(self.active_queues))
        if not queues:
            return
        pairs = [
            (queue, self._q_for_pri(queue, pri)) for pri in self.priority_steps for queue in queues
        ]
        if self._idle:
            key = self._wait_key([key for _, key in pairs])
            wait = self.brpop_timeout if timeout is None else timeout
            # Never 0 (block forever): the other lists are read when it ends.
            command: list[Any] = ["BLMOVE", key, key, "RIGHT", "RIGHT", wait or 1]
            self._pending = ("wait", pairs)
        else:
            room = self.qos.can_consume_max_estimate()
            limit = int(self.vigil_fetch_many)
            want = limit if room is None else max(1, min(room, limit))
            keys = [key for _, key in pairs] + [
                self.qos.unacked_key,
                self.qos.unacked_index_key,
                self._owned_key(self.consumer_id),
                self._owners_key,
                self.vigil_unreadable_key,
                self._owner_of_key,
            ]
            command = [
                "EVALSHA",
                scripts.sha("broker_fetch"),
                len(keys),
                *keys,
                want,
                time.time(),
                self.consumer_id,
            ]
            self._pending = ("fetch", pairs)
        self._in_poll = self.client.connection
        self._brpop_sent_at = time.monotonic()
        self.client.connection.send_command(*command)

    def _brpop_read(self, **options: Any) -> bool:
        pending, self._pending = self._pending, None
        if pending is None:
            return super()._brpop_read(**options)
        kind, pairs = pending
        try:
            try:
                reply = self.client.parse_response(
                    self.client.connection, "EVALSHA" if kind == "fetch" else "BLMOVE", **options
                )
            except self.connection_errors:
                self.client.connection.disconnect()
                raise
            except redis.exceptions.NoScriptError:
                # Redis restarted or its script cache was flushed: load, fetch again.
                with self.conn_or_acquire() as client:
                    client.script_load(scripts.source("broker_fetch"))
                raise Empty() from None
        finally:
            self._in_poll = None
            self._flush_brpop_reauth()
        if kind == "wait":
            # Woken (or timed out): fetch next, whatever the wait said.
            self._idle = False
            raise Empty()
        if not reply:
            self._idle = True
            raise Empty()
        self._deliver_fetched(pairs, reply)
        return True

    def _wait_key(self, keys: list[str]) -> str:
        """The list to block on: the one most messages came from lately (a
        frontend that sends with a priority fills another list than the
        queue's own), else the first queue's. Messages that reach the other
        lists while it blocks are fetched when the wait ends, within
        ``brpop_timeout`` (1 s)."""
        busiest = max(keys, key=lambda key: self._fetched_from.get(key, 0))
        return busiest if self._fetched_from.get(busiest) else keys[0]

    def _deliver_fetched(self, pairs: list[tuple[str, str]], reply: list[Any]) -> None:
        fetched: list[tuple[str, str, str, bytes, Any]] = []
        unreadable: list[tuple[str, str, bytes, str]] = []
        for i in range(0, len(reply), 3):
            queue, key = pairs[int(reply[i]) - 1]
            tag, raw = bytes_to_str(reply[i + 1]), reply[i + 2]
            if not tag:
                logger.warning(
                    "moved a message that is not a kombu message from %r to %r (%s)",
                    key,
                    self.vigil_unreadable_key,
                    bytes_to_str(raw),
                )
                continue
            self._count_fetch(key)
            if tag.startswith("?"):
                adopted = self._judge(key, tag, raw)
                if adopted is not None:
                    fetched.append((queue, key, adopted[0], raw, adopted[1]))
                continue
            try:
                fetched.append((queue, key, tag, raw, loads(bytes_to_str(raw))))
            except (ValueError, RecursionError):
                unreadable.append((key, tag, raw, "not JSON to Python"))
        if unreadable:
            self._set_aside(unreadable)
        for queue in dict.fromkeys(queue for queue, *_ in fetched):
            self._queue_cycle.rotate(queue)
        for position, (queue, key, tag, raw, payload) in enumerate(fetched):
            self._recorded_unacked[tag] = True
            try:
                self.connection._deliver(payload, queue)
            except Exception as exc:
                if self._recorded_unacked.pop(tag, False):
                    # kombu could not make a message of it (QoS.append never
                    # ran): set it aside, or it would come back first, forever.
                    reason = f"not a kombu message ({type(exc).__name__})"
                    self._set_aside([(key, tag, raw, reason)])
                    continue
                # The consumer's callback failed: put back what it was not given
                # now rather than after the owner timeout.
                for _, _, untaken, _, _ in fetched[position + 1 :]:
                    self.qos.restore_by_tag(untaken)
                raise
            if self._recorded_unacked.pop(tag, False):
                # Delivered without QoS.append (taken as no-ack): nothing would
                # ever ack its entry.
                self.qos.forget([tag])

    def _count_fetch(self, key: str) -> None:
        counts = self._fetched_from
        counts[key] = counts.get(key, 0) + 1
        if counts[key] > 10_000:  # forget slowly: halve every count
            for name in counts:
                counts[name] //= 2

    def _judge(self, key: str, field: str, raw: bytes) -> tuple[str, Any] | None:
        """A message cjson could not decode, held under ``field``: if Python reads
        it as a kombu message, record it as the script records the others (one
        transaction) and return (tag, payload); else set it aside."""
        owned = self._owned_key(self.consumer_id)
        try:
            payload = loads(bytes_to_str(raw))
            tag = payload["properties"]["delivery_tag"]
            info = payload["properties"].get("delivery_info") or {}
            if not isinstance(tag, str) or not tag or not isinstance(info, dict):
                raise ValueError("no delivery tag")
        except Exception:  # whatever the bytes make json or the checks raise
            with self.conn_or_acquire() as client:
                pipe = client.pipeline(transaction=True)
                pipe.hdel(owned, field)
                header = dumps({"queue": key, "reason": "not a kombu message"})
                pipe.lpush(self.vigil_unreadable_key, header.encode() + b"\n" + raw)
                pipe.execute()
            logger.warning("moved a message that is not a kombu message from %r", key)
            return None
        exchange = dumps(info.get("exchange") or "").encode()
        routing_key = dumps(info.get("routing_key") or "").encode()
        entry = b"[" + raw + b"," + exchange + b"," + routing_key + b"]"
        with self.conn_or_acquire() as client:
            pipe = client.pipeline(transaction=True)
            pipe.hset(self.qos.unacked_key, tag, entry)
            pipe.zadd(self.qos.unacked_index_key, {tag: time.time()})
            pipe.hset(owned, tag, f"{len(raw)} {key}")
            pipe.hset(self._owner_of_key, tag, self.consumer_id)
            pipe.hdel(owned, field)
            pipe.execute()
        return tag, payload

    def _set_aside(self, unreadable: list[tuple[str, str, bytes, str]]) -> None:
        """Messages the script recorded that Python cannot deliver (not JSON to
        it, or not a message kombu can build): out of the unacked records and
        onto the unreadable list with their reasons, in one transaction."""
        with self.conn_or_acquire() as client:
            pipe = client.pipeline(transaction=True)
            for key, tag, raw, reason in unreadable:
                logger.warning(
                    "moved a message from %r to %r: %s", key, self.vigil_unreadable_key, reason
                )
                header = dumps({"queue": key, "reason": reason})
                pipe.hdel(self.qos.unacked_key, tag)
                pipe.zrem(self.qos.unacked_index_key, tag)
                pipe.hdel(self._owned_key(self.consumer_id), tag)
                pipe.hdel(self._owner_of_key, tag)
                pipe.lpush(self.vigil_unreadable_key, header.encode() + b"\n" + raw)
            pipe.execute()

    # -- ownership: a dead consumer's messages back within seconds -------------

    @property
    def _owners_key(self) -> str:
        return f"{self.qos.unacked_key}:owners"

    @property
    def _owner_of_key(self) -> str:
        return f"{self.qos.unacked_key}:owner"

    def _owned_key(self, consumer_id: str) -> str:
        return f"{self.qos.unacked_key}:owned:{consumer_id}"

    def beat(self, client: redis.Redis | None = None) -> None:
        """Tell other consumers this one is alive."""
        with self.conn_or_acquire(client) as acquired:
            scripts.run(acquired, "broker_heartbeat", [self._owners_key], [self.consumer_id])

    def heartbeat_client(self) -> redis.Redis:
        """A client of the heartbeat's own, with socket timeouts: a half-open
        connection in the channel's pool (which waits without a timeout) must
        not stop the beats while the worker runs."""
        return redis.Redis(connection_pool=redis.ConnectionPool(**self._heartbeat_params()))

    def _heartbeat_params(self) -> dict[str, Any]:
        params = dict(self._connparams(asynchronous=False))
        limit = max(1.0, float(self.vigil_heartbeat_interval))
        params.update(socket_timeout=limit, socket_connect_timeout=limit, socket_keepalive=True)
        return params

    def close_heartbeat_client(self, client: redis.Redis) -> None:
        client.close()

    def restore_orphans(self) -> int:
        """Put back everything consumers silent for ``vigil_owner_timeout``
        seconds still held; returns how many messages went back."""
        with self.conn_or_acquire() as client:
            _, restored = scripts.run(
                client,
                "broker_orphans",
                [
                    self._owners_key,
                    self.qos.unacked_key,
                    self.qos.unacked_index_key,
                    self._owner_of_key,
                ],
                [float(self.vigil_owner_timeout), self._owned_key(""), 20],
            )
        if restored:
            logger.warning(
                "put back %d message(s) held by worker(s) silent for %s s",
                restored,
                self.vigil_owner_timeout,
            )
        return int(restored)

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
        self._heart.stop()
        try:
            super().close()
            if self._heart.started:
                self._forget_owner()
        finally:
            self._sync_client = None

    def _forget_owner(self) -> None:
        """Drop this consumer's records once nothing is left under them; what
        could not be put back on close stays, for another worker's sweep."""
        with suppress(*self.connection_errors), self.conn_or_acquire() as client:
            if not client.hlen(self._owned_key(self.consumer_id)):
                pipe = client.pipeline(transaction=False)
                pipe.zrem(self._owners_key, self.consumer_id)
                pipe.delete(self._owned_key(self.consumer_id))
                pipe.execute()


class _Heart:
    """A channel's heartbeats, from a thread of its own: a worker whose event
    loop is busy (a long task in the solo pool) is not taken for dead."""

    def __init__(self, channel: Channel) -> None:
        self._channel = channel
        self._stopped = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    @property
    def started(self) -> bool:
        return self._thread is not None

    def start(self) -> None:
        with self._lock:
            if self._thread is not None or self._stopped.is_set():
                return
            self._thread = threading.Thread(
                target=self._run, name="vigil-broker-heartbeat", daemon=True
            )
            self._thread.start()

    def _run(self) -> None:
        interval = float(self._channel.vigil_heartbeat_interval)
        client: redis.Redis | None = None
        try:
            while True:
                try:
                    client = client or self._channel.heartbeat_client()
                    self._channel.beat(client)
                except Exception as exc:  # the consumer reports a lost broker itself
                    logger.debug("heartbeat not sent: %r", exc)
                if self._stopped.wait(interval):
                    return
        finally:
            if client is not None:
                self._channel.close_heartbeat_client(client)

    def stop(self) -> None:
        self._stopped.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)


class Transport(kombu_redis.Transport):
    """kombu's Redis transport using :class:`Channel`."""

    Channel = Channel


class SentinelChannel(Channel, kombu_redis.SentinelChannel):
    """:class:`Channel` on the master Redis Sentinel names: every client it
    builds (its own, BRPOP's, the heartbeat's) goes through redis-py's
    ``Sentinel``, so a failover is followed without a restart."""

    QoS = QoS

    #: Transport option: the sentinels, as "host:port" strings (or one
    #: comma-separated string) or (host, port) pairs. Unset: every
    #: sentinel:// URL of the kombu connection.
    vigil_sentinels: str | Sequence[Any] | None = None
    #: kombu's Sentinel transport options.
    master_name: str | None = None
    min_other_sentinels: int = 0
    sentinel_kwargs: dict[str, Any] | None = None

    from_transport_options = (
        *Channel.from_transport_options,
        *(
            option
            for option in kombu_redis.SentinelChannel.from_transport_options
            if option not in Channel.from_transport_options
        ),
        "vigil_sentinels",
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # Kept from the first pool built while attached: a late ack on a
        # detached channel still finds the master.
        self._sentinel_addresses: list[tuple[str, int]] | None = None
        self._heartbeat_sentinel: Sentinel | None = None
        super().__init__(*args, **kwargs)

    def sentinels(self) -> list[tuple[str, int]]:
        """The sentinels this channel asks where the master is."""
        if self._sentinel_addresses is None:
            found = _addresses(self.vigil_sentinels)
            client = getattr(self.connection, "client", None)
            if not found and client is not None:
                found = _addresses([url for url in client.alt if "://" in url])
                if not found:
                    found = [(client.hostname or "127.0.0.1", client.port or 26379)]
            if not found:
                raise redis.ConnectionError("channel is detached from its kombu connection")
            self._sentinel_addresses = found
        return list(self._sentinel_addresses)

    def _sentinel(self, params: dict[str, Any]) -> Sentinel:
        connection_kwargs = {k: v for k, v in params.items() if k not in ("host", "port")}
        return Sentinel(
            self.sentinels(),
            min_other_sentinels=int(self.min_other_sentinels or 0),
            sentinel_kwargs=self.sentinel_kwargs,
            **connection_kwargs,
        )

    def _master_for(self, sentinel: Sentinel, params: dict[str, Any]) -> redis.Redis:
        if not self.master_name:
            raise ValueError("'master_name' transport option must be specified.")
        auth = {k: params[k] for k in ("username", "password") if k in params}
        return sentinel.master_for(self.master_name, redis.Redis, **auth)

    def _sentinel_managed_pool(self, asynchronous: bool = False) -> redis.ConnectionPool:
        # kombu's own reads the sentinels from the connection, which a detached
        # channel no longer has.
        params = self._connparams(asynchronous)
        sentinel = self._sentinel(params)
        if asynchronous:
            self._async_sentinel_manager = sentinel
        else:
            self._sentinel_manager = sentinel
        return self._master_for(sentinel, params).connection_pool

    def heartbeat_client(self) -> redis.Redis:
        params = self._heartbeat_params()
        sentinel = self._sentinel(params)
        self._heartbeat_sentinel = sentinel
        return self._master_for(sentinel, params)

    def close_heartbeat_client(self, client: redis.Redis) -> None:
        client.close()
        sentinel, self._heartbeat_sentinel = self._heartbeat_sentinel, None
        close = getattr(sentinel, "close", None)  # redis-py >= 8.1
        if close is not None:
            close()


class SentinelTransport(Transport, kombu_redis.SentinelTransport):
    """kombu's Sentinel transport using :class:`SentinelChannel`."""

    Channel = SentinelChannel


def _addresses(value: str | Sequence[Any] | None) -> list[tuple[str, int]]:
    """(host, port) pairs from "host:port" strings, comma-separated strings,
    sentinel:// URLs or pairs."""
    if not value:
        return []
    items = value.split(",") if isinstance(value, str) else list(value)
    out: list[tuple[str, int]] = []
    for item in items:
        if isinstance(item, str):
            text = item.strip()
            parts = urlsplit(text if "://" in text else f"//{text}")
            if parts.hostname and parts.port:
                out.append((parts.hostname, parts.port))
        else:
            host, port = item
            out.append((str(host), int(port)))
    return out
