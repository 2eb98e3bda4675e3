"""Correlator on the real database and Redis: fires once per change, survives a
restart, re-arms, and a concurrent run does nothing."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from sqlalchemy import create_engine, text
from sqlalchemy.orm import sessionmaker

from models.envelopes import parse_envelope
from models.payloads import DetectionIn
from services.attribution import correlator, service
from services.attribution import repository as repo
from services.attribution.repository import StateRecord
from services.core.clients import database_url

T0 = datetime(2026, 11, 1, tzinfo=UTC)
TOPIC = "attribution.profile.multi_actor_suspected"


def set_states(db, user: str, states: dict[str, str]):
    with db.begin() as s:
        identity = repo.ensure_actor_identity(s, "discord", user, T0)
        for primitive, state in states.items():
            repo.upsert_state(
                s,
                StateRecord(identity, primitive, "categorical", "a", state, 1.0, 5, T0, T0),
            )
    return identity


def suspected(db) -> list[dict]:
    with db() as s:
        rows = s.execute(
            text("SELECT body FROM outbox WHERE topic = :t ORDER BY id"), {"t": TOPIC}
        ).scalars()
        return [json.loads(body) for body in rows]


def fresh_factory(settings) -> sessionmaker:
    """A new engine and session factory: what a restarted process would have."""
    return sessionmaker(bind=create_engine(database_url(settings)), expire_on_commit=False)


def test_fires_once_per_change_across_restarts_and_rearms(db, settings, state_redis):
    identity = set_states(db, "u1", {"p.a": "multi_actor", "p.b": "multi_actor", "p.c": "stable"})
    set_states(db, "u2", {"p.a": "multi_actor", "p.b": "stable"})

    first = correlator.run(db, settings, state_redis)
    assert first["fired"] == 1 and first["suspected"] == 1 and first["rearmed"] == 0
    assert first["relay"]["published"] == 1
    assert correlator.run(db, settings, state_redis)["fired"] == 0

    restarted = fresh_factory(settings)
    assert correlator.run(restarted, settings, state_redis) == {
        "status": "ok",
        "suspected": 1,
        "fired": 0,
        "rearmed": 0,
    }
    restarted.kw["bind"].dispose()

    set_states(db, "u1", {"p.c": "multi_actor"})
    assert correlator.run(db, settings, state_redis)["fired"] == 1
    set_states(db, "u1", {"p.a": "stable", "p.c": "drifting"})
    dropped = correlator.run(db, settings, state_redis)
    assert (dropped["fired"], dropped["rearmed"], dropped["suspected"]) == (0, 1, 0)
    set_states(db, "u1", {"p.a": "multi_actor"})
    assert correlator.run(db, settings, state_redis)["fired"] == 1

    payloads = [e["payload"] for e in suspected(db)]
    assert payloads == [
        {"identity_id": str(identity), "primitives": ["p.a", "p.b"], "previous_primitives": []},
        {
            "identity_id": str(identity),
            "primitives": ["p.a", "p.b", "p.c"],
            "previous_primitives": ["p.a", "p.b"],
        },
        {"identity_id": str(identity), "primitives": ["p.a", "p.b"], "previous_primitives": []},
    ]
    ids = [e["envelope_id"] for e in suspected(db)]
    assert len(set(ids)) == 3

    entries = state_redis.xrange(settings.stream_attribution)
    decoded = [parse_envelope("attribution", fields["data"]) for _, fields in entries]
    assert [e.topic for e in decoded] == [TOPIC] * 3
    assert [e.envelope_id for e in decoded] == ids


def test_concurrent_run_does_nothing(db, settings, state_redis):
    set_states(db, "u1", {"p.a": "multi_actor", "p.b": "multi_actor"})
    with db.begin() as holder:
        assert repo.try_lock_correlator(holder)
        busy = correlator.run(db, settings, state_redis)
    assert busy["status"] == "busy" and busy["fired"] == 0
    assert suspected(db) == []
    assert correlator.run(db, settings, state_redis)["fired"] == 1


def test_erased_identity_leaves_no_memory(db, settings, state_redis):
    set_states(db, "u1", {"p.a": "multi_actor", "p.b": "multi_actor"})
    assert correlator.run(db, settings, state_redis)["fired"] == 1
    with db.begin() as s:
        counts = repo.erase_actor(s, "discord", "u1")
    assert counts["correlator_fired"] == 1
    assert correlator.run(db, settings, state_redis) == {
        "status": "ok",
        "suspected": 0,
        "fired": 0,
        "rearmed": 0,
    }


def test_relay_failure_keeps_the_envelope_pending(db, settings):
    import redis

    set_states(db, "u1", {"p.a": "multi_actor", "p.b": "multi_actor"})
    dead = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.5)
    result = correlator.run(db, settings, dead)
    assert result["fired"] == 1 and result["relay"].startswith("deferred")
    with db() as s:
        pending = s.execute(
            text("SELECT count(*) FROM outbox WHERE published_at IS NULL")
        ).scalar_one()
    assert pending == 1
    assert correlator.run(db, settings, dead)["fired"] == 0


def test_end_to_end_from_detections(db, settings, state_redis):
    items = [
        DetectionIn(
            detection_id=f"d{i}",
            user_id="shared",
            observed_at=T0 + timedelta(minutes=i),
            observations=[
                {"primitive": "motor.input", "kind": "categorical", "value": "ab"[i % 2]},
                {"primitive": "lang.register", "kind": "categorical", "value": "xy"[i % 2]},
            ],
        )
        for i in range(5)
    ]
    with db.begin() as s:
        service.apply_detections(s, settings, items)
    result = correlator.run(db, settings, state_redis)
    assert (result["suspected"], result["fired"]) == (1, 1)
    with db() as s:
        flagged = service.flagged_identities(s)
    assert flagged[0]["primitives"] == ["lang.register", "motor.input"]
    assert flagged[0]["announced_primitives"] == ["lang.register", "motor.input"]
    assert flagged[0]["actors"] == [{"platform": "discord", "user_id": "shared"}]


def test_periodic_task_runs_the_correlator_in_a_worker(
    db, settings, state_redis, worker, celery_app
):
    set_states(db, "u1", {"p.a": "multi_actor", "p.b": "multi_actor"})
    result = celery_app.send_task(
        "vigil.periodic.correlate_multi_actor", queue="periodic", ignore_result=False
    )
    first = result.get(timeout=60)
    assert (first["status"], first["fired"], first["suspected"]) == ("ok", 1, 1)
    again = celery_app.send_task(
        "vigil.periodic.correlate_multi_actor", queue="periodic", ignore_result=False
    )
    assert again.get(timeout=60)["fired"] == 0
    assert len(state_redis.xrange(settings.stream_attribution)) == 1
