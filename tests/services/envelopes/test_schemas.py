from __future__ import annotations

import json
import uuid
from pathlib import Path

import jsonschema
import pytest

from models.envelopes import EXAMPLE_PAYLOADS, STREAM_TOPICS, make_envelope
from services.envelopes import schemas, streams

COMMITTED = Path(__file__).resolve().parents[3] / "schemas"


def committed(stream_name: str) -> dict:
    return json.loads((COMMITTED / schemas.file_name(stream_name)).read_text())


def validator(stream_name: str) -> jsonschema.Draft202012Validator:
    schema = committed(stream_name)
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(
        schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
    )


def test_committed_schemas_match_the_models():
    """Fails when a model changed without ``python -m services.envelopes.schemas``."""
    current = schemas.current()
    assert sorted(path.name for path in COMMITTED.glob("*.json")) == sorted(
        schemas.file_name(name) for name in current
    )
    for stream_name, schema in current.items():
        assert (COMMITTED / schemas.file_name(stream_name)).read_text() == schemas.render(schema)


def test_export_writes_one_file_per_stream(tmp_path):
    written = schemas.export(tmp_path)
    assert sorted(path.name for path in written) == [
        "attribution.v1.json",
        "bond.v1.json",
        "user.v1.json",
    ]
    for path in written:
        assert path.read_text() == (COMMITTED / path.name).read_text()


def test_each_schema_is_self_contained():
    for stream_name in STREAM_TOPICS:
        text = json.dumps(committed(stream_name))
        refs = [part.split('"')[0] for part in text.split('"$ref": "')[1:]]
        assert all(ref.startswith("#/") for ref in refs), refs


@pytest.mark.parametrize("stream_name", sorted(STREAM_TOPICS))
def test_published_envelopes_validate_against_their_stream_schema(
    state_redis, settings, stream_name
):
    check = validator(stream_name)
    for topic in STREAM_TOPICS[stream_name]:
        streams.publish(
            state_redis, settings, make_envelope(topic, EXAMPLE_PAYLOADS[topic], meta={"a": 1})
        )
    entries = state_redis.xrange(streams.stream_key(settings, stream_name))
    assert len(entries) == len(STREAM_TOPICS[stream_name])
    for _, fields in entries:
        check.validate(json.loads(fields["data"]))


def test_schemas_reject_what_decoders_reject():
    body = json.loads(
        make_envelope("bond.risk_change", EXAMPLE_PAYLOADS["bond.risk_change"]).model_dump_json()
    )
    check = validator("bond")
    check.validate(body)
    for bad in (
        {**body, "schema_version": "2"},
        {**body, "topic": "user.erased"},
        {**body, "extra": 1},
        {**body, "envelope_id": "x"},
        {k: v for k, v in body.items() if k != "envelope_id"},
        {**body, "payload": {**body["payload"], "text": "hello"}},
    ):
        assert not check.is_valid(bad)
    assert not validator("user").is_valid(body)


def test_lua_built_envelope_validates(state_redis):
    raw = state_redis.eval(
        """return cjson.encode({schema_version = '1', envelope_id = ARGV[1],
        topic = 'bond.phase_transition', published_at = '2026-11-22T00:00:00+00:00',
        correlation_id = 'm1', meta = {}, payload = {user_id = '1', from_phase = 'a',
        to_phase = 'b', confidence = 1, primary_signal = 's'}})""",
        0,
        str(uuid.uuid4()),
    )
    validator("bond").validate(json.loads(raw))
