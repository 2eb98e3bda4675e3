from __future__ import annotations

import subprocess
import sys
import threading
import uuid
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from models.envelopes import EXAMPLE_PAYLOADS, make_envelope, parse_envelope
from models.tables import Outbox
from services.envelopes import consumers, outbox, streams
from services.metrics import counters

ROOT = Path(__file__).resolve().parents[3]


def state_changed(**kwargs):
    return make_envelope(
        "attribution.profile.state_changed",
        EXAMPLE_PAYLOADS["attribution.profile.state_changed"],
        **kwargs,
    )


def enqueue_committed(db, settings, n: int = 1) -> list:
    sent = [state_changed(correlation_id=f"d-{i}") for i in range(n)]
    with db() as session, session.begin():
        for e in sent:
            outbox.enqueue(session, settings, e, identity_id=e.payload.identity_id)
    return sent


def published_ids(state_redis, settings) -> list[str]:
    return [
        parse_envelope("attribution", fields["data"]).envelope_id
        for _, fields in state_redis.xrange(settings.stream_attribution)
    ]


def test_committed_envelope_is_relayed_once(state_redis, db, settings):
    [sent] = enqueue_committed(db, settings)
    with db() as session:
        row = session.scalars(select(Outbox)).one()
        assert (row.stream, row.topic) == (settings.stream_attribution, sent.topic)
        assert str(row.identity_id) == sent.payload.identity_id
        assert row.published_at is None
    assert outbox.relay(db, state_redis, settings) == {
        "status": "ok",
        "published": 1,
        "already_sent": 0,
    }
    assert outbox.relay(db, state_redis, settings) == {
        "status": "ok",
        "published": 0,
        "already_sent": 0,
    }
    [(_, fields)] = state_redis.xrange(settings.stream_attribution)
    assert parse_envelope("attribution", fields["data"]) == sent
    with db() as session:
        assert session.scalars(select(Outbox)).one().published_at is not None
        assert outbox.pending_count(session) == 0


def test_rolled_back_transaction_publishes_nothing(state_redis, db, settings):
    with db() as session:
        session.begin()
        outbox.enqueue(session, settings, state_changed())
        session.rollback()
    assert outbox.relay(db, state_redis, settings)["published"] == 0
    assert state_redis.xlen(settings.stream_attribution) == 0


def test_enqueue_is_idempotent_on_envelope_id(state_redis, db, settings):
    e = state_changed()
    for _ in range(2):
        with db() as session, session.begin():
            outbox.enqueue(session, settings, e)
    outbox.relay(db, state_redis, settings)
    assert published_ids(state_redis, settings) == [e.envelope_id]


def test_crash_between_xadd_and_commit_publishes_once(state_redis, db, settings, monkeypatch):
    sent = enqueue_committed(db, settings, 3)

    def crash(session, ids):
        raise RuntimeError("process died here")

    monkeypatch.setattr(outbox, "_mark_published", crash)
    with pytest.raises(RuntimeError):
        outbox.relay(db, state_redis, settings)
    monkeypatch.undo()
    assert state_redis.xlen(settings.stream_attribution) == 3
    with db() as session:
        assert outbox.pending_count(session) == 3

    assert outbox.relay(db, state_redis, settings) == {
        "status": "ok",
        "published": 0,
        "already_sent": 3,
    }
    assert published_ids(state_redis, settings) == [e.envelope_id for e in sent]
    with db() as session:
        assert outbox.pending_count(session) == 0


def test_killed_relay_process_publishes_once_after_recovery(state_redis, db, settings, test_env):
    sent = enqueue_committed(db, settings, 2)
    code = (
        "import os\n"
        "from services.envelopes import outbox\n"
        "from services.core.clients import get_redis, session_factory\n"
        "from services.core.settings import Settings\n"
        "s = Settings()\n"
        "outbox._mark_published = lambda session, ids: os._exit(7)\n"
        "outbox.relay(session_factory(s), get_redis(s), s)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, timeout=60)
    assert proc.returncode == 7, proc.stderr.decode()[-2000:]
    assert state_redis.xlen(settings.stream_attribution) == 2
    assert outbox.relay(db, state_redis, settings)["already_sent"] == 2
    assert published_ids(state_redis, settings) == [e.envelope_id for e in sent]


def test_concurrent_relays_publish_each_row_once(state_redis, db, settings):
    sent = enqueue_committed(db, settings, 300)
    results: list[dict] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def relay_until_empty():
        try:
            while True:
                result = outbox.relay(db, state_redis, settings, limit=20)
                with lock:
                    results.append(result)
                if result["published"] == 0 and result["already_sent"] == 0:
                    return
        except BaseException as exc:  # surfaced by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=relay_until_empty) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors
    outbox.relay(db, state_redis, settings)
    ids = published_ids(state_redis, settings)
    assert sorted(ids) == sorted(e.envelope_id for e in sent)
    assert len(ids) == len(set(ids)) == 300
    # SKIP LOCKED alone kept relays apart: no row was even attempted twice.
    assert sum(res["already_sent"] for res in results) == 0
    assert sum(res["published"] for res in results) == 300


def test_outbox_envelope_is_readable_by_stream_consumers(state_redis, db, settings):
    [sent] = enqueue_committed(db, settings)
    outbox.relay(db, state_redis, settings)
    got = consumers.consume(state_redis, settings, "g", "c", "attribution", block_ms=None)
    assert [e for _, e in got] == [sent]


def test_purge_published_keeps_recent_and_pending_rows(state_redis, db, settings):
    enqueue_committed(db, settings, 2)
    outbox.relay(db, state_redis, settings, limit=1)
    with db() as session, session.begin():
        assert outbox.purge_published(session, older_than_days=1) == 0
        session.execute(
            Outbox.__table__.update()
            .where(Outbox.published_at.is_not(None))
            .values(published_at=Outbox.published_at - timedelta(days=2))
        )
        assert outbox.purge_published(session, older_than_days=1) == 1
        assert outbox.pending_count(session) == 1


def test_relay_outbox_task_on_a_real_worker(state_redis, db, settings, worker, celery_app):
    [sent] = enqueue_committed(db, settings)
    result = celery_app.send_task("vigil.periodic.relay_outbox", ignore_result=False).get(
        timeout=60
    )
    assert result == {"status": "ok", "published": 1, "already_sent": 0}
    assert published_ids(state_redis, settings) == [sent.envelope_id]


def test_enqueue_refuses_a_bad_identity_id(db, settings):
    with db() as session, session.begin(), pytest.raises(ValueError):
        outbox.enqueue(session, settings, state_changed(), identity_id="nope")
    assert uuid.UUID(state_changed().envelope_id)


def test_relay_on_every_topology_publishes_each_row_once(state, db):
    """Rows whose envelopes go to different shards on a cluster: each published
    once with its counter, and a relay that died before marking its rows
    republishes nothing."""
    client, settings = state
    sent = enqueue_committed(db, settings, 30)
    with db() as session, session.begin():
        rows = session.scalars(select(Outbox)).all()
    # A relay died after publishing, before its commit: the rows are still pending.
    outbox._publish(client, settings, rows)
    assert outbox.relay(db, client, settings) == {
        "status": "ok",
        "published": 0,
        "already_sent": 30,
    }
    published = [
        parse_envelope("attribution", fields["data"]).envelope_id
        for key in streams.stream_keys(settings, "attribution")
        for _, fields in client.xrange(key)
    ]
    assert sorted(published) == sorted(e.envelope_id for e in sent)
    totals = counters.read_all(client, settings)
    assert totals["envelopes:attribution.profile.state_changed"] == 30
