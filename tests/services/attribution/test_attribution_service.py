"""apply_detections on the real database: scenarios, redelivery, concurrency, reads."""

from __future__ import annotations

import json
import multiprocessing as mp
import traceback
from datetime import UTC, datetime, timedelta

from sqlalchemy import create_engine, text
from sqlalchemy.orm import Session

from models.envelopes import envelope_id
from models.payloads import DetectionIn
from services.attribution import repository as repo
from services.attribution import service
from services.core.clients import database_url
from tests.builders import detection, observation

T0 = datetime(2026, 11, 1, tzinfo=UTC)
STATE_CHANGED = "attribution.profile.state_changed"


def det(user: str, i: int, *observations: tuple[str, str, object], minutes: int = 1, **kw):
    return DetectionIn.model_validate(
        detection(
            id=f"{user}-d{i}",
            user=user,
            observed_at=T0 + timedelta(minutes=i * minutes),
            observations=[observation(p, v, kind=k) for p, k, v in observations],
            **kw,
        )
    )


def apply(db, settings, *items: DetectionIn) -> list[dict]:
    with db() as session, session.begin():
        return service.apply_detections(session, settings, list(items))


def state_of(db, user: str, primitive: str, platform: str = "discord"):
    with db() as s:
        identity = repo.identity_of_actor(s, platform, user)
        return repo.get_state(s, identity, primitive) if identity else None


def outbox_rows(db, topic: str = STATE_CHANGED) -> list[dict]:
    with db() as s:
        rows = s.execute(
            text("SELECT envelope_id, body FROM outbox WHERE topic = :t ORDER BY id"), {"t": topic}
        ).all()
    return [
        json.loads(state_redis.body) | {"_id": str(state_redis.envelope_id)} for state_redis in rows
    ]


def test_categorical_alternation_ends_multi_actor(db, settings):
    for i in range(5):
        apply(db, settings, det("u1", i, ("motor.input", "categorical", "ab"[i % 2])))
    state = state_of(db, "u1", "motor.input")
    assert (state.state, state.current_value, state.observation_count) == ("multi_actor", "a", 5)
    assert state.last_observation_ts == T0 + timedelta(minutes=4)
    envs = outbox_rows(db)
    assert [(e["payload"]["old_state"], e["payload"]["new_state"]) for e in envs] == [
        ("unknown", "multi_actor")
    ]
    env = envs[0]
    assert env["correlation_id"] == "u1-d2"
    assert env["payload"]["user_id"] == "u1" and env["payload"]["platform"] == "discord"
    assert env["_id"] == envelope_id("u1-d2", "motor.input", "state_changed")


def test_categorical_stable_then_drifting(db, settings):
    values = "aaaaa" + "bbbbb"
    apply(db, settings, *(det("u1", i, ("p.c", "categorical", v)) for i, v in enumerate(values)))
    assert state_of(db, "u1", "p.c").state == "drifting"
    # Recomputed once for the whole batch: one change, attributed to the newest detection.
    assert [e["correlation_id"] for e in outbox_rows(db)] == ["u1-d9"]
    apply(db, settings, *(det("u1", 10 + i, ("p.c", "categorical", "b")) for i in range(5)))
    state = state_of(db, "u1", "p.c")
    assert (state.state, state.current_value, state.observation_count) == ("stable", "b", 15)
    assert [e["payload"]["new_state"] for e in outbox_rows(db)] == ["drifting", "stable"]


def test_numeric_two_window_drift(db, settings):
    before, after = [10, 10.5, 9.5, 10, 10], [14, 14.5, 13.5, 14, 14]
    series = [*before, *after]
    for i, v in enumerate(series):
        apply(db, settings, det("u1", i, ("typing.wpm", "numeric", v)))
    state = state_of(db, "u1", "typing.wpm")
    assert state.state == "drifting"
    assert 10 < float(state.current_value) < 14.5
    assert [e["payload"]["new_state"] for e in outbox_rows(db)] == ["stable", "drifting"]


def test_numeric_accepts_numeric_strings_and_rejects_garbage(db, settings):
    results = apply(
        db,
        settings,
        det("u1", 0, ("p.n", "numeric", "12.5"), ("p.bad", "numeric", "twelve")),
    )
    rejected = [state_redis for state_redis in results if state_redis["status"] == "rejected"]
    assert [state_redis["primitive"] for state_redis in rejected] == ["p.bad"]
    assert "twelve" not in json.dumps(results)
    assert state_of(db, "u1", "p.bad") is None
    assert state_of(db, "u1", "p.n").current_value == "12.5"


def test_hash_rotation_storm(db, settings):
    for i in range(6):
        apply(db, settings, det("u1", i, ("client.fingerprint", "hash", f"h{i}"), minutes=60))
    state = state_of(db, "u1", "client.fingerprint")
    assert (state.state, state.current_value) == ("conflicted", "h5")
    # A day later the storm is outside the window and the hash is steady.
    for i in range(30, 33):
        apply(db, settings, det("u1", i, ("client.fingerprint", "hash", "h5"), minutes=60))
    assert state_of(db, "u1", "client.fingerprint").state == "stable"


def test_redelivered_detection_changes_nothing(db, settings):
    items = [det("u1", i, ("p.c", "categorical", "a"), ("p.h", "hash", "x")) for i in range(3)]
    first = apply(db, settings, *items)
    with db() as s:
        before = s.execute(text("SELECT * FROM attribution_state ORDER BY primitive")).all()
        n_obs = s.execute(text("SELECT count(*) FROM observations")).scalar_one()
    n_out = len(outbox_rows(db))
    assert n_out == 2 and {state_redis["state"] for state_redis in first} == {"stable"}
    assert apply(db, settings, *items) == []
    assert apply(db, settings, items[2]) == []
    with db() as s:
        after = s.execute(text("SELECT * FROM attribution_state ORDER BY primitive")).all()
        assert s.execute(text("SELECT count(*) FROM observations")).scalar_one() == n_obs
    assert after == before
    assert len(outbox_rows(db)) == n_out


def test_batch_of_many_users(db, settings):
    items = [det(f"u{n}", i, ("p.c", "categorical", "a")) for n in range(50) for i in range(3)]
    results = apply(db, settings, *items)
    assert len(results) == 50 and all(state_redis["changed"] for state_redis in results)
    with db() as s:
        assert s.execute(text("SELECT count(*) FROM identities")).scalar_one() == 50
        assert s.execute(text("SELECT count(DISTINCT state) FROM attribution_state")).scalar_one()
    assert len(outbox_rows(db)) == 50


def test_late_observation_is_placed_by_time(db, settings):
    # Arrival order a, a, a, b, b but time order makes it alternate.
    order = [(0, "a"), (2, "a"), (4, "a"), (1, "b"), (3, "b")]
    for i, v in order:
        apply(db, settings, det("u1", i, ("p.c", "categorical", v)))
    assert state_of(db, "u1", "p.c").state == "multi_actor"


def test_recompute_reads_a_bounded_slice(db, settings, monkeypatch):
    apply(db, settings, *(det("u1", i, ("p.c", "categorical", "a")) for i in range(200)))
    limits: list[int] = []
    real = repo.read_latest

    def spy(session, identity_id, primitive, kind, limit):
        rows = real(session, identity_id, primitive, kind, limit)
        limits.append(len(rows))
        return rows

    monkeypatch.setattr(repo, "read_latest", spy)
    apply(db, settings, det("u1", 500, ("p.c", "categorical", "a")))
    assert limits == [2 * settings.attribution_window]
    assert state_of(db, "u1", "p.c").observation_count == 201


def test_cli_reads(db, settings):
    apply(db, settings, *(det("u1", i, ("p.b", "categorical", "ab"[i % 2])) for i in range(5)))
    apply(db, settings, *(det("u1", 10 + i, ("p.a", "numeric", 3)) for i in range(3)))
    with db() as s:
        found = service.identity_of(s, "discord", "u1")
        assert service.identity_of(s, "discord", "nobody") is None
        assert service.flagged_identities(s) == []
    assert found["actors"] == [{"platform": "discord", "user_id": "u1"}]
    assert [(st["primitive"], st["state"]) for st in found["states"]] == [
        ("p.a", "stable"),
        ("p.b", "multi_actor"),
    ]
    json.dumps(found)


# --- concurrency -----------------------------------------------------------------

SERIES = "abababbabaabab"
PROCS = 4


def _items(user: str) -> list[DetectionIn]:
    return [
        det(user, i, ("p.c", "categorical", v), ("p.n", "numeric", float(i % 3) + 10))
        for i, v in enumerate(SERIES)
    ]


def _apply_in_child(queue, index, barrier, items) -> None:
    from services.core.settings import Settings

    settings = Settings()
    engine = create_engine(database_url(settings))
    try:
        barrier.wait(30)
        for item in items:
            with Session(engine) as session, session.begin():
                service.apply_detections(session, settings, [item])
        queue.put((index, "ok"))
    except Exception:
        queue.put((index, traceback.format_exc()[-1500:]))
    finally:
        engine.dispose()


def _comparable(state):
    return (
        state.kind,
        state.state,
        state.current_value,
        state.confidence,
        state.observation_count,
        state.last_observation_ts,
    )


def test_concurrent_workers_end_where_a_serial_run_ends(db, settings):
    for item in _items("serial"):
        apply(db, settings, item)
    shared = _items("shared")
    # Spawned, not forked: this process may hold threads whose locks a fork copies.
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(PROCS)
    queue = ctx.Queue()
    procs = [
        ctx.Process(target=_apply_in_child, args=(queue, n, barrier, shared[n::PROCS][::-1]))
        for n in range(PROCS)
    ]
    for p in procs:
        p.start()
    outcomes = dict(queue.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(30)
    assert set(outcomes.values()) == {"ok"}, outcomes
    for primitive in ("p.c", "p.n"):
        serial = state_of(db, "serial", primitive)
        concurrent = state_of(db, "shared", primitive)
        assert _comparable(concurrent) == _comparable(serial)
    with db() as s:
        assert s.execute(text("SELECT count(*) FROM actors")).scalar_one() == 2
        assert s.execute(text("SELECT count(*) FROM identities")).scalar_one() == 2
