"""Every outcome the ingest pipeline answers fits the declared Outcome type."""

from __future__ import annotations

from typing import get_args

from models.outcomes import Outcome, Status
from services.bonds import ledger
from services.ingest.detector import LexiconDetector
from services.ingest.service import IngestService
from tests import builders


def _message(i: int) -> dict:
    return builders.message(i, user="u-out")


def test_every_status_and_field_is_declared(state_redis, db, settings):
    service = IngestService(state_redis, settings, db, LexiconDetector())
    ledger.set_cap(state_redis, settings, "u-out", 2)
    detection = builders.detection(user="u-det", severity="high", phase="acute", risk_level="high")
    outcomes = [
        *service.messages([_message(0), _message(1), _message(2), _message(0), "junk"]).outcomes,
        *service.detections([detection, detection, {"detection_id": "bad"}]).outcomes,
    ]
    statuses = {outcome["status"] for outcome in outcomes}
    assert statuses == set(get_args(Status))
    for outcome in outcomes:
        assert set(outcome) <= set(Outcome.__annotations__), outcome
