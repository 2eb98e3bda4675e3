from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta, timezone

import pytest
import redis
from pydantic import ValidationError

from models.envelopes import (
    ENVELOPE_CLASSES,
    EXAMPLE_PAYLOADS,
    STREAM_TOPICS,
    PhaseTransition,
    make_envelope,
    parse_envelope,
    stream_of_topic,
)

ALL_TOPICS = sorted(ENVELOPE_CLASSES)


@pytest.fixture
def redis_client(state_redis: redis.Redis) -> redis.Redis:
    """The suite's text client (conftest's ``r``)."""
    return state_redis


def test_every_topic_belongs_to_exactly_one_stream():
    carried = [topic for topics in STREAM_TOPICS.values() for topic in topics]
    assert sorted(carried) == ALL_TOPICS
    assert len(carried) == len(set(carried))
    assert stream_of_topic("message.rate_limited") == "bond"
    assert stream_of_topic("user.erased") == "user"
    assert stream_of_topic("attribution.profile.state_changed") == "attribution"


def test_field_order_is_the_wire_order():
    for cls in ENVELOPE_CLASSES.values():
        assert list(cls.model_fields) == [
            "schema_version",
            "envelope_id",
            "topic",
            "payload",
            "published_at",
            "correlation_id",
            "meta",
        ]


@pytest.mark.parametrize("topic", ALL_TOPICS)
def test_round_trip_every_topic(topic):
    env = make_envelope(topic, EXAMPLE_PAYLOADS[topic], correlation_id="m-1", meta={"k": 1})
    assert env.topic == topic
    assert env.schema_version == "1"
    uuid.UUID(env.envelope_id)
    assert env.published_at.tzinfo is not None
    assert env.published_at.utcoffset() == timedelta(0)
    back = parse_envelope(stream_of_topic(topic), env.model_dump_json())
    assert back == env
    assert type(back) is type(env)


def test_make_envelope_accepts_a_payload_model_and_explicit_fields():
    payload = PhaseTransition(**EXAMPLE_PAYLOADS["bond.phase_transition"])
    eid = str(uuid.uuid4())
    at = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone(timedelta(hours=2)))
    env = make_envelope("bond.phase_transition", payload, envelope_id=eid, published_at=at)
    assert env.envelope_id == eid
    assert env.published_at == at
    assert env.published_at.tzinfo == UTC
    assert env.payload == payload


def test_envelopes_and_payloads_are_frozen():
    env = make_envelope("user.erased", EXAMPLE_PAYLOADS["user.erased"])
    with pytest.raises(ValidationError):
        env.topic = "bond.risk_change"
    with pytest.raises(ValidationError):
        env.payload.user_id = "2"


def test_unknown_topic_and_stream_are_refused():
    with pytest.raises(ValueError):
        make_envelope("bond.ulm_spike", {})
    with pytest.raises(ValueError):
        stream_of_topic("nope")
    with pytest.raises(ValueError):
        parse_envelope("nope", "{}")


@pytest.mark.parametrize(
    "change",
    [
        {"payload": {**EXAMPLE_PAYLOADS["bond.risk_change"], "text": "hi"}},  # extra payload field
        {"extra": 1},  # extra envelope field
        {"envelope_id": "not-a-uuid"},
        {"published_at": "2026-01-01T00:00:00"},  # naive
        {"schema_version": "2"},
        {"topic": "bond.phase_transition"},  # payload of another topic
        {"payload": {**EXAMPLE_PAYLOADS["bond.risk_change"], "to_risk": 3}},
    ],
)
def test_parse_refuses_invalid_bodies(change):
    body = json.loads(
        make_envelope("bond.risk_change", EXAMPLE_PAYLOADS["bond.risk_change"]).model_dump_json()
    )
    body.update(change)
    with pytest.raises(ValidationError):
        parse_envelope("bond", json.dumps(body))


@pytest.mark.parametrize("missing", ["schema_version", "envelope_id", "topic", "published_at"])
def test_wire_fields_with_defaults_are_still_required_on_the_wire(missing):
    body = json.loads(
        make_envelope("user.erased", EXAMPLE_PAYLOADS["user.erased"]).model_dump_json()
    )
    del body[missing]
    with pytest.raises(ValidationError):
        parse_envelope("user", json.dumps(body))


def test_optional_wire_fields_may_be_absent():
    body = json.loads(
        make_envelope("user.erased", EXAMPLE_PAYLOADS["user.erased"]).model_dump_json()
    )
    del body["meta"], body["correlation_id"]
    env = parse_envelope("user", json.dumps(body))
    assert env.meta == {} and env.correlation_id is None


def test_a_stream_accepts_only_its_own_topics():
    env = make_envelope("user.erased", EXAMPLE_PAYLOADS["user.erased"])
    with pytest.raises(ValidationError):
        parse_envelope("bond", env.model_dump_json())
    with pytest.raises(ValidationError):
        parse_envelope("attribution", env.model_dump_json())


def test_confidence_is_bounded():
    payload = {**EXAMPLE_PAYLOADS["bond.phase_transition"], "confidence": 1.5}
    with pytest.raises(ValidationError):
        make_envelope("bond.phase_transition", payload)


def test_parses_json_built_by_lua_cjson(redis_client):
    """Bond envelopes are built inside Lua scripts; decode exactly what cjson writes."""
    eid = str(uuid.uuid4())
    script = """
    local guild = cjson.decode('null')
    if guild == cjson.null then guild = nil end
    return cjson.encode({
      schema_version = '1', envelope_id = ARGV[1], topic = 'bond.phase_transition',
      published_at = ARGV[2], correlation_id = 'm/1', meta = {},
      payload = {user_id = '1001', guild_id = guild, from_phase = 'dormant',
                 to_phase = 'attaching', confidence = tonumber(ARGV[3]),
                 primary_signal = 'frequency'}})
    """
    for confidence in ("0.85", "1", "0"):
        raw = redis_client.eval(script, 0, eid, "2026-11-22T10:00:00.123456+00:00", confidence)
        env = parse_envelope("bond", raw)
        assert env.envelope_id == eid
        assert env.payload.guild_id is None
        assert env.payload.confidence == float(confidence)
        assert env.correlation_id == "m/1"
        assert env.meta == {}
        assert env.published_at == datetime(2026, 11, 22, 10, 0, 0, 123456, tzinfo=UTC)


def test_parses_lua_cjson_integer_fields(redis_client):
    raw = redis_client.eval(
        """return cjson.encode({schema_version = '1', envelope_id = ARGV[1],
        topic = 'message.rate_limited', published_at = '2026-11-22T00:00:00+00:00', meta = {},
        payload = {user_id = '7', platform = 'discord', message_id = 'x', cap = 5, count = 6}})""",
        0,
        str(uuid.uuid4()),
    )
    env = parse_envelope("bond", raw)
    assert (env.payload.cap, env.payload.count) == (5, 6)
    assert env.correlation_id is None
