"""Task payloads: the public, JSON-only wire contract of the ingest and admin tasks.

Fields may grow; their meaning never changes. Every string is bounded and every
id is checked against ``ID_PATTERN`` so no id can reach into another user's keys
(``:`` and ``*`` are refused). A message's text limit is a setting
(``VIGIL_MAX_TEXT_CHARS``); models read no settings, so the caller passes it in
the validation context (``text_limit``).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from pydantic_core import PydanticCustomError

from models.types import Severity, UtcDatetime

ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$"
Id = Annotated[str, StringConstraints(pattern=ID_PATTERN)]
Label = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[a-z0-9_.\-]+$")]
ShortText = Annotated[str, StringConstraints(max_length=200)]

DEFAULT_MAX_TEXT_CHARS = 8000
# For the JSON Schema: text is Unicode without lone surrogates (which Redis and
# UTF-8 cannot carry); the validator of ``MessageIn.text`` is the rule itself.
NO_LONE_SURROGATES = r"^[^\ud800-\udfff]*$"
MAX_BATCH = 500  # the default of VIGIL_MAX_BATCH
# For the JSON Schema of a dict keyed by Label: pydantic states the key pattern
# as patternProperties, which alone lets any other key through.
LABEL_KEYS_ONLY: dict[str, Any] = {"additionalProperties": False}
# Validation-context key for the text limit; see ``text_limit``.
TEXT_LIMIT_KEY = "max_text_chars"
MAX_SIGNALS = 32
MAX_ULM_NODES = 64
MAX_OBSERVATIONS = 32


def _coerce_id(value: Any) -> Any:
    # Discord ids arrive as JSON numbers from some frontends; treat them as strings.
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return str(value)
    return value


def text_limit(max_text_chars: int) -> dict[str, int]:
    """The validation context that makes ``max_text_chars`` a message's text limit:
    ``MessageIn.model_validate(raw, context=text_limit(n))``."""
    return {TEXT_LIMIT_KEY: max_text_chars}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=False)


class MessageIn(_Strict):
    """One chat message, as a frontend enqueues it (``vigil.ingest.message``)."""

    message_id: Id
    platform: Label = "discord"
    guild_id: Id | None = None
    channel_id: Id | None = None
    user_id: Id
    # The schema states the default limit; the validator applies the setting's.
    text: Annotated[
        str,
        Field(
            json_schema_extra={"maxLength": DEFAULT_MAX_TEXT_CHARS, "pattern": NO_LONE_SURROGATES}
        ),
    ]
    sent_at: UtcDatetime

    _ids = field_validator("message_id", "guild_id", "channel_id", "user_id", mode="before")(
        _coerce_id
    )

    @field_validator("text")
    @classmethod
    def _valid_text(cls, text: str, info: ValidationInfo) -> str:
        """At most the limit from the context (the setting), else the default, and
        encodable (no lone surrogates, which Redis and JSON cannot carry). Errors
        name the rule, never the text."""
        limit = (info.context or {}).get(TEXT_LIMIT_KEY, DEFAULT_MAX_TEXT_CHARS)
        if len(text) > limit:
            raise PydanticCustomError(
                "string_too_long",
                "String should have at most {max_length} characters",
                {"max_length": limit},
            )
        try:
            text.encode()
        except UnicodeEncodeError:
            raise PydanticCustomError(
                "string_unicode",
                "Input should be a valid string, unable to parse raw data as a unicode string",
            ) from None
        return text


class MessagesIn(_Strict):
    """``vigil.ingest.messages``: a bounded list of messages (up to
    ``VIGIL_MAX_BATCH``, 500 by default), each validated on its own."""

    messages: Annotated[list[MessageIn], Field(min_length=1, max_length=MAX_BATCH)]


class ObservationIn(_Strict):
    """One behavioural attribution observation carried by a detection."""

    primitive: Annotated[
        str, StringConstraints(min_length=1, max_length=128, pattern=r"^[a-z0-9_.\-]+$")
    ]
    kind: Literal["categorical", "numeric", "hash"]
    value: Annotated[str, StringConstraints(min_length=1, max_length=256)] | float

    @field_validator("value")
    @classmethod
    def _finite(cls, value: str | float) -> str | float:
        if isinstance(value, float) and (value != value or value in (float("inf"), -float("inf"))):
            raise ValueError("numeric value must be finite")
        return value


class EggStatus(_Strict):
    status: Label = "none"


class DetectionIn(_Strict):
    """A detection result (``vigil.ingest.detection``), from the built-in detector
    or an external one. Field names follow the seed ledger's detector output."""

    detection_id: Id
    platform: Label = "discord"
    user_id: Id
    guild_id: Id | None = None
    message_id: Id | None = None
    observed_at: UtcDatetime
    severity: Severity = "safe"
    crisis_score: Annotated[float, Field(ge=0.0, le=1.0)] = 0.0
    phase: Label = "dormant"
    risk_level: Label = "low"
    childhood_archetype: Label = "unknown"
    egg_status: Label | EggStatus = "none"
    confidence: Annotated[float, Field(ge=0.0, le=1.0)] = 0.0
    # Mutable defaults as factories: pydantic deep-copies a plain {} or [] default
    # for every instance, a cost the built-in detector paid per message.
    signals: Annotated[
        dict[Label, ShortText | Annotated[float, Field(allow_inf_nan=False)]],
        Field(max_length=MAX_SIGNALS, json_schema_extra=LABEL_KEYS_ONLY),
    ] = Field(default_factory=dict)
    turn_count: Annotated[int, Field(ge=0, le=10_000_000)] | None = None
    ulm_vector: Annotated[
        dict[Label, Annotated[float, Field(ge=-1e6, le=1e6)]],
        Field(max_length=MAX_ULM_NODES, json_schema_extra=LABEL_KEYS_ONLY),
    ] = Field(default_factory=dict)
    observations: Annotated[list[ObservationIn], Field(max_length=MAX_OBSERVATIONS)] = Field(
        default_factory=list
    )

    _ids = field_validator("detection_id", "user_id", "guild_id", "message_id", mode="before")(
        _coerce_id
    )

    @property
    def egg(self) -> str:
        return self.egg_status if isinstance(self.egg_status, str) else self.egg_status.status

    @property
    def primary_signal(self) -> str:
        value = self.signals.get("primary", "")
        return value if isinstance(value, str) else ""


class SetCapIn(_Strict):
    user_id: Id
    cap: Annotated[int, Field(ge=0, le=1_000_000)]
    actor: ShortText = "operator"


class AddNoteIn(_Strict):
    user_id: Id
    note: Annotated[str, StringConstraints(min_length=1, max_length=1000)]
    actor: ShortText = "operator"


class ClearHistoryIn(_Strict):
    user_id: Id
    guild_id: Id | None = None
    actor: ShortText = "operator"


class EraseUserIn(_Strict):
    user_id: Id
    platform: Label = "discord"
    actor: ShortText = "operator"


class ReplayIn(_Strict):
    ids: Annotated[list[int], Field(min_length=1, max_length=1000)]


def reasons_of(exc: Exception) -> list[str]:
    """Readable rejection reasons that never echo the offending input back."""

    if isinstance(exc, ValidationError):
        out = []
        for err in exc.errors(include_input=False, include_url=False, include_context=False):
            loc = ".".join(str(p) for p in err["loc"])[:120] or "payload"
            out.append(f"{loc}: {err['msg']}"[:300])
        return out[:20]
    return [f"{type(exc).__name__}"]
