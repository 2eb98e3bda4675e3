"""Admin tasks through the real broker and a real worker: dead-letter replay."""

from __future__ import annotations

from sqlalchemy import select

from models.tables import DeadLetter
from services.bonds import ledger
from services.deadletters import store
from tasks import names
from tests.helpers import wait_for


def dead_letters(db) -> list[DeadLetter]:
    with db() as session:
        return list(session.scalars(select(DeadLetter).order_by(DeadLetter.id)))


def replay(celery_app, ids: list[int]) -> dict:
    return celery_app.send_task(names.ADMIN_REPLAY_DEAD_LETTERS, kwargs={"ids": ids}).get(
        timeout=60
    )


def test_replay_marks_and_answers_only_the_rows_it_sent(r, db, settings, worker, celery_app):
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
        lambda: ledger.load(r, settings, "replayed-cap").daily_msg_cap == 7,
        timeout=30,
        what="the replayed set_cap applied",
    )
