"""Bond ledger behaviour of seed 000, on real Redis, including seed-written data."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime

from models.payloads import DetectionIn
from services.bonds import ledger
from services.core import dedupe, keys, scripts
from tests.builders import detection

SEED_BOND = {
    "user_id": "42",
    "phase": "rapport",
    "prev_phase": "dormant",
    "archetype": "caretaker",
    "phase_entered_at": 1767225600.5,
    "turn_count": 7,
    "peak_nodes": {"limbic": 0.4},
    "risk_level": "low",
    "daily_msg_cap": 0,
    "daily_msg_count": 2,
    "daily_msg_reset_at": 1767225600.0,
    "egg_status": "none",
    "notes": ["[2026-01-01 00:00] seeded"],
    "last_updated": 1767225600.0,
    "legacy_field": "kept",
}


def _det(**kw) -> DetectionIn:
    return DetectionIn.model_validate(
        detection(id="d1", user="42", observed_at="2026-11-22T00:00:00Z", **kw)
    )


def _apply(state_redis, settings, det: DetectionIn, now: float | None = None):
    now = now or time.time()
    call = ledger.detection_args(
        settings,
        det,
        cause=keys.detection_marker(settings, det.detection_id),
        history=None,
        stamp=dedupe.stamp(now, 0),
    )
    (reply,) = scripts.run_batch(
        state_redis, "apply_detection", [call], shared=ledger.detection_shared(settings, now)
    )
    return reply


def test_reads_and_extends_seed_written_bond(state_redis, settings):
    state_redis.set("abl:42", json.dumps(SEED_BOND))
    state_redis.lpush(
        "abl:events:42",
        json.dumps(
            {"timestamp": 1.0, "event_type": "admin_action", "detail": "seeded", "data": {}}
        ),
    )
    bond = ledger.load(state_redis, settings, "42")
    assert bond.phase == "rapport" and bond.notes == SEED_BOND["notes"]

    _apply(
        state_redis,
        settings,
        _det(
            phase="attached",
            risk_level="medium",
            childhood_archetype="seeker",
            egg_status={"status": "found"},
            turn_count=9,
            ulm_vector={"limbic": 0.3, "cortex": 0.71234},
            confidence=0.8,
            signals={"primary": "mirroring"},
        ),
    )
    raw = json.loads(state_redis.get("abl:42"))
    assert raw["legacy_field"] == "kept"
    assert raw["phase"] == "attached" and raw["prev_phase"] == "rapport"
    assert raw["risk_level"] == "medium" and raw["archetype"] == "seeker"
    assert raw["egg_status"] == "found" and raw["turn_count"] == 9
    assert raw["peak_nodes"] == {"limbic": 0.4, "cortex": 0.7123}  # high-water marks only rise
    assert isinstance(raw["notes"], list)
    events = ledger.get_events(state_redis, settings, "42")
    assert [e.event_type for e in events] == ["risk_change", "phase_transition", "admin_action"]
    assert events[1].data == {
        "from": "rapport",
        "to": "attached",
        "confidence": 0.8,
        "primary_signal": "mirroring",
    }
    assert events[0].detail == "risk: low -> medium"


def test_new_bond_keeps_json_shapes_of_seed(state_redis, settings):
    _apply(state_redis, settings, _det(phase="dormant"))
    raw = json.loads(state_redis.get("abl:42"))
    assert raw["notes"] == [] and raw["peak_nodes"] == {}
    assert set(SEED_BOND) - {"legacy_field"} <= set(raw)


def test_same_detection_twice_changes_nothing(state):
    state_redis, settings = state
    det = _det(phase="attached", risk_level="high")
    assert _apply(state_redis, settings, det)[0] == "applied"
    state = (
        state_redis.get(keys.bond(settings, "42")),
        state_redis.lrange(keys.events(settings, "42"), 0, -1),
        state_redis.xlen(keys.bond_stream(settings, "42")),
    )
    assert _apply(state_redis, settings, det)[0] == "duplicate"
    assert state == (
        state_redis.get(keys.bond(settings, "42")),
        state_redis.lrange(keys.events(settings, "42"), 0, -1),
        state_redis.xlen(keys.bond_stream(settings, "42")),
    )


def test_set_cap_and_notes(state):
    state_redis, settings = state
    ledger.set_cap(state_redis, settings, "42", 5)
    assert ledger.check_rate_limit(state_redis, settings, "42").model_dump() == {
        "allowed": True,
        "remaining": 5,
        "cap": 5,
        "count": 0,
    }
    ledger.set_cap(state_redis, settings, "42", 0)
    assert ledger.check_rate_limit(state_redis, settings, "42").remaining == -1
    for i in range(25):
        ledger.add_note(state_redis, settings, "42", f"note {i}")
    bond = ledger.load(state_redis, settings, "42")
    assert len(bond.notes) == 20 and bond.notes[-1].endswith("note 24")
    stamp = datetime.now(UTC).strftime("%Y-%m-%d")
    assert bond.notes[-1].startswith(f"[{stamp}")  # UTC, not local time
    events = ledger.get_events(state_redis, settings, "42", limit=100)
    assert events[0].detail == "note added: note 24"
    assert [e.detail for e in events[-2:]] == [
        "rate limit: 5 -> 0 msgs/day",
        "rate limit: 0 -> 5 msgs/day",
    ]
    stream = keys.bond_stream(settings, "42")
    topics = [json.loads(f["data"])["topic"] for _, f in state_redis.xrange(stream)]
    assert topics == ["bond.admin_action"] * 27


def test_events_capped_at_500_newest_first(state):
    state_redis, settings = state
    for i in range(510):
        ledger.set_cap(state_redis, settings, "42", i)
    events = ledger.get_events(state_redis, settings, "42", limit=1000)
    assert len(events) == 500
    assert events[0].data["new_cap"] == 509 and events[-1].data["new_cap"] == 10


def test_list_bonds_pages_through_all_in_even_pages(state):
    state_redis, settings = state
    for i in range(250):
        ledger.set_cap(state_redis, settings, f"user{i}", 1)
        ledger.add_note(state_redis, settings, f"user{i}", "n")  # an events key beside each bond
    seen, cursor, sizes = set(), 0, []
    while True:
        cursor, page = ledger.list_bonds(state_redis, settings, cursor=cursor, count=50)
        seen.update(b.user_id for b in page)
        sizes.append(len(page))
        if cursor == 0:
            break
    assert seen == {f"user{i}" for i in range(250)}
    # Every page but the last is full, give or take the last bucket visited.
    assert all(50 <= size <= 53 for size in sizes[:-1]), sizes
    assert sum(sizes) - len(seen) <= 3 * len(sizes)  # SCAN may repeat, never drop


def test_reset_daily_caps_runs_twice_safely(state):
    state_redis, settings = state
    day1 = datetime(2026, 11, 21, 23, 59, tzinfo=UTC).timestamp()
    day2 = datetime(2026, 11, 22, 0, 0, 1, tzinfo=UTC).timestamp()
    for uid in ("a", "b"):
        state_redis.set(
            keys.bond(settings, uid),
            json.dumps(
                {
                    **SEED_BOND,
                    "user_id": uid,
                    "daily_msg_count": 9,
                    "daily_msg_reset_at": keys.day_start(day1),
                }
            ),
        )
    assert ledger.reset_daily_caps(state_redis, settings, now=day1)["reset"] == 0
    assert ledger.reset_daily_caps(state_redis, settings, now=day2)["reset"] == 2
    assert ledger.reset_daily_caps(state_redis, settings, now=day2)["reset"] == 0
    assert ledger.load(state_redis, settings, "a").daily_msg_count == 0
    assert ledger.load(state_redis, settings, "a").legacy_field == "kept"


def test_reset_daily_caps_in_chunks_resumes_from_the_cursor(state):
    """A zero budget stops after each SCAN page; resuming from the answered cursor
    covers every bond once, and a chunk run again resets nothing twice."""
    state_redis, settings = state
    day1 = datetime(2026, 11, 21, 12, 0, tzinfo=UTC).timestamp()
    day2 = datetime(2026, 11, 22, 0, 0, 1, tzinfo=UTC).timestamp()
    for i in range(300):
        state_redis.set(
            keys.bond(settings, f"chunk{i}"),
            json.dumps(
                {
                    **SEED_BOND,
                    "user_id": f"chunk{i}",
                    "daily_msg_count": 3,
                    "daily_msg_reset_at": keys.day_start(day1),
                }
            ),
        )
    cursor, chunks, reset = 0, 0, 0
    while True:
        result = ledger.reset_daily_caps(
            state_redis, settings, now=day2, batch=50, cursor=cursor, budget_s=0
        )
        again = ledger.reset_daily_caps(
            state_redis, settings, now=day2, batch=50, cursor=cursor, budget_s=0
        )
        assert again["reset"] == 0  # a redelivered chunk changes nothing
        reset += result["reset"]
        chunks += 1
        cursor = result["cursor"]
        if cursor == 0:
            break
    assert chunks > 1
    assert reset == 300
    assert all(
        ledger.load(state_redis, settings, f"chunk{i}").daily_msg_count == 0 for i in range(300)
    )
