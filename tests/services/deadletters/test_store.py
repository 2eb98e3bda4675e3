"""The dead-letter store on the real database: what replay may take and what it marks."""

from __future__ import annotations

from sqlalchemy import select

from models.tables import DeadLetter
from services.deadletters import store


def add(db, payload, task_name: str = "vigil.ingest.message") -> int:
    with db() as session, session.begin():
        return store.add(
            session, task_name=task_name, reason="rejected", details=["x: y"], payload=payload
        )


def replay_marks(db) -> dict[int, int]:
    with db() as session:
        rows = session.scalars(select(DeadLetter)).all()
    return {row.id: row.replay_count for row in rows if row.replayed_at is not None}


def test_lock_for_replay_hands_back_sendable_rows_and_why_the_rest_marks_nothing(db):
    sendable = add(db, {"message_id": "m1", "user_id": "u1", "text": "hi"})
    not_an_object = add(db, ["not", "an", "object"])
    truncated = add(db, {"text": "x" * (store.MAX_PAYLOAD_CHARS + 1)})
    with db() as session, session.begin():
        rows, skipped = store.lock_for_replay(session, [truncated, sendable, not_an_object, 999])
    assert rows == [
        (sendable, "vigil.ingest.message", {"message_id": "m1", "user_id": "u1", "text": "hi"})
    ]
    assert skipped == [
        {"id": not_an_object, "reason": store.SKIP_NOT_AN_OBJECT},
        {"id": truncated, "reason": store.SKIP_TRUNCATED},
        {"id": 999, "reason": store.SKIP_NOT_FOUND},
    ]
    assert replay_marks(db) == {}


def test_mark_replayed_marks_only_the_rows_sent(db):
    first, second = add(db, {"message_id": "m1"}), add(db, {"message_id": "m2"})
    with db() as session, session.begin():
        store.mark_replayed(session, [first])
    with db() as session, session.begin():
        store.mark_replayed(session, [first])
        store.mark_replayed(session, [])
    assert replay_marks(db) == {first: 2}
    assert second not in replay_marks(db)
