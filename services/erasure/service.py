"""Erase a user everywhere vigil keeps them, then announce it with ``user.erased``.

Idempotent: a retried erase removes whatever is left and announces again with
the same envelope id, so consumers that dedupe see it once.
"""

from __future__ import annotations

import json
from typing import Any

import redis
from sqlalchemy.orm import Session, sessionmaker

from models.envelopes import make_envelope
from services.attribution import repository
from services.bonds import history, ledger
from services.core import keys
from services.core.settings import Settings
from services.deadletters import store
from services.envelopes import streams
from services.envelopes.streams import dead_letter_key

_STREAM_SCAN_BATCH = 1000


def _stream_entries_of(r: redis.Redis, stream: str, user_id: str) -> list[str]:
    """Ids of stream entries whose payload names the user (bounded by MAXLEN)."""
    found: list[str] = []
    start = "-"
    while True:
        entries = r.xrange(stream, min=start, max="+", count=_STREAM_SCAN_BATCH)
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
    r: redis.Redis,
    s: Settings,
    sessions: sessionmaker[Session],
    *,
    user_id: str,
    platform: str,
    request_id: str,
) -> dict[str, Any]:
    removed: dict[str, int] = {}
    history_keys = history.guild_keys(r, s, user_id)
    removed["history_messages"] = sum(int(r.zcard(k)) for k in history_keys)
    removed["bond"] = int(r.delete(keys.bond(s, user_id)))
    removed["events"] = int(r.llen(keys.events(s, user_id)))
    r.delete(keys.events(s, user_id), *history_keys)

    with sessions() as session, session.begin():
        counts = repository.erase_actor(session, platform, user_id)
        removed["attribution_rows"] = int(sum(counts.values())) if counts else 0
        removed["dead_letters"] = store.erase_user(session, user_id)

    stream_hits = 0

    mains = (s.stream_bond, s.stream_attribution, s.stream_user)
    for stream in (*mains, *map(dead_letter_key, mains)):
        ids = _stream_entries_of(r, stream, user_id)
        if ids:
            stream_hits += int(r.xdel(stream, *ids))
    removed["stream_entries"] = stream_hits

    env = make_envelope(
        "user.erased",
        {"user_id": user_id, "platform": platform, "removed": removed},
        correlation_id=request_id,
        envelope_id=ledger.envelope_id(request_id, "user.erased"),
    )
    streams.publish(r, s, env)
    return {"status": "erased", "user_id": user_id, "removed": removed}
