"""Envelopes: the versioned wire contract of vigil's Redis Streams.

Each stream carries its own discriminated union of envelope classes (``topic``
is the discriminator) and has its own JSON Schema, so a consumer of one stream
never depends on another stream's shapes. ``schema_version`` is the only lever
for an incompatible change: a v2 would be a parallel set of classes that v1
decoders skip.

Envelopes never hold message text. Some are built as JSON inside Redis Lua
scripts (cjson), so every field here must accept what cjson writes: ``1`` for
a float, ``{}`` for an empty object, ``+00:00`` timestamps, and no key at all
for a nil value (hence every nullable field defaults to None).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    TypeAdapter,
    ValidationInfo,
    model_validator,
)

from models.types import UtcDatetime

SCHEMA_VERSION = "1"

# Defaults make building an envelope easy, but on the wire these must be present:
# a missing envelope_id would otherwise get a fresh one and defeat consumer dedupe.
WIRE_REQUIRED = ("schema_version", "envelope_id", "topic", "payload", "published_at")

UUID_PATTERN = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"


def _now() -> datetime:
    return datetime.now(UTC)


def _new_id() -> str:
    return str(uuid.uuid4())


EnvelopeId = Annotated[str, StringConstraints(pattern=UUID_PATTERN), AfterValidator(str.lower)]
Confidence = Annotated[float, Field(ge=0.0, le=1.0)]


class _Payload(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class PhaseTransition(_Payload):
    user_id: str
    guild_id: str | None = None
    from_phase: str
    to_phase: str
    confidence: Confidence
    primary_signal: str


class RiskChange(_Payload):
    user_id: str
    guild_id: str | None = None
    from_risk: str
    to_risk: str


class AdminAction(_Payload):
    """``detail`` carries counts and ids only (never note or message text)."""

    user_id: str
    action: Literal["set_cap", "add_note", "clear_history"]
    detail: dict[str, Any]


class RateLimited(_Payload):
    user_id: str
    guild_id: str | None = None
    platform: str
    message_id: str
    cap: int
    count: int


class UserErased(_Payload):
    user_id: str
    platform: str
    removed: dict[str, int]


class ProfileStateChanged(_Payload):
    identity_id: str
    platform: str | None = None
    user_id: str | None = None
    primitive: str
    kind: str
    old_state: str
    new_state: str
    current_value: str | None = None
    confidence: Confidence
    observation_count: int


class MultiActorSuspected(_Payload):
    identity_id: str
    primitives: list[str]
    previous_primitives: list[str]


class _Envelope(BaseModel):
    # Subclasses pin ``topic`` and ``payload``; field order stays as declared here.
    model_config = ConfigDict(
        frozen=True, extra="forbid", json_schema_extra={"required": list(WIRE_REQUIRED)}
    )

    schema_version: Literal["1"] = SCHEMA_VERSION
    envelope_id: EnvelopeId = Field(default_factory=_new_id)
    topic: str
    payload: _Payload
    published_at: UtcDatetime = Field(default_factory=_now)
    correlation_id: str | None = None
    meta: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _wire_fields_present(cls, data: Any, info: ValidationInfo) -> Any:
        if info.context and info.context.get("wire") and isinstance(data, dict):
            missing = [name for name in WIRE_REQUIRED if name not in data]
            if missing:
                raise ValueError(f"missing envelope fields: {', '.join(missing)}")
        return data


class PhaseTransitionEnvelope(_Envelope):
    topic: Literal["bond.phase_transition"] = "bond.phase_transition"
    payload: PhaseTransition


class RiskChangeEnvelope(_Envelope):
    topic: Literal["bond.risk_change"] = "bond.risk_change"
    payload: RiskChange


class AdminActionEnvelope(_Envelope):
    topic: Literal["bond.admin_action"] = "bond.admin_action"
    payload: AdminAction


class RateLimitedEnvelope(_Envelope):
    topic: Literal["message.rate_limited"] = "message.rate_limited"
    payload: RateLimited


class UserErasedEnvelope(_Envelope):
    topic: Literal["user.erased"] = "user.erased"
    payload: UserErased


class ProfileStateChangedEnvelope(_Envelope):
    topic: Literal["attribution.profile.state_changed"] = "attribution.profile.state_changed"
    payload: ProfileStateChanged


class MultiActorSuspectedEnvelope(_Envelope):
    topic: Literal["attribution.profile.multi_actor_suspected"] = (
        "attribution.profile.multi_actor_suspected"
    )
    payload: MultiActorSuspected


Envelope = (
    PhaseTransitionEnvelope
    | RiskChangeEnvelope
    | AdminActionEnvelope
    | RateLimitedEnvelope
    | UserErasedEnvelope
    | ProfileStateChangedEnvelope
    | MultiActorSuspectedEnvelope
)

BondEnvelope = Annotated[
    PhaseTransitionEnvelope | RiskChangeEnvelope | AdminActionEnvelope | RateLimitedEnvelope,
    Field(discriminator="topic"),
]
AttributionEnvelope = Annotated[
    ProfileStateChangedEnvelope | MultiActorSuspectedEnvelope,
    Field(discriminator="topic"),
]
UserEnvelope = UserErasedEnvelope

ENVELOPE_CLASSES: dict[str, type[_Envelope]] = {
    cls.model_fields["topic"].default: cls
    for cls in (
        PhaseTransitionEnvelope,
        RiskChangeEnvelope,
        AdminActionEnvelope,
        RateLimitedEnvelope,
        UserErasedEnvelope,
        ProfileStateChangedEnvelope,
        MultiActorSuspectedEnvelope,
    )
}

# Stream name -> the topics that stream carries; each topic is on exactly one stream.
STREAM_TOPICS: dict[str, tuple[str, ...]] = {
    "bond": (
        "bond.phase_transition",
        "bond.risk_change",
        "bond.admin_action",
        "message.rate_limited",
    ),
    "attribution": (
        "attribution.profile.state_changed",
        "attribution.profile.multi_actor_suspected",
    ),
    "user": ("user.erased",),
}

# Stream name -> the strict decoder of its envelopes.
STREAM_ADAPTERS: dict[str, TypeAdapter[Any]] = {
    "bond": TypeAdapter(BondEnvelope),
    "attribution": TypeAdapter(AttributionEnvelope),
    "user": TypeAdapter(UserEnvelope),
}

WIRE_CONTEXT = {"wire": True}

# One valid payload per topic, for documentation, demos and tests.
EXAMPLE_PAYLOADS: dict[str, dict[str, Any]] = {
    "bond.phase_transition": {
        "user_id": "1001",
        "guild_id": "42",
        "from_phase": "dormant",
        "to_phase": "attaching",
        "confidence": 0.85,
        "primary_signal": "frequency",
    },
    "bond.risk_change": {
        "user_id": "1001",
        "guild_id": None,
        "from_risk": "low",
        "to_risk": "high",
    },
    "bond.admin_action": {
        "user_id": "1001",
        "action": "set_cap",
        "detail": {"old_cap": 0, "new_cap": 5},
    },
    "message.rate_limited": {
        "user_id": "1001",
        "guild_id": "42",
        "platform": "discord",
        "message_id": "m-77",
        "cap": 5,
        "count": 6,
    },
    "user.erased": {"user_id": "1001", "platform": "discord", "removed": {"history": 3, "bond": 1}},
    "attribution.profile.state_changed": {
        "identity_id": "0b0e3a52-41a4-4a51-9d0c-3f4a1f1e2a10",
        "platform": "discord",
        "user_id": "1001",
        "primitive": "tz_offset",
        "kind": "categorical",
        "old_state": "unknown",
        "new_state": "stable",
        "current_value": "+01:00",
        "confidence": 0.8,
        "observation_count": 5,
    },
    "attribution.profile.multi_actor_suspected": {
        "identity_id": "0b0e3a52-41a4-4a51-9d0c-3f4a1f1e2a10",
        "primitives": ["tz_offset", "typing_cadence"],
        "previous_primitives": [],
    },
}

_STREAM_OF_TOPIC = {
    topic: stream_name for stream_name, topics in STREAM_TOPICS.items() for topic in topics
}


def stream_of_topic(topic: str) -> str:
    """The name of the stream ("bond", "attribution", "user") that carries ``topic``."""
    try:
        return _STREAM_OF_TOPIC[topic]
    except KeyError:
        raise ValueError(f"unknown envelope topic {topic!r}") from None


# Namespace of every deterministic envelope id (uuid5).
ENVELOPE_ID_NAMESPACE = uuid.UUID("5b0d1c52-5c8e-4bb4-9f0b-0f1f4a6a0c11")


def envelope_id(*cause: str) -> str:
    """Deterministic envelope id from what caused it (a message marker, a request
    id, a detection and primitive) and the topic: a redelivered cause yields the
    same id, so consumers and the outbox drop the repeat."""
    return str(uuid.uuid5(ENVELOPE_ID_NAMESPACE, "\x1f".join(cause)))


def make_envelope(
    topic: str,
    payload: dict[str, Any] | BaseModel,
    *,
    correlation_id: str | None = None,
    envelope_id: str | None = None,
    published_at: datetime | None = None,
    meta: dict[str, Any] | None = None,
) -> Envelope:
    """Build the envelope class pinned to ``topic``; raises on an invalid payload."""
    cls = ENVELOPE_CLASSES.get(topic)
    if cls is None:
        raise ValueError(f"unknown envelope topic {topic!r}")
    if isinstance(payload, BaseModel):
        payload = payload.model_dump()
    fields: dict[str, Any] = {"payload": payload, "correlation_id": correlation_id}
    if envelope_id is not None:
        fields["envelope_id"] = envelope_id
    if published_at is not None:
        fields["published_at"] = published_at
    if meta is not None:
        fields["meta"] = meta
    return cls.model_validate(fields)  # type: ignore[return-value]


def parse_envelope(stream_name: str, raw: str | bytes) -> Envelope:
    """Strict decode of one ``data`` value for stream ``stream_name``; raises when invalid."""
    adapter = STREAM_ADAPTERS.get(stream_name)
    if adapter is None:
        raise ValueError(f"unknown stream {stream_name!r}")
    return adapter.validate_json(raw, context=WIRE_CONTEXT)
