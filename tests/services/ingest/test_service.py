"""The ingest pipeline on real Redis and PostgreSQL (service level)."""

from __future__ import annotations

import json
import logging
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select, text

from models.envelopes import parse_envelope
from models.payloads import DetectionIn, MessageIn
from models.tables import DeadLetter, Outbox
from services.bonds import history, ledger
from services.core.clients import get_engine
from services.core.settings import Settings
from services.envelopes import outbox, streams
from services.ingest.detector import LexiconDetector
from services.ingest.service import IngestService
from services.metrics import counters
from tasks import names
from tests.builders import detection, observation
from tests.builders import message as msg
from tests.helpers import detection_state, message_state, wait_for
from worker.settle import Ingest

T0 = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)


class Recording(LexiconDetector):
    """The built-in detector, also recording the context it was given."""

    def __init__(self) -> None:
        self.contexts: list[list[str]] = []

    def detect(self, m: MessageIn, context):
        self.contexts.append([c.message_id for c in context])
        return super().detect(m, context)


@pytest.fixture
def svc(state_redis, db, settings):
    return Ingest(IngestService(state_redis, settings, db, LexiconDetector()))


def stream(state_redis, settings):
    return [json.loads(f["data"]) for _, f in state_redis.xrange(settings.stream_bond)]


def test_history_seed_behaviour(state_redis, db, settings):
    s = Settings(history_max_messages=5)
    svc = Ingest(IngestService(state_redis, s, db, LexiconDetector()))
    long = "I feel sad " + "x" * 900
    svc.messages([msg(0, "hello there")] + [msg(i, long) for i in range(1, 9)])
    assert not history.exists(state_redis, s, "g1", "u2")
    assert history.count(state_redis, s, "g1", "u1") == 5  # oldest trimmed, safe never stored
    items = history.get(state_redis, s, "g1", "u1", limit=3)
    assert [m.message_id for m in items] == ["m8", "m7", "m6"]  # newest first
    assert all(len(m.message) == 500 for m in items)
    ttl = state_redis.ttl("ash:history:g1:u1")
    assert 14 * 86400 - 60 < ttl <= 14 * 86400
    stats = history.stats(state_redis, s, "g1", "u1")
    assert stats.total == 5 and stats.by_severity["low"] + stats.by_severity["medium"] == 5
    assert history.clear(state_redis, s, "g1", "u1") == 5 and not history.exists(
        state_redis, s, "g1", "u1"
    )


def test_history_threshold_is_a_setting(state_redis, db):
    s = Settings(history_min_severity="medium")
    svc = Ingest(IngestService(state_redis, s, db, LexiconDetector()))
    svc.messages([msg(1, "I feel sad"), msg(2, "I feel hopeless and worthless")])
    assert [m.message_id for m in history.get(state_redis, s, "g1", "u1")] == ["m2"]


def test_reads_seed_written_history_and_gives_it_oldest_first(state_redis, db, settings):
    for i, ts in ((1, 100.0), (2, 200.0)):
        state_redis.zadd(
            "ash:history:g1:u1",
            {
                json.dumps(
                    {
                        "message": "old",
                        "timestamp": datetime.fromtimestamp(ts, UTC).isoformat(),
                        "crisis_score": 0.3,
                        "severity": "low",
                        "message_id": f"seed{i}",
                    }
                ): ts
            },
        )
    det = Recording()
    Ingest(IngestService(state_redis, settings, db, det)).messages(
        [msg(5, "sad"), msg(6, "sad again")]
    )
    assert det.contexts[0] == ["seed1", "seed2"]
    # the batch's own earlier message is context for the next one
    assert det.contexts[1] == ["seed1", "seed2", "m5"]


def test_cap_and_dedupe(state_redis, svc, settings):
    ledger.set_cap(state_redis, settings, "u1", 3)
    out = svc.messages([msg(i) for i in range(5)] + [msg(0)]).summary()
    assert (out["accepted"], out["rate_limited"], out["duplicate"]) == (3, 2, 1)
    assert ledger.load(state_redis, settings, "u1").daily_msg_count == 3
    limited = [e for e in stream(state_redis, settings) if e["topic"] == "message.rate_limited"]
    assert [e["payload"]["message_id"] for e in limited] == ["m3", "m4"]
    assert limited[0]["payload"] | {} == {
        "user_id": "u1",
        "guild_id": "g1",
        "platform": "discord",
        "message_id": "m3",
        "cap": 3,
        "count": 3,
    }


def test_count_resets_at_utc_midnight_without_beat(state_redis, svc, settings):
    ledger.set_cap(state_redis, settings, "u1", 1)
    before = datetime(2026, 11, 22, 23, 59, 59, tzinfo=UTC).timestamp()
    after = datetime(2026, 11, 23, 0, 0, 1, tzinfo=UTC).timestamp()
    assert svc.messages([msg(1)], now=before).outcomes[0]["status"] == "accepted"
    assert svc.messages([msg(2)], now=before).outcomes[0]["status"] == "rate_limited"
    assert svc.messages([msg(3)], now=after).outcomes[0]["status"] == "accepted"
    assert ledger.load(state_redis, settings, "u1").daily_msg_count == 1


def test_count_resets_with_beat_job(state_redis, svc, settings):
    ledger.set_cap(state_redis, settings, "u1", 1)
    before = datetime(2026, 11, 22, 23, 59, 59, tzinfo=UTC).timestamp()
    after = datetime(2026, 11, 23, 0, 0, 0, tzinfo=UTC).timestamp()
    svc.messages([msg(1)], now=before)
    assert ledger.reset_daily_caps(state_redis, settings, now=after)["reset"] == 1
    assert ledger.load(state_redis, settings, "u1").daily_msg_count == 0


def test_redelivery_leaves_identical_state(state_redis, svc, settings):
    batch = [msg(i, t) for i, t in enumerate(["sad", "hopeless, can't go on", "want to die"])]
    svc.messages(batch)
    # Dedupe state included: a duplicate writes nothing (the counters hash counts it).
    snapshot = {k: state_redis.dump(k) for k in state_redis.keys("*") if k != "vigil:metrics"}
    again = svc.messages(batch).summary()
    assert again["duplicate"] == 3
    assert snapshot == {
        k: state_redis.dump(k) for k in state_redis.keys("*") if k != "vigil:metrics"
    }


@pytest.mark.parametrize(
    "bad",
    [
        {"user_id": "a:b"},
        {"user_id": "*"},
        {"user_id": "events:42"},
        {"user_id": ""},
        {"user_id": "x" * 200},
        {"guild_id": "g:1"},
        {"text": "x" * 9000},
        {"sent_at": "2026-11-22T10:00:00"},
        {"message_id": None},
        {"surprise": 1},
        {"text": {"nested": ["deep"]}},
        {"user_id": True},
    ],
)
def test_hostile_message_is_rejected_and_kept(state_redis, db, svc, bad):
    payload = {**msg(1), **bad}
    out = svc.messages([payload, msg(2, user="ok")]).outcomes
    assert out[0]["status"] == "rejected" and out[0]["reasons"]
    assert out[1]["status"] == "accepted"
    assert "x" * 50 not in json.dumps(out)  # reasons never echo the input
    assert not [k for k in state_redis.keys("*") if "u1" in k or "a:b" in k]
    with db() as session:
        rows = session.scalars(select(DeadLetter)).all()
    assert len(rows) == 1 and rows[0].reason == "rejected"
    assert json.loads(rows[0].payload)["message_id"] == payload["message_id"]


def test_detection_task_payload(state_redis, db, settings):
    svc = Ingest(IngestService(state_redis, settings, db, LexiconDetector()))
    det = {
        "detection_id": "d1",
        "user_id": "u9",
        "guild_id": "g1",
        "message_id": "m1",
        "observed_at": "2026-11-22T10:00:00+02:00",
        "severity": "high",
        "crisis_score": 0.7,
        "phase": "acute",
        "risk_level": "high",
        "childhood_archetype": "seeker",
        "egg_status": "none",
        "confidence": 0.9,
        "signals": {"primary": "self_harm"},
        "turn_count": 4,
        "ulm_vector": {"n1": 0.5},
    }
    out = svc.detections([det, det, {"detection_id": "d2"}]).outcomes
    assert [o["status"] for o in out] == ["accepted", "duplicate", "rejected"]
    bond = ledger.load(state_redis, settings, "u9")
    assert (bond.phase, bond.risk_level, bond.turn_count) == ("acute", "high", 4)
    topics = [e["topic"] for e in stream(state_redis, settings)]
    assert topics == ["bond.phase_transition", "bond.risk_change"]
    DetectionIn.model_validate(det)
    with db() as session:
        assert session.scalar(select(func.count()).select_from(DeadLetter)) == 1


def test_every_envelope_written_by_the_scripts_matches_the_contract(state_redis, db, settings):
    """Envelopes built in Lua must decode with the pydantic models and validate
    against the exported JSON Schemas."""
    import jsonschema

    from models.envelopes import parse_envelope
    from services.envelopes import schemas

    ledger.set_cap(state_redis, settings, "u1", 2)
    ledger.add_note(state_redis, settings, "u1", "checked in")
    svc = Ingest(IngestService(state_redis, settings, db, LexiconDetector()))
    svc.messages([msg(1, "sad"), msg(2, "I want to die", guild=None), msg(3)])
    entries = [f["data"] for _, f in state_redis.xrange(settings.stream_bond)]
    topics = {json.loads(e)["topic"] for e in entries}
    assert topics == {
        "bond.admin_action",
        "bond.phase_transition",
        "bond.risk_change",
        "message.rate_limited",
    }
    schema = schemas.current()["bond"]
    for raw in entries:
        env = parse_envelope("bond", raw)
        assert env.published_at.utcoffset().total_seconds() == 0
        jsonschema.validate(json.loads(raw), schema)


def test_corrupt_bond_rejects_only_its_message(state_redis, svc, db):
    state_redis.set("abl:broken", "{not json")
    out = svc.messages([msg(1, user="broken"), msg(2, user="fine")]).outcomes
    assert out[0]["status"] == "rejected" and "CORRUPT_BOND" in out[0]["reasons"][0]
    assert out[1]["status"] == "accepted"
    assert state_redis.get("abl:broken") == "{not json"  # left for an operator, not overwritten
    with db() as session:
        assert session.scalar(select(func.count()).select_from(DeadLetter)) == 1


def dead_letter_rows(db) -> list[DeadLetter]:
    with db() as session:
        return list(session.scalars(select(DeadLetter).order_by(DeadLetter.id)))


def test_text_limit_is_the_max_text_chars_setting(state_redis, db):
    limited = Ingest(
        IngestService(state_redis, Settings(max_text_chars=100), db, LexiconDetector())
    )
    out = limited.messages([msg(1, "a" * 100), msg(2, "secret " + "a" * 94)]).outcomes
    assert [o["status"] for o in out] == ["accepted", "rejected"]
    assert out[1]["reasons"] == ["text: String should have at most 100 characters"]
    [row] = dead_letter_rows(db)
    assert row.task_name == names.INGEST_MESSAGE and "secret" not in row.details
    roomy = Ingest(IngestService(state_redis, Settings(max_text_chars=9000), db, LexiconDetector()))
    assert roomy.messages([msg(3, "a" * 8500)]).outcomes[0]["status"] == "accepted"


def test_worker_started_with_max_text_chars_enforces_it(
    state_redis, db, settings, start_worker, celery_app, monkeypatch
):
    monkeypatch.setenv("VIGIL_MAX_TEXT_CHARS", "100")
    # A queue only this worker consumes: the shared worker has the default limit.
    queue = f"ingest-limit-{uuid.uuid4().hex[:8]}"
    start_worker(concurrency=1, queues=(queue,))
    for message in (msg(1, "a" * 100), msg(2, "secret " + "a" * 94)):
        celery_app.send_task(names.INGEST_MESSAGE, kwargs=message, queue=queue)
    wait_for(
        lambda: message_state(state_redis, settings, "discord", "u1", "m1") == "done",
        timeout=30,
        what="the 100-character message applied",
    )
    [row] = wait_for(lambda: dead_letter_rows(db), timeout=30, what="the long one dead-lettered")
    assert (row.task_name, row.reason) == (names.INGEST_MESSAGE, "rejected")
    assert json.loads(row.details) == ["text: String should have at most 100 characters"]
    assert json.loads(row.payload)["message_id"] == "m2"
    assert message_state(state_redis, settings, "discord", "u1", "m2") is None


def observed(i: int, user: str = "relay-user") -> dict:
    """A detection carrying one attribution observation: the third for a user
    changes its attribution state, which puts an envelope in the outbox."""
    return detection(
        id=f"{user}-d{i}",
        user=user,
        observed_at=(T0 + timedelta(minutes=i)).isoformat(),
        observations=[observation("motor.input_modality", "mobile")],
    )


def outbox_rows(db) -> list[Outbox]:
    with db() as session:
        return list(session.scalars(select(Outbox).order_by(Outbox.id)))


def attribution_envelopes(state_redis, settings) -> list[str]:
    return [
        parse_envelope("attribution", fields["data"]).correlation_id
        for _, fields in state_redis.xrange(settings.stream_attribution)
    ]


def test_outbox_relay_failure_does_not_fail_the_detection(state_redis, db, settings, svc, caplog):
    caplog.set_level(logging.WARNING, logger="services.ingest.service")
    svc.detections([observed(0), observed(1)])
    state_redis.set(
        settings.stream_attribution, "not a stream"
    )  # the relay's XADD fails: WRONGTYPE
    [outcome] = svc.detections([observed(2)]).outcomes
    assert (outcome["status"], outcome["attribution_changes"]) == ("accepted", 1)
    assert (
        detection_state(state_redis, settings, "discord", "relay-user", "relay-user-d2") == "done"
    )
    assert [row.published_at for row in outbox_rows(db)] == [None]  # left for the sweep
    [warning] = [rec for rec in caplog.records if "relay" in rec.getMessage()]
    assert "ResponseError" in warning.getMessage()


def test_envelope_whose_xadd_failed_is_published_once_the_stream_is_fixed(
    state_redis, db, settings, svc
):
    svc.detections([observed(0), observed(1)])
    state_redis.set(settings.stream_attribution, "not a stream")
    svc.detections([observed(2)])
    state_redis.delete(settings.stream_attribution)
    outbox.relay(db, state_redis, settings)
    assert attribution_envelopes(state_redis, settings) == ["relay-user-d2"]


@pytest.fixture
def outbox_updates_refused(db, settings):
    """A trigger makes PostgreSQL refuse marking outbox rows published, so the
    relay fails after its XADD; dropped when the test ends."""
    engine = get_engine(settings)
    with engine.begin() as conn:
        conn.execute(
            text(
                "CREATE OR REPLACE FUNCTION refuse_outbox_update() RETURNS trigger "
                "LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'outbox updates refused'; END $$"
            )
        )
        conn.execute(
            text(
                "CREATE TRIGGER refuse_outbox_update BEFORE UPDATE ON outbox "
                "FOR EACH ROW EXECUTE FUNCTION refuse_outbox_update()"
            )
        )

    def allow() -> None:
        with engine.begin() as conn:
            conn.execute(text("DROP TRIGGER IF EXISTS refuse_outbox_update ON outbox"))

    yield allow
    allow()


def test_detection_task_succeeds_when_its_relay_fails_and_the_sweep_publishes(
    state_redis, db, settings, svc, worker, celery_app, outbox_updates_refused
):
    svc.detections([observed(0), observed(1)])
    celery_app.send_task(names.INGEST_DETECTION, kwargs=observed(2))
    wait_for(
        lambda: (
            detection_state(state_redis, settings, "discord", "relay-user", "relay-user-d2")
            == "done"
        ),
        timeout=30,
        what="the detection applied",
    )
    assert dead_letter_rows(db) == []  # the task succeeded: no failure, no retry
    assert [row.published_at for row in outbox_rows(db)] == [None]
    outbox_updates_refused()  # the cause is gone
    celery_app.send_task(names.PERIODIC_RELAY_OUTBOX)
    wait_for(
        lambda: all(row.published_at for row in outbox_rows(db)),
        timeout=30,
        what="the sweep marked the row published",
    )
    assert attribution_envelopes(state_redis, settings) == ["relay-user-d2"]  # exactly once


def test_pipeline_on_every_topology_counts_once_and_replays_as_duplicates(state, db):
    """The worker's per-buffer call on one Redis, behind Sentinel and on a
    cluster: caps exact per user, a buffer spanning every shard, and the same
    buffer again answers duplicates, counts nothing and publishes nothing."""
    client, settings = state
    settings = settings.model_copy(update={"default_daily_cap": 2})
    svc = Ingest(IngestService(client, settings, db, LexiconDetector()))
    users = 40
    buffer = [
        msg(n, "I feel sad today" if n % 2 else "hello", id=f"t{n}", user=f"tu{n % users}")
        for n in range(users * 3)
    ]
    first = svc.messages(buffer, now=T0.timestamp()).outcomes
    assert [o["status"] for o in first].count("accepted") == users * 2
    assert [o["status"] for o in first].count("rate_limited") == users
    published = [
        json.loads(fields["data"])["envelope_id"]
        for key in streams.stream_keys(settings, "bond")
        for _, fields in client.xrange(key)
    ]
    again = svc.messages(buffer, now=T0.timestamp() + 60).outcomes
    assert {o["status"] for o in again} == {"duplicate"}
    replayed = [
        json.loads(fields["data"])["envelope_id"]
        for key in streams.stream_keys(settings, "bond")
        for _, fields in client.xrange(key)
    ]
    assert replayed == published and len(set(published)) == len(published)
    totals = counters.read_all(client, settings)
    assert totals["messages:accepted"] == users * 2
    assert totals["messages:rate_limited"] == users
    assert totals["messages:duplicate"] == len(buffer)
    for n in range(users):
        assert ledger.load(client, settings, f"tu{n}").daily_msg_count == 2
