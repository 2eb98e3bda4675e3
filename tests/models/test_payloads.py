"""Task payloads: the text limit comes from the validation context (the setting)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from models.payloads import DEFAULT_MAX_TEXT_CHARS, MessageIn, reasons_of, text_limit
from tests import builders


def message(text: str) -> dict:
    return builders.message(id="m1", text=text, guild=builders.OMIT)


def test_text_limit_comes_from_the_context():
    limited = text_limit(100)
    assert MessageIn.model_validate(message("a" * 100), context=limited).text == "a" * 100
    with pytest.raises(ValidationError) as caught:
        MessageIn.model_validate(message("secret " + "a" * 94), context=limited)
    reasons = reasons_of(caught.value)
    assert reasons == ["text: String should have at most 100 characters"]
    assert "secret" not in str(reasons)


def test_a_limit_above_the_default_is_honoured():
    long_text = "a" * (DEFAULT_MAX_TEXT_CHARS + 1)
    assert MessageIn.model_validate(message(long_text), context=text_limit(20_000)).text
    with pytest.raises(ValidationError):
        MessageIn.model_validate(message(long_text))  # no context: the default limit


def test_without_context_the_default_limit_applies():
    assert MessageIn.model_validate(message("a" * DEFAULT_MAX_TEXT_CHARS))


def test_text_with_a_lone_surrogate_is_refused_without_echoing_it():
    with pytest.raises(ValidationError) as caught:
        MessageIn.model_validate(message("secret \ud83d"), context=text_limit(100))
    [reason] = reasons_of(caught.value)
    assert reason.startswith("text: Input should be a valid string") and "secret" not in reason
