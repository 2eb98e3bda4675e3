"""Bond ledger shapes, exactly as the seed ledger stores them in Redis."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class Bond(BaseModel):
    """``abl:{user_id}``: one user's bond. Unknown fields written by other
    systems are kept, so a round trip through vigil loses nothing."""

    model_config = ConfigDict(extra="allow")

    user_id: str = ""
    phase: str = "dormant"
    prev_phase: str = "dormant"
    archetype: str = "unknown"
    phase_entered_at: float = 0.0
    turn_count: int = 0
    peak_nodes: dict[str, float] = Field(default_factory=dict)
    risk_level: str = "low"
    daily_msg_cap: int = 0
    daily_msg_count: int = 0
    daily_msg_reset_at: float = 0.0
    egg_status: str = "none"
    notes: list[str] = Field(default_factory=list)
    last_updated: float = 0.0


class BondEvent(BaseModel):
    """One entry of ``abl:events:{user_id}``, newest first."""

    model_config = ConfigDict(extra="allow")

    timestamp: float
    event_type: str  # phase_transition, risk_change, admin_action
    detail: str
    data: dict[str, Any] = Field(default_factory=dict)


class RateLimit(BaseModel):
    """The seed's ``check_rate_limit`` answer."""

    allowed: bool
    remaining: int  # -1 when unlimited
    cap: int
    count: int
