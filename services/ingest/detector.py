"""Detectors turn a message (and its recent history) into a detection.

The built-in one is a small lexicon with escalation over history: deterministic,
explainable (its signals name the categories that matched, never the words),
and enough to run the whole pipeline with no external service. Set
``VIGIL_DETECTOR=http`` and ``VIGIL_DETECTOR_URL`` to use an external NLP
service instead.
"""

from __future__ import annotations

import itertools
import os
import re
import threading
from typing import Any, Protocol

import httpx
from pydantic import ValidationError

from models.history import StoredMessage
from models.payloads import DetectionIn, MessageIn
from models.types import SEVERITY_ORDER
from services.core.errors import TransientError
from services.core.settings import Settings

# category -> (weight, patterns). Weights add up to the crisis score.
LEXICON: dict[str, tuple[float, tuple[str, ...]]] = {
    "self_harm": (
        0.65,
        (
            r"\bkill (?:my ?self|me)\b",
            r"\bend (?:it all|my life)\b",
            r"\bsuicid\w*",
            r"\bwant to die\b",
            r"\bhurt(?:ing)? myself\b",
            r"\bself[- ]harm\w*",
        ),
    ),
    "hopelessness": (
        0.35,
        (
            r"\bhopeless\b",
            r"\bno (?:point|reason) (?:in|to) (?:living|go on)\b",
            r"\bcan'?t go on\b",
            r"\bnobody (?:cares|would miss me)\b",
            r"\bworthless\b",
            r"\bgive up\b",
        ),
    ),
    "distress": (
        0.2,
        (
            r"\b(?:so |really )?(?:alone|lonely)\b",
            r"\bpanic\w*",
            r"\bcan'?t (?:cope|sleep)\b",
            r"\bscared\b",
            r"\bcrying\b",
            r"\boverwhelm\w*",
            r"\bexhausted\b",
        ),
    ),
    "negative_mood": (
        0.1,
        (
            r"\bsad\b",
            r"\bupset\b",
            r"\bstressed\b",
            r"\btired of\b",
            r"\bbad day\b",
            r"\banxious\b",
        ),
    ),
}


def _alternation(patterns: tuple[str, ...]) -> str:
    return "|".join(f"(?:{p})" for p in patterns)


# One alternation per category: a single search per category instead of one per phrase.
_COMPILED = {
    cat: (weight, re.compile(_alternation(pats), re.IGNORECASE))
    for cat, (weight, pats) in LEXICON.items()
}
# The same, case-sensitive, for ASCII text lowercased first: for ASCII, matching
# the lowercased text is exactly what IGNORECASE does (its extra equivalences,
# such as the Kelvin sign for k, involve only non-ASCII characters), and about
# twice as fast.
_COMPILED_ASCII = {cat: re.compile(_alternation(pats)) for cat, (_, pats) in LEXICON.items()}


def categories_in(text: str) -> list[str]:
    """The lexicon categories whose phrases occur in ``text``, in lexicon order."""
    if text.isascii():
        lowered = text.lower()
        return [cat for cat, pattern in _COMPILED_ASCII.items() if pattern.search(lowered)]
    return [cat for cat, (_, pattern) in _COMPILED.items() if pattern.search(text)]


# score thresholds -> severity
_SEVERITY_AT = ((0.85, "critical"), (0.6, "high"), (0.35, "medium"), (0.1, "low"))
_PHASE = {
    "safe": "dormant",
    "low": "watch",
    "medium": "concern",
    "high": "acute",
    "critical": "crisis",
}
_RISK = {"safe": "low", "low": "low", "medium": "medium", "high": "high", "critical": "critical"}


class Detector(Protocol):
    name: str
    # How many recent history messages the detector reads; None means the
    # setting (history_context_limit). Fetching less keeps the gate cheap.
    context_limit: int | None

    def detect(self, msg: MessageIn, context: list[StoredMessage]) -> DetectionIn: ...

    def close(self) -> None: ...


def severity_of(score: float) -> str:
    for threshold, name in _SEVERITY_AT:
        if score >= threshold:
            return name
    return "safe"


def build_detection(
    msg: MessageIn,
    *,
    severity: str,
    score: float,
    signals: dict[str, Any],
    turn_count: int,
    phase_severity: str | None = None,
) -> DetectionIn:
    return DetectionIn(
        detection_id=msg.message_id,
        platform=msg.platform,
        user_id=msg.user_id,
        guild_id=msg.guild_id,
        message_id=msg.message_id,
        observed_at=msg.sent_at,
        severity=severity,
        crisis_score=round(score, 4),
        phase=_PHASE[phase_severity or severity],
        risk_level=_RISK[phase_severity or severity],
        confidence=round(min(1.0, 0.5 + score / 2), 4),
        signals=signals,
        turn_count=turn_count,
    )


class LexiconDetector:
    """Score = sum of matched category weights, raised by escalation over history."""

    name = "builtin"
    context_limit = 5  # escalation looks at the last five stored messages

    def detect(self, msg: MessageIn, context: list[StoredMessage]) -> DetectionIn:
        matched = categories_in(msg.text)
        score = sum(_COMPILED[c][0] for c in matched)
        # Escalation: recent stored messages (oldest to newest) that keep rising
        # add weight, so a run of worsening messages crosses thresholds sooner.
        recent = [m.crisis_score or 0.0 for m in context[-5:]]
        rising = len(recent) >= 2 and all(b >= a for a, b in itertools.pairwise(recent))
        escalation = 0.0
        if matched and recent:
            escalation = min(0.25, 0.05 * len(recent) + (0.1 if rising else 0.0))
        score = min(1.0, score + escalation)
        signals: dict[str, Any] = {
            "primary": matched[0] if matched else "none",
            "categories": ",".join(matched) or "none",
            "escalation": round(escalation, 4),
            "context_messages": len(context),
        }
        severity = severity_of(score)
        # Phase and risk step down one level at a time from the recent peak, so
        # one quiet message after a bad run does not read as a recovery.
        peak = max(
            (
                SEVERITY_ORDER.index(m.severity)
                for m in context[-3:]
                if m.severity in SEVERITY_ORDER
            ),
            default=0,
        )
        held = SEVERITY_ORDER[max(SEVERITY_ORDER.index(severity), peak - 1)]
        return build_detection(
            msg,
            severity=severity,
            score=score,
            signals=signals,
            turn_count=len(context) + 1,
            phase_severity=held,
        )

    def close(self) -> None:
        """Nothing to release: the lexicon holds no connections."""


class HttpDetector:
    """Adapter to an external NLP service.

    POSTs ``{"message": {...}, "history": [...]}`` and expects a detection body
    (the ``vigil.ingest.detection`` fields). A timeout or 5xx is transient (the
    task retries with backoff); a 4xx or an invalid body is a permanent failure.
    Its client keeps connections alive, so build one per process
    (``for_process``) rather than one per task.
    """

    name = "http"
    context_limit = None

    def __init__(self, url: str, timeout_s: float, client: httpx.Client | None = None) -> None:
        self.url = url
        self.client = client or httpx.Client(timeout=timeout_s)

    def detect(self, msg: MessageIn, context: list[StoredMessage]) -> DetectionIn:
        body = {
            "message": msg.model_dump(mode="json"),
            "history": [m.model_dump(mode="json") for m in context],
        }
        try:
            resp = self.client.post(self.url, json=body)
        except httpx.HTTPError as exc:
            raise TransientError(f"detector unreachable: {type(exc).__name__}") from None
        if resp.status_code >= 500:
            raise TransientError(f"detector answered {resp.status_code}")
        if resp.status_code >= 400:
            raise DetectorFailed(f"detector refused the message: HTTP {resp.status_code}")
        try:
            data = resp.json()
            data.setdefault("detection_id", msg.message_id)
            for field in ("platform", "user_id", "guild_id", "message_id"):
                data[field] = getattr(msg, field)
            data.setdefault("observed_at", msg.sent_at.isoformat())
            return DetectionIn.model_validate(data)
        except (ValueError, ValidationError, AttributeError):
            raise DetectorFailed("detector returned an invalid detection") from None

    def close(self) -> None:
        self.client.close()


class DetectorFailed(Exception):
    """The detector cannot handle this message; retrying will not help."""


def from_settings(settings: Settings) -> Detector:
    """A new detector; the caller closes it. Tasks use ``for_process`` instead."""
    if settings.detector == "http":
        if not settings.detector_url:
            raise ValueError("VIGIL_DETECTOR_URL: required when VIGIL_DETECTOR=http")
        return HttpDetector(settings.detector_url, settings.detector_timeout_s)
    return LexiconDetector()


# This process's detectors, by the settings that built them. Like the Redis and
# PostgreSQL clients (services/core/clients.py): built lazily, forgotten after
# fork so a prefork child never shares its parent's sockets, closed at shutdown.
_process_detectors: dict[tuple[str, str | None, float], Detector] = {}
_process_detectors_lock = threading.Lock()


def for_process(settings: Settings) -> Detector:
    """The detector every task in this process shares, so an HTTP detector keeps
    one client (and its kept-alive connection) per process, not one per task."""
    key = (settings.detector, settings.detector_url, settings.detector_timeout_s)
    found = _process_detectors.get(key)
    if found is None:
        with _process_detectors_lock:
            found = _process_detectors.get(key)
            if found is None:
                found = _process_detectors[key] = from_settings(settings)
    return found


def close_process_detectors() -> None:
    """Close this process's detectors (worker process shutdown)."""
    with _process_detectors_lock:
        detectors = list(_process_detectors.values())
        _process_detectors.clear()
    for process_detector in detectors:
        process_detector.close()


def _forget_after_fork() -> None:
    # The parent's clients stay the parent's: the child builds its own on first use.
    _process_detectors.clear()


os.register_at_fork(after_in_child=_forget_after_fork)
