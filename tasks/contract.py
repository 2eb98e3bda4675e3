"""JSON Schemas of every public task's kwargs, generated from the payload models.

A frontend in any language validates what it sends against these before it
sends, instead of learning from a dead letter that a payload was bad. They
describe the canonical form with the default limits (``VIGIL_MAX_BATCH`` 500
messages, ``VIGIL_MAX_TEXT_CHARS`` 8,000); the workers also read a few lenient
forms (ids as JSON numbers, numbers as numeric strings, timestamps as epoch
seconds; README, "Task contract"), so with those limits anything valid here is
accepted there. Written by
``vigil schema export`` to ``schemas/tasks/``; a test fails when the committed
files drift from the models.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel

from models.payloads import (
    AddNoteIn,
    ClearHistoryIn,
    DetectionIn,
    EraseUserIn,
    MessageIn,
    MessagesIn,
    ReplayIn,
    SetCapIn,
)
from services.envelopes import schemas
from tasks import names

DIALECT = "https://json-schema.org/draft/2020-12/schema"

EXAMPLE_MESSAGE: dict[str, Any] = {
    "message_id": "1187654321",
    "platform": "discord",
    "guild_id": "998877",
    "channel_id": "5544",
    "user_id": "123456789",
    "text": "…",
    "sent_at": "2026-11-22T10:00:00+00:00",
}
EXAMPLE_DETECTION: dict[str, Any] = {
    "detection_id": "det-42",
    "platform": "discord",
    "user_id": "123456789",
    "guild_id": "998877",
    "message_id": "1187654321",
    "observed_at": "2026-11-22T10:00:01+00:00",
    "severity": "medium",
    "crisis_score": 0.42,
    "phase": "concern",
    "risk_level": "medium",
    "childhood_archetype": "unknown",
    "egg_status": "none",
    "confidence": 0.7,
    "signals": {"primary": "hopelessness"},
    "turn_count": 12,
    "ulm_vector": {"limbic": 0.61},
    "observations": [
        {"primitive": "motor.input_modality", "kind": "categorical", "value": "mobile"}
    ],
}


class NoKwargs(BaseModel):
    """A task that takes no arguments."""

    model_config = {"extra": "forbid"}


# Task name -> (kwargs model, examples).
TASKS: dict[str, tuple[type[BaseModel], list[dict[str, Any]]]] = {
    names.INGEST_MESSAGE: (MessageIn, [EXAMPLE_MESSAGE]),
    names.INGEST_MESSAGES: (MessagesIn, [{"messages": [EXAMPLE_MESSAGE]}]),
    names.INGEST_DETECTION: (DetectionIn, [EXAMPLE_DETECTION]),
    names.ADMIN_SET_CAP: (SetCapIn, [{"user_id": "123456789", "cap": 50}]),
    names.ADMIN_ADD_NOTE: (AddNoteIn, [{"user_id": "123456789", "note": "called back"}]),
    names.ADMIN_CLEAR_HISTORY: (
        ClearHistoryIn,
        [{"user_id": "123456789", "guild_id": "998877"}],
    ),
    names.ADMIN_ERASE_USER: (EraseUserIn, [{"user_id": "123456789", "platform": "discord"}]),
    names.ADMIN_REPLAY_DEAD_LETTERS: (ReplayIn, [{"ids": [17, 18]}]),
    names.ADMIN_PING: (NoKwargs, [{}]),
}


def file_name(task_name: str) -> str:
    return f"{task_name}.json"


def current() -> dict[str, dict[str, Any]]:
    """Task name -> the JSON Schema of its kwargs."""
    out: dict[str, dict[str, Any]] = {}
    for task_name, (model, examples) in TASKS.items():
        schema = model.model_json_schema(mode="validation")
        schema.pop("title", None)
        out[task_name] = {
            "$schema": DIALECT,
            "$id": f"urn:vigil:task:{task_name}",
            "title": f"kwargs of {task_name}",
            "description": (
                f"Keyword arguments of the Celery task {task_name} (JSON, protocol 2). "
                + (model.__doc__ or "").split("\n\n")[0].replace("\n", " ").strip()
            ).strip(),
            **schema,
            "examples": examples,
        }
    return out


def export(directory: Path) -> list[Path]:
    """Write one file per task under ``directory`` (the repo's ``schemas/tasks``)."""
    return schemas.write(directory, current(), file_name)
