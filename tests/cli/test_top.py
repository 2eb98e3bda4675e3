"""``vigil top --once``: one frame with rates, queues, streams, dead letters,
recent high-risk users and multi-actor suspects, by id only."""

from __future__ import annotations

from services.attribution import correlator
from services.metrics import queries
from tests.cli.conftest import alternating, msg

ACUTE = "I want to kill myself tonight"


def test_once_prints_one_frame_with_ids_only(vigil, ingest, state_redis, db, settings):
    ingest.messages([msg(1, ACUTE, user="9001"), msg(2, user="9002"), {"text": "no ids"}])
    ingest.detections(alternating("9003"))
    correlator.run(db, settings, state_redis)
    with db() as session:
        (suspect,) = queries.suspected_identities(session)

    out = vigil("top", "--once", "--interval", "0.2").stdout

    assert "ingest outcomes" in out
    for line in ("messages", "accepted", "rejected", "ingest", "bond"):
        assert line in out
    assert "9001" in out  # reached high risk within the hour
    assert "9002" not in out  # medium only
    assert str(suspect) in out
    assert "vigil.ingest.message (rejected)" in out
    assert ACUTE not in out and "no ids" not in out
