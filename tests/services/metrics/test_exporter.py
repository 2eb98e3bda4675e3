"""One scrape after a known workload through a real worker returns exactly the
expected counters and gauges."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import httpx
import redis

from models.envelopes import make_envelope
from services.attribution import correlator
from services.bonds import ledger
from services.core import keys
from services.envelopes import consumers, outbox
from services.metrics import collector, snapshot
from tasks import names
from tasks.names import QUEUES
from tests.builders import detection, message

T0 = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)
CALM = "hello there friend"  # builtin detector: dormant, low risk, not stored
SAD = "I feel so alone and hopeless tonight"  # concern, medium risk, stored
ACUTE = "I want to kill myself tonight"  # acute, high risk, stored


def _send(celery_app, name: str, kwargs: dict) -> dict:
    return celery_app.send_task(name, kwargs=kwargs, ignore_result=False).get(timeout=60)


def sample(samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def test_one_scrape_after_a_known_workload(celery_app, worker, state_redis, db, settings, scrape):
    ledger.set_cap(state_redis, settings, "802", 1)
    batch = _send(
        celery_app,
        names.INGEST_MESSAGES,
        {
            "messages": [
                message(id="m1", user="801", text=CALM),
                message(id="m2", user="801", text=SAD),
                message(id="m3", user="802", text=ACUTE),
                message(id="m4", user="802", text=CALM),  # over 802's cap of 1
                {"message_id": "m5", "text": CALM},  # no user_id: rejected
            ]
        },
    )
    assert [o["status"] for o in batch["results"]] == [
        "accepted",
        "accepted",
        "accepted",
        "rate_limited",
        "rejected",
    ]
    resent = _send(celery_app, names.INGEST_MESSAGE, message(id="m1", user="801", text=CALM))
    assert resent["status"] == "duplicate"
    det = detection(id="d1", user="803", phase="crisis", risk_level="critical")
    assert _send(celery_app, names.INGEST_DETECTION, det)["status"] == "accepted"
    assert _send(celery_app, names.INGEST_DETECTION, det)["status"] == "duplicate"
    assert _send(celery_app, names.INGEST_DETECTION, {"detection_id": "d2"})["status"] == (
        "rejected"
    )

    # Bond stream: admin action, 3 phase + 3 risk envelopes, 1 rate-limited.
    consumers.ensure_consumer_group(state_redis, settings.stream_bond, "ops")
    first, _pending = consumers.consume(
        state_redis, settings, "ops", "c1", "bond", count=2, block_ms=None
    )
    consumers.ack(state_redis, settings, "ops", "bond", [first[0]])  # the second stays pending
    # One committed outbox row nobody relayed.
    with db() as session, session.begin():
        outbox.enqueue(
            session,
            settings,
            make_envelope(
                "user.erased",
                {"user_id": "804", "platform": "discord", "removed": {}},
                envelope_id=str(uuid.uuid4()),
            ),
        )
    assert correlator.run(db, settings, state_redis)["fired"] == 0
    reset = ledger.reset_daily_caps(
        state_redis, settings, now=(T0 + timedelta(days=400)).timestamp()
    )

    s = scrape()

    expected = {
        ("vigil_messages_total", "outcome", "accepted"): 3,
        ("vigil_messages_total", "outcome", "duplicate"): 1,
        ("vigil_messages_total", "outcome", "rate_limited"): 1,
        ("vigil_messages_total", "outcome", "rejected"): 1,
        ("vigil_detections_total", "outcome", "accepted"): 1,
        ("vigil_detections_total", "outcome", "duplicate"): 1,
        ("vigil_detections_total", "outcome", "rejected"): 1,
        ("vigil_phase_transitions_total", "to_phase", "concern"): 1,
        ("vigil_phase_transitions_total", "to_phase", "acute"): 1,
        ("vigil_phase_transitions_total", "to_phase", "crisis"): 1,
        ("vigil_risk_changes_total", "to_risk", "medium"): 1,
        ("vigil_risk_changes_total", "to_risk", "high"): 1,
        ("vigil_risk_changes_total", "to_risk", "critical"): 1,
        ("vigil_envelopes_published_total", "topic", "bond.admin_action"): 1,
        ("vigil_envelopes_published_total", "topic", "bond.phase_transition"): 3,
        ("vigil_envelopes_published_total", "topic", "bond.risk_change"): 3,
        ("vigil_envelopes_published_total", "topic", "message.rate_limited"): 1,
        ("vigil_envelopes_published_total", "topic", "user.erased"): 0,
        ("vigil_stream_length", "stream", "bond"): 8,
        ("vigil_stream_length", "stream", "attribution"): 0,
        ("vigil_queue_depth", "queue", "ingest"): 0,
        ("vigil_queue_depth", "queue", "admin"): 0,
        ("vigil_queue_depth", "queue", "periodic"): 0,
    }
    got = {key: sample(s, key[0], **{key[1]: key[2]}) for key in expected}
    assert got == expected
    phases = {k[1] for k in s if k[0] == "vigil_phase_transitions_total"}
    assert len(phases) == 3  # no other phase counted

    assert sample(s, "vigil_history_stored_total") == 2
    assert sample(s, "vigil_stream_group_pending", stream="bond", group="ops") == 1
    assert sample(s, "vigil_stream_group_lag", stream="bond", group="ops") == 6
    assert sample(s, "vigil_dead_letters", task=names.INGEST_MESSAGE, reason="rejected") == 1
    assert sample(s, "vigil_dead_letters", task=names.INGEST_DETECTION, reason="rejected") == 1
    assert sample(s, "vigil_dead_letters_created_total") == 2
    assert sample(s, "vigil_state_redis_evicting", policy="noeviction") == 0
    assert sample(s, "vigil_outbox_pending") == 1
    assert 0 <= sample(s, "vigil_outbox_oldest_age_seconds") < 60
    assert sample(s, "vigil_correlator_runs_total") == 1
    assert sample(s, "vigil_multi_actor_suspects") == 0
    assert sample(s, "vigil_cap_resets_total") == reset["reset"] == 3
    for store in ("redis", "postgres", "broker"):
        assert sample(s, "vigil_store_up", store=store) == 1


def test_labels_carry_no_user_ids_or_text(
    celery_app, worker, state_redis, db, settings, exporter_url
):
    _send(
        celery_app, names.INGEST_MESSAGES, {"messages": [message(id="m9", user="77001", text=SAD)]}
    )
    body = httpx.get(exporter_url, timeout=10).text
    assert "77001" not in body
    assert "hopeless" not in body


def test_messages_set_aside_on_the_redis_broker_are_counted(test_env):
    """The transport's unreadable list (worker/broker.py) is an exporter gauge."""
    broker = redis.Redis.from_url(test_env["VIGIL_BROKER_URL"])
    broker.delete(keys.BROKER_UNREADABLE)
    queues = snapshot.BrokerQueues(test_env["VIGIL_BROKER_URL"], QUEUES)
    try:
        queues.depths()
        assert queues.unreadable == 0
        broker.lpush(keys.BROKER_UNREADABLE, b'{"queue": "ingest", "reason": "not JSON"}\nxx')
        queues.depths()
        assert queues.unreadable == 1
        snap = snapshot.Snapshot(taken_at=0.0, up={"broker": True}, broker_unreadable=1)
        served = {metric.name: metric for metric in collector.families(snap)}
        assert [s.value for s in served["vigil_broker_unreadable"].samples] == [1]
    finally:
        broker.delete(keys.BROKER_UNREADABLE)
        queues.close()
        broker.close()
