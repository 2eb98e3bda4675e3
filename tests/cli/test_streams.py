"""``vigil streams latest`` and ``vigil tail`` (plain and as a consumer-group member)."""

from __future__ import annotations

import json
import threading

import pytest
import redis

from models.envelopes import EXAMPLE_PAYLOADS, make_envelope
from services.envelopes import streams


@pytest.fixture
def redis_client(state_redis: redis.Redis) -> redis.Redis:
    """The suite's text client (conftest's ``r``)."""
    return state_redis


def _publish(redis_client, settings, how_many: int, topic: str = "bond.risk_change") -> list[str]:
    return [
        streams.publish(redis_client, settings, make_envelope(topic, EXAMPLE_PAYLOADS[topic]))
        for _ in range(how_many)
    ]


def test_latest_newest_first(vigil, redis_client, settings):
    ids = _publish(redis_client, settings, 5)
    rows = vigil.json("streams", "latest", "bond", "--count", "3")
    assert [row["entry_id"] for row in rows] == ids[::-1][:3]
    assert rows[0]["topic"] == "bond.risk_change"
    assert "bond.risk_change" in vigil("streams", "latest", "bond").stdout
    assert vigil.json("streams", "latest", "user") == []
    vigil("streams", "latest", "nope", code=2)


def test_tail_says_what_it_waits_for(vigil, redis_client, settings):
    _publish(redis_client, settings, 2)
    run = vigil("tail", "bond", "--from-start", "--count", "1", "--json")
    assert "vigil:stream:bond" in run.stderr and "oldest" in run.stderr
    assert run.stdout.count("\n") == 1  # the note stays off stdout
    group = vigil("tail", "bond", "--group", "g", "--from-start", "--count", "1")
    assert "as group g" in group.stderr


def test_tail_from_start_exits_after_count(vigil, redis_client, settings):
    ids = _publish(redis_client, settings, 4)
    out = vigil("tail", "bond", "--from-start", "--count", "3", "--json").stdout
    assert [json.loads(line)["entry_id"] for line in out.splitlines()] == ids[:3]
    assert "bond.risk_change" in vigil("tail", "bond", "--from-start", "--count", "1").stdout


def test_tail_prints_what_arrives(vigil, redis_client, settings):
    stop = threading.Event()

    def keep_publishing() -> None:
        while not stop.wait(0.1):
            _publish(redis_client, settings, 1, "user.erased")

    thread = threading.Thread(target=keep_publishing, daemon=True)
    thread.start()
    try:
        out = vigil("tail", "user", "--count", "2", "--json").stdout
    finally:
        stop.set()
        thread.join()
    assert [json.loads(line)["topic"] for line in out.splitlines()] == ["user.erased"] * 2


def test_tail_as_consumer_group_member_acks_and_resumes(vigil, redis_client, settings):
    ids = _publish(redis_client, settings, 5)
    args = ("tail", "bond", "--group", "ops", "--consumer", "c1", "--from-start", "--json")
    first = vigil(*args, "--count", "2").stdout
    assert [json.loads(line)["entry_id"] for line in first.splitlines()] == ids[:2]
    consumer_group = redis_client.xinfo_groups(settings.stream_bond)[0]
    assert consumer_group["pending"] == 0  # printed entries were acked
    second = vigil(*args, "--count", "3").stdout
    assert [json.loads(line)["entry_id"] for line in second.splitlines()] == ids[2:]
    assert (
        "bond.risk_change"
        in vigil("tail", "bond", "--group", "late", "--from-start", "--count", "1").stdout
    )
    vigil("tail", "bond", "--consumer", "c1", code=2)
