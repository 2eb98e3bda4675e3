"""The ingest pipeline done the way the seed systems did it, as a baseline.

Same validation, same detector, same key layout and the same effects as
``services.ingest.service`` (dedupe marker, daily count, history context, bond, events,
history, envelopes), but with the seeds' habits: one round trip per Redis
operation, read-modify-write of the bond JSON with no atomicity, LPUSH then
LTRIM, ZADD / EXPIRE / ZCARD / ZREMRANGEBYRANK, one XADD per envelope, a
check-then-set dedupe marker. It lives here, not in ``services``, because it is
only a yardstick: it keeps every defect the spec lists.

The per-process bond cache of seed 000 is left out: it is what made state stale
across workers, and with it the baseline would not do the same work.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

import redis
from pydantic import ValidationError

from models.envelopes import make_envelope
from models.history import StoredMessage
from models.payloads import MessageIn, reasons_of
from models.types import SEVERITY_ORDER
from services.core import keys
from services.core.settings import Settings
from services.ingest.detector import Detector

_NEW_BOND: dict[str, Any] = {
    "phase": "dormant",
    "prev_phase": "dormant",
    "archetype": "unknown",
    "phase_entered_at": 0.0,
    "turn_count": 0,
    "peak_nodes": {},
    "risk_level": "low",
    "daily_msg_cap": 0,
    "daily_msg_count": 0,
    "daily_msg_reset_at": 0.0,
    "egg_status": "none",
    "notes": [],
    "last_updated": 0.0,
}


class SeedStyleIngest:
    """One message at a time, one Redis command per round trip."""

    def __init__(self, store: redis.Redis, settings: Settings, detector: Detector) -> None:
        self.redis = store
        self.settings = settings
        self.detector = detector

    def messages(self, raws: Sequence[Any]) -> list[dict[str, Any]]:
        """The seeds had no batch form: a batch is a loop."""
        return [self.message(raw) for raw in raws]

    def message(self, raw: Any) -> dict[str, Any]:
        try:
            msg = MessageIn.model_validate(raw)
        except ValidationError as exc:
            return {"status": "rejected", "reasons": reasons_of(exc)}
        store, settings = self.redis, self.settings
        now = time.time()
        marker = keys.message_marker(settings, msg.platform, msg.message_id)
        if store.get(marker) is not None:  # select-then-insert dedupe
            return {"status": "duplicate", "message_id": msg.message_id}

        bond_key = keys.bond(settings, msg.user_id)
        raw_bond = store.get(bond_key)
        bond = json.loads(raw_bond) if raw_bond else {**_NEW_BOND, "user_id": msg.user_id}
        bond.setdefault("peak_nodes", {})
        # The seed's rolling 24 h window, checked and counted in separate steps.
        if now - bond.get("daily_msg_reset_at", 0.0) > 86_400:
            bond["daily_msg_count"] = 0
            bond["daily_msg_reset_at"] = now
        cap = bond.get("daily_msg_cap", 0)
        if cap > 0 and bond["daily_msg_count"] >= cap:
            store.set(marker, "limited", ex=settings.dedupe_ttl_days * 86_400)
            return {"status": "rate_limited", "message_id": msg.message_id}
        bond["daily_msg_count"] += 1
        bond["last_updated"] = now
        store.set(bond_key, json.dumps(bond))

        history_key = keys.history(settings, msg.guild_id, msg.user_id)
        context_size = max(settings.history_context_limit, 1)
        raws_ctx = store.zrange(history_key, 0, context_size - 1, desc=True)
        context = [StoredMessage.model_validate_json(m) for m in reversed(raws_ctx)]
        det = self.detector.detect(msg, context)

        changed = self._apply(bond, bond_key, msg, det, now)
        stored = self._add_history(history_key, msg, det)
        store.set(marker, "done", ex=settings.dedupe_ttl_days * 86_400)
        return {
            "status": "accepted",
            "message_id": msg.message_id,
            "severity": det.severity,
            "phase": det.phase,
            "phase_changed": "phase" in changed,
            "risk_changed": "risk" in changed,
            "stored": stored,
        }

    def _apply(self, bond: dict, bond_key: str, msg: MessageIn, det, now: float) -> list[str]:
        store, settings = self.redis, self.settings
        events_key = keys.events(settings, msg.user_id)
        changed = []
        if det.phase != bond["phase"]:
            old = bond["phase"]
            self._log_event(
                events_key,
                {
                    "timestamp": now,
                    "event_type": "phase_transition",
                    "detail": f"{old} -> {det.phase}",
                    "data": {
                        "from": old,
                        "to": det.phase,
                        "confidence": det.confidence,
                        "primary_signal": det.primary_signal,
                    },
                },
            )
            self._publish(
                "bond.phase_transition",
                {
                    "user_id": msg.user_id,
                    "guild_id": msg.guild_id,
                    "from_phase": old,
                    "to_phase": det.phase,
                    "confidence": det.confidence,
                    "primary_signal": det.primary_signal,
                },
                msg.message_id,
            )
            bond["prev_phase"], bond["phase"], bond["phase_entered_at"] = old, det.phase, now
            changed.append("phase")
        if det.risk_level != bond["risk_level"]:
            old = bond["risk_level"]
            self._log_event(
                events_key,
                {
                    "timestamp": now,
                    "event_type": "risk_change",
                    "detail": f"risk: {old} -> {det.risk_level}",
                    "data": {"from": old, "to": det.risk_level},
                },
            )
            self._publish(
                "bond.risk_change",
                {
                    "user_id": msg.user_id,
                    "guild_id": msg.guild_id,
                    "from_risk": old,
                    "to_risk": det.risk_level,
                },
                msg.message_id,
            )
            bond["risk_level"] = det.risk_level
            changed.append("risk")
        bond["archetype"] = det.childhood_archetype
        bond["egg_status"] = det.egg
        if det.turn_count is not None:
            bond["turn_count"] = det.turn_count
        for node, val in det.ulm_vector.items():
            if val > bond["peak_nodes"].get(node, 0.0):
                bond["peak_nodes"][node] = round(val, 4)
        bond["last_updated"] = now
        store.set(bond_key, json.dumps(bond))
        return changed

    def _log_event(self, events_key: str, event: dict[str, Any]) -> None:
        self.redis.lpush(events_key, json.dumps(event))
        self.redis.ltrim(events_key, 0, self.settings.events_max - 1)

    def _publish(self, topic: str, payload: dict[str, Any], correlation_id: str) -> None:
        env = make_envelope(topic, payload, correlation_id=correlation_id)
        self.redis.xadd(
            self.settings.stream_bond,
            {"data": env.model_dump_json()},
            maxlen=self.settings.stream_maxlen,
            approximate=True,
        )

    def _add_history(self, history_key: str, msg: MessageIn, det) -> bool:
        rank = SEVERITY_ORDER.index(det.severity)
        if rank == 0 or rank < self.settings.min_severity_rank:
            return False
        store, settings = self.redis, self.settings
        entry = {
            "message": msg.text[: settings.history_text_chars],
            "timestamp": msg.sent_at.isoformat(),
            "crisis_score": det.crisis_score,
            "severity": det.severity,
            "message_id": msg.message_id,
        }
        store.zadd(history_key, {json.dumps(entry): msg.sent_at.timestamp()})
        store.expire(history_key, settings.history_ttl_s)
        count = store.zcard(history_key)
        if count > settings.history_max_messages:
            store.zremrangebyrank(history_key, 0, count - settings.history_max_messages - 1)
        return True
