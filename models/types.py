"""Types shared by payloads, envelopes and settings."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Literal

from pydantic import AfterValidator, AwareDatetime

Severity = Literal["safe", "low", "medium", "high", "critical"]
# Lowest first: a severity's index is its rank.
SEVERITY_ORDER: tuple[str, ...] = ("safe", "low", "medium", "high", "critical")


def _utc(value: datetime) -> datetime:
    return value.astimezone(UTC)


# A timestamp that must carry a timezone, kept in UTC.
UtcDatetime = Annotated[AwareDatetime, AfterValidator(_utc)]
