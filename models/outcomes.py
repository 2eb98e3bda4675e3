"""What the ingest pipeline answers for each item: the result a sender gets
back and what the worker runtime settles (worker/settle.py).

A transient failure (a store briefly away) is not an outcome: the pipeline
raises it (``services.core.errors.TransientError``, redis and SQLAlchemy
connection errors) and the runtime retries under its one policy.
"""

from __future__ import annotations

from typing import Literal, Required, TypedDict

Status = Literal["accepted", "duplicate", "rate_limited", "rejected"]


class Outcome(TypedDict, total=False):
    """One item's outcome; only ``status`` is always there."""

    status: Required[Status]
    # Its position in the batch, for an item rejected before its id was known.
    index: int
    message_id: str
    detection_id: str
    # rejected: the field and the rule, never the input.
    reasons: list[str]
    # rate_limited: the user's cap and today's count.
    cap: int
    count: int
    # accepted.
    severity: str
    phase: str
    phase_changed: bool
    risk_changed: bool
    stored: bool
    attribution_changes: dict[str, int]
