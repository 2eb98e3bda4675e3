"""Task payloads for tests: one chat message (``vigil.ingest.message``) and one
detection (``vigil.ingest.detection``), as a frontend sends them (see
models/payloads.py for the contract).

The ``i``-th payload is ``m{i}`` / ``d{i}``, ``i`` seconds after ``T0``; keyword
arguments set what a test varies, and any other keyword is a payload field as
named on the wire (``platform``, ``channel_id``, ``severity``...), which also
overrides a built one. A field given ``OMIT`` is left out of the payload.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

T0 = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)
OMIT: Any = object()


def _payload(fields: dict[str, Any]) -> dict[str, Any]:
    return {name: value for name, value in fields.items() if value is not OMIT}


def message(
    i: int = 0,
    text: str = "I feel sad",
    *,
    id: str | None = None,
    user: str = "u1",
    guild: str | None = "g1",
    sent_at: Any = None,
    **fields: Any,
) -> dict[str, Any]:
    """A chat message; ``guild=None`` is a direct message (``"guild_id": null``)."""
    return _payload(
        {
            "message_id": f"m{i}" if id is None else id,
            "user_id": user,
            "guild_id": guild,
            "text": text,
            "sent_at": (T0 + timedelta(seconds=i)).isoformat() if sent_at is None else sent_at,
            **fields,
        }
    )


def detection(
    i: int = 0,
    *,
    id: str | None = None,
    user: str = "u1",
    observed_at: Any = None,
    **fields: Any,
) -> dict[str, Any]:
    """A detection with only what a test gives; the contract defaults the rest."""
    return _payload(
        {
            "detection_id": f"d{i}" if id is None else id,
            "user_id": user,
            "observed_at": (
                (T0 + timedelta(seconds=i)).isoformat() if observed_at is None else observed_at
            ),
            **fields,
        }
    )


def observation(primitive: str, value: str | float, kind: str = "categorical") -> dict[str, Any]:
    """One attribution observation of a detection's ``observations``."""
    return {"primitive": primitive, "kind": kind, "value": value}


def spread(users: int, per_user: int, tag: str) -> list[dict[str, Any]]:
    """``users * per_user`` messages, ids ``{tag}-{n}``, round-robin over users
    ``{tag}u0``...; every third is calm, the rest sad."""
    return [
        message(
            n,
            "hello there" if n % 3 else "I feel sad today",
            id=f"{tag}-{n}",
            user=f"{tag}u{n % users}",
            platform="discord",
            channel_id="c1",
        )
        for n in range(users * per_user)
    ]
