"""One read of everything the exporter and ``vigil top`` show.

Redis is read in one pipelined round trip (the counters hash, and per stream
its length, its quarantine's length and its consumer groups; on a cluster,
of every shard, added up) and its durability settings; PostgreSQL in
one session (``queries.store_gauges``); the broker's queue depths through
``BrokerQueues``. Nothing scans keys, so the cost does not grow with the
number of users. A store that cannot be read is reported as down, and the
rest is still read.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import redis
from kombu import Connection
from kombu.transport import redis as kombu_redis
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from models.envelopes import STREAM_TOPICS
from services.core import declarations, health, keys, scripts
from services.core.clients import broker_redis
from services.core.settings import Settings
from services.envelopes.consumers import quarantine_key
from services.envelopes.streams import stream_keys
from services.metrics import queries

log = logging.getLogger(__name__)

AMQP_SCHEMES = frozenset({"amqp", "amqps", "pyamqp"})
# Where Redis does not report a group's lag, it is counted up to this many
# entries (about 25 ms of Redis time), twice the alert's default threshold.
LAG_COUNT_LIMIT = 20_000


@dataclass(frozen=True)
class GroupInfo:
    name: str
    pending: int
    lag: int | None  # None when Redis cannot tell (entries trimmed or deleted)


@dataclass(frozen=True)
class StreamInfo:
    length: int
    quarantined: int
    groups: list[GroupInfo]


@dataclass
class Snapshot:
    """What one scrape saw; ``up`` says which stores answered."""

    taken_at: float
    counters: dict[str, int] = field(default_factory=dict)
    streams: dict[str, StreamInfo] = field(default_factory=dict)
    queue_depths: dict[str, int] = field(default_factory=dict)
    # RabbitMQ: 1 for a queue the vhost holds in a form workers cannot consume.
    queue_unusable: dict[str, int] = field(default_factory=dict)
    # Redis broker: messages set aside as not Celery's (None on RabbitMQ).
    broker_unreadable: int | None = None
    gauges: queries.StoreGauges | None = None
    redis_durability: health.RedisDurability | None = None
    up: dict[str, bool] = field(default_factory=dict)


class BrokerQueues:
    """Depth of the broker's queues: LLEN of each priority list on Redis, a
    passive declare on RabbitMQ (one connection, reused across scrapes).
    ``transport_options``: kombu's, which name the master behind Sentinel."""

    def __init__(
        self,
        broker_url: str,
        queues: Sequence[str],
        transport_options: Mapping[str, Any] | None = None,
    ) -> None:
        self.broker_url = broker_url
        self.transport_options = dict(transport_options or {})
        self.queues = tuple(queues)
        self.amqp = urlsplit(broker_url).scheme in AMQP_SCHEMES
        self._lock = threading.Lock()
        self._redis: redis.Redis | None = None
        self._amqp: Connection | None = None
        self.unusable: dict[str, int] = {}
        self.unreadable: int | None = None

    def depths(self) -> dict[str, int]:
        with self._lock:
            return self._amqp_depths() if self.amqp else self._redis_depths()

    def _redis_depths(self) -> dict[str, int]:
        if self._redis is None:
            self._redis = broker_redis(
                self.broker_url, self.transport_options, socket_timeout=5, socket_connect_timeout=5
            )
        # kombu keeps priority p > 0 of queue q in the list q + sep + p.
        sep = kombu_redis.Channel.sep
        names = {
            queue: [queue if p == 0 else f"{queue}{sep}{p}" for p in kombu_redis.PRIORITY_STEPS]
            for queue in self.queues
        }
        pipe = self._redis.pipeline(transaction=False)
        for lists in names.values():
            for name in lists:
                pipe.llen(name)
        pipe.llen(keys.BROKER_UNREADABLE)
        *replies, unreadable = pipe.execute()
        self.unreadable = int(unreadable)
        lengths = iter(replies)
        return {queue: sum(next(lengths) for _ in lists) for queue, lists in names.items()}

    def _amqp_depths(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for attempt in range(2):
            try:
                if self._amqp is None:
                    self._amqp = Connection(self.broker_url, connect_timeout=5)
                channel = self._amqp.default_channel
                for queue in self.queues:
                    try:
                        out[queue] = int(channel.queue_declare(queue, passive=True).message_count)
                    except self._amqp.channel_errors:
                        # Not declared yet (no worker ever started): nothing queued.
                        out[queue] = 0
                        channel = self._amqp.default_channel
                found = declarations.probe(self._amqp, self.queues)
                self.unusable = {f.name: int(f.problem is not None) for f in found}
                return out
            except self._connection_errors():
                self.close()
                if attempt == 1:
                    raise
        return out

    def _connection_errors(self) -> tuple[type[BaseException], ...]:
        conn = self._amqp or Connection(self.broker_url)
        return (*conn.connection_errors, OSError)

    def close(self) -> None:
        if self._amqp is not None:
            self._amqp.release()
            self._amqp = None
        if self._redis is not None:
            self._redis.close()
            self._redis = None


def _read_redis(redis_client: redis.Redis, settings: Settings, snap: Snapshot) -> None:
    names = list(STREAM_TOPICS)
    shard_keys = {name: stream_keys(settings, name) for name in names}
    metrics_keys = keys.metrics_keys(settings)
    pipe = redis_client.pipeline(transaction=False)
    for key in metrics_keys:
        pipe.hgetall(key)
    for name in names:
        for key in shard_keys[name]:
            pipe.xlen(key)
            pipe.xlen(quarantine_key(key))
            pipe.xinfo_groups(key)
    replies = pipe.execute(raise_on_error=False)
    counters: dict[str, int] = {}
    for reply in replies[: len(metrics_keys)]:
        if isinstance(reply, Exception):
            raise reply
        for k, v in reply.items():
            counters[_text(k)] = counters.get(_text(k), 0) + int(v)
    snap.counters = counters
    snap.redis_durability = health.redis_durability(redis_client)
    at = len(metrics_keys)
    for name in names:
        length = quarantined = 0
        groups: list[GroupInfo] = []
        for key in shard_keys[name]:
            shard_length, shard_quarantined, shard_groups = replies[at : at + 3]
            at += 3
            length += _int(shard_length)
            quarantined += _int(shard_quarantined)
            # XINFO GROUPS on a stream that does not exist yet is an error: no groups.
            if not isinstance(shard_groups, Exception):
                groups += [_group(redis_client, key, g) for g in shard_groups]
        snap.streams[name] = StreamInfo(
            length=length, quarantined=quarantined, groups=_merge_groups(groups)
        )


def _merge_groups(groups: list[GroupInfo]) -> list[GroupInfo]:
    """A consumer group over every shard of a stream: pending and lag added up
    (the lag unknown if any shard's is)."""
    merged: dict[str, GroupInfo] = {}
    for group in groups:
        seen = merged.get(group.name)
        if seen is None:
            merged[group.name] = group
            continue
        lag = None if seen.lag is None or group.lag is None else seen.lag + group.lag
        merged[group.name] = GroupInfo(group.name, seen.pending + group.pending, lag)
    return list(merged.values())


def _group(redis_client: redis.Redis, stream: str, info: dict[str, Any]) -> GroupInfo:
    """A group as XINFO GROUPS reports it. Redis 7 reports ``lag`` itself, but
    none once an entry the group has not read was deleted (erasure deletes
    entries); Redis 6.2 has no such field. Then the entries after the group's
    last-delivered id are counted, up to ``LAG_COUNT_LIMIT``."""
    lag = info.get("lag")
    if lag is None:
        lag = scripts.run(
            redis_client,
            "stream_lag",
            [stream],
            [_text(info["last-delivered-id"]), LAG_COUNT_LIMIT],
        )
    return GroupInfo(
        name=_text(info["name"]),
        pending=int(info.get("pending") or 0),
        lag=None if lag is None else int(lag),
    )


def _int(value: Any) -> int:
    if isinstance(value, Exception):
        raise value
    return int(value or 0)


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def read(
    redis_client: redis.Redis,
    settings: Settings,
    sessions: sessionmaker[Session],
    broker: BrokerQueues | None = None,
) -> Snapshot:
    snap = Snapshot(taken_at=time.time())
    try:
        _read_redis(redis_client, settings, snap)
        snap.up["redis"] = True
    except redis.RedisError as exc:
        log.warning("metrics: Redis unreadable (%s)", type(exc).__name__)
        snap.up["redis"] = False
    try:
        with sessions() as session:
            snap.gauges = queries.store_gauges(session)
        snap.up["postgres"] = True
    except SQLAlchemyError as exc:
        log.warning("metrics: PostgreSQL unreadable (%s)", type(exc).__name__)
        snap.up["postgres"] = False
    if broker is not None:
        try:
            snap.queue_depths = broker.depths()
            snap.queue_unusable = dict(broker.unusable)
            snap.broker_unreadable = broker.unreadable
            snap.up["broker"] = True
        except Exception as exc:  # any transport's error: the scrape goes on
            log.warning("metrics: broker unreadable (%s)", type(exc).__name__)
            broker.close()
            snap.up["broker"] = False
    return snap
