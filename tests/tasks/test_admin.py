"""Admin tasks through the real broker and a real worker: dead-letter replay."""

from __future__ import annotations

import time
import uuid

import pytest
from sqlalchemy import select

from models.tables import DeadLetter
from services.bonds import ledger
from services.deadletters import store
from tasks import names
from tests import builders
from tests.helpers import VALID_DETECTION, DetectorServer, message_state, wait_for

BRPOP_TIMEOUT_S = 1  # kombu's Redis transport default


def dead_letters(db) -> list[DeadLetter]:
    with db() as session:
        return list(session.scalars(select(DeadLetter).order_by(DeadLetter.id)))


def replay(celery_app, ids: list[int]) -> dict:
    return celery_app.send_task(names.ADMIN_REPLAY_DEAD_LETTERS, kwargs={"ids": ids}).get(
        timeout=60
    )


@pytest.fixture
def detector_server():
    server = DetectorServer()
    yield server
    server.close()


@pytest.fixture
def shared_worker_paused(celery_app, worker):
    """Take the shared worker (built-in detector) off the vigil queues for one
    test, so every task, replayed ones included, reaches the worker the test starts."""
    for queue in names.QUEUES:
        replies = celery_app.control.cancel_consumer(
            queue, destination=[worker.node], reply=True, timeout=10
        )
        assert replies, f"the shared worker did not stop consuming {queue}"
    # On a Redis broker the worker may still hold a BRPOP issued before the
    # cancel, which would take the next message; it expires after kombu's
    # brpop_timeout (1 s) and is not reissued for cancelled queues.
    time.sleep(2 * BRPOP_TIMEOUT_S)
    yield
    for queue in names.QUEUES:
        celery_app.control.add_consumer(queue, destination=[worker.node], reply=True)


def test_replay_marks_and_answers_only_the_rows_it_sent(
    state_redis, db, settings, worker, celery_app
):
    with db() as session, session.begin():

        def add(task_name: str, payload) -> int:
            return store.add(
                session, task_name=task_name, reason="rejected", details=[], payload=payload
            )

        unknown_task = add("vigil.ingest.retired", {"user_id": "u1"})
        not_an_object = add(names.INGEST_MESSAGE, ["not", "an", "object"])
        truncated = add(names.INGEST_MESSAGE, {"text": "x" * (store.MAX_PAYLOAD_CHARS + 1)})
        sendable = add(names.ADMIN_SET_CAP, {"user_id": "replayed-cap", "cap": 7})
    answer = replay(celery_app, [unknown_task, not_an_object, truncated, sendable, 424242])
    assert answer == {
        "status": "ok",
        "replayed": [sendable],
        "skipped": [
            {"id": unknown_task, "reason": "unknown task name"},
            {"id": not_an_object, "reason": store.SKIP_NOT_AN_OBJECT},
            {"id": truncated, "reason": store.SKIP_TRUNCATED},
            {"id": 424242, "reason": store.SKIP_NOT_FOUND},
        ],
    }
    marked = {row.id: row.replay_count for row in dead_letters(db) if row.replayed_at}
    assert marked == {sendable: 1}
    wait_for(
        lambda: (
            getattr(ledger.load(state_redis, settings, "replayed-cap"), "daily_msg_cap", None) == 7
        ),
        timeout=30,
        what="the replayed set_cap applied",
    )


def test_batch_items_rejected_by_the_detector_replay_through_the_single_message_task(
    state_redis,
    db,
    settings,
    celery_app,
    start_worker,
    shared_worker_paused,
    detector_server,
    monkeypatch,
):
    """HTTP detector refuses a batch's messages (they are dead-lettered one by one
    under ``vigil.ingest.message``); once it answers, replaying them applies each."""
    monkeypatch.setenv("VIGIL_DETECTOR", "http")
    monkeypatch.setenv("VIGIL_DETECTOR_URL", detector_server.url)
    start_worker(concurrency=1)
    # Up but not ready: an answer that is no detection is a permanent failure per
    # message (DetectorFailed). A 503 or a refused connection would instead retry
    # the whole batch task with backoff.
    detector_server.answer = (200, {"error": "model not loaded"})
    batch = [
        builders.message(
            i, "hello", id=f"replay-{i}-{uuid.uuid4().hex[:6]}", user=f"replay-user-{i}"
        )
        for i in range(3)
    ]
    celery_app.send_task(names.INGEST_MESSAGES, kwargs={"messages": batch})
    rows = wait_for(
        lambda: (found := dead_letters(db)) and len(found) == len(batch) and found,
        timeout=60,
        what="each message dead-lettered",
    )
    assert {row.task_name for row in rows} == {names.INGEST_MESSAGE}
    assert sorted(row.user_id for row in rows) == [m["user_id"] for m in batch]
    assert all("detector" in row.details and "hello" not in row.details for row in rows)

    detector_server.answer = (200, VALID_DETECTION)
    ids = [row.id for row in rows]
    assert replay(celery_app, ids) == {"status": "ok", "replayed": ids, "skipped": []}
    wait_for(
        lambda: all(
            message_state(state_redis, settings, "discord", m["user_id"], m["message_id"]) == "done"
            for m in batch
        ),
        timeout=60,
        what="replays applied",
    )
    for message in batch:
        bond = ledger.load(state_redis, settings, message["user_id"])
        assert (bond.phase, bond.risk_level) == ("watch", "low")  # the HTTP detector's answer
    assert sorted(detector_server.message_ids) == sorted(2 * [m["message_id"] for m in batch])
    assert all(row.replayed_at and row.replay_count == 1 for row in dead_letters(db))
