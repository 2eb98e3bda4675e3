"""Envelopes on Redis Streams: publish, decode, read newest-first, and follow.

There is one stream per family of topics, named "bond", "attribution" and
"user" (``models.envelopes.STREAM_TOPICS``); settings map each name to its
Redis key. Every entry has one field, ``data``, holding the envelope JSON.
Streams are trimmed with ``MAXLEN ~`` so they stay bounded. Readers that must
not lose entries while they are down use a consumer group
(``services.envelopes.consumers``); ``follow`` here remembers nothing.

On a Redis Cluster each stream is one key per shard (``services.core.keys``):
an envelope goes to its user's shard, and readers read every shard.

Entries are read without response decoding even from a ``decode_responses``
client: one entry with invalid UTF-8 would otherwise make every read of the
stream fail inside redis-py, before any decoder could skip it.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
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
from services.core import keys
from services.core.settings import Settings

log = logging.getLogger(__name__)

_SHOWN_CHARS = 100

Entry = tuple[str, Envelope]


def stream_key(settings: Settings, stream_name: str, shard: int = 0) -> str:
    """The Redis key of stream ``stream_name`` (on a cluster, of one shard of it);
    keys are settings, names are fixed."""
    bases = {
        "bond": settings.stream_bond,
        "attribution": settings.stream_attribution,
        "user": settings.stream_user,
    }
    try:
        return keys.sharded(settings, bases[stream_name], shard)
    except KeyError:
        raise ValueError(f"unknown stream {stream_name!r}") from None


def stream_keys(settings: Settings, stream_name: str) -> list[str]:
    """Every shard's key of stream ``stream_name`` (one key on one Redis)."""
    return [stream_key(settings, stream_name, shard) for shard in keys.shards(settings)]


def stream_key_of_topic(settings: Settings, topic: str, shard: int = 0) -> str:
    """The Redis key of (one shard of) the stream that carries ``topic``."""
    return stream_key(settings, stream_of_topic(topic), shard)


def envelope_shard(settings: Settings, envelope: Envelope) -> int:
    """The shard an envelope goes to: its user's, else its id's."""
    user_id = getattr(envelope.payload, "user_id", None)
    return keys.shard_of(settings, str(user_id or envelope.envelope_id))


def stream_key_of(settings: Settings, envelope: Envelope) -> str:
    """The Redis key an envelope is published to: its topic's stream, its shard."""
    return stream_key_of_topic(settings, envelope.topic, envelope_shard(settings, envelope))


def publish(redis_client: redis.Redis, settings: Settings, envelope: Envelope) -> str:
    """XADD one envelope to its topic's stream; returns the entry id."""
    entry_id = redis_client.xadd(
        stream_key_of(settings, envelope),
        {"data": envelope.model_dump_json()},
        maxlen=settings.stream_maxlen,
        approximate=True,
    )
    return as_text(entry_id)


# Decoding -------------------------------------------------------------------


def as_text(value: Any) -> str:
    """A reply value as text; raw replies are bytes, and bad UTF-8 must not raise."""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _shown(value: Any) -> str:
    shown = repr(value)
    return shown if len(shown) <= _SHOWN_CHARS else shown[:_SHOWN_CHARS] + "..."


def data_field(raw_fields: Any) -> str | bytes | None:
    """The ``data`` value of one entry's fields (text or bytes keys), or None."""
    if not isinstance(raw_fields, dict):
        return None
    value = raw_fields.get("data", raw_fields.get(b"data"))
    return value if isinstance(value, (str, bytes)) else None


def _errors_summary(exc: ValidationError) -> str:
    # Locations and error types only: inputs could echo whatever was written.
    parts = [
        f"{'.'.join(str(part) for part in err['loc']) or '<root>'}: {err['type']}"
        for err in exc.errors(include_input=False, include_url=False, include_context=False)[:5]
    ]
    return _shown("; ".join(parts))[1:-1]


def decode(
    raw_fields: Any, *, stream_name: str | None = None, entry_id: str | None = None
) -> Envelope | None:
    """The envelope in one stream entry, or None (with a warning) when it cannot be used.

    Never raises on bad input, so a consumer loop survives any entry. With
    ``stream_name``, an envelope of another stream's topic counts as unknown.
    """
    where = entry_id or "?"
    data = data_field(raw_fields)
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
    known = STREAM_TOPICS.get(stream_name, ()) if stream_name else ENVELOPE_CLASSES
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


def execute_raw(redis_client: redis.Redis, *args: Any) -> Any:
    """Run one command with response decoding off (see the module docstring)."""
    return redis_client.execute_command(*args, **{NEVER_DECODE: []})


def reply_entries(response: Any) -> list[tuple[str, Any]]:
    """(id, fields) pairs of an XREAD/XREADGROUP reply, either RESP shape."""
    if not response:
        return []
    replies = response.items() if isinstance(response, dict) else response
    out: list[tuple[str, Any]] = []
    for _key, entries in replies:
        for entry_id, fields in entries:
            out.append((as_text(entry_id), fields))
    return out


def id_order(entry_id: str) -> tuple[int, int]:
    """An entry id as (ms, seq), to merge the shards of a stream by time."""
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def newest(
    redis_client: redis.Redis, stream_keys: list[str], count: int, start: str = "-"
) -> list[tuple[str, Any]]:
    """The newest ``count`` raw (id, fields) over the given keys (a stream's
    shards), newest first, down to ``start``. Shards are merged by entry id,
    so by time to the millisecond: entries of one millisecond on different
    shards come in no particular order."""
    merged: list[tuple[str, Any]] = []
    for key in stream_keys:
        for raw_id, fields in execute_raw(
            redis_client, "XREVRANGE", key, "+", start, "COUNT", int(count)
        ):
            merged.append((as_text(raw_id), fields))
    if len(stream_keys) > 1:
        merged.sort(key=lambda entry: id_order(entry[0]), reverse=True)
    return merged[: int(count)]


def read_latest(
    redis_client: redis.Redis, settings: Settings, stream_name: str, count: int
) -> list[Entry]:
    """The newest ``count`` entries of every shard, newest first; undecodable
    ones are skipped."""
    out: list[Entry] = []
    for entry_id, fields in newest(redis_client, stream_keys(settings, stream_name), count):
        envelope = decode(fields, stream_name=stream_name, entry_id=entry_id)
        if envelope is not None:
            out.append((entry_id, envelope))
    return out


def _last_id(redis_client: redis.Redis, key: str) -> str:
    newest = execute_raw(redis_client, "XREVRANGE", key, "+", "-", "COUNT", 1)
    return as_text(newest[0][0]) if newest else "0-0"


def follow(
    redis_client: redis.Redis,
    settings: Settings,
    stream_name: str,
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
    ``services.envelopes.consumers.Consumer`` for that.

    On a cluster every shard is read in turn without blocking (one XREAD
    cannot span slots), pausing ``SHARD_POLL_S`` when none had anything.
    """
    cursors = {
        key: _last_id(redis_client, key) if last_id == "$" else last_id
        for key in stream_keys(settings, stream_name)
    }
    return _follow(redis_client, cursors, stream_name, block_ms, stop)


# How long a reader of many shards pauses when none of them had anything.
SHARD_POLL_S = 0.2


def _follow(
    redis_client: redis.Redis,
    cursors: dict[str, str],
    stream_name: str,
    block_ms: int,
    stop: threading.Event | None,
) -> Iterator[Entry]:
    block = ["BLOCK", int(block_ms)] if len(cursors) == 1 else []
    stop = stop or threading.Event()
    while not stop.is_set():
        got = 0
        for key, cursor in cursors.items():
            response = execute_raw(
                redis_client, "XREAD", "COUNT", 100, *block, "STREAMS", key, cursor
            )
            for entry_id, fields in reply_entries(response):
                got += 1
                cursors[key] = entry_id
                envelope = decode(fields, stream_name=stream_name, entry_id=entry_id)
                if envelope is not None:
                    yield entry_id, envelope
        if not got and not block:
            stop.wait(min(SHARD_POLL_S, block_ms / 1000))
