"""Bond ledger (seed 000) on Redis, without a per-process cache.

Every change is one Lua script that reads, changes and writes the bond, its
event list and its stream envelope together, so concurrent workers on any
number of machines never lose an update.

``ulm_spike`` events, declared by the seed but never emitted there, are not
emitted here either: peak_nodes already keeps the high-water marks, and an
event per new peak would flood the 500-entry event list.
"""

from __future__ import annotations

import json
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import redis

from models.bond import Bond, BondEvent, RateLimit
from models.envelopes import envelope_id
from models.payloads import DetectionIn
from services.core import dedupe, keys, scripts
from services.core.scan import scan_page
from services.core.settings import Settings
from services.metrics import counters


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat()


def load(redis_client: redis.Redis, settings: Settings, user_id: str) -> Bond | None:
    raw = redis_client.get(keys.bond(settings, user_id))
    return Bond.model_validate_json(raw) if raw else None


def load_or_new(redis_client: redis.Redis, settings: Settings, user_id: str) -> Bond:
    return load(redis_client, settings, user_id) or Bond(
        user_id=user_id, daily_msg_cap=settings.default_daily_cap
    )


def list_bonds(
    redis_client: redis.Redis, settings: Settings, *, cursor: int = 0, count: int = 100
) -> tuple[int, list[Bond]]:
    """One page of about ``count`` bonds; pass the returned cursor back until it is 0.

    SCAN's COUNT is a number of hash buckets to visit, not of keys to return,
    so a single SCAN gives pages of any size. This one scans in steps sized by
    what is still missing until the page is full: a page holds ``count`` bonds
    (the last bucket visited may add one or two), and SCAN's guarantee stays
    whole: every bond that exists for the whole walk is returned."""
    events_prefix = keys.events_prefix(settings)
    bond_keys: list[str] = []
    while True:
        missing = count - len(bond_keys)
        cursor, found = scan_page(redis_client, cursor, f"{settings.bond_prefix}*", max(1, missing))
        bond_keys.extend(k for k in found if not k.startswith(events_prefix))
        if cursor == 0 or len(bond_keys) >= count:
            break
    pipe = redis_client.pipeline(transaction=False)
    for key in bond_keys:
        pipe.get(key)
    # A foreign key of another type under the prefix answers an error: skipped.
    raws = pipe.execute(raise_on_error=False) if bond_keys else []
    bonds = []
    for raw in raws:
        if raw is None or isinstance(raw, Exception):
            continue
        try:
            bonds.append(Bond.model_validate_json(raw))
        except ValueError:
            continue  # a foreign key under the prefix is not a bond
    return cursor, bonds


def get_events(
    redis_client: redis.Redis, settings: Settings, user_id: str, limit: int = 50
) -> list[BondEvent]:
    return [
        BondEvent.model_validate_json(raw)
        for raw in redis_client.lrange(keys.events(settings, user_id), 0, max(limit, 1) - 1)
    ]


def check_rate_limit(
    redis_client: redis.Redis, settings: Settings, user_id: str, now: float | None = None
) -> RateLimit:
    """Read-only view of the cap; counting happens atomically at ingest."""
    bond = load_or_new(redis_client, settings, user_id)
    count = bond.daily_msg_count
    if bond.daily_msg_reset_at < keys.day_start(now or time.time()):
        count = 0
    if bond.daily_msg_cap <= 0:
        return RateLimit(allowed=True, remaining=-1, cap=0, count=count)
    remaining = max(0, bond.daily_msg_cap - count)
    return RateLimit(
        allowed=remaining > 0, remaining=remaining, cap=bond.daily_msg_cap, count=count
    )


def detection_shared(
    settings: Settings, now: float, counted_as: str = counters.DETECTIONS
) -> dict[str, Any]:
    """What every item of one ``apply_detection.lua`` call shares (ARGV[3]); the
    message path passes the same to ``ingest_gate.lua``.

    ``counted_as``: the counter family the outcomes add to (a message's
    detection counts as a message)."""
    return {
        "default_cap": settings.default_daily_cap,
        "day_start": keys.day_start(now),
        "now": now,
        "published_at": iso(now),
        "events_max": settings.events_max,
        "maxlen": settings.stream_maxlen,
        "counted_as": counted_as,
        **dedupe.script_args(settings, now),
    }


def detection_args(
    settings: Settings,
    det: DetectionIn,
    *,
    cause: str,
    history: dict[str, Any] | None,
    stamp: int,
    dedupe_entry: tuple[str, str] | None = None,
    count_message: bool = False,
) -> scripts.Item:
    """Keys and own arguments of one detection for ``apply_detection.lua``.

    ``cause`` is what the envelope ids derive from: the name the id's marker key
    had before the per-user dedupe hashes, so the ids stay what they were.
    ``dedupe_entry`` is the (hash, field) that records the detection applied,
    by default its own id in the user's detection hash; a message passes its
    message's entry. ``stamp`` is its first-seen stamp (``dedupe.stamp``).
    ``count_message``: a message the gate let through without counting it
    (its user has no cap); the apply counts it in the bond it writes anyway."""
    if dedupe_entry is None:
        dedupe_entry = (
            keys.detection_dedupe(settings, det.platform, det.user_id),
            keys.dedupe_field(det.detection_id),
        )
    dedupe_key, dedupe_field = dedupe_entry
    doc = {
        "user_id": det.user_id,
        "guild_id": det.guild_id,
        "correlation_id": det.message_id or det.detection_id,
        "field": dedupe_field,
        "stamp": stamp,
        "cause": cause,
        "detection": {
            "phase": det.phase,
            "risk_level": det.risk_level,
            "archetype": det.childhood_archetype,
            "egg_status": det.egg,
            "confidence": det.confidence,
            "primary_signal": det.primary_signal,
            "turn_count": det.turn_count,
            "ulm_vector": dict(det.ulm_vector),
        },
        "history": history,
    }
    if count_message:
        doc["count_message"] = True
    bond_keys = [
        keys.bond(settings, det.user_id),
        keys.events(settings, det.user_id),
        dedupe_key,
        keys.history(settings, det.guild_id, det.user_id),
        keys.bond_stream(settings, det.user_id),
    ]
    return bond_keys, doc


def _admin(
    redis_client: redis.Redis, settings: Settings, user_id: str, doc: dict[str, Any]
) -> Bond:
    now = time.time()
    doc = {
        "user_id": user_id,
        "default_cap": settings.default_daily_cap,
        "now": now,
        "published_at": iso(now),
        "events_max": settings.events_max,
        "maxlen": settings.stream_maxlen,
        **doc,
    }
    doc.setdefault("envelope_id", str(uuid.uuid4()))
    raw = scripts.run(
        redis_client,
        "bond_admin",
        [
            keys.bond(settings, user_id),
            keys.events(settings, user_id),
            keys.bond_stream(settings, user_id),
            keys.metrics(settings, keys.shard_of(settings, user_id)),
        ],
        [json.dumps(doc)],
    )
    return Bond.model_validate_json(raw)


def set_cap(
    redis_client: redis.Redis,
    settings: Settings,
    user_id: str,
    cap: int,
    *,
    request_id: str | None = None,
) -> Bond:
    """Set the daily cap (0 = unlimited); logged as an admin_action event."""
    doc: dict[str, Any] = {"action": "set_cap", "cap": cap, "correlation_id": request_id}
    if request_id:
        doc["envelope_id"] = envelope_id(request_id, "bond.admin_action")
    return _admin(redis_client, settings, user_id, doc)


def add_note(
    redis_client: redis.Redis,
    settings: Settings,
    user_id: str,
    note: str,
    *,
    request_id: str | None = None,
) -> Bond:
    """Append a UTC-stamped note (last ``notes_max`` kept)."""
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M")
    doc: dict[str, Any] = {
        "action": "add_note",
        "note": note,
        "note_head": note[:100],
        "note_chars": len(note),
        "stamped_note": f"[{stamp}] {note}",
        "notes_max": settings.notes_max,
        "correlation_id": request_id,
    }
    if request_id:
        doc["envelope_id"] = envelope_id(request_id, "bond.admin_action")
    return _admin(redis_client, settings, user_id, doc)


def reset_daily_caps(
    redis_client: redis.Redis,
    settings: Settings,
    now: float | None = None,
    batch: int = 500,
    cursor: int = 0,
    budget_s: float | None = None,
) -> dict[str, Any]:
    """Reset every bond's daily count at UTC midnight, in bounded batches.

    The count also rolls over lazily at ingest, so this job only tidies what
    operators see; running it twice resets nothing the second time.

    With ``budget_s`` it stops at the first SCAN page that ends past that many
    seconds and answers the ``cursor`` to resume from (0 once the keyspace is
    done), so a caller can spread a million bonds over tasks that each fit
    their time limit. Resuming from a cursor is safe after any interruption:
    SCAN returns every key present throughout at least once, and a bond already
    reset for this day is left alone."""
    day = keys.day_start(now or time.time())
    events_prefix = keys.events_prefix(settings)
    deadline = None if budget_s is None else time.monotonic() + budget_s
    scanned, reset = 0, 0
    while True:
        cursor, found = scan_page(redis_client, cursor, f"{settings.bond_prefix}*", batch)
        bond_keys = [k for k in found if not k.startswith(events_prefix)]
        scanned += len(bond_keys)
        # One call per shard: a script's keys share a slot on a cluster.
        by_shard: dict[int, list[str]] = {}
        for key in bond_keys:
            by_shard.setdefault(keys.shard_of_key(settings, key), []).append(key)
        calls = [(shard_keys, [day]) for shard_keys in by_shard.values()]
        reset += sum(int(n) for n in scripts.run_many(redis_client, "reset_caps", calls))
        if cursor == 0 or (deadline is not None and time.monotonic() >= deadline):
            break
    counters.counter(redis_client, settings, counters.CAP_RESETS).add(reset)
    return {"status": "ok", "scanned": scanned, "reset": reset, "day_start": day, "cursor": cursor}
