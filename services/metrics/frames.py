"""What ``vigil top`` shows each second: a snapshot, outcome rates since the
previous one, recent high/critical risk users and multi-actor suspects (ids only)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

import redis
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from services.core.settings import Settings
from services.metrics import counters, queries, recent, snapshot
from services.metrics.snapshot import Snapshot

RATE_FIELDS = tuple(
    counters.outcome(family, name)
    for family, outcomes in (
        (counters.MESSAGES, counters.MESSAGE_OUTCOMES),
        (counters.DETECTIONS, counters.DETECTION_OUTCOMES),
    )
    for name in outcomes
)


@dataclass
class Frame:
    snap: Snapshot
    rates: dict[str, float | None] = field(default_factory=dict)  # per second; None: no baseline
    alerts: list[recent.RiskAlert] = field(default_factory=list)
    suspects: list[uuid.UUID] = field(default_factory=list)


class Frames:
    """Reads one frame at a time and remembers the previous snapshot for rates."""

    def __init__(
        self,
        redis_client: redis.Redis,
        settings: Settings,
        sessions: sessionmaker[Session],
        broker: snapshot.BrokerQueues | None,
    ) -> None:
        self.redis_client = redis_client
        self.settings = settings
        self.sessions = sessions
        self.broker = broker
        self.previous: Snapshot | None = None

    def next(self) -> Frame:
        snap = snapshot.read(self.redis_client, self.settings, self.sessions, self.broker)
        frame = Frame(snap, rates=rates(self.previous, snap))
        self.previous = snap
        if snap.up.get("redis"):
            try:
                frame.alerts = recent.risk_alerts(self.redis_client, self.settings)
            except redis.RedisError:
                frame.alerts = []
        if snap.up.get("postgres"):
            try:
                with self.sessions() as session:
                    frame.suspects = queries.suspected_identities(session)
            except SQLAlchemyError:
                frame.suspects = []
        return frame


def rates(previous: Snapshot | None, current: Snapshot) -> dict[str, float | None]:
    elapsed = current.taken_at - previous.taken_at if previous else 0.0
    if previous is None or elapsed <= 0 or not previous.up.get("redis"):
        return dict.fromkeys(RATE_FIELDS)
    return {
        f: max(0, current.counters.get(f, 0) - previous.counters.get(f, 0)) / elapsed
        for f in RATE_FIELDS
    }
