"""The task kwargs' JSON Schemas (tasks/contract.py, schemas/tasks/) agree with
the payload models: the README's examples and each schema's own examples are
valid for both, and every hostile payload of the suite is refused by both.

The schema side is what a frontend in another language does: the payload must
be strict JSON (no NaN or Infinity), then valid for a JSON Schema validator
that is not pydantic (jsonschema, with date-time formats checked and ECMA-262's
reading of ``$``, as ajv and other JavaScript validators have it).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from models.payloads import DEFAULT_MAX_TEXT_CHARS, text_limit
from services.envelopes import schemas
from tasks import contract, names
from tests.tasks.test_hostile import (
    hostile_detection,
    hostile_message,
    hostile_message_item,
    valid_detection,
    valid_message,
)

ROOT = Path(__file__).resolve().parents[2]
SCHEMAS = ROOT / "schemas" / "tasks"


def _ecma_pattern(validator, pattern: str, instance: Any, schema: dict) -> Any:
    """``pattern`` as ECMA-262 reads it: a final ``$`` is the end of the input
    (Python's ``$`` also matches before a final newline)."""
    if not validator.is_type(instance, "string"):
        return
    translated = pattern[:-1] + r"\Z" if pattern.endswith("$") else pattern
    if not re.search(translated, instance):
        yield jsonschema.ValidationError(f"{instance!r} does not match {pattern!r}")


EcmaValidator = jsonschema.validators.extend(
    jsonschema.Draft202012Validator, {"pattern": _ecma_pattern}
)


def _validator(task_name: str) -> jsonschema.protocols.Validator:
    schema = json.loads((SCHEMAS / contract.file_name(task_name)).read_text())
    return EcmaValidator(schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)


def schema_accepts(task_name: str, payload: Any) -> bool:
    try:
        wire = json.dumps(payload, allow_nan=False)
    except (ValueError, TypeError):
        return False  # not JSON at all: no frontend could send it
    return _validator(task_name).is_valid(json.loads(wire))


def model_accepts(task_name: str, payload: Any) -> bool:
    model: type[BaseModel] = contract.TASKS[task_name][0]
    try:
        model.model_validate(payload, context=text_limit(DEFAULT_MAX_TEXT_CHARS))
    except (ValidationError, TypeError, ValueError):
        return False
    return True


def _readme_json(after: str) -> dict[str, Any]:
    """The first ```json block after the line that starts with ``after``."""
    readme = (ROOT / "README.md").read_text()
    start = readme.index(after)
    block = re.search(r"```json\n(.*?)```", readme[start:], re.DOTALL).group(1)
    return json.loads(block)


def test_committed_schemas_match_the_models():
    current = contract.current()
    assert sorted(p.name for p in SCHEMAS.glob("*.json")) == sorted(
        contract.file_name(name) for name in current
    )
    for task_name, schema in current.items():
        committed = (SCHEMAS / contract.file_name(task_name)).read_text()
        assert committed == schemas.render(schema), f"run `vigil schema export` ({task_name})"


def test_every_public_task_has_a_schema():
    spelled = {v for k, v in vars(names).items() if k.startswith(("INGEST_", "ADMIN_"))}
    assert spelled == set(contract.TASKS)


def test_the_readmes_examples_are_the_schemas_and_valid_for_both():
    message = _readme_json("A message (`vigil.ingest.message`")
    detection = _readme_json("A detection (`vigil.ingest.detection`)")
    assert message == contract.EXAMPLE_MESSAGE
    assert detection == contract.EXAMPLE_DETECTION
    for task_name, payload in (
        (names.INGEST_MESSAGE, message),
        (names.INGEST_DETECTION, detection),
        (names.INGEST_MESSAGES, {"messages": [message] * 3}),
    ):
        assert schema_accepts(task_name, payload) and model_accepts(task_name, payload)


@pytest.mark.parametrize("task_name", sorted(contract.TASKS))
def test_each_schemas_examples_are_valid_for_both(task_name):
    schema = contract.current()[task_name]
    assert schema["examples"]
    for example in schema["examples"]:
        assert schema_accepts(task_name, example), example
        assert model_accepts(task_name, example), example


def _agree(task_name: str, payload: Any, expected: bool) -> None:
    by_schema, by_model = schema_accepts(task_name, payload), model_accepts(task_name, payload)
    assert (by_schema, by_model) == (expected, expected), payload


FAST = hsettings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(payload=hostile_message)
def test_hostile_messages_are_refused_by_both(payload):
    _agree(names.INGEST_MESSAGE, payload, expected=False)


@FAST
@given(payload=hostile_detection)
def test_hostile_detections_are_refused_by_both(payload):
    _agree(names.INGEST_DETECTION, payload, expected=False)


@FAST
@given(items=st.lists(hostile_message_item, min_size=1, max_size=5))
def test_batches_with_a_hostile_item_are_refused_by_both(items):
    _agree(names.INGEST_MESSAGES, {"messages": items}, expected=False)


@FAST
@given(message=valid_message, detection=valid_detection)
def test_valid_payloads_are_accepted_by_both(message, detection):
    _agree(names.INGEST_MESSAGE, message, expected=True)
    _agree(names.INGEST_DETECTION, detection, expected=True)
    _agree(names.INGEST_MESSAGES, {"messages": [message]}, expected=True)


@pytest.mark.parametrize(
    ("task_name", "payload"),
    [
        (names.INGEST_MESSAGES, {"messages": []}),
        (names.INGEST_MESSAGES, {"messages": [contract.EXAMPLE_MESSAGE] * 501}),
        (names.ADMIN_SET_CAP, {"user_id": "u1", "cap": -1}),
        (names.ADMIN_SET_CAP, {"user_id": "abl:*", "cap": 5}),
        (names.ADMIN_ADD_NOTE, {"user_id": "u1", "note": ""}),
        (names.ADMIN_ADD_NOTE, {"user_id": "u1", "note": "x" * 1001}),
        (names.ADMIN_REPLAY_DEAD_LETTERS, {"ids": []}),
        (names.ADMIN_REPLAY_DEAD_LETTERS, {"ids": ["1; DROP TABLE dead_letters"]}),
        (names.ADMIN_PING, {"anything": 1}),
        (names.INGEST_MESSAGE, {**contract.EXAMPLE_MESSAGE, "text": "x" * 8001}),
        (names.INGEST_MESSAGE, {**contract.EXAMPLE_MESSAGE, "user_id": "u1\n"}),
        (names.INGEST_MESSAGE, {**contract.EXAMPLE_MESSAGE, "sent_at": "2026-11-22T10:00:00"}),
        (names.INGEST_DETECTION, {**contract.EXAMPLE_DETECTION, "ulm_vector": {"A:B": 1.0}}),
        (names.INGEST_DETECTION, {**contract.EXAMPLE_DETECTION, "signals": {"Bad:Key": 1.0}}),
    ],
)
def test_hostile_admin_and_edge_payloads_are_refused_by_both(task_name, payload):
    _agree(task_name, payload, expected=False)
