"""``vigil deadletters list|replay|purge``: never a payload on screen."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select, update

from models.tables import DeadLetter
from tests.cli.conftest import msg

SECRET = "the secret words of a user"


def _bad(i: int) -> dict:
    return msg(i, SECRET, sent_at="2026-01-01T10:00:00")  # naive: rejected


def test_list_shows_reasons_not_payloads(vigil, r, db, ingest):
    ingest.messages([_bad(0)])
    ingest.messages([_bad(1), msg(2)])
    rows = vigil.json("deadletters", "list")
    assert [row["task_name"] for row in rows] == ["vigil.ingest.messages", "vigil.ingest.message"]
    assert rows[0]["user_id"] == "501" and rows[0]["payload_chars"] > len(SECRET)
    only = vigil.json("deadletters", "list", "--task", "vigil.ingest.message")
    assert len(only) == 1
    for out in (vigil("deadletters", "list").stdout, vigil("deadletters", "list", "--json").stdout):
        assert SECRET not in out


def test_replay_by_id_and_all(vigil, r, db, ingest, worker):
    ingest.messages([_bad(0)])
    ingest.messages([_bad(1)])
    first, second = sorted(row["id"] for row in vigil.json("deadletters", "list"))
    vigil("deadletters", "replay", str(first))
    assert vigil.json("deadletters", "list", "--pending")[0]["id"] == second
    out = vigil("deadletters", "replay", "--all").stdout
    assert str(second) in out
    assert vigil.json("deadletters", "list", "--pending") == []  # every one replayed once
    assert '"replayed": []' in vigil("deadletters", "replay", "--all").stdout
    vigil("deadletters", "replay", code=2)
    vigil("deadletters", "replay", "1", "--all", code=2)


def test_purge_by_id_and_age(vigil, r, db, ingest):
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
