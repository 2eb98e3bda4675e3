"""Erasing a user on real Redis and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime

from services.core import keys
from services.erasure.service import erase_user
from services.ingest.detector import LexiconDetector
from services.ingest.service import IngestService
from tests.builders import OMIT, detection, message
from worker.settle import Ingest

T0 = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)


def test_erasure_removes_the_users_dedupe_state(state_redis, db, settings):
    svc = Ingest(IngestService(state_redis, settings, db, LexiconDetector()))
    for user in ("gone", "kept"):
        svc.messages([message(id=f"{user}-m{i}", user=user, guild=OMIT) for i in range(3)])
        svc.detections([detection(id=f"{user}-d1", user=user, observed_at=T0)])
    out = erase_user(
        state_redis, settings, db, user_id="gone", platform="discord", request_id="req-1"
    )
    assert out["removed"]["dedupe_entries"] == 4
    assert not state_redis.exists(keys.message_dedupe(settings, "discord", "gone"))
    assert not state_redis.exists(keys.detection_dedupe(settings, "discord", "gone"))
    assert [k for k in state_redis.keys("*") if "gone" in k] == []  # nothing of the user is left
    assert state_redis.hlen(keys.message_dedupe(settings, "discord", "kept")) == 3
    assert state_redis.hlen(keys.detection_dedupe(settings, "discord", "kept")) == 1
