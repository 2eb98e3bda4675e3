"""At-least-once reading of the envelope streams through Redis consumer groups.

A reader that must not lose entries while it is down joins a consumer group:
entries stay pending until acked, and idle pending entries are reclaimed by
another consumer. An entry delivered more than
``settings.stream_max_deliveries`` times, or one that can never be decoded, is
quarantined: moved to ``<stream key>:dead`` and acked, so one poison entry
never blocks a consumer group. Delivery is at-least-once: consumers dedupe on
``envelope_id``.

On a Redis Cluster a stream is one key per shard: a consumer group exists on
each, the functions here take the ``shard`` they act on, and ``Consumer``
reads every shard in turn.

The quarantine is unrelated to ``services.deadletters`` (rejected task
payloads in PostgreSQL); its Redis key suffix stays ``:dead`` so existing
data keeps being found.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import redis

from models.envelopes import Envelope
from services.core.settings import Settings
from services.envelopes.streams import (
    SHARD_POLL_S,
    Entry,
    as_text,
    data_field,
    decode,
    execute_raw,
    id_order,
    reply_entries,
    stream_key,
    stream_keys,
)

log = logging.getLogger(__name__)

# Stored key format: quarantined entries of stream key K live at K + ":dead".
QUARANTINE_SUFFIX = ":dead"
_RECLAIM_ROUNDS = 5

Handler = Callable[[str, Envelope], None]


def quarantine_key(key: str) -> str:
    """The Redis key of the quarantine of the stream at ``key``."""
    return key + QUARANTINE_SUFFIX


def ensure_consumer_group(
    redis_client: redis.Redis, key: str, consumer_group: str, start_id: str = "0"
) -> bool:
    """Create ``consumer_group`` on ``key`` (and the stream); False when it already existed."""
    try:
        redis_client.xgroup_create(key, consumer_group, id=start_id, mkstream=True)
    except redis.ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise
        return False
    return True


def quarantine(
    redis_client: redis.Redis,
    settings: Settings,
    key: str,
    consumer_group: str,
    entry_id: str,
    fields: Any,
    *,
    reason: str,
    deliveries: int | None = None,
) -> str:
    """Move one pending entry to the quarantine and ack it, in one MULTI/EXEC.

    The quarantined entry keeps the original ``data`` and records why, so an
    operator can inspect it and ``replay_quarantine`` can put it back.
    """
    body: dict[Any, Any] = {
        "source_id": entry_id,
        "group": consumer_group,
        "reason": reason,
        "deliveries": "" if deliveries is None else str(deliveries),
        "dead_at_ms": str(int(time.time() * 1000)),
    }
    data = data_field(fields)
    if data is not None:
        body["data"] = data
    pipe = redis_client.pipeline(transaction=True)
    pipe.xadd(quarantine_key(key), body, maxlen=settings.stream_maxlen, approximate=True)
    pipe.xack(key, consumer_group, entry_id)
    quarantined_id, _ = pipe.execute()
    log.warning(
        "stream entry %s of %s quarantined for consumer group %s: %s",
        entry_id,
        key,
        consumer_group,
        reason,
    )
    return as_text(quarantined_id)


def _accept(
    redis_client: redis.Redis,
    settings: Settings,
    key: str,
    consumer_group: str,
    stream_name: str,
    entries: list[tuple[str, Any]],
) -> list[Entry]:
    out: list[Entry] = []
    for entry_id, fields in entries:
        envelope = decode(fields, stream_name=stream_name, entry_id=entry_id)
        if envelope is None:
            # It will never decode; retrying it would only delay the quarantine.
            quarantine(
                redis_client, settings, key, consumer_group, entry_id, fields, reason="undecodable"
            )
        else:
            out.append((entry_id, envelope))
    return out


def consume(
    redis_client: redis.Redis,
    settings: Settings,
    consumer_group: str,
    consumer: str,
    stream_name: str,
    count: int = 10,
    block_ms: int | None = 2000,
    shard: int = 0,
) -> list[Entry]:
    """New entries for ``consumer`` (XREADGROUP ``>``); they stay pending until acked.

    Undecodable entries go straight to the quarantine. A missing consumer
    group is created from the start of the stream, so no backlog is lost.
    """
    key = stream_key(settings, stream_name, shard)
    args: list[Any] = ["XREADGROUP", "GROUP", consumer_group, consumer, "COUNT", int(count)]
    if block_ms is not None:
        args += ["BLOCK", int(block_ms)]
    args += ["STREAMS", key, ">"]
    try:
        response = execute_raw(redis_client, *args)
    except redis.ResponseError as exc:
        if "NOGROUP" not in str(exc):
            raise
        ensure_consumer_group(redis_client, key, consumer_group)
        response = execute_raw(redis_client, *args)
    return _accept(
        redis_client, settings, key, consumer_group, stream_name, reply_entries(response)
    )


def ack(
    redis_client: redis.Redis,
    settings: Settings,
    consumer_group: str,
    stream_name: str,
    entry_ids: list[str],
    shard: int = 0,
) -> int:
    """XACK handled entries so they are not delivered again; returns how many were pending."""
    if not entry_ids:
        return 0
    key = stream_key(settings, stream_name, shard)
    return int(redis_client.xack(key, consumer_group, *entry_ids))


def reclaim(
    redis_client: redis.Redis,
    settings: Settings,
    consumer_group: str,
    consumer: str,
    stream_name: str,
    *,
    min_idle_ms: int,
    count: int = 100,
    shard: int = 0,
) -> list[Entry]:
    """Take over entries idle for ``min_idle_ms`` in the consumer group (XAUTOCLAIM).

    Each claim counts as a delivery; an entry past ``stream_max_deliveries``
    is quarantined instead of being returned.
    """
    key = stream_key(settings, stream_name, shard)
    claimed: list[tuple[str, Any]] = []
    start = "0-0"
    # Each XAUTOCLAIM scans at most 10 x COUNT pending entries; a few rounds keep
    # one reclaim bounded even when the pending list is huge.
    for _ in range(_RECLAIM_ROUNDS):
        if len(claimed) >= count:
            break
        reply = execute_raw(
            redis_client,
            "XAUTOCLAIM",
            key,
            consumer_group,
            consumer,
            int(min_idle_ms),
            start,
            "COUNT",
            count,
        )
        start = as_text(reply[0])
        for raw_id, fields in reply[1]:
            entry_id = as_text(raw_id)
            if fields is None:
                # Trimmed away while pending (Redis 6.2 reports these here): nothing to do.
                redis_client.xack(key, consumer_group, entry_id)
                continue
            claimed.append((entry_id, fields))
        if start == "0-0":
            break
    if not claimed:
        return []
    pipe = redis_client.pipeline(transaction=False)
    for entry_id, _ in claimed:
        pipe.xpending_range(key, consumer_group, min=entry_id, max=entry_id, count=1)
    pending = pipe.execute()
    fresh: list[tuple[str, Any]] = []
    for (entry_id, fields), info in zip(claimed, pending, strict=True):
        deliveries = int(info[0]["times_delivered"]) if info else 1
        if deliveries > settings.stream_max_deliveries:
            quarantine(
                redis_client,
                settings,
                key,
                consumer_group,
                entry_id,
                fields,
                reason="max_deliveries",
                deliveries=deliveries - 1,
            )
        else:
            fresh.append((entry_id, fields))
    return _accept(redis_client, settings, key, consumer_group, stream_name, fresh)


def read_quarantine(
    redis_client: redis.Redis, settings: Settings, stream_name: str, count: int = 100
) -> list[tuple[str, dict[str, str]]]:
    """Quarantined entries of one stream (every shard's), oldest first, as
    (id, fields) with text values."""
    out: list[tuple[str, dict[str, str]]] = []
    for key in map(quarantine_key, stream_keys(settings, stream_name)):
        for raw_id, fields in execute_raw(
            redis_client, "XRANGE", key, "-", "+", "COUNT", int(count)
        ):
            out.append(
                (as_text(raw_id), {as_text(name): as_text(value) for name, value in fields.items()})
            )
    out.sort(key=lambda entry: id_order(entry[0]))
    return out[: int(count)]


def replay_quarantine(
    redis_client: redis.Redis, settings: Settings, stream_name: str, count: int = 100
) -> dict[str, Any]:
    """Re-publish decodable quarantined entries to their stream (every consumer group
    sees them again).

    Undecodable ones stay where they are for an operator to look at.
    """
    replayed = kept = 0
    for key in stream_keys(settings, stream_name):
        quarantined = quarantine_key(key)
        for raw_id, fields in execute_raw(
            redis_client, "XRANGE", quarantined, "-", "+", "COUNT", int(count)
        ):
            entry_id = as_text(raw_id)
            if decode(fields, stream_name=stream_name, entry_id=entry_id) is None:
                kept += 1
                continue
            pipe = redis_client.pipeline(transaction=True)
            pipe.xadd(
                key, {"data": data_field(fields)}, maxlen=settings.stream_maxlen, approximate=True
            )
            pipe.xdel(quarantined, entry_id)
            pipe.execute()
            replayed += 1
    return {"status": "ok", "replayed": replayed, "kept": kept}


class Consumer:
    """One member of a consumer group: reclaim idle entries now and then, read new
    ones, call ``handler(entry_id, envelope)``, ack on success.

    A handler exception leaves the entry pending; it comes back after
    ``min_idle_ms`` (to this or another consumer) until it succeeds or is
    quarantined. Handlers must be idempotent on ``envelope_id``.
    """

    def __init__(
        self,
        redis_client: redis.Redis,
        settings: Settings,
        stream_name: str,
        consumer_group: str,
        consumer_name: str,
        handler: Handler,
        *,
        count: int = 10,
        block_ms: int = 2000,
        min_idle_ms: int = 60_000,
        reclaim_interval_s: float = 30.0,
        start_id: str = "0",
    ) -> None:
        self.redis_client = redis_client
        self.settings = settings
        self.stream_name = stream_name
        self.consumer_group = consumer_group
        self.consumer_name = consumer_name
        self.handler = handler
        self.count = count
        self.block_ms = block_ms
        self.min_idle_ms = min_idle_ms
        self.reclaim_interval_s = reclaim_interval_s
        self.start_id = start_id
        self.keys = stream_keys(settings, stream_name)
        self._next_reclaim = 0.0
        self._ready = False

    def setup(self) -> None:
        for key in self.keys:
            ensure_consumer_group(self.redis_client, key, self.consumer_group, self.start_id)
        self._ready = True

    def step(self, *, reclaim_now: bool | None = None) -> dict[str, int]:
        """One round: maybe reclaim, read new entries of every shard, handle them.
        One shard blocks for new entries; many are read without blocking and
        the round pauses ``SHARD_POLL_S`` when none had anything."""
        if not self._ready:
            self.setup()
        due = reclaim_now if reclaim_now is not None else time.monotonic() >= self._next_reclaim
        entries: list[tuple[int, str, Envelope]] = []
        for shard in range(len(self.keys)):
            if due:
                entries += self._of(shard, self._reclaim(shard))
            block = self.block_ms if len(self.keys) == 1 and not entries else None
            entries += self._of(shard, self._consume(shard, block))
        if due:
            self._next_reclaim = time.monotonic() + self.reclaim_interval_s
        if not entries and len(self.keys) > 1:
            time.sleep(min(SHARD_POLL_S, self.block_ms / 1000))
        handled = failed = 0
        for shard, entry_id, envelope in entries:
            try:
                self.handler(entry_id, envelope)
            except Exception as exc:
                failed += 1
                log.warning(
                    "handler failed on %s (%s, envelope %s): %s; left pending",
                    entry_id,
                    envelope.topic,
                    envelope.envelope_id,
                    type(exc).__name__,
                )
                continue
            ack(
                self.redis_client,
                self.settings,
                self.consumer_group,
                self.stream_name,
                [entry_id],
                shard,
            )
            handled += 1
        return {"handled": handled, "failed": failed}

    @staticmethod
    def _of(shard: int, entries: list[Entry]) -> list[tuple[int, str, Envelope]]:
        return [(shard, entry_id, envelope) for entry_id, envelope in entries]

    def _reclaim(self, shard: int) -> list[Entry]:
        return reclaim(
            self.redis_client,
            self.settings,
            self.consumer_group,
            self.consumer_name,
            self.stream_name,
            min_idle_ms=self.min_idle_ms,
            count=self.count,
            shard=shard,
        )

    def _consume(self, shard: int, block_ms: int | None) -> list[Entry]:
        return consume(
            self.redis_client,
            self.settings,
            self.consumer_group,
            self.consumer_name,
            self.stream_name,
            count=self.count,
            block_ms=block_ms,
            shard=shard,
        )

    def run(self, stop: threading.Event | None = None, *, max_steps: int | None = None) -> None:
        """Loop until ``stop`` is set; Redis outages are waited out, not raised."""
        stop = stop or threading.Event()
        steps = 0
        backoff = 0.5
        while not stop.is_set() and (max_steps is None or steps < max_steps):
            steps += 1
            try:
                self.step()
                backoff = 0.5
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                log.warning("stream consumer %s: %s; retrying", self.consumer_name, exc)
                stop.wait(backoff)
                backoff = min(backoff * 2, 30.0)
