from __future__ import annotations

import json
import logging
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import pytest
import redis

from models.envelopes import ENVELOPE_CLASSES, EXAMPLE_PAYLOADS, STREAM_TOPICS, make_envelope
from services.core.clients import redis_url
from services.envelopes import streams

ROOT = Path(__file__).resolve().parents[3]
ALL_TOPICS = sorted(ENVELOPE_CLASSES)
SECRET = "SECRET-" + "x" * 300


@pytest.fixture
def raw_r(r, settings):
    """A bytes client on the same database, to write what a text client cannot."""
    client = redis.Redis.from_url(redis_url(settings))
    yield client
    client.close()


def env(topic: str, **kwargs):
    return make_envelope(topic, EXAMPLE_PAYLOADS[topic], **kwargs)


def malformed_entries(settings) -> list[dict]:
    """One of every shape a decoder must skip, as raw stream fields."""
    good = json.loads(env("bond.risk_change").model_dump_json())
    return [
        {"other": "field"},
        {"data": b"\xff\xfe\xfa not utf-8"},
        {"data": "{not json"},
        {"data": "[1, 2, 3]"},
        {"data": json.dumps({**good, "schema_version": "2"})},
        {"data": json.dumps({k: v for k, v in good.items() if k != "schema_version"})},
        {"data": json.dumps({**good, "topic": "bond.ulm_spike"})},
        {"data": json.dumps({**good, "topic": "user.erased"})},  # another stream's topic
        {"data": json.dumps({**good, "payload": {"user_id": "1", "note": SECRET}})},
        {"data": json.dumps({**good, "envelope_id": SECRET})},
        {"data": json.dumps({**good, "topic": SECRET})},
        {"data": json.dumps({**good, "schema_version": SECRET})},
    ]


def test_stream_keys(settings):
    assert streams.stream_key(settings, "bond") == settings.stream_bond
    assert streams.stream_key(settings, "attribution") == settings.stream_attribution
    assert streams.stream_key(settings, "user") == settings.stream_user
    assert streams.stream_for_topic(settings, "message.rate_limited") == settings.stream_bond
    with pytest.raises(ValueError):
        streams.stream_key(settings, "other")


@pytest.mark.parametrize("topic", ALL_TOPICS)
def test_publish_and_read_every_topic(r, settings, topic):
    sent = env(topic, correlation_id="c-1")
    entry_id = streams.publish(r, settings, sent)
    key = streams.stream_for_topic(settings, topic)
    [(raw_id, fields)] = r.xrange(key)
    assert raw_id == entry_id
    assert list(fields) == ["data"]
    assert json.loads(fields["data"])["envelope_id"] == sent.envelope_id
    group = next(g for g, topics in STREAM_TOPICS.items() if topic in topics)
    assert streams.read_latest(r, settings, group, 10) == [(entry_id, sent)]


def test_read_latest_is_newest_first_and_bounded(r, settings):
    ids = [streams.publish(r, settings, env("bond.risk_change")) for _ in range(5)]
    got = streams.read_latest(r, settings, "bond", 3)
    assert [entry_id for entry_id, _ in got] == ids[::-1][:3]


def test_publish_many_in_order_across_streams(r, settings):
    batch = [env(topic) for topic in ALL_TOPICS]
    ids = streams.publish_many(r, settings, batch)
    assert len(ids) == len(batch)
    got = [e for group in STREAM_TOPICS for _, e in streams.read_latest(r, settings, group, 10)]
    assert sorted(e.envelope_id for e in got) == sorted(e.envelope_id for e in batch)


def test_reclaim_only_takes_idle_entries(r, settings):
    streams.publish(r, settings, env("user.erased"))
    assert len(streams.consume(r, settings, "g", "a", "user", block_ms=None)) == 1
    assert streams.reclaim(r, settings, "g", "b", "user", min_idle_ms=3_600_000) == []
    assert r.xpending_range(settings.stream_user, "g", "-", "+", 10)[0]["consumer"] == "a"
    assert len(streams.reclaim(r, settings, "g", "b", "user", min_idle_ms=0)) == 1
    assert r.xpending_range(settings.stream_user, "g", "-", "+", 10)[0]["consumer"] == "b"


def test_publish_trims_approximately(r, settings):
    small = settings.model_copy(update={"stream_maxlen": 100})
    pipe_env = env("user.erased")
    for _ in range(1000):
        streams.publish(r, small, pipe_env)
    assert 100 <= r.xlen(settings.stream_user) < 400


def test_follow_from_dollar_sees_only_new_entries_and_skips_bad_ones(r, raw_r, settings):
    streams.publish(r, settings, env("bond.risk_change"))
    stop = threading.Event()
    feed = streams.follow(r, settings, "bond", block_ms=200, stop=stop)
    raw_r.xadd(settings.stream_bond, {"data": b"\xff bad"})
    fresh = [env("bond.admin_action"), env("message.rate_limited")]
    for e in fresh:
        streams.publish(r, settings, e)
    got = [next(feed)[1], next(feed)[1]]
    stop.set()
    assert got == fresh


def test_follow_from_an_id(r, settings):
    first = streams.publish(r, settings, env("user.erased"))
    second = env("user.erased")
    streams.publish(r, settings, second)
    stop = threading.Event()
    feed = streams.follow(r, settings, "user", last_id=first, block_ms=100, stop=stop)
    assert next(feed)[1] == second
    stop.set()
    assert list(feed) == []


def test_decoder_skips_every_malformed_shape_with_a_short_warning(settings, caplog):
    caplog.set_level(logging.WARNING, logger="services.envelopes.streams")
    for fields in malformed_entries(settings):
        assert streams.decode(fields, group="bond", entry_id="1-0") is None
    assert streams.decode("not a dict") is None
    assert len(caplog.records) == len(malformed_entries(settings)) + 1
    assert SECRET not in caplog.text
    assert all(len(rec.getMessage()) < 400 for rec in caplog.records)


def test_decoder_accepts_bytes_and_text(settings):
    e = env("attribution.profile.multi_actor_suspected")
    assert streams.decode({b"data": e.model_dump_json().encode()}) == e
    assert streams.decode({"data": e.model_dump_json()}, group="attribution") == e
    assert streams.decode({"data": e.model_dump_json()}, group="bond") is None


def test_text_client_reads_past_invalid_utf8(r, raw_r, settings):
    raw_r.xadd(settings.stream_bond, {"data": b"\xff\xfe"})
    good = env("bond.risk_change")
    streams.publish(r, settings, good)
    raw_r.xadd(settings.stream_bond, {"data": b"\xc3\x28"})
    assert [e for _, e in streams.read_latest(r, settings, "bond", 10)] == [good]


def test_consumer_loop_survives_malformed_entries(r, raw_r, settings):
    good = [env("bond.phase_transition"), env("bond.admin_action")]
    raw_r.xadd(settings.stream_bond, {"data": good[0].model_dump_json()})
    for fields in malformed_entries(settings):
        raw_r.xadd(settings.stream_bond, fields)
    raw_r.xadd(settings.stream_bond, {"data": good[1].model_dump_json()})

    seen = []
    consumer = streams.Consumer(
        r, settings, "bond", "alerts", "c1", lambda _id, e: seen.append(e), count=5, block_ms=10
    )
    for _ in range(len(malformed_entries(settings)) // 5 + 3):
        consumer.step()
    assert seen == good
    dead = streams.read_dead(r, settings, "bond")
    assert len(dead) == len(malformed_entries(settings))
    assert {fields["reason"] for _, fields in dead} == {"undecodable"}
    assert r.xpending(settings.stream_bond, "alerts")["pending"] == 0


def test_groups_fan_out_and_consumers_share(r, settings):
    sent = [env("user.erased") for _ in range(6)]
    key = settings.stream_user
    assert streams.ensure_group(r, key, "a") is True
    assert streams.ensure_group(r, key, "a") is False
    for e in sent:
        streams.publish(r, settings, e)
    a1 = streams.consume(r, settings, "a", "a1", "user", count=3, block_ms=None)
    a2 = streams.consume(r, settings, "a", "a2", "user", count=10, block_ms=None)
    b = streams.consume(r, settings, "b", "b1", "user", count=10, block_ms=None)  # created here
    assert [e for _, e in a1 + a2] == sent
    assert [e for _, e in b] == sent
    assert streams.ack(r, settings, "a", "user", [i for i, _ in a1 + a2]) == 6
    assert r.xpending(key, "a")["pending"] == 0
    assert r.xpending(key, "b")["pending"] == 6


def test_group_created_late_still_gets_the_backlog(r, settings):
    """Entries published while no consumer runs are not lost (unlike following '$')."""
    sent = env("attribution.profile.state_changed")
    streams.publish(r, settings, sent)
    got = streams.consume(r, settings, "dash", "d1", "attribution", block_ms=None)
    assert [e for _, e in got] == [sent]


def test_entry_of_a_consumer_that_died_before_ack_is_reclaimed(r, settings, test_env):
    sent = env("bond.risk_change")
    streams.ensure_group(r, settings.stream_bond, "alerts")
    streams.publish(r, settings, sent)
    code = (
        "import os\n"
        "from services.envelopes import streams\n"
        "from services.core.clients import get_redis\n"
        "from services.core.settings import Settings\n"
        "s = Settings()\n"
        "got = streams.consume(get_redis(s), s, 'alerts', 'doomed', 'bond', block_ms=None)\n"
        "assert len(got) == 1, got\n"
        "os._exit(3)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, timeout=60)
    assert proc.returncode == 3, proc.stderr.decode()[-2000:]
    [pending] = r.xpending_range(settings.stream_bond, "alerts", "-", "+", 10)
    assert pending["consumer"] == "doomed"

    seen = []
    survivor = streams.Consumer(
        r, settings, "bond", "alerts", "survivor", lambda _i, e: seen.append(e), min_idle_ms=0
    )
    assert survivor.step(reclaim_now=True) == {"handled": 1, "failed": 0}
    assert seen == [sent]
    assert r.xpending(settings.stream_bond, "alerts")["pending"] == 0


def test_failing_entry_is_retried_then_dead_lettered_then_replayed(r, settings):
    limited = settings.model_copy(update={"stream_max_deliveries": 3})
    sent = env("message.rate_limited")
    streams.publish(r, limited, sent)
    calls = []

    def broken(_id, e):
        calls.append(e)
        raise RuntimeError("downstream unavailable")

    consumer = streams.Consumer(
        r, limited, "bond", "alerts", "c1", broken, min_idle_ms=0, block_ms=10
    )
    for _ in range(5):
        consumer.step(reclaim_now=True)
    assert calls == [sent] * 3
    assert r.xpending(limited.stream_bond, "alerts")["pending"] == 0
    [(_, dead)] = streams.read_dead(r, limited, "bond")
    assert dead["reason"] == "max_deliveries"
    assert dead["deliveries"] == "3"
    assert dead["group"] == "alerts"
    assert streams.decode(dead, group="bond") == sent

    assert streams.replay_dead(r, limited, "bond") == {"status": "ok", "replayed": 1, "kept": 0}
    assert streams.read_dead(r, limited, "bond") == []
    seen = []
    consumer.handler = lambda _id, e: seen.append(e)
    consumer.step(reclaim_now=True)
    assert seen == [sent]


def test_handler_failure_leaves_entry_pending_for_a_retry(r, settings):
    sent = env("user.erased")
    streams.publish(r, settings, sent)
    outcomes = iter([RuntimeError("once"), None])
    seen = []

    def flaky(_id, e):
        outcome = next(outcomes)
        if outcome:
            raise outcome
        seen.append(e)

    consumer = streams.Consumer(r, settings, "user", "g", "c", flaky, min_idle_ms=0, block_ms=10)
    assert consumer.step(reclaim_now=False) == {"handled": 0, "failed": 1}
    assert r.xpending(settings.stream_user, "g")["pending"] == 1
    assert consumer.step(reclaim_now=True) == {"handled": 1, "failed": 0}
    assert seen == [sent]
    assert r.xpending(settings.stream_user, "g")["pending"] == 0


def test_run_stops_on_event(r, settings):
    stop = threading.Event()
    seen = []

    def handler(_id, e):
        seen.append(e)
        stop.set()

    streams.publish(r, settings, env("user.erased", envelope_id=str(uuid.uuid4())))
    consumer = streams.Consumer(r, settings, "user", "g", "c", handler, block_ms=50)
    consumer.run(stop, max_steps=100)
    assert len(seen) == 1
