"""Message-history shapes, as seed 004 stores them in ``ash:history:{guild}:{user}``."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class StoredMessage(BaseModel):
    """One sorted-set member (score: the message's send time, epoch seconds)."""

    model_config = ConfigDict(extra="allow")

    message: str
    timestamp: str
    crisis_score: float | None = None
    severity: str = "low"
    message_id: str | None = None


class SeverityStats(BaseModel):
    total: int
    by_severity: dict[str, int]
    max_crisis_score: float | None
    first_at: str | None
    last_at: str | None
