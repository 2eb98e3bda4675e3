"""The built-in detector: deterministic, explainable, escalating over history."""

from __future__ import annotations

from datetime import UTC, datetime

import httpx
import pytest

from models.history import StoredMessage
from models.payloads import MessageIn
from services.core.errors import TransientError
from services.ingest.detector import DetectorFailed, HttpDetector, LexiconDetector


def m(text: str) -> MessageIn:
    return MessageIn(
        message_id="1",
        user_id="u",
        guild_id="g",
        text=text,
        sent_at=datetime(2026, 11, 22, tzinfo=UTC),
    )


def past(severity: str, score: float) -> StoredMessage:
    return StoredMessage(
        message="x",
        timestamp="2026-11-21T00:00:00+00:00",
        crisis_score=score,
        severity=severity,
        message_id="p",
    )


@pytest.mark.parametrize(
    ("text", "severity"),
    [
        ("good morning everyone", "safe"),
        ("bit of a bad day", "low"),
        ("I feel hopeless", "medium"),
        ("I want to die", "high"),
        ("I feel hopeless and want to die", "critical"),
    ],
)
def test_lexicon_severity(text, severity):
    det = LexiconDetector().detect(m(text), [])
    assert det.severity == severity
    assert text not in str(det.signals)  # signals name categories, never words


def test_same_input_same_output():
    a = LexiconDetector().detect(m("so lonely and scared"), [past("low", 0.2)])
    b = LexiconDetector().detect(m("so lonely and scared"), [past("low", 0.2)])
    assert a == b


def test_history_escalates_and_phase_steps_down_slowly():
    d = LexiconDetector()
    alone = d.detect(m("I feel hopeless"), [])
    rising = d.detect(m("I feel hopeless"), [past("low", 0.1), past("medium", 0.35)])
    assert rising.crisis_score > alone.crisis_score
    quiet = d.detect(m("ok thanks"), [past("high", 0.7)])
    assert quiet.severity == "safe" and quiet.phase == "concern"  # one level below the peak


def test_http_detector_failure_modes():
    def handler(status):
        return httpx.Client(
            transport=httpx.MockTransport(
                lambda req: httpx.Response(status, json={"severity": "low"})
            )
        )

    with pytest.raises(TransientError):
        HttpDetector("http://detector", 1, client=handler(503)).detect(m("hi"), [])
    with pytest.raises(DetectorFailed):
        HttpDetector("http://detector", 1, client=handler(400)).detect(m("hi"), [])
    det = HttpDetector("http://detector", 1, client=handler(200)).detect(m("hi"), [])
    assert det.severity == "low" and det.user_id == "u"
