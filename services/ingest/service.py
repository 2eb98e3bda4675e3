"""The ingest pipeline shared by the ingest tasks (single messages, batches of
them, detections).

Per batch, whatever its size: one Redis round trip to dedupe, count against
the daily cap and fetch history context (``ingest_gate.lua``; a user without a
cap is counted in the second round trip instead), the detector in
process, one PostgreSQL transaction for attribution observations (only when a
detection carries any), and one Redis round trip to apply every detection with
its events, history and envelopes (``apply_detection.lua``).

Every step is idempotent, so a redelivered task (late ack, worker killed)
finishes the work without counting or publishing anything twice.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import redis
from pydantic import ValidationError
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from models.history import StoredMessage
from models.outcomes import Outcome
from models.payloads import DetectionIn, MessageIn, reasons_of, text_limit
from services.attribution import service as attribution
from services.bonds import history, ledger
from services.core import dedupe, keys, replies, scripts
from services.core.settings import Settings
from services.envelopes import outbox
from services.ingest.detector import Detector, DetectorFailed
from services.metrics import counters

log = logging.getLogger(__name__)


@dataclass
class Batch:
    """Outcomes in input order, plus what must be dead-lettered."""

    outcomes: list[Outcome]
    rejected: list[tuple[Any, list[str]]] = field(default_factory=list)

    @classmethod
    def parse(
        cls, model: Any, raws: Sequence[Any], context: dict[str, Any] | None = None
    ) -> tuple[Batch, list[tuple[int, Any]]]:
        """Validate every item (``context``: the model's validation context);
        invalid ones are answered and set aside here."""
        # Filled for every item below or by the pipeline that parsed them.
        batch = cls([cast(Outcome, {}) for _ in raws])
        valid = []
        for i, raw in enumerate(raws):
            item, reasons = _parse(model, raw, context)
            if reasons:
                batch.outcomes[i] = {"status": "rejected", "index": i, "reasons": reasons}
                batch.rejected.append((raw, reasons))
            else:
                valid.append((i, item))
        return batch, valid

    def summary(self) -> dict[str, Any]:
        counts: dict[str, int] = defaultdict(int)
        for o in self.outcomes:
            counts[o["status"]] += 1
        return {"status": "ok", **counts, "results": self.outcomes}


def _parse(model, raw: Any, context: dict[str, Any] | None) -> tuple[Any, list[str] | None]:
    if not isinstance(raw, dict):
        return None, [f"payload: expected a JSON object, got {type(raw).__name__}"]
    try:
        return model.model_validate(raw, context=context), None
    except ValidationError as exc:
        return None, reasons_of(exc)
    except (ValueError, TypeError, RecursionError) as exc:
        return None, [f"payload: {type(exc).__name__}"]


class IngestService:
    """Holds the clients for one task run; tasks build it and call one method."""

    def __init__(
        self,
        redis_client: redis.Redis,
        settings: Settings,
        sessions: sessionmaker[Session],
        detector: Detector,
    ) -> None:
        """What it rejects it answers and sets aside (``Batch.rejected``) with
        reasons; the worker runtime decides where that is kept."""
        self.redis_client = redis_client
        self.settings = settings
        self.sessions = sessions
        self.detector = detector
        wanted = getattr(detector, "context_limit", None)
        limit = settings.history_context_limit
        self.context_limit = limit if wanted is None else min(limit, wanted)

    # -- messages ---------------------------------------------------------------

    def messages(self, raws: Sequence[Any], now: float | None = None) -> Batch:
        now = time.time() if now is None else now
        batch, valid = Batch.parse(MessageIn, raws, text_limit(self.settings.max_text_chars))
        outcomes = batch.outcomes

        # What every item of both script calls shares; the gate also reads context_limit.
        shared = ledger.detection_shared(self.settings, now, counters.MESSAGES)
        gates = scripts.run_batch(
            self.redis_client,
            "ingest_gate",
            [self._gate_item(m, now, i) for i, m in valid],
            shared={**shared, "context_limit": self.context_limit},
            settings=self.settings,
            wait=scripts.wait_of(self.settings),
        )
        to_apply: list[tuple[int, MessageIn, DetectionIn, dict[str, Any] | None, bool]] = []
        # Messages earlier in this batch are context for later ones of the same user.
        local_context: dict[tuple[str | None, str], list[StoredMessage]] = defaultdict(list)
        for (i, msg), raw in zip(valid, gates, strict=True):
            gate = replies.gate(raw)
            if isinstance(gate, replies.Failed):
                outcomes[i] = self._reject(batch, i, msg, [f"state: {gate.reason}"])
                continue
            if isinstance(gate, replies.Duplicate):
                outcomes[i] = {"status": "duplicate", "message_id": msg.message_id}
                continue
            if isinstance(gate, replies.RateLimited):
                outcomes[i] = {
                    "status": "rate_limited",
                    "message_id": msg.message_id,
                    "cap": gate.cap,
                    "count": gate.count,
                }
                continue
            ctx_key = (msg.guild_id, msg.user_id)
            context = history.context_of(gate.context) + local_context[ctx_key]
            context = context[-self.context_limit :] if self.context_limit else []
            try:
                det = self.detector.detect(msg, context)
            except DetectorFailed as exc:
                outcomes[i] = self._reject(batch, i, msg, [f"detector: {exc}"])
                continue
            entry = history.entry(self.settings, msg, det.severity, det.crisis_score)
            if entry is not None:
                local_context[ctx_key].append(
                    StoredMessage(
                        message=msg.text[: self.settings.history_text_chars],
                        timestamp=msg.sent_at.isoformat(),
                        crisis_score=det.crisis_score,
                        severity=det.severity,
                        message_id=msg.message_id,
                    )
                )
            # An uncapped user's message is counted by the apply, not the gate.
            to_apply.append((i, msg, det, entry, not gate.counted))

        self._attribution([det for _, _, det, _, _ in to_apply])
        calls = [
            ledger.detection_args(
                self.settings,
                det,
                cause=keys.message_marker(self.settings, msg.platform, msg.message_id),
                history=entry,
                stamp=dedupe.stamp(now, i),
                dedupe_entry=self._dedupe_entry(msg),
                count_message=uncounted,
            )
            for i, msg, det, entry, uncounted in to_apply
        ]
        applied = scripts.run_batch(
            self.redis_client,
            "apply_detection",
            calls,
            shared=shared,
            settings=self.settings,
            wait=scripts.wait_of(self.settings),
        )
        for (i, msg, det, _, _), reply in zip(to_apply, applied, strict=True):
            outcomes[i] = self._applied(reply, msg.message_id, det)
            if outcomes[i]["status"] == "rejected":
                self._reject(batch, i, msg, outcomes[i]["reasons"])
        return batch

    def _dedupe_entry(self, msg: MessageIn) -> tuple[str, str]:
        """Where a message's dedupe state lives: its user's hash, its id's field."""
        return (
            keys.message_dedupe(self.settings, msg.platform, msg.user_id),
            keys.dedupe_field(msg.message_id),
        )

    def _gate_item(self, msg: MessageIn, now: float, position: int) -> scripts.Item:
        dedupe_key, dedupe_field = self._dedupe_entry(msg)
        item_keys = [
            keys.bond(self.settings, msg.user_id),
            dedupe_key,
            keys.history(self.settings, msg.guild_id, msg.user_id),
            keys.bond_stream(self.settings, msg.user_id),
        ]
        doc = {
            "user_id": msg.user_id,
            "guild_id": msg.guild_id,
            "platform": msg.platform,
            "message_id": msg.message_id,
            "field": dedupe_field,
            "stamp": dedupe.stamp(now, position),
            "cause": keys.message_marker(self.settings, msg.platform, msg.message_id),
        }
        return item_keys, doc

    # -- detections -------------------------------------------------------------

    def detections(self, raws: Sequence[Any], now: float | None = None) -> Batch:
        now = time.time() if now is None else now
        batch, valid = Batch.parse(DetectionIn, raws)
        outcomes = batch.outcomes
        attribution = self._attribution([d for _, d in valid])
        calls = [
            ledger.detection_args(
                self.settings,
                det,
                cause=keys.detection_marker(self.settings, det.detection_id),
                history=None,
                stamp=dedupe.stamp(now, i),
            )
            for i, det in valid
        ]
        applied = scripts.run_batch(
            self.redis_client,
            "apply_detection",
            calls,
            shared=ledger.detection_shared(self.settings, now),
            settings=self.settings,
            wait=scripts.wait_of(self.settings),
        )
        for (i, det), reply in zip(valid, applied, strict=True):
            outcomes[i] = self._applied(reply, det.detection_id, det, key="detection_id")
            changes = attribution.get(det.detection_id)
            if changes:
                outcomes[i]["attribution_changes"] = changes
            if outcomes[i]["status"] == "rejected":
                self._reject(batch, i, det, outcomes[i]["reasons"])
        return batch

    # -- shared -----------------------------------------------------------------

    def _attribution(self, dets: list[DetectionIn]) -> dict[str, int]:
        """Observations go to PostgreSQL in one transaction, before the Redis
        apply: both sides are idempotent, so a retry after either fails is safe.

        The envelopes that transaction put in the outbox are relayed right after
        it commits. A failed relay does not fail the ingest (its work is
        committed): the rows stay pending and ``vigil.periodic.relay_outbox``
        publishes them."""
        with_obs = [d for d in dets if d.observations]
        if not with_obs:
            return {}

        with self.sessions() as session, session.begin():
            results = attribution.apply_detections(session, self.settings, with_obs)
        changed: dict[str, int] = defaultdict(int)
        for res in results or []:
            if res.get("changed"):
                changed[str(res.get("detection_id"))] += 1
        if changed:
            try:
                outbox.relay(self.sessions, self.redis_client, self.settings)
            except (redis.RedisError, SQLAlchemyError) as exc:
                # The error's type only: its text may quote what was being written.
                log.warning(
                    "outbox relay after ingest failed (%s); the periodic relay will publish",
                    type(exc).__name__,
                )
        return dict(changed)

    @staticmethod
    def _applied(raw: Any, ident: str, det: DetectionIn, key: str = "message_id") -> Outcome:
        reply = replies.apply(raw)
        if isinstance(reply, replies.Failed):
            return {"status": "rejected", key: ident, "reasons": [f"state: {reply.reason}"]}
        if isinstance(reply, replies.Duplicate):
            return {"status": "duplicate", key: ident}
        changed = reply.changed
        return {
            "status": "accepted",
            key: ident,
            "severity": det.severity,
            "phase": det.phase,
            "phase_changed": "phase" in changed,
            "risk_changed": "risk" in changed,
            "stored": reply.stored,
        }

    @staticmethod
    def _reject(batch: Batch, i: int, item: Any, reasons: list[str]) -> Outcome:
        batch.rejected.append((item.model_dump(mode="json"), reasons))
        return {"status": "rejected", "index": i, "reasons": reasons}
