"""Per-(guild, user) message history (seed 004) on Redis sorted sets.

Writes happen inside ``apply_detection.lua`` (ZADD, trim to the newest
``history_max_messages``, refresh the TTL) so they are atomic with the bond;
this module builds the member and serves the reads.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import redis

from models.history import SeverityStats, StoredMessage
from models.payloads import MessageIn
from models.types import SEVERITY_ORDER
from services.core import keys
from services.core.settings import Settings


def should_store(settings: Settings, severity: str) -> bool:
    """Only severities at or above the setting; ``safe`` is never stored."""
    rank = SEVERITY_ORDER.index(severity)
    return rank > 0 and rank >= settings.min_severity_rank


def entry(
    settings: Settings, msg: MessageIn, severity: str, crisis_score: float
) -> dict[str, Any] | None:
    """The ``history`` argument of ``apply_detection.lua``, or None when not stored."""
    if not should_store(settings, severity):
        return None
    member = json.dumps(
        {
            "message": msg.text[: settings.history_text_chars],
            "timestamp": msg.sent_at.isoformat(),
            "crisis_score": crisis_score,
            "severity": severity,
            "message_id": msg.message_id,
        }
    )
    return {
        "score": msg.sent_at.timestamp(),
        "member": member,
        "max": settings.history_max_messages,
        "ttl": settings.history_ttl_s,
    }


def parse(raw: str) -> StoredMessage | None:
    try:
        return StoredMessage.model_validate_json(raw)
    except ValueError:
        return None  # a corrupt member must not hide the rest of the history


def get(
    redis_client: redis.Redis,
    settings: Settings,
    guild_id: str | None,
    user_id: str,
    limit: int = 20,
) -> list[StoredMessage]:
    """Newest first, like the seed's ``get_history``."""
    raws = redis_client.zrange(
        keys.history(settings, guild_id, user_id), 0, max(limit, 1) - 1, desc=True
    )
    return [m for m in map(parse, raws) if m is not None]


def context_of(raws: list[str]) -> list[StoredMessage]:
    """Members as returned by the ingest gate: oldest to newest."""
    return [m for m in map(parse, raws) if m is not None]


def count(redis_client: redis.Redis, settings: Settings, guild_id: str | None, user_id: str) -> int:
    return int(redis_client.zcard(keys.history(settings, guild_id, user_id)))


def exists(
    redis_client: redis.Redis, settings: Settings, guild_id: str | None, user_id: str
) -> bool:
    return bool(redis_client.exists(keys.history(settings, guild_id, user_id)))


def clear(redis_client: redis.Redis, settings: Settings, guild_id: str | None, user_id: str) -> int:
    """Delete one guild's history of a user; returns how many messages went."""
    key = keys.history(settings, guild_id, user_id)
    pipe = redis_client.pipeline(transaction=True)
    pipe.zcard(key)
    pipe.delete(key)
    removed, _ = pipe.execute()
    return int(removed)


def guild_keys(redis_client: redis.Redis, settings: Settings, user_id: str) -> list[str]:
    return list(redis_client.scan_iter(match=keys.history_pattern(settings, user_id), count=1000))


def stats(
    redis_client: redis.Redis, settings: Settings, guild_id: str | None, user_id: str
) -> SeverityStats:
    items = [
        m
        for m in map(parse, redis_client.zrange(keys.history(settings, guild_id, user_id), 0, -1))
        if m is not None
    ]
    by = Counter(m.severity for m in items)
    scores = [m.crisis_score for m in items if m.crisis_score is not None]
    return SeverityStats(
        total=len(items),
        by_severity={sev: by.get(sev, 0) for sev in SEVERITY_ORDER[1:]},
        max_crisis_score=max(scores) if scores else None,
        first_at=items[0].timestamp if items else None,
        last_at=items[-1].timestamp if items else None,
    )
