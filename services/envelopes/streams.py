"""Envelopes on Redis Streams: publish, read, follow, and at-least-once consumer groups.

Every entry has one field, ``data``, holding the envelope JSON. Streams are
trimmed with ``MAXLEN ~`` so they stay bounded. A reader that must not lose
entries while it is down uses a consumer group: entries stay pending until
acked, idle pending entries are reclaimed by another consumer, and an entry
delivered more than ``settings.stream_max_deliveries`` times, or one that can
never be decoded, moves to ``<stream key>:dead`` and is acked there, so one
poison entry never blocks a group. Delivery is at-least-once: consumers dedupe
on ``envelope_id``.

Entries are read without response decoding even from a ``decode_responses``
client: one entry with invalid UTF-8 would otherwise make every read of the
stream fail inside redis-py, before any decoder could skip it.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import redis
from pydantic import ValidationError
from redis.client import NEVER_DECODE

from models.envelopes import (
    ENVELOPE_CLASSES,
    SCHEMA_VERSION,
    STREAM_TOPICS,
    WIRE_CONTEXT,
    Envelope,
    stream_of_topic,
)
from services.core.settings import Settings

log = logging.getLogger(__name__)

DEAD_SUFFIX = ":dead"
_SHOWN_CHARS = 100
_RECLAIM_ROUNDS = 5

Entry = tuple[str, Envelope]
Handler = Callable[[str, Envelope], None]


def stream_key(settings: Settings, group: str) -> str:
    keys = {
        "bond": settings.stream_bond,
        "attribution": settings.stream_attribution,
        "user": settings.stream_user,
    }
    try:
        return keys[group]
    except KeyError:
        raise ValueError(f"unknown stream group {group!r}") from None


def stream_for_topic(settings: Settings, topic: str) -> str:
    return stream_key(settings, stream_of_topic(topic))


def dead_letter_key(key: str) -> str:
    return key + DEAD_SUFFIX


def publish(redis_client: redis.Redis, settings: Settings, envelope: Envelope) -> str:
    """XADD one envelope to its topic's stream; returns the entry id."""
    entry_id = redis_client.xadd(
        stream_for_topic(settings, envelope.topic),
        {"data": envelope.model_dump_json()},
        maxlen=settings.stream_maxlen,
        approximate=True,
    )
    return _text(entry_id)


def publish_many(
    redis_client: redis.Redis, settings: Settings, envelopes: list[Envelope]
) -> list[str]:
    """Publish a batch in one round trip (not atomically: see ``services.envelopes.outbox``)."""
    pipe = redis_client.pipeline(transaction=False)
    for envelope in envelopes:
        pipe.xadd(
            stream_for_topic(settings, envelope.topic),
            {"data": envelope.model_dump_json()},
            maxlen=settings.stream_maxlen,
            approximate=True,
        )
    return [_text(entry_id) for entry_id in pipe.execute()]


# Decoding -------------------------------------------------------------------


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _shown(value: Any) -> str:
    shown = repr(value)
    return shown if len(shown) <= _SHOWN_CHARS else shown[:_SHOWN_CHARS] + "..."


def _data_field(raw_fields: Any) -> str | bytes | None:
    if not isinstance(raw_fields, dict):
        return None
    value = raw_fields.get("data", raw_fields.get(b"data"))
    return value if isinstance(value, (str, bytes)) else None


def _errors_summary(exc: ValidationError) -> str:
    # Locations and error types only: inputs could echo whatever was written.
    parts = [
        f"{'.'.join(str(p) for p in err['loc']) or '<root>'}: {err['type']}"
        for err in exc.errors(include_input=False, include_url=False, include_context=False)[:5]
    ]
    return _shown("; ".join(parts))[1:-1]


def decode(
    raw_fields: Any, *, group: str | None = None, entry_id: str | None = None
) -> Envelope | None:
    """The envelope in one stream entry, or None (with a warning) when it cannot be used.

    Never raises on bad input, so a consumer loop survives any entry. With
    ``group``, an envelope of another stream's topic counts as unknown.
    """
    where = entry_id or "?"
    data = _data_field(raw_fields)
    if data is None:
        log.warning("stream entry %s has no 'data' field; skipped", where)
        return None
    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8")
        except UnicodeDecodeError:
            log.warning("stream entry %s is not valid UTF-8; skipped", where)
            return None
    try:
        body = json.loads(data)
    except ValueError:
        log.warning("stream entry %s is not valid JSON (%d chars); skipped", where, len(data))
        return None
    if not isinstance(body, dict):
        log.warning("stream entry %s is not a JSON object; skipped", where)
        return None
    version = body.get("schema_version")
    if version != SCHEMA_VERSION:
        log.warning("stream entry %s has schema_version %s; skipped", where, _shown(version))
        return None
    topic = body.get("topic")
    known = STREAM_TOPICS.get(group, ()) if group else ENVELOPE_CLASSES
    if not isinstance(topic, str) or topic not in known:
        log.warning("stream entry %s has unknown topic %s; skipped", where, _shown(topic))
        return None
    try:
        return ENVELOPE_CLASSES[topic].model_validate(body, context=WIRE_CONTEXT)  # type: ignore[return-value]
    except ValidationError as exc:
        log.warning(
            "stream entry %s: invalid %s body (%s); skipped", where, topic, _errors_summary(exc)
        )
        return None


# Plain reads ------------------------------------------------------------------


def _raw(redis_client: redis.Redis, *args: Any) -> Any:
    return redis_client.execute_command(*args, **{NEVER_DECODE: []})


def _entries(response: Any) -> list[tuple[str, Any]]:
    """(id, fields) pairs of an XREAD/XREADGROUP reply, either RESP shape."""
    if not response:
        return []
    streams = response.items() if isinstance(response, dict) else response
    out: list[tuple[str, Any]] = []
    for _key, entries in streams:
        for entry_id, fields in entries:
            out.append((_text(entry_id), fields))
    return out


def read_latest(
    redis_client: redis.Redis, settings: Settings, group: str, count: int
) -> list[Entry]:
    """The newest ``count`` entries, newest first; undecodable ones are skipped."""
    key = stream_key(settings, group)
    out: list[Entry] = []
    for raw_id, fields in _raw(redis_client, "XREVRANGE", key, "+", "-", "COUNT", int(count)):
        entry_id = _text(raw_id)
        envelope = decode(fields, group=group, entry_id=entry_id)
        if envelope is not None:
            out.append((entry_id, envelope))
    return out


def _last_id(redis_client: redis.Redis, key: str) -> str:
    newest = _raw(redis_client, "XREVRANGE", key, "+", "-", "COUNT", 1)
    return _text(newest[0][0]) if newest else "0-0"


def follow(
    redis_client: redis.Redis,
    settings: Settings,
    group: str,
    *,
    last_id: str = "$",
    block_ms: int = 5000,
    stop: threading.Event | None = None,
) -> Iterator[Entry]:
    """Yield entries after ``last_id`` as they arrive (XREAD BLOCK), until ``stop`` is set.

    ``$`` is pinned to the newest id when this is called (not at the first
    ``next``), and the cursor then advances entry by entry, so nothing added
    between two blocking reads is skipped. Keep ``block_ms`` below the
    client's socket timeout. Nothing is remembered across restarts; use
    ``Consumer`` for that.
    """
    key = stream_key(settings, group)
    cursor = _last_id(redis_client, key) if last_id == "$" else last_id
    return _follow(redis_client, key, group, cursor, block_ms, stop)


def _follow(
    redis_client: redis.Redis,
    key: str,
    group: str,
    cursor: str,
    block_ms: int,
    stop: threading.Event | None,
) -> Iterator[Entry]:
    while stop is None or not stop.is_set():
        response = _raw(
            redis_client, "XREAD", "COUNT", 100, "BLOCK", int(block_ms), "STREAMS", key, cursor
        )
        for entry_id, fields in _entries(response):
            cursor = entry_id
            envelope = decode(fields, group=group, entry_id=entry_id)
            if envelope is not None:
                yield entry_id, envelope


# Consumer groups --------------------------------------------------------------


def ensure_group(redis_client: redis.Redis, key: str, group: str, start_id: str = "0") -> bool:
    """Create ``group`` on ``key`` (and the stream); False when it already existed."""
    try:
        redis_client.xgroup_create(key, group, id=start_id, mkstream=True)
    except redis.ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise
        return False
    return True


def dead_letter(
    redis_client: redis.Redis,
    settings: Settings,
    key: str,
    group_name: str,
    entry_id: str,
    fields: Any,
    *,
    reason: str,
    deliveries: int | None = None,
) -> str:
    """Move one pending entry to ``<key>:dead`` and ack it, in one MULTI/EXEC."""
    body: dict[Any, Any] = {
        "source_id": entry_id,
        "group": group_name,
        "reason": reason,
        "deliveries": "" if deliveries is None else str(deliveries),
        "dead_at_ms": str(int(time.time() * 1000)),
    }
    data = _data_field(fields)
    if data is not None:
        body["data"] = data
    pipe = redis_client.pipeline(transaction=True)
    pipe.xadd(dead_letter_key(key), body, maxlen=settings.stream_maxlen, approximate=True)
    pipe.xack(key, group_name, entry_id)
    dead_id, _ = pipe.execute()
    log.warning(
        "stream entry %s of %s moved to dead letters for group %s: %s",
        entry_id,
        key,
        group_name,
        reason,
    )
    return _text(dead_id)


def _accept(
    redis_client: redis.Redis,
    settings: Settings,
    key: str,
    group_name: str,
    stream_group: str,
    entries: list[tuple[str, Any]],
) -> list[Entry]:
    out: list[Entry] = []
    for entry_id, fields in entries:
        envelope = decode(fields, group=stream_group, entry_id=entry_id)
        if envelope is None:
            # It will never decode; retrying it would only delay the dead letter.
            dead_letter(
                redis_client, settings, key, group_name, entry_id, fields, reason="undecodable"
            )
        else:
            out.append((entry_id, envelope))
    return out


def consume(
    redis_client: redis.Redis,
    settings: Settings,
    group_name: str,
    consumer: str,
    stream_group: str,
    count: int = 10,
    block_ms: int | None = 2000,
) -> list[Entry]:
    """New entries for ``consumer`` (XREADGROUP ``>``); they stay pending until acked.

    Undecodable entries go straight to the dead-letter stream. A missing group
    is created from the start of the stream.
    """
    key = stream_key(settings, stream_group)
    args: list[Any] = ["XREADGROUP", "GROUP", group_name, consumer, "COUNT", int(count)]
    if block_ms is not None:
        args += ["BLOCK", int(block_ms)]
    args += ["STREAMS", key, ">"]
    try:
        response = _raw(redis_client, *args)
    except redis.ResponseError as exc:
        if "NOGROUP" not in str(exc):
            raise
        ensure_group(redis_client, key, group_name)
        response = _raw(redis_client, *args)
    return _accept(redis_client, settings, key, group_name, stream_group, _entries(response))


def ack(
    redis_client: redis.Redis,
    settings: Settings,
    group_name: str,
    stream_group: str,
    entry_ids: list[str],
) -> int:
    if not entry_ids:
        return 0
    return int(redis_client.xack(stream_key(settings, stream_group), group_name, *entry_ids))


def reclaim(
    redis_client: redis.Redis,
    settings: Settings,
    group_name: str,
    consumer: str,
    stream_group: str,
    *,
    min_idle_ms: int,
    count: int = 100,
) -> list[Entry]:
    """Take over entries idle for ``min_idle_ms`` in the group (XAUTOCLAIM).

    Each claim counts as a delivery; an entry past ``stream_max_deliveries``
    is dead-lettered instead of being returned.
    """
    key = stream_key(settings, stream_group)
    claimed: list[tuple[str, Any]] = []
    start = "0-0"
    # Each XAUTOCLAIM scans at most 10 x COUNT pending entries; a few rounds keep
    # one reclaim bounded even when the pending list is huge.
    for _ in range(_RECLAIM_ROUNDS):
        if len(claimed) >= count:
            break
        reply = _raw(
            redis_client,
            "XAUTOCLAIM",
            key,
            group_name,
            consumer,
            int(min_idle_ms),
            start,
            "COUNT",
            count,
        )
        start = _text(reply[0])
        for raw_id, fields in reply[1]:
            entry_id = _text(raw_id)
            if fields is None:
                # Trimmed away while pending (Redis 6.2 reports these here): nothing to do.
                redis_client.xack(key, group_name, entry_id)
                continue
            claimed.append((entry_id, fields))
        if start == "0-0":
            break
    if not claimed:
        return []
    pipe = redis_client.pipeline(transaction=False)
    for entry_id, _ in claimed:
        pipe.xpending_range(key, group_name, min=entry_id, max=entry_id, count=1)
    pending = pipe.execute()
    fresh: list[tuple[str, Any]] = []
    for (entry_id, fields), info in zip(claimed, pending, strict=True):
        deliveries = int(info[0]["times_delivered"]) if info else 1
        if deliveries > settings.stream_max_deliveries:
            dead_letter(
                redis_client,
                settings,
                key,
                group_name,
                entry_id,
                fields,
                reason="max_deliveries",
                deliveries=deliveries - 1,
            )
        else:
            fresh.append((entry_id, fields))
    return _accept(redis_client, settings, key, group_name, stream_group, fresh)


def read_dead(
    redis_client: redis.Redis, settings: Settings, stream_group: str, count: int = 100
) -> list:
    """Dead-letter entries of one stream, oldest first, as (id, fields) with text values."""
    key = dead_letter_key(stream_key(settings, stream_group))
    out = []
    for raw_id, fields in _raw(redis_client, "XRANGE", key, "-", "+", "COUNT", int(count)):
        out.append((_text(raw_id), {_text(k): _text(v) for k, v in fields.items()}))
    return out


def replay_dead(
    redis_client: redis.Redis, settings: Settings, stream_group: str, count: int = 100
) -> dict:
    """Re-publish decodable dead letters to their stream (every group sees them again).

    Undecodable ones stay where they are for an operator to look at.
    """
    key = stream_key(settings, stream_group)
    dead = dead_letter_key(key)
    replayed = kept = 0
    for raw_id, fields in _raw(redis_client, "XRANGE", dead, "-", "+", "COUNT", int(count)):
        entry_id = _text(raw_id)
        if decode(fields, group=stream_group, entry_id=entry_id) is None:
            kept += 1
            continue
        pipe = redis_client.pipeline(transaction=True)
        pipe.xadd(
            key, {"data": _data_field(fields)}, maxlen=settings.stream_maxlen, approximate=True
        )
        pipe.xdel(dead, entry_id)
        pipe.execute()
        replayed += 1
    return {"status": "ok", "replayed": replayed, "kept": kept}


class Consumer:
    """One member of a consumer group: reclaim idle entries now and then, read new
    ones, call ``handler(entry_id, envelope)``, ack on success.

    A handler exception leaves the entry pending; it comes back after
    ``min_idle_ms`` (to this or another consumer) until it succeeds or is
    dead-lettered. Handlers must be idempotent on ``envelope_id``.
    """

    def __init__(
        self,
        redis_client: redis.Redis,
        settings: Settings,
        stream_group: str,
        group_name: str,
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
        self.stream_group = stream_group
        self.group_name = group_name
        self.consumer_name = consumer_name
        self.handler = handler
        self.count = count
        self.block_ms = block_ms
        self.min_idle_ms = min_idle_ms
        self.reclaim_interval_s = reclaim_interval_s
        self.start_id = start_id
        self.key = stream_key(settings, stream_group)
        self._next_reclaim = 0.0
        self._ready = False

    def setup(self) -> None:
        ensure_group(self.redis_client, self.key, self.group_name, self.start_id)
        self._ready = True

    def step(self, *, reclaim_now: bool | None = None) -> dict[str, int]:
        """One round: maybe reclaim, read new entries, handle them."""
        if not self._ready:
            self.setup()
        due = reclaim_now if reclaim_now is not None else time.monotonic() >= self._next_reclaim
        entries: list[Entry] = []
        if due:
            entries = reclaim(
                self.redis_client,
                self.settings,
                self.group_name,
                self.consumer_name,
                self.stream_group,
                min_idle_ms=self.min_idle_ms,
                count=self.count,
            )
            self._next_reclaim = time.monotonic() + self.reclaim_interval_s
        entries += consume(
            self.redis_client,
            self.settings,
            self.group_name,
            self.consumer_name,
            self.stream_group,
            count=self.count,
            block_ms=None if entries else self.block_ms,
        )
        handled = failed = 0
        for entry_id, envelope in entries:
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
            ack(self.redis_client, self.settings, self.group_name, self.stream_group, [entry_id])
            handled += 1
        return {"handled": handled, "failed": failed}

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
