"""Ingest tasks through the real broker and real worker processes."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta

from services.bonds import ledger
from services.core import dedupe, keys
from tests.builders import message
from tests.helpers import message_state, wait_for
from vigil_client import VigilClient

T0 = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)
# Keys a redelivery may add that are not user state: counters, dedupe, task results.
NOT_STATE = ("vigil:", "celery-task-meta-")


def markers(state_redis, settings) -> dict[str, int]:
    """How many message ids each dedupe state holds, over every user's hash
    (a hash keeps a user's last dedupe_max_per_user ids, and up to a quarter more)."""
    out: dict[str, int] = {}
    for key in state_redis.scan_iter(match=keys.message_dedupe(settings, "*", "*"), count=1000):
        for state in dedupe.states(state_redis, settings, key).values():
            out[state] = out.get(state, 0) + 1
    return out


def test_race_for_one_user_cap_is_exact(
    state_redis, db, settings, worker, start_worker, celery_app
):
    """Four worker processes on two workers; 1,000 messages for one user, cap 100."""
    start_worker(concurrency=2)
    ledger.set_cap(state_redis, settings, "racer", 100)
    texts = ["I feel sad", "hello"]  # alternate: every accepted message changes phase
    client = VigilClient(app=celery_app)
    for i in range(1000):
        client.message(
            message_id=f"race-{i}",
            user_id="racer",
            guild_id="g1",
            text=texts[i % 2],
            sent_at=(T0 + timedelta(milliseconds=i)).isoformat(),
        )

    # Count outcomes in the stream (the hash holds ids, not outcomes).
    def rate_limited() -> int:
        entries = [json.loads(f["data"]) for _, f in state_redis.xrange(settings.stream_bond)]
        return sum(1 for e in entries if e["topic"] == "message.rate_limited")

    wait_for(lambda: rate_limited() == 900, what="900 messages rate-limited")
    wait_for(lambda: "counted" not in markers(state_redis, settings), what="every message applied")
    assert ledger.load(state_redis, settings, "racer").daily_msg_count == 100
    # Every id is kept within the horizon, whatever the rate: a replay is recognised.
    assert state_redis.hlen(keys.message_dedupe(settings, "discord", "racer")) == 1_000
    entries = [json.loads(f["data"]) for _, f in state_redis.xrange(settings.stream_bond)]
    topics = [e["topic"] for e in entries]
    assert topics.count("message.rate_limited") == 900
    ids = [e["envelope_id"] for e in entries]
    assert len(ids) == len(set(ids))
    events = ledger.get_events(state_redis, settings, "racer", limit=500)
    transitions = [e for e in events if e.event_type == "phase_transition"]
    assert len(transitions) == topics.count("bond.phase_transition")


def drained(broker_url: str) -> bool:
    """Nothing queued and nothing delivered-but-unacked on the Redis broker."""
    import redis

    b = redis.Redis.from_url(broker_url)
    return b.llen("ingest") == 0 and b.hlen("unacked") == 0


def test_batch_task_and_redelivery(state_redis, db, settings, worker, celery_app, test_env):
    client = VigilClient(app=celery_app)
    batch = [
        message(text="I feel hopeless" if i % 3 else "hi", id=f"b{i}", user=f"u{i % 7}")
        for i in range(300)
    ]
    first = client.messages(batch, batch_size=100)
    assert len(first) == 3
    wait_for(lambda: markers(state_redis, settings).get("done", 0) == 300, what="batch applied")
    # Acked after its result is stored: the snapshot then holds every task's result.
    wait_for(lambda: drained(test_env["VIGIL_BROKER_URL"]), what="first batches acked")
    snapshot = {
        k: state_redis.dump(k) for k in state_redis.keys("*") if not k.startswith(NOT_STATE)
    }
    stream_len = state_redis.xlen(settings.stream_bond)
    celery_app.send_task("vigil.ingest.messages", kwargs={"messages": batch[:100]})
    time.sleep(0.5)
    wait_for(lambda: drained(test_env["VIGIL_BROKER_URL"]), what="queue drained")
    assert state_redis.xlen(settings.stream_bond) == stream_len
    assert snapshot == {
        k: state_redis.dump(k) for k in state_redis.keys("*") if not k.startswith(NOT_STATE)
    }


def test_producer_in_another_process_sends_by_name(state_redis, db, settings, worker, test_env):
    """A frontend that knows nothing of vigil but the task name and JSON kwargs."""
    code = (
        "import sys; from celery import Celery\n"
        "app = Celery(broker=sys.argv[1])\n"
        "app.conf.task_serializer = 'json'\n"
        "app.send_task('vigil.admin.set_cap', kwargs={'user_id': 'remote', 'cap': 7},"
        " queue='admin')\n"
    )
    subprocess.run(
        [sys.executable, "-c", code, test_env["VIGIL_BROKER_URL"]], check=True, timeout=60
    )
    bond = wait_for(
        lambda: ledger.load(state_redis, settings, "remote"), what="cap set by the worker"
    )
    assert bond.daily_msg_cap == 7


def test_frontend_in_another_language_publishes_raw_protocol(
    state_redis, db, settings, worker, test_env
):
    """What a Node or Go frontend does: a bare protocol-2 JSON message, no Celery client,
    no argsrepr; the worker runs it and the redacted kwargsrepr keeps text out of events."""
    import uuid

    from kombu import Connection, Exchange

    body = [
        [],
        message(text="I feel hopeless", id="raw-1", user="polyglot"),
        {"callbacks": None, "errbacks": None, "chain": None, "chord": None},
    ]
    with Connection(test_env["VIGIL_BROKER_URL"]) as conn:
        conn.Producer().publish(
            body,
            exchange=Exchange("ingest"),
            routing_key="ingest",
            serializer="json",
            headers={"task": "vigil.ingest.message", "id": str(uuid.uuid4()), "lang": "js"},
            declare=[],
            retry=True,
        )
    wait_for(
        lambda: message_state(state_redis, settings, "discord", "polyglot", "raw-1") == "done",
        what="raw message applied",
    )
    assert ledger.load(state_redis, settings, "polyglot").phase == "concern"
