"""The per-message scripts' replies, decoded in one place into named types.

Lua answers positional lists of strings (``ingest_gate.lua`` and
``apply_detection.lua`` say which); everything else reads these types.
A ``ResponseError`` in an item's slot (``scripts.run_batch``: the script
raised for that item) decodes to ``Failed``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from redis.exceptions import ResponseError


@dataclass(frozen=True)
class Failed:
    """The script refused the item (a corrupt bond, a wrong type): its reason."""

    reason: str


@dataclass(frozen=True)
class Duplicate:
    """Seen within the dedupe window; ``state`` is what the first delivery left
    (``done`` or ``limited``), or None where the script does not say."""

    state: str | None = None


@dataclass(frozen=True)
class RateLimited:
    cap: int
    count: int


@dataclass(frozen=True)
class Admitted:
    """Through the gate. ``counted``: the gate counted it against the cap (False
    for a user without a cap: the apply counts it); ``context``: the raw history
    entries the detector reads."""

    counted: bool
    context: Any


@dataclass(frozen=True)
class Applied:
    changed: frozenset[str]
    stored: bool


GateReply = Failed | Duplicate | RateLimited | Admitted
ApplyReply = Failed | Duplicate | Applied


def gate(reply: Any) -> GateReply:
    """``ingest_gate.lua``: {'duplicate', state} | {'rate_limited', cap, count}
    | {'accepted', count | 'redelivered' | 'uncounted', context}."""
    if isinstance(reply, ResponseError):
        return Failed(str(reply)[:120])
    verdict = reply[0]
    if verdict == "duplicate":
        return Duplicate(reply[1] if len(reply) > 1 else None)
    if verdict == "rate_limited":
        return RateLimited(cap=int(reply[1]), count=int(reply[2]))
    if verdict == "accepted":
        return Admitted(counted=reply[1] != "uncounted", context=reply[2])
    return Failed(f"unknown gate reply {verdict!r}")


def apply(reply: Any) -> ApplyReply:
    """``apply_detection.lua``: {'duplicate'} | {'applied', 'phase,risk', '0'|'1'}."""
    if isinstance(reply, ResponseError):
        return Failed(str(reply)[:120])
    if reply[0] == "duplicate":
        return Duplicate()
    if reply[0] == "applied":
        return Applied(changed=frozenset(filter(None, reply[1].split(","))), stored=reply[2] == "1")
    return Failed(f"unknown apply reply {reply[0]!r}")
