"""``vigil cap set``, ``vigil note add`` and ``vigil erase``, through a real worker."""

from __future__ import annotations

import json

from sqlalchemy import func, select, text

from models.tables import DeadLetter
from services.attribution import correlator
from services.bonds import ledger
from tests.cli.conftest import alternating, msg

USER = "90210417"


def test_cap_set_then_messages_are_limited(vigil, state_redis, settings, ingest, worker):
    result = json.loads(vigil("cap", "set", "501", "2").stdout)
    assert result == {"status": "ok", "user_id": "501", "cap": 2}
    outcome = ingest.messages([msg(i, "hi") for i in range(3)]).summary()
    assert outcome["accepted"] == 2 and outcome["rate_limited"] == 1
    assert vigil.json("bond", "show", "501")["rate_limit"]["remaining"] == 0
    vigil("cap", "set", "501", "-1", code=2)


def test_note_add(vigil, state_redis, settings, worker):
    assert json.loads(vigil("note", "add", "501", "called the family").stdout)["notes"] == 1
    assert ledger.load(state_redis, settings, "501").notes[0].endswith("called the family")


def test_rejected_admin_request_exits_1(vigil, state_redis, db, worker):
    out = json.loads(vigil("cap", "set", "bad:id*", "3", code=1).stdout)
    assert out["status"] == "rejected"


def test_erase_needs_yes(vigil, state_redis):
    vigil("erase", USER, code=2)


def test_erase_leaves_nothing_of_the_user(vigil, state_redis, db, settings, ingest, worker):
    other = "31337"
    ingest.messages(
        [msg(i, user=USER, guild=g, message_id=f"e{i}") for i, g in enumerate(["g1", "g2", None])]
        + [msg(9, user=other, message_id="o9")]
    )
    ingest.messages([msg(5, user=USER, sent_at="2026-01-01T00:00:00", message_id="e5")])
    ingest.detections(alternating(USER))
    correlator.run(db, settings, state_redis)
    vigil("cap", "set", USER, "1")
    ingest.messages([msg(7, user=USER, message_id="e7")])  # rate-limited: names the user
    assert list(state_redis.scan_iter(match=f"*{USER}*"))
    with db() as session:
        assert session.scalar(select(func.count()).where(DeadLetter.user_id == USER)) == 1

    out = json.loads(vigil("erase", USER, "--yes").stdout)
    assert out["status"] == "erased" and out["removed"]["history_messages"] == 3

    assert list(state_redis.scan_iter(match=f"*{USER}*")) == []
    with db() as session:
        assert session.scalar(select(func.count()).where(DeadLetter.user_id == USER)) == 0
        assert (
            session.execute(
                text("SELECT count(*) FROM actors WHERE user_id = :u"), {"u": USER}
            ).scalar_one()
            == 0
        )
        assert session.execute(text("SELECT count(*) FROM observations")).scalar_one() == 0
        assert session.execute(text("SELECT count(*) FROM attribution_state")).scalar_one() == 0
    for key in (settings.stream_bond, settings.stream_attribution, settings.stream_user):
        for _, fields in state_redis.xrange(key):
            envelope = json.loads(fields["data"])
            if envelope["topic"] == "user.erased":
                continue  # the announcement itself, for downstream consumers to erase too
            assert USER not in fields["data"], envelope["topic"]
    vigil("bond", "show", USER, code=1)
    vigil("attribution", "user", USER, code=1)
    # The other user is untouched.
    assert ledger.load(state_redis, settings, other) is not None
