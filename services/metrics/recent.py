"""Who reached high or critical risk lately, from the bond stream's
``bond.risk_change`` envelopes read by time range (stream ids are millisecond
timestamps), never by scanning bond keys."""

from __future__ import annotations

import time
from dataclasses import dataclass

import redis

from models.envelopes import RiskChangeEnvelope
from services.core.settings import Settings
from services.envelopes.streams import decode, newest, stream_keys

ALERT_RISKS = ("high", "critical")
# Entries read per call at most: a busy hour is shown from its newest end.
MAX_ENTRIES = 20_000


@dataclass(frozen=True)
class RiskAlert:
    user_id: str
    to_risk: str
    at: float  # epoch seconds of the stream entry


def risk_alerts(
    redis_client: redis.Redis,
    settings: Settings,
    *,
    within_s: float = 3600.0,
    risks: tuple[str, ...] = ALERT_RISKS,
    now: float | None = None,
    limit: int = 20,
) -> list[RiskAlert]:
    """Users whose risk changed to one of ``risks`` in the last ``within_s``
    seconds, newest first, each user once (their latest such change)."""
    now = time.time() if now is None else now
    start_ms = int((now - within_s) * 1000)
    entries = newest(redis_client, stream_keys(settings, "bond"), MAX_ENTRIES, f"{start_ms}-0")
    seen: dict[str, RiskAlert] = {}
    for entry_id, fields in entries:
        if b"bond.risk_change" not in _raw_data(fields):
            continue  # skip the JSON parse of every other topic
        envelope = decode(fields, stream_name="bond", entry_id=entry_id)
        if not isinstance(envelope, RiskChangeEnvelope):
            continue
        payload = envelope.payload
        if payload.to_risk in risks and payload.user_id not in seen:
            at = int(entry_id.split("-", 1)[0]) / 1000
            seen[payload.user_id] = RiskAlert(payload.user_id, payload.to_risk, at)
            if len(seen) >= limit:
                break
    return list(seen.values())


def _raw_data(fields: object) -> bytes:
    if isinstance(fields, dict):
        value = fields.get(b"data", fields.get("data", b""))
        return value if isinstance(value, bytes) else str(value).encode()
    return b""
