"""``vigil deadletters list|replay|purge``: never a payload on screen."""

from __future__ import annotations

import json
import time
from datetime import timedelta

from sqlalchemy import select, update

from models.tables import DeadLetter
from services.bonds import ledger
from services.deadletters import store
from tests.cli.conftest import msg

SECRET = "the secret words of a user"


def _bad(i: int) -> dict:
    return msg(i, SECRET, sent_at="2026-01-01T10:00:00")  # naive: rejected


def test_list_shows_reasons_not_payloads(vigil, state_redis, db, ingest):
    ingest.messages([_bad(0)])
    ingest.messages([_bad(1), msg(2)])
    rows = vigil.json("deadletters", "list")
    # An item rejected inside a batch is kept under the single-message task, with
    # its own payload: that is where a replay of it can succeed.
    assert [row["task_name"] for row in rows] == ["vigil.ingest.message", "vigil.ingest.message"]
    assert rows[0]["user_id"] == "501" and rows[0]["payload_chars"] > len(SECRET)
    assert len(vigil.json("deadletters", "list", "--task", "vigil.ingest.message")) == 2
    assert vigil.json("deadletters", "list", "--task", "vigil.ingest.messages") == []
    for out in (vigil("deadletters", "list").stdout, vigil("deadletters", "list", "--json").stdout):
        assert SECRET not in out


def _wait_for_bond(state_redis, settings, user_id: str) -> None:
    deadline = time.monotonic() + 60
    while ledger.load(state_redis, settings, user_id) is None:
        assert time.monotonic() < deadline, f"replayed message of {user_id} never applied"
        time.sleep(0.1)


def test_replay_by_id_and_all(vigil, state_redis, db, settings, worker):
    # Payloads that failed for a passing reason: a replay now succeeds.
    with db() as session, session.begin():
        ids = [
            store.add(
                session,
                task_name="vigil.ingest.message",
                reason="retries_exhausted",
                details=["OperationalError: server closed the connection"],
                payload=msg(i, user=f"r{i}", message_id=f"replay{i}"),
            )
            for i in range(2)
        ]
    replayed = json.loads(vigil("deadletters", "replay", str(ids[0])).stdout)
    assert replayed == {"status": "ok", "replayed": [ids[0]], "skipped": []}
    assert [row["id"] for row in vigil.json("deadletters", "list", "--pending")] == [ids[1]]
    assert str(ids[1]) in vigil("deadletters", "replay", "--all").stdout
    assert vigil.json("deadletters", "list", "--pending") == []
    assert '"replayed": []' in vigil("deadletters", "replay", "--all").stdout
    _wait_for_bond(state_redis, settings, "r0")
    _wait_for_bond(state_redis, settings, "r1")
    vigil("deadletters", "replay", code=2)
    vigil("deadletters", "replay", "1", "--all", code=2)


def test_purge_by_id_and_age(vigil, state_redis, db, ingest):
    for i in range(3):
        ingest.messages([_bad(i)])
    ids = sorted(row["id"] for row in vigil.json("deadletters", "list"))
    assert '"purged": 1' in vigil("deadletters", "purge", str(ids[0])).stdout
    with db() as session, session.begin():
        session.execute(
            update(DeadLetter)
            .where(DeadLetter.id == ids[1])
            .values(created_at=DeadLetter.created_at - timedelta(days=40))
        )
    assert '"purged": 1' in vigil("deadletters", "purge", "--older-than-days", "30").stdout
    with db() as session:
        assert session.scalars(select(DeadLetter.id)).all() == [ids[2]]
    vigil("deadletters", "purge", code=2)
