"""``vigil attribution user|identity|flagged``."""

from __future__ import annotations

from services.attribution import correlator
from tests.cli.conftest import alternating, det


def test_user_identity_and_flagged(vigil, state_redis, db, settings, ingest):
    ingest.detections(alternating("777"))
    ingest.detections([det(i, "778", typing_cadence="steady") for i in range(4)])
    correlator.run(db, settings, state_redis)

    data = vigil.json("attribution", "user", "777")
    states = {s["primitive"]: s["state"] for s in data["states"]}
    assert states == {"typing_cadence": "multi_actor", "locale": "multi_actor"}
    assert data["actors"] == [{"platform": "discord", "user_id": "777"}]

    same = vigil.json("attribution", "identity", data["identity_id"])
    assert same["states"] == data["states"]
    assert "multi_actor" in vigil("attribution", "identity", data["identity_id"]).stdout

    flagged = vigil.json("attribution", "flagged")
    assert [f["identity_id"] for f in flagged] == [data["identity_id"]]
    assert flagged[0]["announced_at"] is not None
    assert "777" in vigil("attribution", "flagged").stdout
    assert vigil.json("attribution", "user", "778")["states"][0]["state"] == "stable"


def test_unknown_actor_and_identity(vigil, db):
    vigil("attribution", "user", "404", code=1)
    vigil("attribution", "user", "404", "--platform", "matrix", "--json", code=1)
    vigil("attribution", "identity", "00000000-0000-0000-0000-000000000000", code=1)
    vigil("attribution", "identity", "not-a-uuid", code=2)
    assert vigil.json("attribution", "flagged") == []
    assert "no identity is flagged" in vigil("attribution", "flagged").stdout
