"""The built-in detector: deterministic, explainable, escalating over history;
the HTTP adapter against a real HTTP server on loopback."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

import httpx
import pytest
from celery.signals import worker_process_shutdown
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from models.history import StoredMessage
from models.payloads import MessageIn
from services.core.errors import TransientError
from services.core.settings import Settings
from services.ingest import detector
from services.ingest.detector import DetectorFailed, HttpDetector, LexiconDetector
from tasks import names
from tests.builders import message
from tests.helpers import DetectorServer, message_state, wait_for


@pytest.fixture
def detector_server() -> Iterator[DetectorServer]:
    server = DetectorServer()
    yield server
    server.close()


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


def test_http_detector_against_a_real_server(detector_server):
    d = HttpDetector(detector_server.url, 2)
    try:
        det = d.detect(m("hi"), [])
        assert (det.severity, det.phase, det.detection_id) == ("low", "watch", "1")
        detector_server.answer = (200, {"error": "model not loaded"})
        with pytest.raises(DetectorFailed):
            d.detect(m("hi"), [])
        detector_server.answer = (503, {})
        with pytest.raises(TransientError):
            d.detect(m("hi"), [])
        assert detector_server.counts() == (1, 0)  # three requests, one kept-alive connection
    finally:
        d.close()
    wait_for(lambda: detector_server.counts() == (1, 1), timeout=10, what="connection closed")


def test_one_detector_per_process_closed_by_the_worker_shutdown_signal(celery_app):
    """``tasks.app`` closes this process's detector on ``worker_process_shutdown``."""
    http_settings = Settings(detector="http", detector_url="http://127.0.0.1:9/detect")
    process_detector = detector.for_process(http_settings)
    assert isinstance(process_detector, HttpDetector)
    assert detector.for_process(http_settings) is process_detector
    worker_process_shutdown.send(sender=None, pid=os.getpid(), exitcode=0)
    assert process_detector.client.is_closed
    assert detector.for_process(http_settings) is not process_detector
    detector.close_process_detectors()


def test_worker_reuses_one_detector_connection_per_process_and_closes_it_at_shutdown(
    state_redis, db, settings, start_worker, celery_app, detector_server, monkeypatch
):
    monkeypatch.setenv("VIGIL_DETECTOR", "http")
    monkeypatch.setenv("VIGIL_DETECTOR_URL", detector_server.url)
    # A queue only this worker consumes: the shared worker runs the built-in detector.
    queue = f"ingest-http-{uuid.uuid4().hex[:8]}"
    http_worker = start_worker(concurrency=2, queues=(queue,))
    ids = [f"conn-{i}" for i in range(30)]
    for i, message_id in enumerate(ids):
        celery_app.send_task(
            names.INGEST_MESSAGE,
            kwargs=message(i, "hello", id=message_id, user=f"conn-user-{i % 3}"),
            queue=queue,
        )
    wait_for(
        lambda: all(
            message_state(state_redis, settings, "discord", f"conn-user-{i % 3}", message_id)
            == "done"
            for i, message_id in enumerate(ids)
        ),
        timeout=60,
        what="every message applied",
    )
    assert sorted(detector_server.message_ids) == sorted(ids)
    opened, _ = detector_server.counts()
    assert 1 <= opened <= 2  # at most one connection per worker process
    assert http_worker.stop()
    wait_for(
        lambda: detector_server.counts() == (opened, opened),
        timeout=10,
        what="the worker's detector connections closed",
    )


# Phrases of the lexicon as they would match, plus fragments around word boundaries.
_PHRASES = [
    "kill myself", "kill me", "end it all", "end my life", "suicidal", "want to die",
    "hurting myself", "self-harm", "self harming", "hopeless", "no point in living",
    "no reason to go on", "cant go on", "can't go on", "nobody cares", "nobody would miss me",
    "worthless", "give up", "so alone", "really lonely", "panicking", "can't cope", "cant sleep",
    "scared", "crying", "overwhelmed", "exhausted", "sad", "upset", "stressed", "tired of",
    "bad day", "anxious",
]  # fmt: skip
_WORDS = st.sampled_from([*_PHRASES, "x", "I", "so", "it", "-", ",", "skill", "sadly", "upsets"])


def _reference(text: str) -> list[str]:
    return [cat for cat, (_, pattern) in detector._COMPILED.items() if pattern.search(text)]


@hypothesis_settings(max_examples=500, deadline=None)
@given(
    words=st.lists(_WORDS, max_size=8),
    cases=st.lists(st.sampled_from(["lower", "upper", "title", "swapcase"]), min_size=8),
    separators=st.lists(st.sampled_from([" ", "  ", ", ", ".", "\n", ""]), min_size=8),
)
def test_ascii_text_matches_as_ignorecase_would(words, cases, separators):
    """ASCII text takes the lowercase path; its categories are the IGNORECASE ones."""
    text = "".join(
        getattr(word, case)() + sep
        for word, case, sep in zip(words, cases, separators, strict=False)
    )
    assert text.isascii()
    assert detector.categories_in(text) == _reference(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("I want to \u212aill myself", ["self_harm"]),  # Kelvin sign: k under IGNORECASE
        ("feeling \u017fuicidal", ["self_harm"]),  # long s: s under IGNORECASE
        ("SO ALONE \u00e9", ["distress"]),
        ("caf\u00e9, nothing else", []),
    ],
)
def test_non_ascii_text_keeps_ignorecase_matching(text, expected):
    assert detector.categories_in(text) == expected == _reference(text)
