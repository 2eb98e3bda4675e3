"""Repository tests on the real, migrated PostgreSQL, with races run by several processes."""

from __future__ import annotations

import multiprocessing as mp
import traceback
import uuid
from datetime import UTC, datetime, timedelta

from sqlalchemy import create_engine, text
from sqlalchemy.orm import Session

from services.attribution import repository as repo
from services.attribution.repository import StateRecord
from services.core.clients import database_url

T0 = datetime(2026, 11, 1, tzinfo=UTC)
PROCESSES = 6


def _in_processes(target, args_list) -> list:
    """Run ``target(url, barrier, *args)`` in fresh processes started together;
    each opens its own engine. Returns the results in order, raising any error.

    Spawned, not forked: by now this process may hold threads (a Celery result
    consumer, pool housekeeping) whose locks a forked child would inherit held."""
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(len(args_list))
    queue = ctx.Queue()
    procs = [
        ctx.Process(target=_child, args=(queue, i, target, barrier, args))
        for i, args in enumerate(args_list)
    ]
    for p in procs:
        p.start()
    results = dict(queue.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(30)
    errors = [
        state_redis
        for state_redis in results.values()
        if isinstance(state_redis, str) and state_redis.startswith("ERROR")
    ]
    assert not errors, errors[0]
    return [results[i] for i in range(len(args_list))]


def _child(queue, index, target, barrier, args) -> None:
    from services.core.settings import Settings

    engine = create_engine(database_url(Settings()))
    try:
        with Session(engine) as session:
            queue.put((index, target(session, barrier, *args)))
    except Exception:
        queue.put((index, "ERROR " + traceback.format_exc()))
    finally:
        engine.dispose()


def _ensure_one(session: Session, barrier, platform: str, user_id: str) -> str:
    barrier.wait(30)
    with session.begin():
        identity = repo.ensure_actor_identity(session, platform, user_id, T0)
    return str(identity)


def _ensure_many(session: Session, barrier, users: list[str]) -> dict[str, str]:
    barrier.wait(30)
    with session.begin():
        found = repo.ensure_actor_identities(session, [("discord", u, T0) for u in users])
    return {k[1]: str(v) for k, v in found.items()}


def _upsert(session: Session, barrier, identity: str, value: str) -> str:
    barrier.wait(30)
    with session.begin():
        repo.upsert_state(session, _record(uuid.UUID(identity), "p.x", value=value))
    return "ok"


def _record(identity: uuid.UUID, primitive: str, state: str = "stable", value: str = "a"):
    return StateRecord(
        identity_id=identity,
        primitive=primitive,
        kind="categorical",
        current_value=value,
        state=state,
        confidence=1.0,
        observation_count=5,
        last_change_ts=T0,
        last_observation_ts=T0,
    )


def _count(db, table: str) -> int:
    with db() as s:
        return s.execute(text(f"SELECT count(*) FROM {table}")).scalar_one()


def test_concurrent_first_sighting_creates_one_identity(db):
    results = _in_processes(_ensure_one, [("discord", "u1")] * PROCESSES)
    assert len(set(results)) == 1
    assert _count(db, "actors") == 1
    assert _count(db, "identities") == 1
    with db() as s:
        assert str(repo.identity_of_actor(s, "discord", "u1")) == results[0]


def test_concurrent_set_based_ensure_overlapping_batches(db):
    users = [f"u{i}" for i in range(40)]
    batches = [users[i::2] + users[: 20 - i] for i in range(PROCESSES)]
    for batch in batches[1::2]:
        batch.reverse()
    results = _in_processes(_ensure_many, [(b,) for b in batches])
    merged: dict[str, set[str]] = {}
    for found in results:
        for user, identity in found.items():
            merged.setdefault(user, set()).add(identity)
    assert all(len(ids) == 1 for ids in merged.values())
    assert _count(db, "actors") == len(merged) == 40
    assert _count(db, "identities") == 40


def test_concurrent_upserts_leave_one_row(db):
    with db.begin() as s:
        identity = repo.ensure_actor_identity(s, "discord", "u1", T0)
    _in_processes(_upsert, [(str(identity), f"v{i}") for i in range(PROCESSES)])
    assert _count(db, "attribution_state") == 1
    with db() as s:
        state = repo.get_state(s, identity, "p.x")
    assert state is not None and state.current_value in {f"v{i}" for i in range(PROCESSES)}


def test_actor_upsert_keeps_first_and_last_seen(db):
    with db.begin() as s:
        first = repo.ensure_actor_identity(s, "discord", "u1", T0)
        again = repo.ensure_actor_identity(s, "discord", "u1", T0 + timedelta(hours=1))
        earlier = repo.ensure_actor_identity(s, "discord", "u1", T0 - timedelta(hours=1))
        other_platform = repo.ensure_actor_identity(s, "matrix", "u1", T0)
    assert first == again == earlier != other_platform
    with db() as s:
        row = s.execute(text("SELECT first_seen_at, last_seen_at FROM actors WHERE id = 1")).one()
        assert repo.actors_of_identity(s, first) == [("discord", "u1")]
        assert repo.identity_of_actor(s, "discord", "nobody") is None
    assert (row.first_seen_at, row.last_seen_at) == (
        T0 - timedelta(hours=1),
        T0 + timedelta(hours=1),
    )


def test_observations_insert_once_and_read_bounded(db):
    with db.begin() as s:
        identity = repo.ensure_actor_identity(s, "discord", "u1", T0)
        rows = [
            (identity, "p.x", "categorical", f"v{i}", f"d{i}", T0 + timedelta(minutes=i))
            for i in range(30)
        ]
        inserted = repo.insert_observations(s, rows)
        assert len(inserted) == 30
        assert repo.insert_observations(s, rows[:5]) == []
        window = repo.read_latest(s, identity, "p.x", "categorical", 10)
        assert [o.value for o in window] == [f"v{i}" for i in range(20, 30)]
        assert repo.read_latest(s, identity, "p.x", "numeric", 10) == []
        day = repo.read_since_newest(s, identity, "p.x", "categorical", 5 * 60, 100)
        assert [o.value for o in day] == [f"v{i}" for i in range(24, 30)]
        capped = repo.read_since_newest(s, identity, "p.x", "categorical", 86_400, 3)
        assert [o.value for o in capped] == ["v27", "v28", "v29"]


def test_duplicate_observation_in_one_batch_is_inserted_once(db):
    with db.begin() as s:
        identity = repo.ensure_actor_identity(s, "discord", "u1", T0)
        row = (identity, "p.x", "categorical", "a", "d1", T0)
        assert len(repo.insert_observations(s, [row, row])) == 1


def test_states_read_and_multi_actor_listing(db):
    with db.begin() as s:
        a = repo.ensure_actor_identity(s, "discord", "a", T0)
        b = repo.ensure_actor_identity(s, "discord", "b", T0)
        c = repo.ensure_actor_identity(s, "discord", "c", T0)
        for identity, prim, state in [
            (a, "p.z", "multi_actor"),
            (a, "p.y", "multi_actor"),
            (a, "p.x", "stable"),
            (b, "p.x", "multi_actor"),
            (b, "p.y", "conflicted"),
            (c, "p.x", "multi_actor"),
            (c, "p.y", "multi_actor"),
            (c, "p.w", "multi_actor"),
        ]:
            repo.upsert_state(s, _record(identity, prim, state))
    with db() as s:
        assert [st.primitive for st in repo.get_states(s, a)] == ["p.x", "p.y", "p.z"]
        assert repo.get_state(s, b, "p.y").state == "conflicted"
        assert repo.get_state(s, b, "nothing") is None
        flagged = dict(repo.list_multi_actor_identities(s))
    assert flagged == {a: ["p.y", "p.z"], c: ["p.w", "p.x", "p.y"]}


def test_upsert_state_overwrites(db):
    with db.begin() as s:
        identity = repo.ensure_actor_identity(s, "discord", "u1", T0)
        first = repo.upsert_state(s, _record(identity, "p.x", "stable", "a"))
        second = repo.upsert_state(s, _record(identity, "p.x", "drifting", "b"))
    assert (first.state, second.state, second.current_value) == ("stable", "drifting", "b")
    assert _count(db, "attribution_state") == 1
    assert second.to_json()["identity_id"] == str(identity)


def test_multi_actor_query_uses_partial_index(db):
    with db() as s:
        s.execute(text("SET enable_seqscan = off"))
        plan = "\n".join(
            s.execute(text("EXPLAIN " + str(repo._MULTI_ACTOR.text)), {"at_least": 2}).scalars()
        )
    assert "ix_attribution_state_multi_actor" in plan


def test_erase_actor_removes_everything_under_the_identity(db):
    with db.begin() as s:
        gone = repo.ensure_actor_identity(s, "discord", "gone", T0)
        kept = repo.ensure_actor_identity(s, "discord", "kept", T0)
        for identity in (gone, kept):
            repo.insert_observations(
                s, [(identity, "p.x", "categorical", "a", f"d-{identity}", T0)]
            )
            repo.upsert_state(s, _record(identity, "p.x", "multi_actor"))
            repo.upsert_state(s, _record(identity, "p.y", "multi_actor"))
            repo.upsert_fired(s, identity, ["p.x", "p.y"])
            s.execute(
                text(
                    "INSERT INTO outbox (envelope_id, stream, topic, body, identity_id)"
                    " VALUES (:e, 's', 't', '{}', :i)"
                ),
                {"e": uuid.uuid4(), "i": identity},
            )
    with db.begin() as s:
        counts = repo.erase_actor(s, "discord", "gone")
    assert counts == {
        "observations": 1,
        "attribution_state": 2,
        "correlator_fired": 1,
        "outbox": 1,
        "actors": 1,
        "identities": 1,
    }
    for table in ("observations", "correlator_fired", "outbox", "actors", "identities"):
        assert _count(db, table) == 1
    with db.begin() as s:
        assert set(repo.erase_actor(s, "discord", "gone").values()) == {0}
        assert repo.identity_of_actor(s, "discord", "kept") == kept


def test_lock_keys_are_stable_and_distinct():
    identity = uuid.UUID(int=1)
    assert repo.state_lock_key(identity, "p.x") == repo.state_lock_key(identity, "p.x")
    assert repo.state_lock_key(identity, "p.x") != repo.state_lock_key(identity, "p.y")
    assert -(2**63) <= repo.CORRELATOR_LOCK < 2**63


def test_correlator_lock_is_exclusive(db):
    with db.begin() as holder:
        assert repo.try_lock_correlator(holder)
        with db.begin() as other:
            assert not repo.try_lock_correlator(other)
    with db.begin() as later:
        assert repo.try_lock_correlator(later)
