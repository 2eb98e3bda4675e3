from __future__ import annotations

import json
import logging
import threading

import pytest

from models.envelopes import ENVELOPE_CLASSES, EXAMPLE_PAYLOADS, STREAM_TOPICS, make_envelope
from services.envelopes import streams

ALL_TOPICS = sorted(ENVELOPE_CLASSES)
SECRET = "SECRET-" + "x" * 300


def example_envelope(topic: str, **kwargs):
    return make_envelope(topic, EXAMPLE_PAYLOADS[topic], **kwargs)


def malformed_entries(settings) -> list[dict]:
    """One of every shape a decoder must skip, as raw stream fields."""
    good = json.loads(example_envelope("bond.risk_change").model_dump_json())
    return [
        {"other": "field"},
        {"data": b"\xff\xfe\xfa not utf-8"},
        {"data": "{not json"},
        {"data": "[1, 2, 3]"},
        {"data": json.dumps({**good, "schema_version": "2"})},
        {
            "data": json.dumps(
                {name: value for name, value in good.items() if name != "schema_version"}
            )
        },
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
    assert streams.stream_key_of_topic(settings, "message.rate_limited") == settings.stream_bond
    with pytest.raises(ValueError):
        streams.stream_key(settings, "other")


@pytest.mark.parametrize("topic", ALL_TOPICS)
def test_publish_and_read_every_topic(redis_client, settings, topic):
    sent = example_envelope(topic, correlation_id="c-1")
    entry_id = streams.publish(redis_client, settings, sent)
    key = streams.stream_key_of_topic(settings, topic)
    [(raw_id, fields)] = redis_client.xrange(key)
    assert raw_id == entry_id
    assert list(fields) == ["data"]
    assert json.loads(fields["data"])["envelope_id"] == sent.envelope_id
    stream_name = next(name for name, topics in STREAM_TOPICS.items() if topic in topics)
    assert streams.read_latest(redis_client, settings, stream_name, 10) == [(entry_id, sent)]


def test_read_latest_is_newest_first_and_bounded(redis_client, settings):
    ids = [
        streams.publish(redis_client, settings, example_envelope("bond.risk_change"))
        for _ in range(5)
    ]
    got = streams.read_latest(redis_client, settings, "bond", 3)
    assert [entry_id for entry_id, _ in got] == ids[::-1][:3]


def test_each_topic_is_published_on_its_stream(redis_client, settings):
    batch = [example_envelope(topic) for topic in ALL_TOPICS]
    ids = [streams.publish(redis_client, settings, envelope) for envelope in batch]
    assert len(ids) == len(batch)
    got = [
        envelope
        for stream_name in STREAM_TOPICS
        for _, envelope in streams.read_latest(redis_client, settings, stream_name, 10)
    ]
    assert sorted(envelope.envelope_id for envelope in got) == sorted(
        envelope.envelope_id for envelope in batch
    )


def test_publish_trims_approximately(redis_client, settings):
    small = settings.model_copy(update={"stream_maxlen": 100})
    erased = example_envelope("user.erased")
    for _ in range(1000):
        streams.publish(redis_client, small, erased)
    assert 100 <= redis_client.xlen(settings.stream_user) < 400


def test_follow_from_dollar_sees_only_new_entries_and_skips_bad_ones(
    redis_client, bytes_client, settings
):
    streams.publish(redis_client, settings, example_envelope("bond.risk_change"))
    stop = threading.Event()
    feed = streams.follow(redis_client, settings, "bond", block_ms=200, stop=stop)
    bytes_client.xadd(settings.stream_bond, {"data": b"\xff bad"})
    fresh = [example_envelope("bond.admin_action"), example_envelope("message.rate_limited")]
    for envelope in fresh:
        streams.publish(redis_client, settings, envelope)
    got = [next(feed)[1], next(feed)[1]]
    stop.set()
    assert got == fresh


def test_follow_from_an_id(redis_client, settings):
    first = streams.publish(redis_client, settings, example_envelope("user.erased"))
    second = example_envelope("user.erased")
    streams.publish(redis_client, settings, second)
    stop = threading.Event()
    feed = streams.follow(redis_client, settings, "user", last_id=first, block_ms=100, stop=stop)
    assert next(feed)[1] == second
    stop.set()
    assert list(feed) == []


def test_decoder_skips_every_malformed_shape_with_a_short_warning(settings, caplog):
    caplog.set_level(logging.WARNING, logger="services.envelopes.streams")
    for fields in malformed_entries(settings):
        assert streams.decode(fields, stream_name="bond", entry_id="1-0") is None
    assert streams.decode("not a dict") is None
    assert len(caplog.records) == len(malformed_entries(settings)) + 1
    assert SECRET not in caplog.text
    assert all(len(record.getMessage()) < 400 for record in caplog.records)


def test_decoder_accepts_bytes_and_text(settings):
    envelope = example_envelope("attribution.profile.multi_actor_suspected")
    assert streams.decode({b"data": envelope.model_dump_json().encode()}) == envelope
    as_text = {"data": envelope.model_dump_json()}
    assert streams.decode(as_text, stream_name="attribution") == envelope
    assert streams.decode(as_text, stream_name="bond") is None


def test_text_client_reads_past_invalid_utf8(redis_client, bytes_client, settings):
    bytes_client.xadd(settings.stream_bond, {"data": b"\xff\xfe"})
    good = example_envelope("bond.risk_change")
    streams.publish(redis_client, settings, good)
    bytes_client.xadd(settings.stream_bond, {"data": b"\xc3\x28"})
    latest = streams.read_latest(redis_client, settings, "bond", 10)
    assert [envelope for _, envelope in latest] == [good]
