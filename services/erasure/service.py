"""Erase a user everywhere vigil keeps them, then announce it with ``user.erased``.

Idempotent: a retried erase removes whatever is left and announces again with
the same envelope id, so consumers that dedupe see it once.
"""

from __future__ import annotations

import json
from typing import Any

import redis
from sqlalchemy.orm import Session, sessionmaker

from models.envelopes import STREAM_TOPICS, envelope_id, make_envelope
from services.attribution import repository
from services.bonds import history
from services.core import keys
from services.core.settings import Settings
from services.deadletters import store
from services.envelopes import streams
from services.envelopes.consumers import quarantine_key

_STREAM_SCAN_BATCH = 1000


def _stream_entries_of(redis_client: redis.Redis, stream: str, user_id: str) -> list[str]:
    """Ids of stream entries whose payload names the user (bounded by MAXLEN)."""
    found: list[str] = []
    start = "-"
    while True:
        entries = redis_client.xrange(stream, min=start, max="+", count=_STREAM_SCAN_BATCH)
        for entry_id, fields in entries:
            try:
                payload = json.loads(fields.get("data", "{}")).get("payload", {})
            except (ValueError, AttributeError):
                continue
            if isinstance(payload, dict) and payload.get("user_id") == user_id:
                found.append(entry_id)
        if len(entries) < _STREAM_SCAN_BATCH:
            return found
        start = "(" + entries[-1][0]


def erase_user(
    redis_client: redis.Redis,
    settings: Settings,
    sessions: sessionmaker[Session],
    *,
    user_id: str,
    platform: str,
    request_id: str,
) -> dict[str, Any]:
    removed: dict[str, int] = {}
    history_keys = history.guild_keys(redis_client, settings, user_id)
    removed["history_messages"] = sum(int(redis_client.zcard(k)) for k in history_keys)
    removed["bond"] = int(redis_client.delete(keys.bond(settings, user_id)))
    removed["events"] = int(redis_client.llen(keys.events(settings, user_id)))
    redis_client.delete(keys.events(settings, user_id), *history_keys)
    # Which of this user's message and detection ids were seen; pre-upgrade
    # marker keys are named by id alone, cannot be found by user and expire.
    dedupe_keys = (
        keys.message_dedupe(settings, platform, user_id),
        keys.detection_dedupe(settings, platform, user_id),
    )
    removed["dedupe_entries"] = sum(int(redis_client.hlen(k)) for k in dedupe_keys)
    redis_client.delete(*dedupe_keys)

    with sessions() as session, session.begin():
        counts = repository.erase_actor(session, platform, user_id)
        removed["attribution_rows"] = int(sum(counts.values())) if counts else 0
        removed["dead_letters"] = store.erase_user(session, user_id)

    stream_hits = 0

    # Every shard of every stream: an envelope may name the user in another's shard.
    mains = [key for name in STREAM_TOPICS for key in streams.stream_keys(settings, name)]
    for stream in (*mains, *map(quarantine_key, mains)):
        ids = _stream_entries_of(redis_client, stream, user_id)
        if ids:
            stream_hits += int(redis_client.xdel(stream, *ids))
    removed["stream_entries"] = stream_hits

    env = make_envelope(
        "user.erased",
        {"user_id": user_id, "platform": platform, "removed": removed},
        correlation_id=request_id,
        envelope_id=envelope_id(request_id, "user.erased"),
    )
    streams.publish(redis_client, settings, env)
    return {"status": "erased", "user_id": user_id, "removed": removed}
