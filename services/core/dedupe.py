"""Dedupe state: what the scripts need to recognise a message or detection seen
before, and how to read it back.

Each (platform, user) has one hash per kind (``keys.message_dedupe``,
``keys.detection_dedupe``): field ``keys.dedupe_field(id)``, value
``stamp_ms * 4 + state`` (1 counted, 2 limited, 3 done) with ``stamp_ms`` the
time the id was first seen. The scripts treat entries older than
``dedupe_window_s`` as absent and prune a hash past ``dedupe_max_per_user``
plus a quarter back to its newest ``dedupe_max_per_user`` live entries
(``redis_scripts/_bond.lua``: ``dedupe_*``), so memory grows with users, not messages.
"""

from __future__ import annotations

import time
from typing import Any

import redis

from services.core.settings import Settings

STATES = {1: "counted", 2: "limited", 3: "done"}


def script_args(settings: Settings, now: float) -> dict[str, Any]:
    """The dedupe arguments every item of a batch shares (``d`` in _bond.lua)."""
    return {
        "dedupe": {
            "now_ms": int(now * 1000),
            "window_ms": settings.dedupe_window_s * 1000,
            "max": settings.dedupe_max_per_user,
            "slack": max(1, settings.dedupe_max_per_user // 4),
            "horizon_ms": settings.dedupe_horizon_s * 1000,
            "flood_max": settings.dedupe_flood_max_per_user,
        },
    }


def stamp(now: float, position: int) -> int:
    """An item's first-seen stamp in milliseconds: ``position`` (its index in
    its batch) is added so a batch's ids keep their order when a hash is pruned."""
    return int(now * 1000) + position


def decode(raw: str | bytes | None, settings: Settings, now: float | None = None) -> str | None:
    """The state a hash value holds, or None when absent or past the window."""
    if raw is None:
        return None
    value = int(raw)
    stamp_ms, code = divmod(value, 4)
    now_ms = int((time.time() if now is None else now) * 1000)
    if now_ms - stamp_ms >= settings.dedupe_window_s * 1000:
        return None
    return STATES.get(code)


def states(
    redis_client: redis.Redis, settings: Settings, key: str, now: float | None = None
) -> dict[str, str]:
    """Every live entry of one dedupe hash: field to state."""
    out = {}
    for field, raw in redis_client.hgetall(key).items():
        state = decode(raw, settings, now)
        if state is not None:
            out[field] = state
    return out
